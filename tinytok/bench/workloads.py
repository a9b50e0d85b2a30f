"""What the benchmark runs: closures doing one training step, encoding or sampling, on fixed
random weights and inputs at the sizes of tinytok.bench.options, each with its FLOPs
(tinytok/bench/flops.py). tests/peers/torch_peer.py times the same closures beside PyTorch.
"""
from dataclasses import replace

from tinytok import backend
from tinytok.bench.flops import (gpt_train_flops, scales_train_flops, vqvae_flops,
                                 vqvae_gan_train_flops, vqvae_train_flops)
from tinytok.parallel import blas_threads_for_small_products
from tinytok.pipeline import Tokenizer
from tinytok.prior.gpt import gpt_config, init_gpt_params
from tinytok.prior.kinds import PRIOR_KINDS, model_overrides
from tinytok.prior.layouts import image_prompt, unconditional_prompt
from tinytok.prior.masked import masked_batch, still_masked
from tinytok.prior.sample import continue_sequences
from tinytok.prior.scales import carried_params, scales_batch
from tinytok.prior.settings import PLAIN
from tinytok.prior.vocab import EXAMPLE_CAPTION
from tinytok.tokenizer.discriminator import (DiscriminatorConfig, init_discriminator_params,
                                             is_discriminator_param)
from tinytok.tokenizer.multiscale import token_count
from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_config, with_quantizer
from tinytok.training.adversarial import adversarial_grads
from tinytok.training.optim import adamw_init, adamw_step, clip_grad_norm, zeros_like_params
from tinytok.training.prior_data import shapes_vocab
from tinytok.training.steps import gpt_loss_grads, tokenizer_grads


def vqvae_train_step(sizes, seed=0, config=None):
    """A closure running one vqvae training step on fixed random images, and its FLOPs.
    config: the tokenizer's (default: sizes["vqvae"]; multiscale_tokenizer_config for
    vqvae-scales)."""
    config = tokenizer_config(config or sizes["vqvae"])
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


def vqvae_gan_train_step(sizes, seed=0):
    """A closure running one adversarial vqvae step (the tokenizer against its patch
    discriminator, VQGAN) on fixed random images, and its FLOPs: as TokenizerRun.step does
    it past gan_start, both models' gradients in two passes over the batch parts (L_rec
    with the feature and amplitude terms at the sizes' weights), then each model clipped
    and updated by an AdamW of its own."""
    config = tokenizer_config(sizes["vqvae"])
    disc = DiscriminatorConfig(sizes["disc_channels"])
    params = init_tokenizer_params(config, seed=seed)
    params.update(init_discriminator_params(disc, seed=seed + 1))
    grads = zeros_like_params(params)
    models = []
    for is_d in (False, True):                 # the tokenizer, then D: (params, grads, AdamW)
        keys = [k for k in params if is_discriminator_param(k) == is_d]
        mine = {k: params[k] for k in keys}
        models.append((mine, {k: grads[k] for k in keys}, adamw_init(mine)))
    x = backend.to_device(backend.rng(seed).uniform(
        -0.5, 0.5, (sizes["vq_batch"], 3, config.image_size, config.image_size)),
        dtype="float32")

    def step():
        for g in grads.values():
            g[...] = 0
        out = adversarial_grads(x, params, config, disc, grads, sizes["gan_weight"],
                                lambda arrays: arrays,           # one process: no sums
                                feature_weight=sizes["feature_weight"],
                                amplitude_weight=sizes["amplitude_weight"])
        for mine, mine_grads, state in models:
            clip_grad_norm(mine_grads, 1.0)
            adamw_step(mine, mine_grads, state, lr=3e-4)
        return out["loss"]

    return step, vqvae_gan_train_flops(config, disc.channels, sizes["vq_batch"],
                                       feature_matching=bool(sizes["feature_weight"]))


def vqvae_encode(sizes, seed=0, config=None):
    """A closure encoding a fixed batch of uint8 images to ids, as a user does
    (Tokenizer.encode: on batch parts, one per core), and its FLOPs. config: as
    vqvae_train_step's."""
    config = tokenizer_config(config or sizes["vqvae"])
    tokenizer = Tokenizer(init_tokenizer_params(config, seed=seed), config)
    N, S = sizes["encode_batch"], config.image_size
    images = backend.rng(seed).integers(0, 256, (N, S, S, 3), dtype="uint8")

    def encode():
        return tokenizer.encode(images, batch_size=N)

    f = vqvae_flops(config, N)
    return encode, f["encoder"] + f["vq"]


def multiscale_tokenizer_config(sizes):
    """The multi-scale tokenizer (VAR's maps) of the bench: sizes["vqvae"] with quantizer
    "scales" and shapes_codes codes per map (the shipped shapes tokenizer's 256), on
    pictures that give a shapes_grid grid (vqvae-ref's 32x32: maps 1, 2, 3, 4, 5, 6, 8)."""
    base = tokenizer_config(sizes["vqvae"])
    side = sizes["shapes_grid"] * 2 ** base.downsamplings
    return with_quantizer(replace(base, num_codes=sizes["shapes_codes"], image_size=side),
                          "scales")


