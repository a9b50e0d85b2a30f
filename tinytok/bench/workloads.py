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
from tinytok.prior.sample import continue_sequences
from tinytok.prior.settings import PLAIN
from tinytok.tokenizer.discriminator import (DiscriminatorConfig, init_discriminator_params,
                                             is_discriminator_param)
from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_config
from tinytok.training.adversarial import adversarial_grads
from tinytok.training.optim import adamw_init, adamw_step, clip_grad_norm, zeros_like_params
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

