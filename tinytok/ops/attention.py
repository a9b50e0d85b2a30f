"""Causal multi-head self-attention, the heart of the transformer prior.

Each position t forms a query and mixes the values of positions 0..t, weighted by how well
its query matches their keys. Heads are independent attentions on slices of the channels;
all heads of all sequences go through one batched matrix product.

Layout (nanoGPT's): the columns of w_qkv are [q | k | v], each C wide, and each of those is
split into n_head consecutive chunks of hs = C // n_head channels.
"""
import math
from functools import partial

from tinytok.backend import get_array_module
from tinytok.errors import ShapeError
from tinytok.ops.checks import (require_float, require_ndim, require_positive_int,
                                require_same_dtype, require_shape)
from tinytok.ops.linear import linear_backward, linear_forward
from tinytok.parallel import for_row_blocks


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


def softmax(scores, axis=-1, out=None):
    """Numerically stable softmax (shifted by the row maximum); into `out` if given
    (out=scores overwrites the scores, saving an array), else into a new array."""
    xp = get_array_module(scores)
    e = xp.subtract(scores, scores.max(axis=axis, keepdims=True), out=out)
    xp.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def log_softmax(scores, axis=-1):
    """log(softmax(scores)) without forming the softmax: scores - max - log(sum(exp(...)))."""
    xp = get_array_module(scores)
    shifted = scores - scores.max(axis=axis, keepdims=True)
    shifted -= xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
    return shifted


def causal_self_attention_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_head):
    """x (B, T, C), w_qkv (C, 3C), b_qkv (3C,), w_proj (C, C), b_proj (C,) -> y (B, T, C)."""
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
    att = xp.empty((B, n_head, T, T), dtype=x.dtype)                 # (B, nh, T, T)
    heads = xp.empty(q.shape, dtype=x.dtype)                         # (B, nh, T, hs)
    # every sequence attends on its own: blocks of sequences run in parallel
    for_row_blocks(partial(_attend, scale=scale), q, k, v, att, heads)
    out, proj_cache = linear_forward(merge_heads(heads), w_proj, b_proj)  # (B, T, C)
    return out, (qkv_cache, proj_cache, q, k, v, att, scale, n_head)


def _attend(q, k, v, att, heads, scale):
    """Writes att = softmax(q k^T * scale + mask) and heads = att @ v for a block of sequences.

    q, k, v, heads (b, nh, T, hs); att (b, nh, T, T).
    """
    xp = get_array_module(q)
    xp.matmul(q * scale, k.transpose(0, 1, 3, 2), out=att)           # the scores
    att += causal_mask(q.shape[2], xp, q.dtype)                      # hide the future
    softmax(att, out=att)
    xp.matmul(att, v, out=heads)


def causal_self_attention_backward(dout, cache):
    """dout (B, T, C) -> dx, dw_qkv, db_qkv, dw_proj, db_proj.

    The mirror of the forward, bottom to top. Softmax's backward per row is
    dscores = att * (datt - sum(datt * att)); masked positions have att = 0, so they get
    no gradient without any extra code.
    """
    qkv_cache, proj_cache, q, k, v, att, scale, n_head = cache
    xp = get_array_module(dout)
    dy, dw_proj, db_proj = linear_backward(dout, proj_cache)         # (B, T, C)
    dy = split_heads(dy, n_head)                                     # (B, nh, T, hs)
    # dq, dk, dv go straight into their columns of dqkv: (B, T, [q|k|v], heads, hs)
    B, nh, T, hs = dy.shape
    dqkv = xp.empty((B, T, 3, nh, hs), dtype=dy.dtype)
    for_row_blocks(partial(_attend_backward, scale=scale), dy, q, k, v, att, dqkv)
    dx, dw_qkv, db_qkv = linear_backward(dqkv.reshape(B, T, 3 * nh * hs), qkv_cache)
    return dx, dw_qkv, db_qkv, dw_proj, db_proj


def _attend_backward(dy, q, k, v, att, dqkv, scale):
    """Writes dq, dk, dv into dqkv (b, T, 3, nh, hs) for a block of sequences: the mirror
    of _attend. dy, q, k, v (b, nh, T, hs); att (b, nh, T, T)."""
    datt = dy @ v.transpose(0, 1, 3, 2)                              # (b, nh, T, T)
    dv = att.transpose(0, 1, 3, 2) @ dy                              # (b, nh, T, hs)
    dscores = datt                                                   # reuse the buffer:
    dscores -= (datt * att).sum(axis=-1, keepdims=True)              # datt - sum(datt * att)
    dscores *= att
    dscores *= scale                     # the scores were (q * scale) @ k^T: both get scale
    dqkv[:, :, 0] = (dscores @ k).transpose(0, 2, 1, 3)                      # dq
    dqkv[:, :, 1] = (dscores.transpose(0, 1, 3, 2) @ q).transpose(0, 2, 1, 3)  # dk
    dqkv[:, :, 2] = dv.transpose(0, 2, 1, 3)                                 # dv
