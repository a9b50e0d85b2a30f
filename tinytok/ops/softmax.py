"""Softmax and log-softmax over one axis: the one place they are written.

    softmax(z)_i     = exp(z_i - m) / sum_j exp(z_j - m)          m = max_j z_j
    log_softmax(z)_i = z_i - m - log(sum_j exp(z_j - m))

Shifting by the maximum m changes nothing (softmax is shift-invariant) but keeps exp from
overflowing: the largest term becomes exp(0) = 1. Attention uses softmax on its scores,
cross-entropy log_softmax (its log of a tiny probability stays finite), the samplers both.
"""
from tinytok.backend import get_array_module


def softmax(scores, axis=-1, out=None):
    """p = exp(z - max z) / sum(exp(z - max z)) along axis; into `out` if given (out=scores
    overwrites the scores, saving an array), else into a new array."""
    xp = get_array_module(scores)
    p = xp.subtract(scores, scores.max(axis=axis, keepdims=True), out=out)  # z - max z
    xp.exp(p, out=p)
    p /= p.sum(axis=axis, keepdims=True)
    return p


def log_softmax(scores, axis=-1):
    """log p = (z - max z) - log(sum(exp(z - max z))) along axis, without forming p (so a
    probability that would round to 0 still has a finite log)."""
    xp = get_array_module(scores)
    shifted = scores - scores.max(axis=axis, keepdims=True)              # z - max z
    shifted -= xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
    return shifted
