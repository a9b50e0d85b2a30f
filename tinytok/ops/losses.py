"""Losses: mean squared error (reconstruction) and cross-entropy (next-token prediction).

A loss pair returns a 0-d value of the backend (it stays on the device; call float() to
print it) and its backward takes the upstream gradient dloss first, usually 1.0.
"""
from typing import Any, NamedTuple

from tinytok.backend import get_array_module
from tinytok.errors import ShapeError
from tinytok.ops.checks import require_float, require_int, require_same_dtype
from tinytok.ops.softmax import log_softmax


class MseCache(NamedTuple):
    diff: Any  # pred - target


def mse_forward(pred, target):
    """loss = mean((pred - target)^2) over every element. pred, target same shape -> 0-d."""
    require_float("pred", pred)
    require_same_dtype("pred", pred, ("target", target))
    if pred.shape != target.shape:
        raise ShapeError(f"mse: pred {tuple(pred.shape)} and target "
                         f"{tuple(target.shape)} must have the same shape")
    diff = pred - target
    return (diff * diff).mean(), MseCache(diff)


def mse_backward(dloss, cache):
    """dpred = 2 (pred - target) / n * dloss."""
    diff = cache.diff
    scale = get_array_module(diff).asarray(2 * dloss / diff.size, dtype=diff.dtype)
    return diff * scale  # scale cast first: a float64 dloss must not promote float32 grads


class CrossEntropyCache(NamedTuple):
    log_probs: Any     # (M, V) log softmax(logits), the logits' leading axes as rows
    targets: Any       # (M,) int, ignored positions replaced by 0 (any valid column)
    keep: Any          # (M,) bool: target != ignore_index
    count: int         # how many positions count (at least 1)
    logits_shape: tuple


def cross_entropy_forward(logits, targets, ignore_index=-1):
    """loss = mean over kept positions of -log softmax(logits)[target],
    kept: target != ignore_index.

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
    t = targets.reshape(-1)                          # (M,)
    keep = t != ignore_index                         # (M,) bool
    if bool(((t < 0) | (t >= V))[keep].any()):
        raise ShapeError(f"targets must lie in [0, {V}) or equal ignore_index={ignore_index}")
    t = xp.where(keep, t, 0)                         # any valid column for ignored rows
    log_probs = log_softmax(logits.reshape(-1, V))   # (M, V)
    nll = -log_probs[xp.arange(len(t)), t]           # (M,) -log p[target]
    count = max(int(keep.sum()), 1)
    loss = (nll * keep).sum() / count
    return loss, CrossEntropyCache(log_probs, t, keep, count, logits.shape)


def cross_entropy_backward(dloss, cache):
    """dlogits = (softmax(logits) - onehot(target)) / count * dloss, 0 on ignored positions."""
    log_probs, t, keep, count, shape = cache
    xp = get_array_module(log_probs)
    dz = xp.exp(log_probs)                           # (M, V) softmax(logits), a new array
    dz[xp.arange(len(t)), t] -= 1
    dz *= (keep[:, None] * (dloss / count)).astype(dz.dtype)
    return dz.reshape(shape)
