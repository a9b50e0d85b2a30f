"""Optimizers on flat param dicts: AdamW, gradient clipping, a learning-rate schedule.

Everything here works on dicts ``{name: array}``: every model keeps its parameters in one
flat dict with dotted names ("enc.conv1.w"), and its gradients in another with the same
keys, so none of it needs to know a model's structure. Arrays may be NumPy or CuPy; each
function takes its array module from the arrays it is given.

A training step reads:

    state = adamw_init(params)                         # once
    ...
    if has_nonfinite(grads) is None:                   # a numerical guard
        clip_grad_norm(grads, max_norm=1.0)
        lr = lr_schedule(step, 3e-4, warmup_steps=100, total_steps=10_000)
        adamw_step(params, grads, state, lr, weight_decay=0.1)

The optimizer state is a plain dict ``{"m": {name: array}, "v": {name: array}, "t": int}``,
so ``tinytok.training.checkpoint.save_checkpoint(..., optimizer_state=state)`` stores it as it is.
"""
import math

import numpy as np

from tinytok import backend
from tinytok.errors import ConfigError, DTypeError, ShapeError
from tinytok.ops.checks import is_finite_number, require_positive_int


# ----------------------------------------------------------------------------------------
# Gradients

def zeros_like_params(params):
    """A grads dict of zeros, one per parameter: zeroed once per step, then every backward
    pass adds (+=) into it, which is what lets a weight used twice collect both gradients."""
    return {k: backend.get_array_module(p).zeros_like(p) for k, p in params.items()}


# ----------------------------------------------------------------------------------------
# AdamW

def default_decay_filter(name, p):
    """Decay weight matrices and conv kernels (ndim >= 2), not biases or norm gains.

    Shrinking a bias or a LayerNorm gain towards zero does not regularise anything useful
    and can hurt, which is why nanoGPT and most recipes exempt them.
    """
    return p.ndim >= 2


def adamw_init(params):
    """A fresh AdamW state: first and second moments at zero, step counter t = 0.

    Returns {"m": {name: zeros like p}, "v": {name: zeros like p}, "t": 0}; the moments
    have each parameter's shape, dtype and array module (NumPy or CuPy).
    """
    zeros = {k: backend.get_array_module(p).zeros_like(p) for k, p in params.items()}
    return {"m": zeros, "v": {k: z.copy() for k, z in zeros.items()}, "t": 0}


def adamw_state_to_device(state):
    """The state with m and v moved to the active backend (after load_checkpoint)."""
    return {**state, "m": backend.params_to_device(state["m"]),
            "v": backend.params_to_device(state["v"])}


def adamw_step(params, grads, state, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
               decay_filter=None):
    """One AdamW update of every parameter, in place (Loshchilov & Hutter 2019).

    params, grads: dicts with the same keys and matching shapes.
    state: from adamw_init (or a checkpoint); its m, v and t are updated in place.
    lr: the learning rate of this step (e.g. from lr_schedule).
    decay_filter(name, array) -> bool picks the parameters that get weight decay
    (default: default_decay_filter, arrays with ndim >= 2).

    With t the step count (1 for the first update) and g the gradient:

        p  <- p - lr * weight_decay * p                  (decoupled: not through g)
        m  <- beta1 m + (1 - beta1) g
        v  <- beta2 v + (1 - beta2) g^2
        p  <- p - lr * m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - beta1^t),
                                                     v_hat = v / (1 - beta2^t)

    the same equations, in the same order, as torch.optim.AdamW.
    """
    beta1, beta2 = _check_adamw_args(lr, betas, eps, weight_decay)
    _check_keys(params, grads, state)
    decay_filter = decay_filter or default_decay_filter
    state["t"] = t = int(state["t"]) + 1
    # m and v start at zero, so early averages are too small by a factor (1 - beta^t);
    # dividing by it ("bias correction") undoes that. Folded into two scalars here.
    step_size = lr / (1.0 - beta1 ** t)
    sqrt_bc2 = math.sqrt(1.0 - beta2 ** t)
    for name, p in params.items():
        shrink = lr * weight_decay if weight_decay and decay_filter(name, p) else 0.0
        _adamw_update(p, grads[name], state["m"][name], state["v"][name], beta1, beta2, eps,
                      shrink, step_size, sqrt_bc2)


def _adamw_update(p, g, m, v, beta1, beta2, eps, shrink, step_size, sqrt_bc2):
    """Update one parameter p and its moments m, v in place, with one scratch array.

    This runs for every parameter on every step, so it avoids temporaries: each line is
    an in-place op or writes into `buf`, the one array allocated here.
    """
    xp = backend.get_array_module(p)
    if shrink:
        p *= 1.0 - shrink                       # decoupled weight decay: p -= lr*wd*p
    buf = xp.empty_like(p)
    xp.multiply(g, 1.0 - beta1, out=buf)
    m *= beta1
    m += buf                                    # m = beta1 m + (1 - beta1) g
    xp.multiply(g, g, out=buf)
    buf *= 1.0 - beta2
    v *= beta2
    v += buf                                    # v = beta2 v + (1 - beta2) g^2
    xp.sqrt(v, out=buf)
    buf /= sqrt_bc2
    buf += eps                                  # sqrt(v_hat) + eps
    xp.divide(m, buf, out=buf)
    buf *= step_size                            # lr * m_hat / (sqrt(v_hat) + eps)
    p -= buf


