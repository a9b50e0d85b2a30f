"""Training loops for the tokenizer and the prior: progress, checkpoints, exact resume.

Both loops share one shape:

    for step in range(start, steps):
        batch  = data at (seed, step)          # stateless: resuming needs no loader state
        loss   = forward; backward; guard against NaN/inf; clip; AdamW
        every checkpoint_every steps: save (atomically)

Every random draw of a step (batch order, caption dropout, Gumbel noise, dead-code restarts)
comes from a generator seeded with (seed, step), so a run stopped at step k and resumed
computes exactly what an uninterrupted run would have. Ctrl-C asks the loop to stop after
the current step and write a checkpoint; a NaN or inf stops it without overwriting the last
good checkpoint.
"""
import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np

from tinytok import backend
from tinytok.training.checkpoint import check_params_match, load_checkpoint, save_checkpoint
from tinytok.errors import CheckpointError, ConfigError, TinytokError
from tinytok.training.optim import (adamw_init, adamw_state_to_device, adamw_step, clip_grad_norm,
                           has_nonfinite, lr_schedule, zeros_like_params)


class TrainingStopped(TinytokError):
    """Training stopped early (Ctrl-C); the checkpoint named in the message holds the work."""


class TrainingDiverged(TinytokError, FloatingPointError):
    """A loss or gradient became NaN or infinite; the last good checkpoint was kept."""


@dataclass
class TrainSettings:
    """What every training run is told; the defaults suit the reference models."""
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.1       # the cosine schedule ends at lr * min_lr_ratio
    weight_decay: float = 0.0
    clip: float = 1.0               # global gradient-norm clipping
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50

    def check(self):
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be a whole number >= 1, "
                                  f"got {value!r}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0, got {self.warmup!r}")
        if not 0 <= self.seed < 2 ** 32:
            raise ConfigError(f"seed must lie in [0, 2**32), got {self.seed!r}")
        return self

    def lr_at(self, step):
        warmup = min(self.warmup, max(self.steps - 1, 0))
        return lr_schedule(step + 1, self.lr, warmup, self.steps, self.lr * self.min_lr_ratio)


def step_rng(seed, step, stream):
    """The generator for one purpose (stream) at one step: same (seed, step), same draws."""
    return np.random.default_rng([seed, step, stream])


# ---------------------------------------------------------------- progress

class Progress:
    """One status line: a bar, the step, named figures and the speed.

    On a terminal the line redraws in place; elsewhere (logs, CI) a line is printed every
    log_every steps, so a log stays short but shows the run moving.
    """

    def __init__(self, total, start=0, log_every=50, stream=None, items_per_step=None,
                 item="tok"):
        self.total, self.start, self.log_every = total, start, log_every
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.items_per_step, self.item = items_per_step, item

    def line(self, step, figures):
        done = step / max(self.total, 1)
        bar = "#" * int(24 * done) + "-" * (24 - int(24 * done))
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else 0.0
        text = "  ".join(f"{k} {v}" for k, v in figures.items())
        speed = (f"{rate * self.items_per_step:,.0f} {self.item}/s" if self.items_per_step
                 else f"{rate:.1f} step/s")
        return f"[{bar}] {step}/{self.total}  {text}  {speed}  eta {eta:.0f}s"

    def update(self, step, figures, force=False):
        if self.tty:
            self.stream.write("\r" + self.line(step, figures) + "\033[K")
            self.stream.flush()
        elif force or step % self.log_every == 0 or step == self.total:
            self.stream.write(self.line(step, figures) + "\n")
            self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------- Ctrl-C between steps

@contextmanager
def stop_on_interrupt():
    """Turn the first Ctrl-C (SIGINT) into a request to stop after the current step.

    A step interrupted half-way (in the middle of an AdamW update, say) would leave the
    parameters inconsistent; finishing it first means the checkpoint is always a real step.
    A second Ctrl-C stops at once, as usual.
    """
    requested = {"stop": False}
    if not _can_handle_signals():
        yield requested
        return

    def handler(signum, frame):
        if requested["stop"]:
            raise KeyboardInterrupt
        requested["stop"] = True
        sys.stderr.write("\nstopping after this step and writing a checkpoint "
                         "(Ctrl-C again to quit at once)\n")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


