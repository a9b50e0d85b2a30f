"""Causal multi-head self-attention, the heart of the transformer prior.

Each position t forms a query and mixes the values of positions 0..t, weighted by how well
its query matches their keys. Heads are independent attentions on slices of the channels;
all heads of all sequences go through one batched matrix product.

Layout (nanoGPT's): the columns of w_qkv are [q | k | v], each C wide, and each of those is
split into n_head consecutive chunks of hs = C // n_head channels.
"""
import math
from typing import Any, NamedTuple

from tinytok.backend import get_array_module
from tinytok.errors import ShapeError
from tinytok.ops.checks import (require_float, require_ndim, require_positive_int,
                                require_same_dtype, require_shape)
from tinytok.ops.linear import LinearCache, linear_backward, linear_forward
from tinytok.ops.softmax import softmax


def causal_mask(T, xp, dtype):
    """(T, T) additive mask: 0 where key s <= query t, -inf above the diagonal."""
    return xp.triu(xp.full((T, T), -xp.inf, dtype=dtype), k=1)


def split_heads(x, n_head):
    """(B, T, C) -> (B, n_head, T, hs)"""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, n_head, T, hs) -> (B, T, C)"""
    B, nh, T, hs = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)


class AttentionCache(NamedTuple):
    qkv_cache: LinearCache   # x -> [q | k | v]
    proj_cache: LinearCache  # merged heads -> out
    q: Any                   # (B, nh, T, hs)
    k: Any                   # (B, nh, T, hs)
    v: Any                   # (B, nh, T, hs)
    att: Any                 # (B, nh, T, T) the attention weights, rows sum to 1
    scale: float             # 1 / sqrt(hs)
    n_head: int


def causal_self_attention_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_head):
    """x (B, T, C), w_qkv (C, 3C), b_qkv (3C,), w_proj (C, C), b_proj (C,) -> y (B, T, C).

        q, k, v = split(x @ w_qkv + b_qkv)                   per head (B, nh, T, hs)
        att     = softmax(q @ k^T / sqrt(hs) + mask)         mask: -inf where s > t
        y       = merge(att @ v) @ w_proj + b_proj
    """
    require_float("x", x)
    require_ndim("x", x, 3, "(B, T, C)")
    require_same_dtype("x", x, ("w_qkv", w_qkv), ("b_qkv", b_qkv), ("w_proj", w_proj),
                       ("b_proj", b_proj))
    B, T, C = x.shape
    require_positive_int("n_head", n_head)
    if C % n_head:
        raise ShapeError(f"n_head={n_head} must divide the width C={C}")
    require_shape("w_qkv", w_qkv, (C, 3 * C), "(C, 3C)")
    require_shape("b_qkv", b_qkv, (3 * C,), "(3C,)")
    require_shape("w_proj", w_proj, (C, C), "(C, C)")
    require_shape("b_proj", b_proj, (C,), "(C,)")
    xp = get_array_module(x)
    scale = 1 / math.sqrt(C // n_head)

    qkv, qkv_cache = linear_forward(x, w_qkv, b_qkv)                 # (B, T, 3C)
    q, k, v = (split_heads(qkv[..., i * C:(i + 1) * C], n_head) for i in range(3))
    scores = (q * scale) @ k.transpose(0, 1, 3, 2)                   # (B, nh, T, T)
    scores += causal_mask(T, xp, x.dtype)                            # hide the future
    att = softmax(scores, out=scores)                                # (B, nh, T, T)
    heads = att @ v                                                  # (B, nh, T, hs)
    out, proj_cache = linear_forward(merge_heads(heads), w_proj, b_proj)  # (B, T, C)
    return out, AttentionCache(qkv_cache, proj_cache, q, k, v, att, scale, n_head)


def causal_self_attention_backward(dout, cache):
    """dout (B, T, C) -> dx, dw_qkv, db_qkv, dw_proj, db_proj. The forward, bottom to top:

        dheads  = split(dout @ w_proj^T)                     (through the projection)
        datt    = dheads @ v^T           dv = att^T @ dheads
        dscores = att * (datt - sum over the row of datt * att)      (softmax's backward)
        dq      = dscores @ k / sqrt(hs) dk = dscores^T @ q / sqrt(hs)
        dx, dw_qkv, db_qkv through x @ w_qkv + b_qkv, with [dq | dk | dv]

    Masked positions have att = 0, so they get no gradient without any extra code.
    """
    qkv_cache, proj_cache, q, k, v, att, scale, n_head = cache
    xp = get_array_module(dout)
    dy, dw_proj, db_proj = linear_backward(dout, proj_cache)         # (B, T, C)
    dheads = split_heads(dy, n_head)                                 # (B, nh, T, hs)
    datt = dheads @ v.transpose(0, 1, 3, 2)                          # (B, nh, T, T)
    dv = att.transpose(0, 1, 3, 2) @ dheads                          # (B, nh, T, hs)
    dscores = datt                                                   # in datt's buffer:
    dscores -= (datt * att).sum(axis=-1, keepdims=True)              # datt - sum(datt * att)
    dscores *= att
    dscores *= scale                     # the scores were (q * scale) @ k^T: both get scale
    # dq, dk, dv go straight into their columns of dqkv: (B, T, [q|k|v], nh, hs)
    B, nh, T, hs = q.shape
    dqkv = xp.empty((B, T, 3, nh, hs), dtype=dout.dtype)
    dqkv[:, :, 0] = (dscores @ k).transpose(0, 2, 1, 3)                      # dq
    dqkv[:, :, 1] = (dscores.transpose(0, 1, 3, 2) @ q).transpose(0, 2, 1, 3)  # dk
    dqkv[:, :, 2] = dv.transpose(0, 2, 1, 3)                                 # dv
    dx, dw_qkv, db_qkv = linear_backward(dqkv.reshape(B, T, 3 * nh * hs), qkv_cache)
    return dx, dw_qkv, db_qkv, dw_proj, db_proj
