"""What the benchmark runs: closures doing one training step, encoding or sampling, on fixed
random weights and inputs at the sizes of tinytok.bench.options, each with its FLOPs
(tinytok/bench/flops.py). tests/peers/torch_peer.py times the same closures beside PyTorch.
"""
from tinytok import backend
from tinytok.bench.flops import (gpt_train_flops, vqvae_flops, vqvae_gan_train_flops,
                                 vqvae_train_flops)
from tinytok.parallel import blas_threads_for_small_products
from tinytok.pipeline import Tokenizer
from tinytok.prior.gpt import gpt_config, init_gpt_params
from tinytok.prior.kinds import PRIOR_KINDS, model_vocab_size
from tinytok.prior.layouts import image_prompt, unconditional_prompt
from tinytok.prior.masked import masked_batch, still_masked
from tinytok.prior.sample import continue_sequences
from tinytok.prior.settings import PLAIN, SAMPLING
from tinytok.prior.vocab import EXAMPLE_CAPTION
from tinytok.tokenizer.discriminator import (DiscriminatorConfig, init_discriminator_params,
                                             is_discriminator_param)
from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_config
from tinytok.training.adversarial import adversarial_grads
from tinytok.training.optim import adamw_init, adamw_step, clip_grad_norm, zeros_like_params
from tinytok.training.prior_data import shapes_vocab
from tinytok.training.steps import gpt_loss_grads, tokenizer_grads


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


def vqvae_gan_train_step(sizes, seed=0):
    """A closure running one adversarial vqvae step (the tokenizer against its patch
    discriminator, VQGAN) on fixed random images, and its FLOPs: as TokenizerRun.step does
    it past gan_start, both models' gradients in two passes over the batch parts, then
    each model clipped and updated by an AdamW of its own."""
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
                                lambda arrays: arrays)           # one process: no sums
        for mine, mine_grads, state in models:
            clip_grad_norm(mine_grads, 1.0)
            adamw_step(mine, mine_grads, state, lr=3e-4)
        return out["loss"]

    return step, vqvae_gan_train_flops(config, disc.channels, sizes["vq_batch"])


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


# ---------------------------------------------------------------- the masked prior (MaskGIT)

def shapes_prior(sizes, kind, seed=0):
    """(params, config, vocab): a fresh gpt of sizes["gpt"] over the shapes vocabulary
    (sizes' shapes_codes and shapes_grid), context gpt_T, with the kind's extra tokens (the
    masked prior's <mask>). Its weights are random: the work of a training step or of a
    drawing does not depend on them (a raster drawing writes exactly one grid, a masked
    one takes exactly its steps)."""
    vocab = shapes_vocab(sizes["shapes_codes"], sizes["shapes_grid"])
    config = gpt_config(sizes["gpt"], vocab_size=model_vocab_size(kind, vocab),
                        context=sizes["gpt_T"])
    return init_gpt_params(config, seed=seed), config, vocab


def masked_train_step(sizes, seed=0):
    """A closure running one masked prior's training step (train_prior(kind="masked"): full
    attention, the loss on the masked image tokens only) on a fixed masked_batch of random
    codes under one caption, and its FLOPs (the same products as a raster step's)."""
    params, config, _ = shapes_prior(sizes, "masked", seed)
    grads, state = zeros_like_params(params), adamw_init(params)
    ids, targets = (backend.to_device(a) for a in masked_example_batch(sizes, seed))

    def step():
        for g in grads.values():
            g[...] = 0
        loss = gpt_loss_grads(ids, targets, params, config, grads, mask="full")
        clip_grad_norm(grads, 1.0)
        adamw_step(params, grads, state, lr=3e-4, weight_decay=0.1)
        return loss

    return step, gpt_train_flops(config, sizes["gpt_batch"], config.context)


def masked_example_batch(sizes, seed=0):
    """The masked training step's batch, host int64 (inputs, targets), each (gpt_batch,
    gpt_T): random codes under one caption, through masked_batch (a share of the image
    tokens <mask>, only those targets; the caption dropped with p 0.1)."""
    vocab = shapes_vocab(sizes["shapes_codes"], sizes["shapes_grid"])
    rng = backend.rng(seed)
    B, g = sizes["gpt_batch"], vocab.grid_size
    codes = rng.integers(0, vocab.num_codes, (B, g, g))
    captions = [vocab.encode_text(EXAMPLE_CAPTION)] * B
    return masked_batch(vocab, captions, codes, rng, sizes["gpt_T"])


def drawing(sizes, kind, steps=None, seed=0):
    """A closure drawing sizes["draw_n"] pictures of one caption with a fresh prior of that
    kind, as Pipeline.generate_codes does it (the kind's draw, the recommended sampling
    with its guidance, BLAS threads for small products; no reranking), steps passes for a
    masked prior (default: the sampling's), and its work: drawing_work."""
    params, config, vocab = shapes_prior(sizes, kind, seed)
    sampling = SAMPLING if steps is None else SAMPLING.but(steps=steps)
    draw = PRIOR_KINDS[kind].draw

    def sample():
        with blas_threads_for_small_products():
            return draw(params, config, vocab, EXAMPLE_CAPTION, sizes["draw_n"],
                        backend.rng(seed), sampling)

    return sample, drawing_work(kind, vocab, config.context, sampling.steps,
                                sampling.cfg_scale != 1.0, EXAMPLE_CAPTION)


def drawing_work(kind, vocab, context, steps, guided, caption):
    """How much model a picture of caption takes: {"passes", "forward_calls", "positions"}.

    passes: the runs of the model a picture waits for, one after the other (its latency
    counted in runs). A raster prior: the prompt, whose last logits draw the first code,
    then one run per further code (image_len in all; the last code is never fed back). A
    masked prior: one run per step while codes are left to fill in (steps, at most
    image_len). forward_calls: the calls of the model, guidance's unconditional rows
    included: a raster prior runs them as a second stream (twice the passes), a masked
    prior beside the conditional rows in the same call (the passes, each with twice the
    rows). positions: the token positions run through the model per picture, guidance's
    row included: a raster step runs one new token (its KV cache holds the rest), a masked
    step the whole context.
    """
    return WORK[kind](vocab, context, steps, 2 if guided else 1, caption)


def raster_work(vocab, context, steps, rows, caption):
    """A raster prior's: one pass per code, its guidance a second stream of prompts."""
    L = vocab.image_len
    prompts = [len(image_prompt(vocab, caption, context))]
    prompts += [len(unconditional_prompt(vocab))] if rows == 2 else []
    return {"passes": L, "forward_calls": rows * L,
            "positions": sum(p + L - 1 for p in prompts)}


def masked_work(vocab, context, steps, rows, caption):
    """A masked prior's: one pass per step while codes are left, the whole context each."""
    L = vocab.image_len
    passes, unknown = 0, L
    for step in range(steps):                            # fill_in's loop from a masked grid
        if unknown == 0:
            break
        passes += 1
        unknown = max(min(still_masked(L, step, steps), unknown - 1), 0)
    return {"passes": passes, "forward_calls": passes, "positions": rows * passes * context}


# The work of a drawing, by kind of prior (prior/kinds.py).
WORK = {"raster": raster_work, "masked": masked_work}