def multiscale_tokenizer(sizes, seed=0):
    """A fresh multi-scale tokenizer (random weights) of multiscale_tokenizer_config."""
    config = multiscale_tokenizer_config(sizes)
    return Tokenizer(init_tokenizer_params(config, seed=seed), config)


def gpt_train_step(sizes, seed=0):
    """A closure running one gpt training step on fixed random ids and targets, its FLOPs."""
    config = gpt_config(sizes["gpt"], vocab_size=sizes["vocab"])
    rng = backend.rng(seed)
    B, T = sizes["gpt_batch"], sizes["gpt_T"]
    ids = rng.integers(0, config.vocab_size, (B, T))
    targets = rng.integers(0, config.vocab_size, (B, T))
    step = prior_train_step(init_gpt_params(config, seed=seed), config, ids, targets, "raster")
    return step, gpt_train_flops(config, B, T)


def prior_train_step(params, config, ids, targets, kind):
    """A closure running one training step of a prior of that kind (its attention and its
    loss pair, prior/kinds.py) on fixed ids, targets (host int64), as train_prior does it:
    on batch parts, one per core; then the gradients clipped and AdamW, both on the
    trainable parameters alone (not the kind's carried ones, which get no gradient)."""
    kind = PRIOR_KINDS[kind]
    trainable = {k: v for k, v in params.items() if k not in kind.carried}
    grads, state = zeros_like_params(trainable), adamw_init(trainable)
    ids, targets = backend.to_device(ids), backend.to_device(targets)

    def step():
        for g in grads.values():
            g[...] = 0
        loss = gpt_loss_grads(ids, targets, params, config, grads, mask=kind.attention,
                              loss=kind.loss)
        clip_grad_norm(grads, 1.0)
        adamw_step(trainable, grads, state, lr=3e-4, weight_decay=0.1)
        return loss

    return step


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


# ---------------------------------------------------------------- the shapes priors

def shapes_prior(sizes, kind, seed=0):
    """(params, config, vocab): a fresh prior of that kind (prior/kinds.py: its init and
    model_overrides) of sizes["gpt"] over the shapes vocabulary (sizes' shapes_codes and
    shapes_grid), with the kind's extra tokens (the masked prior's <mask>). The raster and
    masked priors read a context of gpt_T; the next-scale prior the same caption part
    (gpt_T - grid^2 positions, 16) before its maps (context 16 + 155 = 171), and it carries
    the quantizer of a fresh multi-scale tokenizer (multiscale_tokenizer). The weights are
    random: the work of a training step or of a drawing does not depend on them (a raster
    drawing writes exactly one grid, a masked one takes exactly its steps, a next-scale
    one exactly one pass per map)."""
    record = PRIOR_KINDS[kind]
    vocab = shapes_vocab(sizes["shapes_codes"], sizes["shapes_grid"])
    tokenizer = multiscale_tokenizer(sizes, seed) if record.reads == "maps" else None
    slots = sizes["gpt_T"] - vocab.image_len - 2             # the words between <bos>, <image>
    config = gpt_config(sizes["gpt"], **{"context": sizes["gpt_T"],
                                         **model_overrides(kind, vocab, tokenizer, slots)})
    carried = None if tokenizer is None else carried_params(tokenizer.params)
    return record.init(config, seed, carried=carried), config, vocab


def masked_train_step(sizes, seed=0):
    """A closure running one masked prior's training step (train_prior(kind="masked"): full
    attention, the loss on the masked image tokens only) on a fixed masked_batch of random
    codes under one caption, and its FLOPs (the same products as a raster step's)."""
    params, config, _ = shapes_prior(sizes, "masked", seed)
    step = prior_train_step(params, config, *masked_example_batch(sizes, seed), "masked")
    return step, gpt_train_flops(config, sizes["gpt_batch"], config.context)


def scales_train_step(sizes, seed=0):
    """A closure running one next-scale prior's training step (train_prior(kind="scales"):
    block-causal attention, the maps' inputs from the carried quantizer, the loss on every
    map's codes) on a fixed scales_batch of random maps under one caption, and its FLOPs
    (flops.scales_train_flops)."""
    params, config, _ = shapes_prior(sizes, "scales", seed)
    step = prior_train_step(params, config, *scales_example_batch(sizes, config, seed),
                            "scales")
    code_dim = params["quant.codebook"].shape[-1]
    return step, scales_train_flops(config, code_dim, sizes["gpt_batch"])


