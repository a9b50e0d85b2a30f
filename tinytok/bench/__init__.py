"""The benchmark behind ``tinytok bench``: how fast the reference models train and write.

    tinytok bench [--json] [--backend numpy|cupy] [--only NAME] [--quick]

Parts (``--only`` picks some, comma-separated or repeated):

* ``sgemm``: the float32 matrix product (1024 and 2048 square) of this machine, in GFLOP/s.
  Every model figure is also given as a share of it: the ceiling a BLAS-bound code can reach.
* ``vqvae-ref``: one training step at batch 32 (zero grads, forward, backward,
  clip_grad_norm(1.0), adamw_step, as a training loop does it), and encoding (image to ids:
  encoder forward plus the nearest codes) at batch 256.
* ``gpt-ref``: one training step at batch 32 x context 80, and sampling 64 new tokens for 16
  sequences after a 1-token prompt, with and without the KV cache.

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
whole T x T square although half of it is masked), the tied head, and the VQ distance
product (2*M*K*D). Element-wise ops, norms, softmax and the optimizer are not counted.
A training step counts 3x the forward FLOPs of every layer (the forward product and the two
backward products, dx and dw), except the first convolution's dx (the gradient to the images,
which training does not ask for: ``tokenizer_backward(..., image_grad=False)``); the VQ
distance product has no backward product and is counted once. GFLOP/s = counted FLOPs /
median time. The counters live in tinytok/bench/flops.py.

Python use: ``run_bench(backend="numpy", only=None, repeats=None, quick=False) -> dict``.

Measurements of their own live beside it, each a module with its own command line:
``python -m tinytok.bench.vocabulary`` (PSNR against bits, lesson 8) and
``python -m tinytok.bench.data_parallel`` (threads, one process and K processes under
mpiexec, with the bytes all-reduced per step, lesson 17).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from tinytok import backend, parallel
from tinytok.errors import ConfigError
from tinytok.prior.gpt import gpt_config, init_gpt_params
from tinytok.bench.flops import gpt_train_flops, vqvae_flops, vqvae_train_flops
from tinytok.training.optim import adamw_init, adamw_step, clip_grad_norm, zeros_like_params
from tinytok.parallel import blas_threads_for_small_products
from tinytok.pipeline import Tokenizer
from tinytok.prior.sample import continue_sequences
from tinytok.prior.settings import PLAIN
from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_config
from tinytok.training.steps import gpt_loss_grads, tokenizer_grads

PARTS = ("sgemm", "vqvae-ref", "gpt-ref")

# The sizes benchmarked; QUICK keeps the code path and shrinks everything (for tests).
FULL = dict(sgemm_sizes=(1024, 2048), vqvae="vqvae-ref", vq_batch=32, encode_batch=256,
            gpt="gpt-ref", vocab=600, gpt_batch=32, gpt_T=80, sample_batch=16, sample_new=64)
QUICK = dict(sgemm_sizes=(64, 128), vqvae="vqvae-tiny", vq_batch=4, encode_batch=8,
             gpt="gpt-tiny", vocab=50, gpt_batch=2, gpt_T=16, sample_batch=2, sample_new=4)

# (warm-up, repeats) per measurement: fewer repeats for the slow ones.
REPEATS = {"sgemm": (3, 15), "vqvae_train": (3, 15), "vqvae_encode": (2, 10),
           "gpt_train": (3, 15), "sample_kv": (1, 7), "sample_nocache": (1, 3)}
QUICK_REPEATS = (0, 2)


# ---------------------------------------------------------------- timing and memory

def synchronize(xp):
    """Wait for the device to finish queued work (CuPy); a no-op on NumPy."""
    if xp.__name__ == "cupy":
        xp.cuda.Device().synchronize()


def time_it(fn, xp, warmup, repeats):
    """Milliseconds of fn(): {"median", "min", "max", "repeats"} over `repeats` timed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        synchronize(xp)
        t0 = time.perf_counter()
        fn()
        synchronize(xp)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "repeats": len(times)}


def rss_mb():
    """(current, peak) resident size of this process in MB, from /proc (None where absent)."""
    fields = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return fields.get("VmRSS"), fields.get("VmHWM")


def peak_rss_mb():
    """Peak resident size of the whole process so far, in MB.

    VmHWM from /proc where there is one: Linux's ru_maxrss also counts the memory of the
    parent a process was forked from (it is carried across exec), so a section started from
    a big process (pytest, a torch peer) would report the parent's size instead of its own.
    """
    _, hwm = rss_mb()
    if hwm is not None:
        return hwm
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


# ---------------------------------------------------------------- what is measured