def _can_handle_signals():
    import threading
    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------- the shared loop

def optimizer_step(params, grads, opt_state, settings, step, trainable=None):
    """Guard, clip and update: the end of every training step. Returns the gradient norm."""
    for what, tree in (("the gradient of", grads), ("the parameter", params)):
        bad = has_nonfinite(tree)
        if bad is not None:
            raise TrainingDiverged(f"{what} {bad} became NaN or infinite at step {step + 1}; "
                                   "the last good checkpoint was kept (try a lower --lr)")
    norm = clip_grad_norm(grads, settings.clip) if settings.clip else None
    if trainable is not None:
        params = {k: params[k] for k in trainable}
        grads = {k: grads[k] for k in trainable}
    adamw_step(params, grads, opt_state, settings.lr_at(step),
               weight_decay=settings.weight_decay)
    return norm


def check_finite_loss(loss, step):
    if not math.isfinite(loss):
        raise TrainingDiverged(f"the loss became {loss} at step {step + 1}; the last good "
                               "checkpoint was kept (try a lower --lr)")


def host_copy(tree):
    """A copy of nested dicts/lists of arrays, arrays copied to the host: a frozen snapshot."""
    if isinstance(tree, dict):
        return {k: host_copy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [host_copy(v) for v in tree]
    if hasattr(tree, "shape"):
        return np.array(backend.to_numpy(tree), copy=True)
    return tree


def run_loop(settings, start, step_fn, snapshot_fn, probe_fn, out, progress):
    """Run step_fn(step) -> figures for steps start..settings.steps-1, checkpointing to out.

    snapshot_fn(step_count) returns save_checkpoint's arguments for the state after that many
    steps, copied. A periodic snapshot is written only once the next step has gone through
    without a NaN or inf: weights that an exploding learning rate pushed far off are still
    finite, and only the next step shows it. Likewise probe_fn(step) computes one more loss
    before the final write. Returns the number of steps done; raises TrainingStopped after a
    Ctrl-C (the checkpoint is written first).
    """
    if start >= settings.steps:
        raise ConfigError(f"{out} already holds {start} steps and --steps is "
                          f"{settings.steps}: nothing to do (ask for more steps to go on)")
    done, pending = start, None
    with stop_on_interrupt() as interrupt:
        for step in range(start, settings.steps):
            figures = step_fn(step)            # raises TrainingDiverged on NaN or inf
            if pending is not None:            # the state before this step proved sound
                save_checkpoint(out, **pending)
                pending = None
            done = step + 1
            progress.update(done, figures)
            if done % settings.checkpoint_every == 0 and done < settings.steps:
                pending = snapshot_fn(done)
            if interrupt["stop"]:
                break
    progress.close()
    probe_fn(done)
    save_checkpoint(out, **snapshot_fn(done))
    if done < settings.steps:
        raise TrainingStopped(f"stopped at step {done} of {settings.steps}; the checkpoint "
                              f"{out} holds it: run the same command with --resume to go on")
    return done


def resume_state(path, kind, params, model_config):
    """Load a checkpoint to resume from: (step, params, optimizer state, extra).

    The checkpoint's model config must equal the one asked for: resuming a VQ run as EMA,
    say, would silently train something else.
    """
    ckpt = load_checkpoint(path, kind=kind)
    saved = ckpt.config.get("model") if isinstance(ckpt.config, dict) else None
    if saved != model_config:
        differ = sorted(k for k in set(model_config) | set(saved or {})
                        if (saved or {}).get(k) != model_config.get(k))
        raise CheckpointError(f"cannot resume {path}: it was trained with another model "
                              f"configuration (differs in {', '.join(differ)}); use the same "
                              "--config/--quantizer/--codes, or a new --out")
    check_params_match(ckpt.params, params, path)
    return ckpt.step, backend.params_to_device(ckpt.params), ckpt.optimizer_state, ckpt.extra


def settings_dict(settings):
    return asdict(settings)


def default_print(*args):
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the tokenizer

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
                    log=default_print, progress_stream=None):
    """Train a tokenizer on uint8 images (N, S, S, 3); checkpoints go to `out`.

    config: a TokenizerConfig (its quantizer picks VQ, EMA or Gumbel). Returns the history,
    a list of dicts with the figures logged along the way.
    """
    from tinytok.tokenizer.gumbel import gumbel_noise, temperature_at
    from tinytok.pipeline import images_to_model
    from tinytok.tokenizer.quantize import (code_counts, ema_init, ema_update, kmeans_init,
                                  restart_dead_codes, usage_stats)
    from tinytok.tokenizer.vqvae import config_dict, init_tokenizer_params, tokenizer_forward, \
        tokenizer_grads

    settings.check()
    recipe = recipe or TokenizerRecipe()
    xp = backend.xp()
    params = init_tokenizer_params(config, seed=settings.seed)
    uses_codebook_loss = config.quantizer in ("vq", "gumbel")
    trainable = [k for k in params if uses_codebook_loss or k != "quant.codebook"]
    start, history = 0, []
    ema_state, window = None, xp.zeros(config.num_codes, dtype=xp.int64)
    opt_state = adamw_init({k: params[k] for k in trainable})

    if resume and os.path.exists(out):
        start, params, state, extra = resume_state(out, "tokenizer", params,
                                                   config_dict(config))
        opt_state = adamw_state_to_device(state["adam"])
        if state.get("ema") is not None:
            ema_state = backend.params_to_device(state["ema"])
        window = xp.asarray(extra["window_counts"])
        history = extra["history"]
        log(f"resuming {out} at step {start} of {settings.steps}")
    elif config.quantizer != "gumbel":
        if recipe.kmeans_init:  # start every code on a real encoder output
            sample = images[step_rng(settings.seed, 0, 9).permutation(len(images))
                            [:recipe.kmeans_images]]
            z, _ = _encode_latents(sample, params, config)
            params["quant.codebook"][...] = kmeans_init(z, config.num_codes, settings.seed)
        if config.quantizer == "ema":
            ema_state = ema_init(params["quant.codebook"])

    def snapshot(step_count):
        return host_copy(dict(
            kind="tokenizer", params=params, step=step_count,
            config={"model": config_dict(config), "train": settings_dict(settings),
                    "recipe": asdict(recipe)},
            optimizer_state={"adam": opt_state, "ema": ema_state},
            extra={"history": history, "window_counts": window}))

    def batch(step):
        """The step's images, Gumbel temperature and noise (None for VQ)."""
        from tinytok.data.datasets import batch_indices
        idx = batch_indices(len(images), settings.batch_size, settings.seed, step)
        tau, noise = 1.0, None
        if config.quantizer == "gumbel":
            tau = temperature_at(step, settings.steps, recipe.tau_start, recipe.tau_end)
            g = config.grid_size
            noise = xp.asarray(gumbel_noise((len(idx), config.num_codes, g, g),
                                            step_rng(settings.seed, step, 1)))
        return images_to_model(images[idx]), tau, noise

    def forward(step):  # the loss alone: run_loop's last check before the final write
        x, tau, noise = batch(step)
        check_finite_loss(float(tokenizer_forward(x, params, config, tau, noise)[0]["loss"]),
                          step)

    def step_fn(step):
        nonlocal window
        grads = zeros_like_params(params)
        x, tau, noise = batch(step)
        out_dict = tokenizer_grads(x, params, config, grads, tau, noise)  # on every core
        loss = float(out_dict["loss"])
        check_finite_loss(loss, step)
        optimizer_step(params, grads, opt_state, settings, step, trainable)
        if ema_state is not None:
            ema_update(params["quant.codebook"], ema_state, out_dict["z"], out_dict["ids"],
                       recipe.ema_decay)
        window = window + code_counts(out_dict["ids"], config.num_codes)
        figures = {"loss": f"{loss:.4f}",
                   "psnr": f"{10 * math.log10(1 / max(float(out_dict['recon_loss']), 1e-10)):.2f}"}
        if config.quantizer == "gumbel":
            figures["tau"] = f"{tau:.3f}"
        window_len = recipe.restart_every or recipe.stats_every  # steps of usage counting
        if window_len and (step + 1) % window_len == 0:
            stats = usage_stats(window)
            figures.update(usage=f"{stats['usage']:.0%}", ppl=f"{stats['perplexity']:.0f}")
            if recipe.restart_every and config.quantizer != "gumbel":
                restarted = restart_dead_codes(params["quant.codebook"], window, out_dict["z"],
                                               seed=[settings.seed, step, 2],
                                               ema_state=ema_state)
                figures["restarted"] = restarted
            history.append({"step": step + 1, "loss": loss, **stats})
            window = xp.zeros_like(window)
        return figures

    progress = Progress(settings.steps, start, settings.log_every, progress_stream)
    run_loop(settings, start, step_fn, snapshot, forward, out, progress)
    return history


