"""The training loop both trainers share: settings, Ctrl-C between steps, NaN guards, resume.

    for step in range(start, steps):
        batch  = data at (seed, step)          # stateless: resuming needs no loader state
        loss   = forward; backward; guard against NaN/inf; clip; AdamW
        every checkpoint_every steps: save (atomically)

Every random draw of a step (batch order, caption dropout, Gumbel noise, dead-code restarts)
comes from a generator seeded with (seed, step), so a run stopped at step k and resumed
computes exactly what an uninterrupted run would have. Ctrl-C asks the loop to stop after
the current step and write a checkpoint; a NaN or inf stops it without overwriting the last
good checkpoint. The trainers themselves are tokenizer_trainer.py and prior_trainer.py.

On several processes (tinytok.distributed) every process runs this loop in step: each
step's all-reduce keeps them together, process 0 alone shows progress and writes the
checkpoints, and whether to stop after a step (a Ctrl-C reaching any process) is agreed
on by all, so that none waits for ever for a step the others will not take.
"""
import math
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from tinytok import backend
from tinytok.distributed import SINGLE
from tinytok.errors import CheckpointError, ConfigError, TinytokError
from tinytok.ops.checks import require_positive_int
from tinytok.training.checkpoint import check_params_match, load_checkpoint, save_checkpoint
from tinytok.training.optim import adamw_step, clip_grad_norm, has_nonfinite, lr_schedule


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
            require_positive_int(name.replace("_", "-"), getattr(self, name))
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


# ---------------------------------------------------------------- Ctrl-C between steps

@contextmanager
def stop_on_interrupt(world=SINGLE):
    """Turn the first Ctrl-C (SIGINT) into a request to stop after the current step.

    A step interrupted half-way (in the middle of an AdamW update, say) would leave the
    parameters inconsistent; finishing it first means the checkpoint is always a real step.
    A second Ctrl-C stops at once, as usual.
    """
    requested = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield requested                 # only the main thread may handle signals
        return

    def handler(signum, frame):
        if requested["stop"]:
            raise KeyboardInterrupt
        requested["stop"] = True
        if world.is_root:
            sys.stderr.write("\nstopping after this step and writing a checkpoint "
                             "(Ctrl-C again to quit at once)\n")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------- one step's end

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


def settings_dict(settings):
    return asdict(settings)


# ---------------------------------------------------------------- the loop

def run_loop(settings, start, step_fn, snapshot_fn, probe_fn, out, progress, world=SINGLE):
    """Run step_fn(step) -> figures for steps start..settings.steps-1, checkpointing to out.

    snapshot_fn(step_count) returns save_checkpoint's arguments for the state after that many
    steps, copied. A periodic snapshot is written only once the next step has gone through
    without a NaN or inf: weights that an exploding learning rate pushed far off are still
    finite, and only the next step shows it. Likewise probe_fn(step) computes one more loss
    before the final write. progress (a training.progress.Progress) shows each step's
    figures and is closed here. Returns the number of steps done; raises TrainingStopped
    after a Ctrl-C (the checkpoint is written first). world: the processes training
    together (tinytok.distributed); process 0 writes, all stop after the same step.
    """
    if start >= settings.steps:
        progress.close()
        raise ConfigError(f"{out} already holds {start} steps and --steps is "
                          f"{settings.steps}: nothing to do (ask for more steps to go on)")
    done, pending = start, None
    with progress, stop_on_interrupt(world) as interrupt:
        for step in range(start, settings.steps):
            figures = step_fn(step)            # raises TrainingDiverged on NaN or inf
            if pending is not None:            # the state before this step proved sound
                save_on_root(world, out, pending)
                pending = None
            done = step + 1
            progress.update(done, figures)
            if done % settings.checkpoint_every == 0 and done < settings.steps:
                pending = snapshot_fn(done) if world.is_root else {}
            if world.anyone(interrupt["stop"]):
                break
    probe_fn(done)
    save_on_root(world, out, snapshot_fn(done) if world.is_root else {})
    if done < settings.steps:
        raise TrainingStopped(f"stopped at step {done} of {settings.steps}; the checkpoint "
                              f"{out} holds it: run the same command with --resume to go on")
    return done