def _check_adamw_args(lr, betas, eps, weight_decay):
    """Raise ConfigError for hyperparameters outside their range; return beta1, beta2."""
    if not is_finite_number(lr) or lr < 0:
        raise ConfigError(f"learning rate must be a number >= 0, got {lr!r}")
    try:
        beta1, beta2 = (float(b) for b in betas)
    except (TypeError, ValueError):
        raise ConfigError(f"betas must be a pair of numbers, got {betas!r}") from None
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ConfigError(f"betas must each lie in [0, 1), got {betas!r}")
    if not is_finite_number(eps) or eps <= 0:
        raise ConfigError(f"eps must be a number > 0, got {eps!r}")
    if not is_finite_number(weight_decay) or weight_decay < 0:
        raise ConfigError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    return beta1, beta2


def _check_keys(params, grads, state):
    """Catch mismatched dicts here, where the message can name the keys."""
    _check_arrays(params, "params")
    for what, other in (("grads", grads), ("optimizer m", state["m"]),
                        ("optimizer v", state["v"])):
        missing = [k for k in params if k not in other]
        if missing:
            raise ConfigError(f"{what} has no entry for parameters {_names(missing)}")
    for name, p in params.items():
        if grads[name].shape != p.shape:
            # In-place ops would broadcast a (1,) gradient over a (3,) parameter silently.
            raise ShapeError(f"gradient of {name!r} has shape {tuple(grads[name].shape)}, "
                             f"the parameter has {tuple(p.shape)}")


# ----------------------------------------------------------------------------------------
# Gradient norm and clipping

def global_norm(grads):
    """The L2 norm of all gradients together, sqrt(sum over arrays of sum(g^2)), a float.

    Each array's sum of squares is computed where it lives; only the final number crosses
    to the host (one transfer on CuPy, not one per array).
    """
    if not grads:
        return 0.0
    xp = backend.get_array_module(*grads.values())
    squares = [xp.vdot(g.ravel(), g.ravel()) for g in grads.values()]
    total = xp.sqrt(xp.sum(xp.stack(squares).astype(xp.float64)))
    return float(backend.to_numpy(total))


def clip_grad_norm(grads, max_norm):
    """Scale all gradients in place so their global norm is at most max_norm.

    Returns the norm before clipping (a float), worth logging: spikes show instability.
    The scale is max_norm / (norm + 1e-6), as in torch.nn.utils.clip_grad_norm_. A NaN or
    inf norm leaves the gradients untouched (scaling would only spread the NaN) and is
    returned, so the caller can skip the step.
    """
    if not is_finite_number(max_norm) or not max_norm > 0:
        raise ConfigError(f"max_norm must be a number > 0, got {max_norm!r}")
    _check_arrays(grads, "grads")
    total = global_norm(grads)
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads.values():
            g *= scale
    return total


def has_nonfinite(grads):
    """The name of the first array holding a NaN or inf, or None if all are finite.

    A guard for training loops: one bad batch should be skipped and reported, not allowed
    to poison the weights and the optimizer's moments.
    """
    if not grads:
        return None
    xp = backend.get_array_module(*grads.values())
    finite = backend.to_numpy(xp.stack([xp.isfinite(g).all() for g in grads.values()]))
    for name, ok in zip(grads, finite):
        if not ok:
            return name
    return None


# ----------------------------------------------------------------------------------------
# Learning-rate schedule

def lr_schedule(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    """The learning rate at `step`: linear warm-up, then cosine decay, then flat.

        step in [0, warmup_steps]:            0 -> base_lr, linearly
        step in [warmup_steps, total_steps]:  base_lr -> min_lr, half a cosine
        step >= total_steps:                  min_lr

    Warm-up keeps the first updates small while Adam's second-moment estimate is still
    noisy; the cosine tail lets the weights settle. Returns a Python float. Note that the
    rate at step 0 is 0: the first update is a no-op unless warmup_steps is 0. If
    warmup_steps == total_steps there is no decay phase and the end clamp wins.
    """
    _check_schedule_args(step, base_lr, warmup_steps, total_steps, min_lr)
    if step >= total_steps:
        return float(min_lr)
    if step < warmup_steps:
        return float(base_lr) * step / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # 0 -> 1
    return float(min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base_lr - min_lr))


def _check_schedule_args(step, base_lr, warmup_steps, total_steps, min_lr):
    for name, value in (("step", step), ("warmup_steps", warmup_steps),
                        ("total_steps", total_steps)):
        require_positive_int(name, value, minimum=0)
    if total_steps < 1 or warmup_steps > total_steps:
        raise ConfigError(f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, "
                          f"got warmup_steps={warmup_steps}, total_steps={total_steps}")
    if not is_finite_number(base_lr) or not is_finite_number(min_lr) or not 0 <= min_lr <= base_lr:
        raise ConfigError(f"need 0 <= min_lr <= base_lr, got min_lr={min_lr!r}, "
                          f"base_lr={base_lr!r}")


# ----------------------------------------------------------------------------------------
# Small helpers

def _check_arrays(arrays, what):
    """Values updated in place must be arrays: `x *= s` on a NumPy scalar only rebinds x."""
    for name, a in arrays.items():
        if not (isinstance(a, np.ndarray) or backend.is_cupy_array(a)):
            raise DTypeError(f"{what}[{name!r}] is a {type(a).__name__}, not an array; "
                             "in-place updates need arrays")


def _names(keys, limit=5):
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
