"""Losses: mean squared error (reconstruction) and cross-entropy (next-token prediction).

A loss pair returns a 0-d value of the backend (it stays on the device; call float() to print it) and its
backward takes the upstream gradient dloss first, usually 1.0.
"""
from tinytok.backend import get_array_module
from tinytok.errors import ShapeError
from tinytok.ops.checks import require_float, require_int, require_same_dtype
from tinytok.parallel import for_row_blocks


def mse_forward(pred, target):
    """loss = mean((pred - target)^2) over every element. pred, target same shape -> 0-d."""
    require_float("pred", pred)
    require_same_dtype("pred", pred, ("target", target))
    if pred.shape != target.shape:
        raise ShapeError(f"mse: pred {tuple(pred.shape)} and target "
                         f"{tuple(target.shape)} must have the same shape")
    diff = pred - target
    return (diff * diff).mean(), diff


def mse_backward(dloss, cache):
    """dpred = 2 (pred - target) / n * dloss."""
    diff = cache
    scale = get_array_module(diff).asarray(2 * dloss / diff.size, dtype=diff.dtype)
    return diff * scale  # scale cast first: a float64 dloss must not promote float32 grads


def cross_entropy_forward(logits, targets, ignore_index=-1):
    """Mean of -log softmax(logits)[target] over the positions whose target != ignore_index.

    logits (..., V) float, targets (...) int in [0, V) or ignore_index -> 0-d loss.
    With every position ignored the loss is 0 (PyTorch returns nan there).
    """
    require_float("logits", logits)
    require_int("targets", targets)
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ShapeError(f"targets must have shape {tuple(logits.shape[:-1])} (logits "
                         f"without the last axis), got {tuple(targets.shape)}")
    xp = get_array_module(logits)
    V = logits.shape[-1]
    z = logits.reshape(-1, V)                        # (M, V)
    t = targets.reshape(-1)                          # (M,)
    keep = t != ignore_index                         # (M,) bool
    if bool(((t < 0) | (t >= V))[keep].any()):
        raise ShapeError(f"targets must lie in [0, {V}) or equal ignore_index={ignore_index}")
    t_safe = xp.where(keep, t, 0)                    # any valid column for ignored rows
    probs = xp.empty_like(z)                         # softmax(z), kept for the backward
    # per row: its maximum and log(sum(exp(z - max))), so log p = z - max - that
    row_max, log_sum_exp = xp.empty((2, z.shape[0], 1), dtype=z.dtype)      # (M, 1) each
    for_row_blocks(_softmax_rows, z, probs, row_max, log_sum_exp)  # rows are independent
    rows = xp.arange(z.shape[0])
    nll = log_sum_exp[:, 0] - (z[rows, t_safe] - row_max[:, 0])   # (M,) -log p[target]
    count = max(int(keep.sum()), 1)
    loss = (nll * keep).sum() / count
    return loss, (probs, t_safe, keep, count, logits.shape)


def _softmax_rows(z, probs, row_max, log_sum_exp):
    """Writes probs = softmax(z), row_max and log_sum_exp = log(sum(exp(z - row_max))) for a
    block of rows. Shifting by the row maximum changes nothing (softmax is shift-invariant)
    but avoids overflow."""
    xp = get_array_module(z)
    z.max(axis=1, keepdims=True, out=row_max)
    xp.subtract(z, row_max, out=probs)
    xp.exp(probs, out=probs)
    sum_exp = probs.sum(axis=1, keepdims=True)
    xp.log(sum_exp, out=log_sum_exp)
    probs /= sum_exp


def cross_entropy_backward(dloss, cache):
    """dlogits = (softmax - onehot(target)) / count * dloss, zero on ignored positions."""
    probs, t_safe, keep, count, shape = cache
    dz = probs.copy()
    dz[get_array_module(dz).arange(dz.shape[0]), t_safe] -= 1
    dz *= (keep[:, None] * (dloss / count)).astype(dz.dtype)
    return dz.reshape(shape)
