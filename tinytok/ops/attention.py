"""Multi-head self-attention, the heart of the transformer priors: causal, full or masked.

Each query position mixes the values of the positions its mask lets it see, weighted by how
well its query matches their keys. Heads are independent attentions on slices of the
channels; all heads of all sequences go through one batched matrix product.

The mask is the one line that differs between attentions. The raster prior's is causal:
position t sees 0..t, so one forward over a sequence makes every next-token prediction with
an honest view of its past. A prior that fills in masked tokens (MaskGIT) sees the whole
sequence ("full"); one that writes a picture block by block (VAR's scales) gives a boolean
mask (T_q, T_k), True where a query may attend. A hidden key's score is -inf, its weight
exp(-inf) = 0, so the backward is the same for every mask.

Layout (nanoGPT's): the columns of w_qkv are [q | k | v], each C wide, and each of those is
split into n_head consecutive chunks of hs = C // n_head channels.

For sampling, the forward also takes a KV cache: the keys and values of the P tokens fed
before. The new tokens' keys and values are written after them and the queries attend over
all P + T; the same arithmetic, with the causal mask shifted by P (a given mask then has P + T
columns; a full one lets the new tokens see all of the past and each other).
"""
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from tinytok.backend import get_array_module
from tinytok.errors import ConfigError, DTypeError, ShapeError
from tinytok.ops.checks import (require_float, require_ndim, require_positive_int,
                                require_same_dtype, require_shape)
from tinytok.ops.linear import LinearCache, linear_backward, linear_forward
from tinytok.ops.softmax import softmax


def causal_mask(T, xp, dtype, past=0):
    """(T, past + T) additive mask for T queries after past earlier keys: query t sits at
    position past + t and sees keys 0 .. past + t, so 0 there and -inf to the right of it.
    With past = 0 the (T, T) square: -inf above the diagonal."""
    return xp.triu(xp.full((T, past + T), -xp.inf, dtype=dtype), k=past + 1)


def split_heads(x, n_head):
    """(B, T, C) -> (B, n_head, T, hs)"""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, n_head, T, hs) -> (B, T, C)"""
    B, nh, T, hs = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)


@dataclass
class KVCache:
    """One attention layer's keys and values of the tokens fed so far, for sampling.

    k, v (B, n_head, capacity, hs) are buffers; positions 0 .. length-1 are filled. A
    forward given this cache writes its T tokens' keys and values after them and reads
    all length + T back (append), so each token is run through the layer once.
    """
    k: Any
    v: Any
    length: int = 0

    @classmethod
    def empty(cls, shape, like):
        """Zeroed buffers of shape (B, n_head, capacity, hs), on like's device and dtype."""
        xp = get_array_module(like)
        return cls(xp.zeros(shape, like.dtype), xp.zeros(shape, like.dtype))

    def repeated(self, batch):
        """A copy holding batch copies of each sequence (B becomes B * batch)."""
        xp = get_array_module(self.k)
        return KVCache(xp.repeat(self.k, batch, axis=0), xp.repeat(self.v, batch, axis=0),
                       self.length)

    def append(self, k, v):
        """Store k, v (B, nh, T, hs) after the filled part; return the whole prefix,
        (B, nh, length + T, hs) each, and count the T new positions as filled."""
        end = self.length + k.shape[2]
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class AttentionCache(NamedTuple):
    qkv_cache: LinearCache   # x -> [q | k | v]
    proj_cache: LinearCache  # merged heads -> out
    q: Any                   # (B, nh, T, hs)
    k: Any                   # (B, nh, T, hs)
    v: Any                   # (B, nh, T, hs)
    att: Any                 # (B, nh, T, T) the attention weights, rows sum to 1
    scale: float             # 1 / sqrt(hs)
    n_head: int


