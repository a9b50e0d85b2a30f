"""Exercise · Causal multi-head self-attention: the forward is given, the backward is yours.

    q, k, v = split(x @ w_qkv + b_qkv)                 each (B, nh, T, hs), hs = C // nh
    att     = softmax(q @ k^T / sqrt(hs) + mask)       (B, nh, T, T); mask: -inf where s > t
    y       = merge(att @ v) @ w_proj + b_proj         (B, T, C)

x (B, T, C), w_qkv (C, 3C) with columns [q | k | v], b_qkv (3C,), w_proj (C, C), b_proj
(C,), n_head -> y (B, T, C). The backward gets dout (B, T, C) and returns dx, dw_qkv,
db_qkv, dw_proj, db_proj. Go through the forward bottom to top: two linear layers
(exercise linear), two batched matrix products, and the softmax, whose backward for one
row p with upstream dp is  p * (dp - sum(dp * p)). The masked entries have att = 0.

Check:     tinytok check causal_self_attention lessons/exercises/causal_self_attention.py
Solution:  tinytok/ops/attention.py (lesson 10)
"""
import numpy as np

from tinytok.ops.attention import merge_heads, split_heads  # (B, T, C) <-> (B, nh, T, hs)


def causal_self_attention_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_head):
    """-> (y (B, T, C), cache: a dict of the forward's intermediate arrays)."""
    B, T, C = x.shape
    scale = 1 / np.sqrt(C // n_head)
    qkv = x @ w_qkv + b_qkv                                            # (B, T, 3C)
    q, k, v = (split_heads(qkv[..., i * C:(i + 1) * C], n_head) for i in range(3))
    scores = q @ k.transpose(0, 1, 3, 2) * scale                       # (B, nh, T, T)
    scores = scores + np.triu(np.full((T, T), -np.inf), k=1)           # hide the future
    att = np.exp(scores - scores.max(axis=-1, keepdims=True))
    att /= att.sum(axis=-1, keepdims=True)                             # softmax, row by row
    heads = merge_heads(att @ v)                                       # (B, T, C)
    y = heads @ w_proj + b_proj
    cache = {"x": x, "w_qkv": w_qkv, "w_proj": w_proj, "q": q, "k": k, "v": v, "att": att,
             "heads": heads, "scale": scale, "n_head": n_head}
    return y, cache


def causal_self_attention_backward(dout, cache):
    """dout (B, T, C), cache -> (dx, dw_qkv, db_qkv, dw_proj, db_proj)."""
    # TODO
    return None
