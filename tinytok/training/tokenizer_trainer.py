"""Training the tokenizer: the VQ-VAE (VQ, EMA, Gumbel, FSQ) on uint8 pictures, with codebook care.

    train_tokenizer(images, tokenizer_config("vqvae-tiny"), TrainSettings(steps=300),
                    "tokenizer.npz", TokenizerRecipe(restart_every=50))

Each step draws its batch and Gumbel noise from (seed, step), runs tokenizer_grads on every
core and updates with AdamW; the EMA codebook follows the encoder outputs it was given, and
every restart_every steps the codes nobody used lately are moved onto encoder outputs
(dead-code restarts). FSQ has no codebook, so none of that care applies to it. The loop
itself (checkpoints, Ctrl-C, NaN guards) is loop.run_loop.

On several processes (world, tinytok.distributed) each takes its share of every batch; the
gradients, the losses and the code counts (the EMA's and the usage window's) are summed in
one all-reduce per step; the k-means start and the restarts are made on process 0, from its
encoder outputs, and broadcast.
"""
import math
import os
from dataclasses import asdict, dataclass

from tinytok import backend
from tinytok.data.datasets import batch_indices
from tinytok.data.images import images_to_model
from tinytok.distributed import SINGLE, batch_share, share_from_root, sum_over_processes
from tinytok.parallel import for_batch_parts
from tinytok.tokenizer.codebook import code_counts, kmeans_init, restart_dead_codes, usage_stats
from tinytok.tokenizer.gumbel import gumbel_noise, temperature_at
from tinytok.tokenizer.quantize import ema_apply, ema_init, ema_statistics
from tinytok.tokenizer.vqvae import (config_dict, encoder_forward, init_tokenizer_params,
                                     tokenizer_forward)
from tinytok.training.loop import (announce_resume, check_finite_loss, host_copy,
                                   optimizer_step, quiet_unless_root, resume_state, run_loop,
                                   settings_dict, step_rng)
from tinytok.training.optim import adamw_init, adamw_state_to_device, zeros_like_params
from tinytok.training.progress import Progress, print_to_stderr
from tinytok.training.steps import tokenizer_grads


@dataclass
class TokenizerRecipe:
    """Codebook care for VQ and EMA: k-means start, dead-code restarts, EMA decay."""
    kmeans_init: bool = True        # start the codebook from k-means of encoder outputs
    kmeans_images: int = 1024       # images encoded for the k-means start
    restart_every: int = 100        # look for dead codes every this many steps (0: never)
    stats_every: int = 100          # usage window when restarts are off
    ema_decay: float = 0.99
    tau_start: float = 1.0          # gumbel only: temperature annealed from start to end
    tau_end: float = 1 / 16