def self_attention_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_head, *, mask="causal",
                           kv=None):
    """x (B, T, C), w_qkv (C, 3C), b_qkv (3C,), w_proj (C, C), b_proj (C,) -> y (B, T, C).

        q, k, v = split(x @ w_qkv + b_qkv)                   per head (B, nh, T, hs)
        k, v    = [cached k | k], [cached v | v]             with a KV cache of P tokens
        att     = softmax(q @ k^T / sqrt(hs) + bias)         (B, nh, T, S), S = P + T
        y       = merge(att @ v) @ w_proj + b_proj

    mask says which keys each query sees; bias is 0 there and -inf elsewhere:
        "causal"  (the default) query t sits at position P + t and sees keys 0 .. P + t
        "full"    every key (no bias at all)
        a boolean array (T, S): True where query t may see key s; every row needs a True

    kv (a KVCache, for sampling) holds the keys and values of the P tokens before x (P = 0
    without one); this call's are stored after them, so query t sits at position P + t.
    Such a call is forward-only: it returns no cache (None), as sampling never runs
    backward and the gradient would also flow into the cached tokens, out of this call's
    reach.
    """
    require_attention_args(x, w_qkv, b_qkv, w_proj, b_proj, n_head)
    if kv is not None:
        require_room(kv, x, n_head)
    B, T, C = x.shape
    scale = 1 / math.sqrt(C // n_head)
    past = 0 if kv is None else kv.length
    bias = attention_bias(mask, T, past, x)        # checked before the cache is written

    qkv, qkv_cache = linear_forward(x, w_qkv, b_qkv)                 # (B, T, 3C)
    q, k, v = (split_heads(qkv[..., i * C:(i + 1) * C], n_head) for i in range(3))
    if kv is not None:
        k, v = kv.append(k, v)                                       # (B, nh, S, hs), S = P + T
    scores = (q * scale) @ k.transpose(0, 1, 3, 2)                   # (B, nh, T, S)
    if bias is not None:
        scores += bias                                               # hide what the mask hides
    att = softmax(scores, out=scores)                                # (B, nh, T, S)
    heads = att @ v                                                  # (B, nh, T, hs)
    out, proj_cache = linear_forward(merge_heads(heads), w_proj, b_proj)  # (B, T, C)
    if kv is not None:
        return out, None                                             # forward-only
    return out, AttentionCache(qkv_cache, proj_cache, q, k, v, att, scale, n_head)


def require_attention_args(x, w_qkv, b_qkv, w_proj, b_proj, n_head):
    """x (B, T, C) and the four parameters of its width, one float dtype; n_head divides C."""
    require_float("x", x)
    require_ndim("x", x, 3, "(B, T, C)")
    require_same_dtype("x", x, ("w_qkv", w_qkv), ("b_qkv", b_qkv), ("w_proj", w_proj),
                       ("b_proj", b_proj))
    C = x.shape[2]
    require_positive_int("n_head", n_head)
    if C % n_head:
        raise ShapeError(f"n_head={n_head} must divide the width C={C}")
    require_shape("w_qkv", w_qkv, (C, 3 * C), "(C, 3C)")
    require_shape("b_qkv", b_qkv, (3 * C,), "(3C,)")
    require_shape("w_proj", w_proj, (C, C), "(C, C)")
    require_shape("b_proj", b_proj, (C,), "(C,)")


def attention_bias(mask, T, past, like):
    """The additive mask for T queries after past cached keys, (T, past + T) of like's
    dtype and device: 0 where a query may attend, -inf where not. None where nothing is
    hidden: a full mask, or a causal one with a single query (the newest token sees every
    key)."""
    xp = get_array_module(like)
    if isinstance(mask, str) and mask == "full":
        return None
    if isinstance(mask, str) and mask == "causal":
        return causal_mask(T, xp, like.dtype, past) if T > 1 else None
    require_bool_mask(mask, T, past)                      # a host or a device array
    return xp.where(xp.asarray(mask), 0.0, -xp.inf).astype(like.dtype, copy=False)


def require_bool_mask(mask, T, past):
    """mask must be a boolean (T, past + T) array with a True in every row: a query that
    sees no key would take a softmax over nothing (0 / 0). The row check reads the mask, a
    (T, S) pass, small beside the (B, nh, T, S) scores."""
    if isinstance(mask, str):
        raise ConfigError(f"mask must be 'causal', 'full' or a boolean array (T_q, T_k), "
                          f"got {mask!r}")
    dtype = getattr(mask, "dtype", None)
    if dtype is None or dtype.kind != "b":
        got = type(mask).__name__ if dtype is None else f"{dtype} values"
        raise DTypeError("mask must be 'causal', 'full' or a boolean array (T_q, T_k), True "
                         f"where a query may attend, got {got}")
    if tuple(mask.shape) != (T, past + T):
        cached = f" after {past} cached keys" if past else ""
        raise ShapeError(f"mask must have shape (T_q, T_k) = ({T}, {past + T}) for {T} "
                         f"queries{cached}, got {tuple(mask.shape)}")
    sees = mask.any(axis=1)
    if not bool(sees.all()):
        row = int(sees.argmin())                                     # the first row of False
        raise ConfigError(f"mask row {row} has no True: query {row} would attend to no key "
                          "(a softmax over nothing); every query needs at least one key")


def require_room(kv, x, n_head):
    """kv must hold x's B sequences in n_head heads of x's dtype, with room for its T tokens."""
    B, T, C = x.shape
    hs = C // n_head
    require_same_dtype("x", x, ("the KV cache", kv.k))
    Bk, nh, capacity, hsk = kv.k.shape
    if (Bk, nh, hsk) != (B, n_head, hs):
        raise ShapeError(f"the KV cache holds {Bk} sequences of {nh} heads of width {hsk}, "
                         f"x needs {B} of {n_head} of width {hs}")
    if kv.length + T > capacity:
        raise ShapeError(f"the KV cache has room for {capacity} tokens and holds "
                         f"{kv.length}: {T} more do not fit")


def require_backward_cache(cache, what):
    """A forward that ran with a KV cache returned None for a cache: it has no backward."""
    if cache is None:
        raise ConfigError(f"{what}: no cache, as its forward ran with a KV cache, which is "
                          "for sampling only; run the forward without kv to train")


def self_attention_backward(dout, cache):
    """dout (B, T, C) -> dx, dw_qkv, db_qkv, dw_proj, db_proj. The forward, bottom to top:

        dheads  = split(dout @ w_proj^T)                     (through the projection)
        datt    = dheads @ v^T           dv = att^T @ dheads
        dscores = att * (datt - sum over the row of datt * att)      (softmax's backward)
        dq      = dscores @ k / sqrt(hs) dk = dscores^T @ q / sqrt(hs)
        dx, dw_qkv, db_qkv through x @ w_qkv + b_qkv, with [dq | dk | dv]

    Masked positions have att = 0, so they get no gradient without any extra code: the
    backward is the same for every mask. A forward with a KV cache gave no cache (None):
    the backward refuses it (ConfigError).
    """
    require_backward_cache(cache, "self_attention_backward")
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


# ---------------------------------------------------------------- the causal pair, by name

def causal_self_attention_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_head, kv=None):
    """self_attention_forward with the causal mask: query t sees positions 0 .. t (P + t
    after a KV cache of P tokens). The raster prior's attention, lesson 10's pair."""
    return self_attention_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_head, mask="causal",
                                  kv=kv)


def causal_self_attention_backward(dout, cache):
    """self_attention_backward: the backward does not depend on the mask."""
    return self_attention_backward(dout, cache)