def save_on_root(world, out, snapshot):
    """save_checkpoint(out, **snapshot) on process 0; then every process learns whether it
    worked, and all raise if not (the others would otherwise wait for process 0 for ever)."""
    failure = None
    if world.is_root:
        try:
            save_checkpoint(out, **snapshot)
        except CheckpointError as e:
            failure = e
    if world.anyone(failure is not None):
        raise failure or CheckpointError(f"process 0 could not write {out}")


def quiet_unless_root(world, log, progress_stream):
    """(log, progress_stream) for this process: as given on process 0, silent elsewhere
    (K processes printing the same lines would only repeat them)."""
    if world.is_root:
        return log, progress_stream
    return (lambda *args: None), _Silent()


class _Silent:
    """A progress stream that shows nothing (no terminal, so Progress writes plain lines)."""

    def write(self, text):
        pass

    def flush(self):
        pass

    def isatty(self):
        return False


# ---------------------------------------------------------------- resuming

class Resumed(NamedTuple):
    """What a checkpoint gives a resumed run (params on the active backend)."""
    step: int
    params: dict
    optimizer_state: dict
    extra: dict
    config: dict            # the config the run was saved with: model, train, ...


def resume_state(path, kind, params, model_config, check_params=check_params_match):
    """Load a checkpoint to resume from, as Resumed.

    The checkpoint's model config must equal the one asked for: resuming a VQ run as EMA,
    say, would silently train something else. check_params(saved, params, path) refuses
    saved parameters that are not the model's (a trainer may give one that says more).
    """
    ckpt = load_checkpoint(path, kind=kind)
    config = ckpt.config if isinstance(ckpt.config, dict) else {}
    saved = config.get("model")
    if saved != model_config:
        differ = sorted(k for k in set(model_config) | set(saved or {})
                        if (saved or {}).get(k) != model_config.get(k))
        raise CheckpointError(f"cannot resume {path}: it was trained with another model "
                              f"configuration (differs in {', '.join(differ)}); use the same "
                              "--config/--quantizer/--codes/--levels, or a new --out")
    check_params(ckpt.params, params, path)
    return Resumed(ckpt.step, backend.params_to_device(ckpt.params), ckpt.optimizer_state,
                   ckpt.extra, config)


# Settings that change nothing a resumed run computes: how often it saves and logs, and the
# codebook's k-means start (made before step 1, so already inside any checkpoint).
NO_EFFECT_ON_RESUME = {"checkpoint_every", "log_every", "kmeans_init", "kmeans_images"}


def resume_changes(saved, now, start, planned_over_steps="the learning-rate schedule"):
    """Lines saying how resuming with config `now` departs from what `saved` was planned as.

    saved, now: checkpoint configs ({"train": settings, "recipe": ..., "layouts": ...}).
    None when nothing that matters changed: then the resumed run is exact. planned_over_steps
    names what depends on the total number of steps (the schedule; the Gumbel temperature).
    """
    lines = []
    planned, steps = saved.get("train", {}).get("steps"), now["train"]["steps"]
    if planned is not None and planned != steps:
        lines.append(f"resuming a run planned for {planned} steps with --steps {steps}: "
                     f"{planned_over_steps} is re-planned over {steps} steps from step "
                     f"{start}, so this will not match a run planned for {steps} from the start")
    changed = [f"{name} {old!r} -> {now[part][name]!r}"
               for part in ("train", "recipe", "layouts") if part in now
               for name, old in saved.get(part, {}).items()
               if name != "steps" and name not in NO_EFFECT_ON_RESUME
               and name in now[part] and now[part][name] != old]
    if changed:
        lines.append(f"resuming with settings other than the checkpoint's ({', '.join(changed)}"
                     f"): they apply from step {start} on, so this will not match an "
                     "uninterrupted run with either")
    return lines or None


def announce_resume(out, resumed, now, settings, log, planned_over_steps=None):
    """Log the resume, and plainly whatever makes it differ from an uninterrupted run."""
    log(f"resuming {out} at step {resumed.step} of {settings.steps}")
    extra = {} if planned_over_steps is None else {"planned_over_steps": planned_over_steps}
    for line in resume_changes(resumed.config, now, resumed.step, **extra) or ():
        log(line)