def example_codes(sizes, ids_shape, seed=0):
    """(vocab, captions, codes, rng): gpt_batch pictures' random codes of ids_shape, each
    under the one caption EXAMPLE_CAPTION, and the rng that drew them (the batch draws on)."""
    vocab = shapes_vocab(sizes["shapes_codes"], sizes["shapes_grid"])
    rng = backend.rng(seed)
    B = sizes["gpt_batch"]
    codes = rng.integers(0, vocab.num_codes, (B, *ids_shape))
    return vocab, [vocab.encode_text(EXAMPLE_CAPTION)] * B, codes, rng


def masked_example_batch(sizes, seed=0):
    """The masked training step's batch, host int64 (inputs, targets), each (gpt_batch,
    gpt_T): random codes under one caption, through masked_batch (a share of the image
    tokens <mask>, only those targets; the caption dropped with p 0.1)."""
    g = sizes["shapes_grid"]
    vocab, captions, codes, rng = example_codes(sizes, (g, g), seed)
    return masked_batch(vocab, captions, codes, rng, sizes["gpt_T"])


def scales_example_batch(sizes, config, seed=0):
    """The next-scale training step's batch for a prior config of shapes_prior(sizes,
    "scales"), host int64 (inputs, targets), each (gpt_batch, context): random maps under
    one caption, through scales_batch (every map's codes the targets; the caption dropped
    with p 0.1)."""
    vocab, captions, codes, rng = example_codes(sizes, (token_count(config.scales),), seed)
    return scales_batch(vocab, captions, codes, rng, config.context)


def drawing(sizes, kind, steps=None, seed=0):
    """A closure drawing sizes["draw_n"] pictures of one caption with a fresh prior of that
    kind, as Pipeline.generate_codes does it (the kind's draw, the recommended sampling
    with its guidance, BLAS threads for small products; no reranking), steps passes for a
    masked prior (default: the sampling's), and its work: drawing_work."""
    params, config, vocab = shapes_prior(sizes, kind, seed)
    recommended = PRIOR_KINDS[kind].sampling
    sampling = recommended if steps is None else recommended.but(steps=steps)
    draw = PRIOR_KINDS[kind].draw

    def sample():
        with blas_threads_for_small_products():
            return draw(params, config, vocab, EXAMPLE_CAPTION, sizes["draw_n"],
                        backend.rng(seed), sampling)

    return sample, drawing_work(kind, vocab, config, sampling.steps,
                                sampling.cfg_scale != 1.0, EXAMPLE_CAPTION)


def drawing_work(kind, vocab, config, steps, guided, caption):
    """How much model a picture of caption takes: {"passes", "forward_calls", "positions"}.

    passes: the runs of the model a picture waits for, one after the other (its latency
    counted in runs). A raster prior: the prompt, whose last logits draw the first code,
    then one run per further code (image_len in all; the last code is never fed back). A
    masked prior: one run per step while codes are left to fill in (steps, at most
    image_len). A next-scale prior: the caption's pass, which fills the KV cache and draws
    nothing (the first map's positions read no code, so its logits come from a pass of
    their own), then one run per map (K: 8 passes for the 7 maps of an 8x8 grid).
    forward_calls: the calls of the model, guidance's unconditional rows included: a raster
    prior runs them as a second stream (twice the passes), a masked or next-scale prior
    beside the conditional rows in the same call (the passes, each with twice the rows).
    positions: the token positions run through the model per picture, guidance's row
    included: a raster step runs one new token (its KV cache holds the rest), a masked step
    the whole context, a next-scale pass its map's positions (its KV cache holds the
    caption and the coarser maps), so a picture runs its whole context once.
    """
    return WORK[kind](vocab, config, steps, 2 if guided else 1, caption)


def raster_work(vocab, config, steps, rows, caption):
    """A raster prior's: one pass per code, its guidance a second stream of prompts."""
    L = vocab.image_len
    prompts = [len(image_prompt(vocab, caption, config.context))]
    prompts += [len(unconditional_prompt(vocab))] if rows == 2 else []
    return {"passes": L, "forward_calls": rows * L,
            "positions": sum(p + L - 1 for p in prompts)}


def masked_work(vocab, config, steps, rows, caption):
    """A masked prior's: one pass per step while codes are left, the whole context each."""
    L = vocab.image_len
    passes, unknown = 0, L
    for step in range(steps):                            # fill_in's loop from a masked grid
        if unknown == 0:
            break
        passes += 1
        unknown = max(min(still_masked(L, step, steps), unknown - 1), 0)
    return {"passes": passes, "forward_calls": passes,
            "positions": rows * passes * config.context}


def scales_work(vocab, config, steps, rows, caption):
    """A next-scale prior's: the caption's pass, then a pass per map (write_maps with its
    KV cache), guidance's rows beside the others; every position run once per row."""
    passes = 1 + len(config.scales)
    return {"passes": passes, "forward_calls": passes, "positions": rows * config.context}


# The work of a drawing, by kind of prior (prior/kinds.py).
WORK = {"raster": raster_work, "masked": masked_work, "scales": scales_work}