def _encode_latents(images, params, config, batch_size=256):
    """Encoder outputs z (N, D, g, g) for uint8 images, in batches."""
    from tinytok.pipeline import images_to_model
    from tinytok.tokenizer.vqvae import encoder_forward
    xp = backend.xp()
    zs = [encoder_forward(images_to_model(images[i:i + batch_size]), params, config,
                          keep_cache=False)[0]
          for i in range(0, len(images), batch_size)]
    return xp.concatenate(zs), None


# ---------------------------------------------------------------- the prior

@dataclass
class PriorData:
    """What the prior learns from: token grids of images and their captions (word ids)."""
    codes: np.ndarray          # (N, g, g) int64 codebook ids
    captions: list             # N lists of word ids
    vocab: object              # tinytok.prior.vocab.Vocab


def train_prior(data, config, settings, out, resume=False, p_caption_layout=0.5,
                p_drop_caption=0.1, p_word_noise=0.0, log=default_print, progress_stream=None):
    """Train the prior on PriorData; checkpoints go to `out`. Returns the loss history."""
    from tinytok.prior.gpt import config_dict, gpt_loss_forward, gpt_loss_grads, init_gpt_params
    from tinytok.data.datasets import batch_indices
    from tinytok.prior.vocab import make_training_batch

    settings.check()
    xp = backend.xp()
    params = init_gpt_params(config, seed=settings.seed)
    opt_state = adamw_init(params)
    start, history = 0, []
    if resume and os.path.exists(out):
        start, params, state, extra = resume_state(out, "prior", params, config_dict(config))
        opt_state = adamw_state_to_device(state["adam"])
        history = extra["history"]
        log(f"resuming {out} at step {start} of {settings.steps}")
    running = {"loss": None}

    def snapshot(step_count):
        return host_copy(dict(
            kind="prior", params=params, step=step_count,
            config={"model": config_dict(config), "vocab": data.vocab.to_dict(),
                    "train": settings_dict(settings),
                    "layouts": {"p_caption_layout": p_caption_layout,
                                "p_drop_caption": p_drop_caption,
                                "p_word_noise": p_word_noise}},
            optimizer_state={"adam": opt_state}, extra={"history": history}))

    def batch(step):
        idx = batch_indices(len(data.codes), settings.batch_size, settings.seed, step)
        inputs, targets = make_training_batch(
            data.vocab, [data.captions[i] for i in idx], data.codes[idx],
            step_rng(settings.seed, step, 3), config.context, p_caption_layout, p_drop_caption,
            p_word_noise)
        return xp.asarray(inputs), xp.asarray(targets)

    def forward(step):  # the loss alone: run_loop's last check before the final write
        check_finite_loss(float(gpt_loss_forward(*batch(step), params, config)[0]), step)

    def step_fn(step):
        grads = zeros_like_params(params)
        loss = gpt_loss_grads(*batch(step), params, config, grads)         # on every core
        check_finite_loss(loss, step)
        optimizer_step(params, grads, opt_state, settings, step)
        # an exponential moving average reads better than the noisy per-batch loss
        running["loss"] = loss if running["loss"] is None else 0.95 * running["loss"] + 0.05 * loss
        if (step + 1) % settings.log_every == 0:
            history.append({"step": step + 1, "loss": loss})
        return {"loss": f"{running['loss']:.4f}", "lr": f"{settings.lr_at(step):.1e}"}

    progress = Progress(settings.steps, start, settings.log_every, progress_stream,
                        items_per_step=settings.batch_size * config.context)
    run_loop(settings, start, step_fn, snapshot, forward, out, progress)
    return history
