"""Layer normalization over the last axis (as in GPT-2 and nanoGPT), and l2 normalization
over any one axis (unit-length vectors, for the cosine and factorized quantizers)."""
from typing import Any, NamedTuple

from tinytok.backend import get_array_module
from tinytok.errors import ShapeError
from tinytok.ops.checks import require_float, require_same_dtype, require_shape


class LayerNormCache(NamedTuple):
    xhat: Any   # (..., C) the normalised input
    gamma: Any  # (C,)
    rstd: Any   # (..., 1) 1 / sqrt(var + eps), one per row


def layer_norm_forward(x, gamma, beta, eps=1e-5):
    """y = xhat * gamma + beta,   xhat = (x - mean) * rstd,   rstd = 1 / sqrt(var + eps),

    mean and var over the last axis. x (..., C), gamma (C,), beta (C,) -> y (..., C). var is
    the biased variance (divide by C).
    """
    require_float("x", x)
    require_same_dtype("x", x, ("gamma", gamma), ("beta", beta))
    require_shape("gamma", gamma, x.shape[-1:], "(C,)")
    require_shape("beta", beta, x.shape[-1:], "(C,)")
    xp = get_array_module(x)
    xhat = x - row_mean(x)                       # (..., C) centred
    rstd = 1 / xp.sqrt(row_mean(xhat, xhat) + eps)  # (..., 1) var = mean of the squares
    xhat *= rstd                                 # (..., C) normalised
    y = xhat * gamma
    y += beta
    return y, LayerNormCache(xhat, gamma, rstd)


def layer_norm_backward(dy, cache):
    """dy (..., C) -> dx (..., C), dgamma (C,), dbeta (C,).

    With g = dy * gamma, the mean and the variance both depend on every x in the row, which
    gives the two correction terms:

        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))      (means over the row)
        dgamma = sum over rows of dy * xhat                    dbeta = sum over rows of dy
    """
    xhat, gamma, rstd = cache
    xp = get_array_module(dy)
    dy2, xhat2 = dy.reshape(-1, dy.shape[-1]), xhat.reshape(-1, dy.shape[-1])  # (M, C) each
    dgamma = xp.einsum("mc,mc->c", dy2, xhat2)   # (C,) without a (M, C) temporary
    dbeta = dy2.sum(axis=0)                      # (C,)
    dx = dy * gamma                              # g, then dx in place
    correction = xhat * row_mean(dx, xhat)       # xhat * mean(g * xhat)
    dx -= row_mean(dx)                           # g - mean(g)
    dx -= correction
    dx *= rstd
    return dx, dgamma, dbeta


def row_mean(a, b=None):
    """The mean over the last axis of a, or of a * b without forming it: (..., C) -> (..., 1).

    With einsum, which sums each row in one tight loop: NumPy's a.mean(axis=-1) runs its
    inner loop once per row, and for rows of a few hundred floats that costs more than the
    additions (einsum is about 3x faster here). Not a product with a vector of ones: BLAS
    would sum a row differently depending on how many rows came with it, and a row's result
    must not depend on its batch (a picture's score in lesson 14's reranking, a KV-cache
    step; tests/test_ops_misc.py checks it bit for bit).
    """
    xp = get_array_module(a)
    sums = xp.einsum("...c->...", a) if b is None else xp.einsum("...c,...c->...", a, b)
    return sums[..., None] / a.shape[-1]


# ---------------------------------------------------------------- l2 normalization

class L2NormalizeCache(NamedTuple):
    y: Any        # x / max(|x|, eps): the unit vectors
    length: Any   # max(|x|, eps), one per vector (axis kept, size 1)
    clamped: Any  # bool, one per vector: |x| <= eps, where y = x / eps is only a scaling
    axis: int     # the axis the vectors lie along


def l2_normalize_forward(x, axis=-1, eps=1e-12):
    """y = x / max(|x|, eps), |x| = sqrt(sum of x^2 along axis) (PyTorch's F.normalize).

    x (...) -> y (same shape): each vector along `axis` scaled to length 1. A vector shorter
    than eps is divided by eps instead, so zero stays zero rather than becoming 0 / 0.
    """
    require_float("x", x)
    if not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"l2_normalize: axis {axis} does not exist for x of shape "
                         f"{tuple(x.shape)}; choose one in [{-x.ndim}, {x.ndim})")
    xp = get_array_module(x)
    norm = xp.sqrt((x * x).sum(axis=axis, keepdims=True))  # one length per vector
    length = xp.maximum(norm, eps)
    y = x / length
    return y, L2NormalizeCache(y, length, norm <= eps, axis)


def l2_normalize_backward(dy, cache):
    """dy (same shape as x) -> dx.

    y = x / |x| does not change when x is lengthened, so the part of dy along y is dropped
    and the rest scaled by 1 / |x| (the Jacobian is (I - y y^T) / |x|, symmetric):

        dx = (dy - y * sum(dy * y)) / |x|        (sum along the axis)

    A clamped vector (|x| <= eps) was only divided by eps: there dx = dy / eps.
    """
    y, length, clamped, axis = cache
    along = (dy * y).sum(axis=axis, keepdims=True)     # the part of dy along y, per vector
    along *= ~clamped                                  # none taken out where x was clamped
    dx = dy - y * along
    dx /= length
    return dx
