"""Exercise · Layer normalization: the forward is given, the backward is yours.

    y = xhat * gamma + beta,   xhat = (x - mean) * rstd,   rstd = 1 / sqrt(var + eps)

mean and (biased) var over the last axis, one per row. x (..., C), gamma (C,), beta (C,)
-> y (..., C). The backward gets dout (..., C) and returns dx (..., C), dgamma (C,) and
dbeta (C,). dgamma and dbeta are the easy two. For dx, remember that every x of a row
moves that row's mean and var, so each dx[c] hears from the whole row: write g = dout *
gamma, differentiate xhat through mean and rstd, and simplify with means over the row.

Check:     tinytok check layer_norm lessons/exercises/layer_norm.py
Solution:  tinytok/ops/norm.py
"""
import numpy as np


def layer_norm_forward(x, gamma, beta, eps=1e-5):
    """x (..., C), gamma (C,), beta (C,) -> (y (..., C), cache (xhat, gamma, rstd))."""
    mean = x.mean(axis=-1, keepdims=True)                       # (..., 1)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)        # (..., 1)
    rstd = 1 / np.sqrt(var + eps)                               # (..., 1)
    xhat = (x - mean) * rstd                                    # (..., C)
    return xhat * gamma + beta, (xhat, gamma, rstd)


def layer_norm_backward(dout, cache):
    """dout (..., C), cache (xhat, gamma, rstd) -> (dx (..., C), dgamma (C,), dbeta (C,))."""
    xhat, gamma, rstd = cache
    # TODO
    return None