def vqvae_train_step(sizes, seed=0):
    """A closure running one vqvae training step on fixed random images, and its FLOPs."""
    config = tokenizer_config(sizes["vqvae"])
    params = init_tokenizer_params(config, seed=seed)
    grads, state = zeros_like_params(params), adamw_init(params)
    rng = backend.rng(seed)
    x = backend.to_device(rng.uniform(-0.5, 0.5, (sizes["vq_batch"], 3, config.image_size,
                                                 config.image_size)), dtype="float32")

    def step():  # as train_tokenizer does it: on batch parts, one per core
        for g in grads.values():
            g[...] = 0
        loss = tokenizer_grads(x, params, config, grads)["loss"]
        clip_grad_norm(grads, 1.0)
        adamw_step(params, grads, state, lr=3e-4)
        return loss

    return step, vqvae_train_flops(config, sizes["vq_batch"])


def vqvae_encode(sizes, seed=0):
    """A closure encoding a fixed batch of uint8 images to ids, as a user does
    (Tokenizer.encode: on batch parts, one per core), and its FLOPs."""
    config = tokenizer_config(sizes["vqvae"])
    tokenizer = Tokenizer(init_tokenizer_params(config, seed=seed), config)
    N, S = sizes["encode_batch"], config.image_size
    images = backend.rng(seed).integers(0, 256, (N, S, S, 3), dtype="uint8")

    def encode():
        return tokenizer.encode(images, batch_size=N)

    f = vqvae_flops(config, N)
    return encode, f["encoder"] + f["vq"]


def gpt_train_step(sizes, seed=0):
    """A closure running one gpt training step on fixed random ids and targets, its FLOPs."""
    config = gpt_config(sizes["gpt"], vocab_size=sizes["vocab"])
    params = init_gpt_params(config, seed=seed)
    grads, state = zeros_like_params(params), adamw_init(params)
    rng = backend.rng(seed)
    B, T = sizes["gpt_batch"], sizes["gpt_T"]
    ids = backend.to_device(rng.integers(0, config.vocab_size, (B, T)))
    targets = backend.to_device(rng.integers(0, config.vocab_size, (B, T)))

    def step():  # as train_prior does it: on batch parts, one per core
        for g in grads.values():
            g[...] = 0
        loss = gpt_loss_grads(ids, targets, params, config, grads)
        clip_grad_norm(grads, 1.0)
        adamw_step(params, grads, state, lr=3e-4, weight_decay=0.1)
        return loss

    return step, gpt_train_flops(config, B, T)


def gpt_sample(sizes, use_cache, seed=0):
    """A closure sampling sample_new tokens for sample_batch sequences after a 1-token prompt."""
    config = gpt_config(sizes["gpt"], vocab_size=sizes["vocab"])
    params = init_gpt_params(config, seed=seed)
    B, n_new = sizes["sample_batch"], sizes["sample_new"]
    prompt = backend.rng(seed).integers(0, config.vocab_size, (B, 1))

    def sample():  # the pipeline's sampler, BLAS threads as Pipeline.generate_codes sets them
        with blas_threads_for_small_products():
            return continue_sequences(prompt, params, config, n_new, backend.rng(seed),
                                      PLAIN, use_cache=use_cache)   # the loop, unguided

    return sample


# ---------------------------------------------------------------- sections (one process each)

def _reps(key, quick, repeats, warmup):
    w, r = QUICK_REPEATS if quick else REPEATS[key]
    return (w if warmup is None else warmup), (r if repeats is None else repeats)


def _ms(prefix, t):
    return {prefix: t["median"], prefix + "_min": t["min"], prefix + "_max": t["max"],
            prefix + "_repeats": t["repeats"]}


def _section_sgemm(xp, sizes, quick, repeats, warmup):
    out, best = {}, 0.0
    for n in sizes["sgemm_sizes"]:
        rng = backend.rng(n)
        a, b = (backend.to_device(rng.standard_normal((n, n)), dtype="float32") for _ in "ab")
        c = xp.empty((n, n), dtype=xp.float32)
        t = time_it(lambda: xp.matmul(a, b, out=c), xp, *_reps("sgemm", quick, repeats, warmup))
        gflops = 2 * n ** 3 / (t["median"] * 1e-3) / 1e9
        out.update(_ms(f"sgemm_{n}_ms", t))
        out[f"sgemm_{n}_gflops"] = gflops
        best = max(best, gflops)
    out["ceiling_gflops"] = best
    return out


def _section_vqvae_train(xp, sizes, quick, repeats, warmup):
    step, flops = vqvae_train_step(sizes)
    t = time_it(step, xp, *_reps("vqvae_train", quick, repeats, warmup))
    return {"config": sizes["vqvae"], "batch": sizes["vq_batch"], **_ms("train_step_ms", t),
            "train_images_per_s": sizes["vq_batch"] / (t["median"] * 1e-3),
            "train_gflop_per_step": flops / 1e9,
            "train_gflops": flops / (t["median"] * 1e-3) / 1e9}


