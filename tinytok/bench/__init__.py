"""The benchmark behind ``tinytok bench``: how fast the reference models train and write.

    tinytok bench [--json] [--backend numpy|cupy] [--only NAME] [--quick]

Parts (``--only`` picks some, comma-separated or repeated):

* ``sgemm``: the float32 matrix product (1024 and 2048 square) of this machine, in GFLOP/s.
  Every model figure is also given as a share of it: the ceiling a BLAS-bound code can reach.
* ``vqvae-ref``: one training step at batch 32 (zero grads, forward, backward,
  clip_grad_norm(1.0), adamw_step, as a training loop does it), and encoding (image to ids:
  encoder forward plus the nearest codes) at batch 256.
* ``vqvae-scales``: the same two on the multi-scale tokenizer (VAR's maps,
  tinytok.tokenizer.multiscale): vqvae-ref with quantizer "scales", maps 1, 2, 3, 4, 5, 6,
  8 of 256 codes each (as the shipped shapes_scales_tokenizer.npz), the same batches.
* ``vqvae-gan``: one adversarial training step of vqvae-ref at batch 32 against a patch
  discriminator of 64 channels (VQGAN, tinytok.training.adversarial: both models'
  gradients in two passes, the adaptive weight, then each model clipped and updated by its
  own AdamW), as train-tokenizer --gan-weight does it past --gan-start, with the shipped
  photos_gan_tokenizer's terms: --feature-weight 1, --amplitude-weight 45.
* ``gpt-ref``: one training step at batch 32 x context 80, and sampling 64 new tokens for 16
  sequences after a 1-token prompt, with and without the KV cache.
* ``gpt-masked``: the masked prior (MaskGIT, tinytok.prior.masked): gpt-ref over the shapes
  vocabulary and its <mask> (294 ids), one training step at batch 32 x context 80 on a
  masked_batch (full attention, the loss on the masked image tokens), and filling in 16
  pictures of one caption in the default 8 steps, guided (sample_masked_codes).
* ``gpt-scales``: the next-scale prior (VAR, tinytok.prior.scales): gpt-ref over the shapes
  vocabulary, the caption's 16 positions then the maps' 155 (context 171), carrying a
  fresh multi-scale tokenizer's quantizer; one training step at batch 32 on a scales_batch
  of random maps under one caption (block-causal attention, the loss on every map's codes,
  AdamW on all but the carried quantizer).
* ``drawing``: the raster prior (its KV cache) against the masked one at 4, 8, 12 and 16
  steps and the next-scale one (a map a pass, its KV cache), 16 pictures of one caption,
  guided as Pipeline.generate_codes draws them (no reranking): per picture, the model's
  passes one after another, its forward calls (guidance's rows: a second stream for
  raster, in the same calls for masked and scales), the token positions it runs, and the
  milliseconds. All in one process, timed in turn (a round times each drawing once, so a
  machine's changing load weighs on all alike); fresh weights, as the work does not depend
  on them (a raster drawing writes exactly 64 codes, a masked one takes exactly its steps,
  a next-scale one a pass for the caption and one for each of its 7 maps).

How it measures. Each timing is warm-up runs, then the median (and min, max) of repeated
runs, read with ``time.perf_counter`` after synchronising the device (a no-op on NumPy).
Each section runs in a fresh Python process, so its peak resident memory (VmHWM, else
``ru_maxrss``; whole process: interpreter, NumPy, tinytok and the section's arrays) is its own; the
resident size right after the imports is reported beside it as ``import_rss_mb``. Every
process first calls ``parallel.reuse_freed_host_memory()`` (see its docstring), and the
model sections call ``parallel.use_cores()`` as the command line does (every core for
tinytok's blocks, BLAS on one thread per call; ``TINYTOK_THREADS=1`` turns that off and
leaves BLAS its own threads). ``sgemm`` keeps BLAS on all its threads: it is the ceiling.

How FLOPs are counted. A multiply-add is 2 FLOPs. Counted: convolutions
(2*N*Ho*Wo*F*C*kh*kw), transposed convolutions (2*N*H*W*C*F*kh*kw, over the input pixels),
linear layers (2*M*in*out), the two attention products (QK^T and att@V, 2*B*T*T*C each, the
whole T x T square, of which the raster prior's causal mask hides half, the next-scale
prior's block-causal one a little less and the masked prior's full attention nothing), the
tied head, and the VQ distance product (2*M*K*D; the multi-scale quantizer's over every
map's cells, and its phi, a 3x3 convolution, once per map). Element-wise ops, norms,
softmax, the resizes and the optimizer are not counted.
A training step counts 3x the forward FLOPs of every layer (the forward product and the two
backward products, dx and dw), except the first convolution's dx (the gradient to the images,
which training does not ask for: ``tokenizer_backward(..., image_grad=False)``); the VQ
distance product has no backward product and is counted once. The next-scale prior's step
counts the transformer's at context 171, its maps' input projection (D -> C) twice
(forward and dw: its inputs are constants) and the phi convolutions that make those
inputs from the running sums once (tinytok.bench.flops.scales_train_flops). The
adversarial step counts
the products it computes (tinytok.bench.flops.vqvae_gan_train_flops): the tokenizer's
step, the decoder's last weight's gradient twice more, and the discriminator's
convolutions eight times forward less its first layer's dx twice. GFLOP/s = counted FLOPs /
median time. The counters live in tinytok/bench/flops.py.

Python use: ``run_bench(backend="numpy", only=None, repeats=None, quick=False) -> dict``.

Its parts, each importable alone: ``options`` (the parts, sizes, repeats and flags),
``measure`` (timers and memory readings), ``flops`` (the counters), ``workloads`` (the
measured closures), ``sections`` (one process's measurements), ``run`` (a fresh process per
section, run_bench, the command line) and ``report`` (the table).

Measurements of their own live beside it, each a module with its own command line:
``python -m tinytok.bench.vocabulary`` (PSNR against bits, lesson 8) and
``python -m tinytok.bench.data_parallel`` (threads, one process and K processes under
mpiexec, with the bytes all-reduced per step, lesson 21).
"""
import importlib

# Where each name of the benchmark lives. A name is imported from its module when it is first
# asked for (a module __getattr__, PEP 562), so that importing one part (tinytok.bench.flops,
# or the flags in tinytok.bench.options, which the `tinytok` parser reads on every run) does
# not load the models the workloads build.
_HOMES = {
    "options": ("PARTS", "FULL", "QUICK", "REPEATS", "QUICK_REPEATS", "parse_only",
                "add_arguments"),
    "measure": ("synchronize", "time_it", "time_in_turn", "rss_mb", "peak_rss_mb"),
    "workloads": ("vqvae_train_step", "vqvae_gan_train_step", "vqvae_encode",
                  "multiscale_tokenizer_config", "multiscale_tokenizer", "gpt_train_step",
                  "prior_train_step", "gpt_sample", "shapes_prior", "masked_train_step",
                  "masked_example_batch", "scales_train_step", "scales_example_batch",
                  "drawing", "drawing_work"),
    "sections": ("SECTIONS", "run_section"),
    "run": ("run_isolated", "run_bench", "run", "main"),
    "report": ("format_table",),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name):
    if name not in _HOME_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME_OF[name]}"), name)


def __dir__():
    return sorted([*globals(), *_HOME_OF])
