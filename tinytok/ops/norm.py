"""Layer normalization over the last axis (as in GPT-2 and nanoGPT).

Every row is normalised on its own, so the work runs on blocks of rows in parallel
(tinytok.parallel); only the parameter gradients sum across rows, on the whole arrays.
"""
from functools import partial

from tinytok.backend import get_array_module
from tinytok.ops.checks import require_float, require_same_dtype, require_shape
from tinytok.parallel import for_row_blocks


def layer_norm_forward(x, gamma, beta, eps=1e-5):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta, statistics over the last axis.

    x (..., C), gamma (C,), beta (C,) -> y (..., C). var is the biased variance (divide by C).
    """
    require_float("x", x)
    require_same_dtype("x", x, ("gamma", gamma), ("beta", beta))
    require_shape("gamma", gamma, x.shape[-1:], "(C,)")
    require_shape("beta", beta, x.shape[-1:], "(C,)")
    xp = get_array_module(x)
    y, xhat = xp.empty_like(x), xp.empty_like(x)
    rstd = xp.empty(x.shape[:-1] + (1,), dtype=x.dtype)               # (..., 1)
    for_row_blocks(partial(_normalize_rows, gamma=gamma, beta=beta, eps=eps), x, y, xhat, rstd)
    return y, (xhat, gamma, rstd)


def _normalize_rows(x, y, xhat, rstd, gamma, beta, eps):
    """Writes xhat (normalised x), rstd = 1/std and y = xhat * gamma + beta for a block."""
    xp = get_array_module(x)
    xp.subtract(x, row_mean(x), out=xhat)                       # centred
    var = row_mean(xhat, xhat)
    xp.divide(1, xp.sqrt(var + eps), out=rstd)
    xhat *= rstd                                                # normalised
    xp.multiply(xhat, gamma, out=y)
    y += beta


def layer_norm_backward(dy, cache):
    """dy (..., C) -> dx (..., C), dgamma (C,), dbeta (C,).

    With g = dy * gamma, the mean and the variance both depend on every x in the row, which
    gives the two correction terms:  dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
    """
    xhat, gamma, rstd = cache
    xp = get_array_module(dy)
    dy2, xhat2 = dy.reshape(-1, dy.shape[-1]), xhat.reshape(-1, dy.shape[-1])  # (M, C) each
    dgamma = xp.einsum("mc,mc->c", dy2, xhat2)    # sum over rows of dy * xhat, no temporary
    dbeta = dy2.sum(axis=0)
    dx = xp.empty_like(dy)
    for_row_blocks(partial(_normalize_rows_backward, gamma=gamma), dy, xhat, rstd, dx)
    return dx, dgamma, dbeta


def _normalize_rows_backward(dy, xhat, rstd, dx, gamma):
    """Writes dx for a block of rows: the mirror of _normalize_rows."""
    xp = get_array_module(dy)
    xp.multiply(dy, gamma, out=dx)                              # g, then dx in place
    correction = xhat * row_mean(dx, xhat)                      # xhat * mean(g * xhat)
    dx -= row_mean(dx)
    dx -= correction
    dx *= rstd


def row_mean(a, b=None):
    """The mean over the last axis of a, or of a * b without forming it: (..., C) -> (..., 1).

    With einsum, which sums each row in one tight loop: NumPy's a.mean(axis=-1) runs its
    inner loop once per row, and for rows of a few hundred floats that costs more than the
    additions (einsum is about 3x faster here). Not a product with a vector of ones: BLAS
    would sum a row differently depending on how many rows came with it, and a picture's
    score must not depend on its batch.
    """
    xp = get_array_module(a)
    sums = xp.einsum("...c->...", a) if b is None else xp.einsum("...c,...c->...", a, b)
    return sums[..., None] / a.shape[-1]