def _section_vqvae_encode(xp, sizes, quick, repeats, warmup):
    encode, flops = vqvae_encode(sizes)
    t = time_it(encode, xp, *_reps("vqvae_encode", quick, repeats, warmup))
    return {"encode_batch": sizes["encode_batch"], **_ms("encode_ms", t),
            "encode_images_per_s": sizes["encode_batch"] / (t["median"] * 1e-3),
            "encode_gflops": flops / (t["median"] * 1e-3) / 1e9}


def _section_gpt_train(xp, sizes, quick, repeats, warmup):
    step, flops = gpt_train_step(sizes)
    t = time_it(step, xp, *_reps("gpt_train", quick, repeats, warmup))
    B, T = sizes["gpt_batch"], sizes["gpt_T"]
    return {"config": sizes["gpt"], "vocab_size": sizes["vocab"], "batch": B, "context": T,
            **_ms("train_step_ms", t), "train_tokens_per_s": B * T / (t["median"] * 1e-3),
            "train_gflop_per_step": flops / 1e9,
            "train_gflops": flops / (t["median"] * 1e-3) / 1e9}


def _section_gpt_sample(xp, sizes, quick, repeats, warmup):
    out = {"sample_batch": sizes["sample_batch"], "sample_new_tokens": sizes["sample_new"]}
    n_tokens = sizes["sample_batch"] * sizes["sample_new"]
    for tag, use_cache, key in (("kv", True, "sample_kv"), ("nocache", False, "sample_nocache")):
        t = time_it(gpt_sample(sizes, use_cache), xp, *_reps(key, quick, repeats, warmup))
        out.update(_ms(f"sample_{tag}_ms", t))
        out[f"sample_{tag}_tokens_per_s"] = n_tokens / (t["median"] * 1e-3)
    return out


SECTIONS = {
    "sgemm": {"sgemm": _section_sgemm},
    "vqvae-ref": {"train_step": _section_vqvae_train, "encode": _section_vqvae_encode},
    "gpt-ref": {"train_step": _section_gpt_train, "sample": _section_gpt_sample},
}


def run_section(part, section, backend_name="numpy", quick=False, repeats=None, warmup=None,
                batch=None):
    """Run one section in this process; returns its figures plus memory and allocator facts.

    batch overrides the training batch of both models (e.g. 256 to compare with a GPU).
    """
    import_rss, _ = rss_mb()
    xp = backend.use(backend_name)
    reused = parallel.reuse_freed_host_memory()
    if part == "sgemm":  # the ceiling is BLAS on all its own threads; the models use ours
        parallel.blas_alone()
    else:
        parallel.use_cores()
    sizes = dict(QUICK if quick else FULL)
    if batch:
        sizes.update(vq_batch=batch, gpt_batch=batch)
    out = SECTIONS[part][section](xp, sizes, quick, repeats, warmup)
    synchronize(xp)
    out.update(import_rss_mb=import_rss, peak_rss_mb=peak_rss_mb(),
               reuse_freed_host_memory=reused, threads=parallel.threads())
    if xp.__name__ == "cupy":
        out["device_pool_mb"] = xp.get_default_memory_pool().total_bytes() / 2 ** 20
    return out


_MARK = "@@tinytok-bench@@"


def _child(spec):
    """Entry point of a section's fresh process: print its figures as one marked JSON line."""
    print(_MARK + json.dumps(run_section(**spec)), flush=True)


