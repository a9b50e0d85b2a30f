"""Layer normalization over the last axis (as in GPT-2 and nanoGPT)."""
from tinytok.backend import get_array_module
from tinytok.ops.checks import require_float, require_same_dtype, require_shape


def layer_norm_forward(x, gamma, beta, eps=1e-5):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta, statistics over the last axis.

    x (..., C), gamma (C,), beta (C,) -> y (..., C). var is the biased variance (divide by C).
    """
    require_float("x", x)
    require_same_dtype("x", x, ("gamma", gamma), ("beta", beta))
    require_shape("gamma", gamma, x.shape[-1:], "(C,)")
    require_shape("beta", beta, x.shape[-1:], "(C,)")
    xp = get_array_module(x)
    xhat = x - x.mean(axis=-1, keepdims=True)                   # centred, (..., C)
    rstd = 1 / xp.sqrt((xhat * xhat).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat *= rstd                                                # normalised, in place
    y = xhat * gamma
    y += beta
    return y, (xhat, gamma, rstd)


def layer_norm_backward(dy, cache):
    """dy (..., C) -> dx (..., C), dgamma (C,), dbeta (C,).

    With g = dy * gamma, the mean and the variance both depend on every x in the row, which
    gives the two correction terms:  dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
    """
    xhat, gamma, rstd = cache
    lead = tuple(range(dy.ndim - 1))
    dgamma = (dy * xhat).sum(axis=lead)
    dbeta = dy.sum(axis=lead)
    dx = dy * gamma                                             # g, then dx in place
    correction = dx * xhat
    correction = xhat * correction.mean(axis=-1, keepdims=True)  # xhat * mean(g * xhat)
    dx -= dx.mean(axis=-1, keepdims=True)
    dx -= correction
    dx *= rstd
    return dx, dgamma, dbeta