def train_tokenizer(images, config, settings, out, recipe=None, resume=False,
                    log=print_to_stderr, progress_stream=None, world=SINGLE):
    """Train a tokenizer on uint8 images (N, S, S, 3); checkpoints go to `out`.

    config: a TokenizerConfig (its quantizer picks VQ, EMA, Gumbel or FSQ). log(text) gets the
    messages, progress_stream the progress (default stderr). world: the processes that
    train together (tinytok.distributed; every one calls this with the same arguments).
    Returns the history, a list of dicts with the figures logged along the way.
    """
    settings.check()
    lo, hi = batch_share(settings.batch_size, world)   # this process's rows of each batch
    log, progress_stream = quiet_unless_root(world, log, progress_stream)
    recipe = recipe or TokenizerRecipe()
    xp = backend.xp()
    params = init_tokenizer_params(config, seed=settings.seed)
    uses_codebook_loss = config.quantizer in ("vq", "gumbel")
    trainable = [k for k in params if uses_codebook_loss or k != "quant.codebook"]
    if config.quantizer == "fsq" and (recipe.kmeans_init or recipe.restart_every):
        # FSQ's codes are a fixed grid, not a parameter: nothing to start or to move
        log("fsq has no codebook: skipping the k-means start and dead-code restarts")
    start, history = 0, []
    ema_state, window = None, xp.zeros(config.num_codes, dtype=xp.int64)
    opt_state = adamw_init({k: params[k] for k in trainable})
    run_config = {"model": config_dict(config), "train": settings_dict(settings),
                  "recipe": asdict(recipe)}

    if resume and os.path.exists(out):
        resumed = resume_state(out, "tokenizer", params, config_dict(config))
        announce_resume(out, resumed, run_config, settings, log,
                        "the learning-rate schedule" + (" and the Gumbel temperature"
                                                        if config.quantizer == "gumbel" else ""))
        start, params, history = resumed.step, resumed.params, resumed.extra["history"]
        opt_state = adamw_state_to_device(resumed.optimizer_state["adam"])
        if resumed.optimizer_state.get("ema") is not None:
            ema_state = backend.params_to_device(resumed.optimizer_state["ema"])
        window = xp.asarray(resumed.extra["window_counts"])
    elif config.quantizer in ("vq", "ema"):
        if recipe.kmeans_init:  # start every code on a real encoder output
            if world.is_root:   # decided once: k-means amplifies the last bits of z
                sample = images[step_rng(settings.seed, 0, 9).permutation(len(images))
                                [:recipe.kmeans_images]]
                z = encode_latents(sample, params, config)
                params["quant.codebook"][...] = kmeans_init(z, config.num_codes, settings.seed)
            share_from_root(world, {"codebook": params["quant.codebook"]})
        if config.quantizer == "ema":
            ema_state = ema_init(params["quant.codebook"])

    def snapshot(step_count):
        return host_copy(dict(
            kind="tokenizer", params=params, step=step_count, config=run_config,
            optimizer_state={"adam": opt_state, "ema": ema_state},
            extra={"history": history, "window_counts": window}))

    share = (hi - lo) / settings.batch_size   # of every batch's mean loss

    def batch(step):
        """This process's rows of the step's images, Gumbel temperature and noise (None for
        VQ): drawn for the whole batch from (seed, step), then cut to rows lo..hi-1."""
        idx = batch_indices(len(images), settings.batch_size, settings.seed, step)
        tau, noise = 1.0, None
        if config.quantizer == "gumbel":
            tau = temperature_at(step, settings.steps, recipe.tau_start, recipe.tau_end)
            g = config.grid_size
            noise = xp.asarray(gumbel_noise((len(idx), config.num_codes, g, g),
                                            step_rng(settings.seed, step, 1))[lo:hi])
        return images_to_model(images[idx[lo:hi]]), tau, noise

    def forward(step):  # the loss alone: run_loop's last check before the final write
        x, tau, noise = batch(step)
        loss = {"loss": xp.asarray(tokenizer_forward(x, params, config, tau, noise)[0]["loss"]
                                   * share)}
        check_finite_loss(float(sum_over_processes(world, loss)["loss"]), step)

    def step_fn(step):
        nonlocal window
        grads = zeros_like_params(params)
        x, tau, noise = batch(step)
        out_dict = tokenizer_grads(x, params, config, grads, tau, noise,
                                   of_batch=settings.batch_size)      # on every core
        summed = sum_over_processes(world, batch_sums(grads, out_dict))  # one all-reduce
        loss = float(summed["loss"])
        check_finite_loss(loss, step)
        optimizer_step(params, grads, opt_state, settings, step, trainable)
        if ema_state is not None:
            ema_apply(params["quant.codebook"], ema_state, summed["ema.counts"],
                      summed["ema.sums"], recipe.ema_decay)
        window = window + summed["code_counts"]
        figures = {"loss": f"{loss:.4f}",
                   "psnr": f"{10 * math.log10(1 / max(float(summed['recon_loss']), 1e-10)):.2f}"}
        if config.quantizer == "gumbel":
            figures["tau"] = f"{tau:.3f}"
        window_len = recipe.restart_every or recipe.stats_every  # steps of usage counting
        if window_len and (step + 1) % window_len == 0:
            stats = usage_stats(window)
            figures.update(usage=f"{stats['usage']:.0%}", ppl=f"{stats['perplexity']:.0f}")
            if recipe.restart_every and config.quantizer in ("vq", "ema"):
                figures["restarted"] = restart_on_root(world, params["quant.codebook"],
                                                       window, out_dict["z"],
                                                       [settings.seed, step, 2], ema_state)
            history.append({"step": step + 1, "loss": loss, **stats})
            window = xp.zeros_like(window)
        return figures

    def batch_sums(grads, out_dict):
        """Everything of this step that is a sum over the batch's examples, as one flat dict
        of arrays: the gradients, this share's part of the losses, the code counts."""
        sums = {f"grad.{k}": g for k, g in grads.items()}
        for key in ("loss", "recon_loss"):  # 0-d arrays, which the all-reduce writes into
            sums[key] = xp.asarray(out_dict[key] * share)
        if ema_state is not None:
            sums["ema.counts"], sums["ema.sums"] = ema_statistics(
                out_dict["z"], out_dict["ids"], config.num_codes, params["quant.codebook"].dtype)
        sums["code_counts"] = code_counts(out_dict["ids"], config.num_codes)
        return sums

    progress = Progress(settings.steps, start, "tokenizer", settings.log_every,
                        progress_stream, items_per_step=settings.batch_size, item="img")
    run_loop(settings, start, step_fn, snapshot, forward, out, progress, world)
    return history


def restart_on_root(world, codebook, window, z, seed, ema_state):
    """Dead-code restarts decided on process 0 (from its encoder outputs z) and broadcast
    with the EMA statistics they reset. Returns the number restarted (None elsewhere)."""
    restarted = None
    if world.is_root:
        restarted = restart_dead_codes(codebook, window, z, seed=seed, ema_state=ema_state)
    moved = {"codebook": codebook}
    if ema_state is not None:
        moved.update(cluster_size=ema_state["cluster_size"], embed_sum=ema_state["embed_sum"])
    share_from_root(world, moved)
    return restarted


def encode_latents(images, params, config, batch_size=256):
    """Encoder outputs z (N, D, g, g) for uint8 images, in batches (for the k-means start),
    each batch in parts on the cores (tinytok.parallel)."""
    xp = backend.xp()

    def encode(x):
        parts = for_batch_parts(lambda lo, hi: encoder_forward(x[lo:hi], params, config,
                                                               keep_cache=False)[0], len(x))
        return xp.concatenate(parts)

    return xp.concatenate([encode(images_to_model(images[i:i + batch_size]))
                           for i in range(0, len(images), batch_size)])
