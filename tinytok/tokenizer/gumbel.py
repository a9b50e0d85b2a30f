"""DALL-E's relaxation of quantization: Gumbel-softmax over code logits (the dVAE).

Instead of snapping a vector to its nearest code, the encoder scores every code: logits
(N, K, H, W). Training mixes the codes with soft weights

    y = softmax((logits + g) / tau)      g ~ Gumbel(0, 1), one draw per logit
    z_q = sum_k y_k * codebook[k]

which is differentiable, so no straight-through trick is needed. As the temperature tau is
annealed towards 0 the mixture approaches a one-hot choice; a KL term to the uniform prior,

    kl = mean over cells of sum_k q_k log(K q_k),   q = softmax(logits),

keeps the encoder from committing to a few codes too early. At inference the token is simply
argmax(logits), and z_q = codebook[token] as in VQ.
"""
import math
from typing import NamedTuple

import numpy as np

from tinytok.backend import get_array_module
from tinytok.errors import ConfigError, ShapeError
from tinytok.ops.softmax import softmax
from tinytok.ops.checks import require_float, require_ndim, require_same_dtype
from tinytok.tokenizer.quantize import columns_as_ids, columns_as_latents, latents_as_columns


def gumbel_noise(shape, rng, dtype="float32"):
    """Gumbel(0, 1) samples, -log(-log(u)), drawn on the host so a seed fixes them."""
    u = rng.random(shape).clip(1e-12, 1 - 1e-12)
    return (-np.log(-np.log(u))).astype(dtype)


def temperature_at(step, total_steps, start=1.0, end=1 / 16):
    """Exponential annealing of tau from start to end over total_steps (DALL-E anneals to 1/16)."""
    frac = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return start * (end / start) ** frac


class GumbelQuantizeCache(NamedTuple):
    y: object           # (K, M) the soft one-hot mixing weights
    q: object           # (K, M) softmax(logits), noise-free, for the KL term
    log_q: object       # (K, M) its log
    codebook: object    # (K, D)
    tau: float          # the temperature y was drawn at
    logits_shape: tuple  # (N, K, H, W), to lay dlogits out like the logits


def gumbel_quantize_forward(logits, codebook, tau=1.0, noise=None):
    """logits (N, K, H, W), codebook (K, D) -> z_q (N, D, H, W), ids (N, H, W), kl (0-d), cache.

    noise (N, K, H, W) is the Gumbel draw (None: no noise, the deterministic soft mixture).
    ids are argmax(logits), the tokens the model would emit at inference.
    """
    require_float("logits", logits)
    require_same_dtype("logits", logits, ("codebook", codebook), ("noise", noise))
    require_ndim("logits", logits, 4, "(N, K, H, W)")
    require_ndim("codebook", codebook, 2, "(K, D)")
    if codebook.shape[0] != logits.shape[1]:
        raise ShapeError(f"logits (N, K, H, W) = {tuple(logits.shape)} score K = "
                         f"{logits.shape[1]} codes but the codebook has {codebook.shape[0]}")
    if not tau > 0:
        raise ConfigError(f"the Gumbel temperature tau must be > 0, got {tau}")
    xp = get_array_module(logits)
    N, K, H, W = logits.shape
    l_cols = latents_as_columns(logits)                              # (K, M)
    noisy = l_cols if noise is None else l_cols + latents_as_columns(noise)
    y = softmax(noisy / tau, axis=0)                                 # (K, M) soft one-hot
    z_cols = codebook.T @ y                                          # (D, M)
    q = softmax(l_cols, axis=0)                                      # (K, M) noise-free
    log_q = xp.log(q + 1e-20)
    kl = (q * log_q).sum(axis=0).mean() + math.log(K)
    ids = columns_as_ids(xp.argmax(l_cols, axis=0), logits.shape)   # (N, H, W)
    z_q = columns_as_latents(z_cols, (N, codebook.shape[1], H, W))
    return z_q, ids, kl, GumbelQuantizeCache(y, q, log_q, codebook, tau, logits.shape)


def gumbel_quantize_backward(dz_q, cache, dkl=1.0):
    """dz_q (N, D, H, W) -> dlogits (N, K, H, W), dcodebook (K, D).

    Through the mixture:  dy = codebook @ dz,  then softmax's backward divided by tau.
    Through the KL:       d kl / d logits = q * (log q - sum_k q log q) / M.
    """
    y, q, log_q = cache.y, cache.q, cache.log_q
    dz_cols = latents_as_columns(dz_q)                               # (D, M)
    dcodebook = y @ dz_cols.T                                        # (K, D)
    dy = cache.codebook @ dz_cols                                    # (K, M)
    dl = y * (dy - (dy * y).sum(axis=0, keepdims=True)) / cache.tau
    M = q.shape[1]
    dl += q * (log_q - (q * log_q).sum(axis=0, keepdims=True)) * (dkl / M)
    return columns_as_latents(dl, cache.logits_shape), dcodebook