def _run_isolated(spec):
    """run_section in a fresh Python process, so that its peak RSS is its own."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    code = "import json, sys; from tinytok.bench import _child; _child(json.loads(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK) and proc.returncode == 0:
            return json.loads(line[len(_MARK):])
    raise RuntimeError(f"benchmark section {spec['part']}/{spec['section']} failed "
                       f"(exit {proc.returncode}):\n{proc.stderr[-2000:]}")


# ---------------------------------------------------------------- the whole benchmark

def parse_only(only):
    """None, a name, "a,b" or a list of those -> the selected PARTS in their usual order."""
    if only is None:
        return list(PARTS)
    names = [only] if isinstance(only, str) else list(only)
    names = [n.strip() for item in names for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        raise ConfigError(f"unknown benchmark part {', '.join(map(repr, unknown)) or '(none)'}; "
                          f"choose from {', '.join(PARTS)}")
    return [p for p in PARTS if p in names]


def run_bench(backend="numpy", only=None, repeats=None, quick=False, warmup=None, isolate=True,
              batch=None):
    """Run the selected parts; returns {"meta": ..., part: {figures}, ...} (see module doc).

    repeats / warmup override the per-measurement defaults (REPEATS). quick shrinks every
    size (QUICK) for tests: its figures say nothing about speed. isolate=False runs the
    sections in this process (faster; peak RSS is then cumulative, not per part).
    """
    if backend not in ("numpy", "cupy"):
        raise ConfigError(f"unknown backend {backend!r}; choose numpy or cupy")
    parts = parse_only(only)
    result = {"meta": _meta(backend, quick, isolate)}
    for part in parts:
        figures = {"peak_rss_mb_by_section": {}}
        for section in SECTIONS[part]:
            spec = dict(part=part, section=section, backend_name=backend, quick=quick,
                        repeats=repeats, warmup=warmup, batch=batch)
            got = _run_isolated(spec) if isolate else run_section(**spec)
            figures["peak_rss_mb_by_section"][section] = got.pop("peak_rss_mb")
            figures.update(got)
        figures["peak_rss_mb"] = max(figures["peak_rss_mb_by_section"].values())
        result[part] = figures
    ceiling = result.get("sgemm", {}).get("ceiling_gflops")
    for part in ("vqvae-ref", "gpt-ref"):
        if part in result:  # share of the sgemm ceiling; None when sgemm was not run
            share = result[part]["train_gflops"] / ceiling if ceiling else None
            result[part]["train_share_of_sgemm"] = share
    return result


def _meta(backend_name, quick, isolate):
    return {"backend": backend_name, "quick": quick, "per_section_process": isolate,
            "python": platform.python_version(), "numpy": np.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "flops": "multiply-add = 2; train step = 3x forward, less the first conv's dx "
                     "(VQ distance product once)"}


# ---------------------------------------------------------------- command line

def add_arguments(parser):
    """Register the bench flags on an argparse (sub)parser."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--backend", choices=("numpy", "cupy"),
                        default=os.environ.get("TINYTOK_BACKEND") or "numpy")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"run only these parts ({', '.join(PARTS)}); comma-separated "
                             "or repeated")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and repeats: checks that it runs, measures nothing")
    parser.add_argument("--batch", type=int, help="training batch of both models (default 32; "
                        "256 compares a GPU with the CPU)")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, help="untimed runs before them")
    parser.add_argument("--in-process", action="store_true",
                        help="no fresh process per section (peak RSS becomes cumulative)")
    return parser


def run(args):
    """Execute parsed arguments; returns the exit status."""
    try:
        result = run_bench(backend=args.backend, only=args.only, repeats=args.repeats,
                           quick=args.quick, warmup=args.warmup, isolate=not args.in_process,
                           batch=args.batch)
    except ConfigError as e:
        print(f"tinytok bench: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def format_table(result):
    """A readable summary of run_bench's result."""
    m = result["meta"]
    lines = [f"tinytok bench  backend={m['backend']}  cpus={m['cpus']}"
             + ("  (quick: sizes too small to mean anything)" if m["quick"] else ""),
             f"{'measurement':<34}{'median':>10}{'min':>10}{'max':>10}  rate"]

    def row(label, part, key, rate):
        f = result[part]
        lines.append(f"{label:<34}{f[key]:>8.1f}ms{f[key + '_min']:>8.1f}ms"
                     f"{f[key + '_max']:>8.1f}ms  {rate}")

    if "sgemm" in result:
        s = result["sgemm"]
        for n in (QUICK if m["quick"] else FULL)["sgemm_sizes"]:
            row(f"sgemm {n}x{n} float32", "sgemm", f"sgemm_{n}_ms",
                f"{s[f'sgemm_{n}_gflops']:.1f} GFLOP/s")
    for part, unit in (("vqvae-ref", "images"), ("gpt-ref", "tokens")):
        if part not in result:
            continue
        f = result[part]
        share = f["train_share_of_sgemm"]
        share = f", {100 * share:.0f}% of sgemm" if share else ""
        row(f"{part} ({f['config']}) train step", part, "train_step_ms",
            f"{f[f'train_{unit}_per_s']:.0f} {unit}/s, {f['train_gflops']:.1f} GFLOP/s{share}")
        if part == "vqvae-ref":
            row(f"  encode batch {f['encode_batch']}", part, "encode_ms",
                f"{f['encode_images_per_s']:.0f} images/s")
        else:
            for tag in ("kv", "nocache"):
                row(f"  sample {f['sample_batch']}x{f['sample_new_tokens']} ({tag})", part,
                    f"sample_{tag}_ms", f"{f[f'sample_{tag}_tokens_per_s']:.0f} tokens/s")
    lines.append("peak RSS (MB, whole process, one process per section; import baseline):")
    for part in PARTS:
        if part in result:
            by = ", ".join(f"{k} {v:.0f}" for k, v in result[part]["peak_rss_mb_by_section"].items())
            lines.append(f"  {part:<12} {by}  (import {result[part]['import_rss_mb']:.0f})")
    return "\n".join(lines)


def main(argv=None):
    parser = add_arguments(argparse.ArgumentParser(prog="tinytok bench", description=__doc__
                                                   .split("\n")[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
