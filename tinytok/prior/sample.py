"""Writing with the prior: next-token sampling, a KV cache, and classifier-free guidance.

Generation runs the model forward only. Recomputing the whole prefix for every new token
costs O(T^2) per token; the KV cache keeps each layer's keys and values from earlier
positions, so a step only computes the new token's query, key and value and attends to the
stored ones. The two paths give the same logits (tests check it); the cache is the default.

Random draws come from a host generator (seeded), so a seed means the same picture on NumPy
and CuPy.
"""
import math

import numpy as np

from tinytok.backend import get_array_module
from tinytok.errors import ConfigError, ShapeError
from tinytok.prior.gpt import check_ids, gpt_forward, layer_norm_named_forward, mlp_forward
from tinytok.ops import embedding_forward, linear_forward
from tinytok.ops.attention import merge_heads, softmax, split_heads


# ---------------------------------------------------------------- forward with a KV cache

def new_kv_cache(params, config, batch):
    """Empty per-layer key/value buffers (B, n_head, context, hs) and the filled length."""
    xp = get_array_module(params["gpt.wte"])
    hs = config.n_embd // config.n_head
    shape = (batch, config.n_head, config.context, hs)
    dtype = params["gpt.wte"].dtype
    return {"k": [xp.zeros(shape, dtype) for _ in range(config.n_layer)],
            "v": [xp.zeros(shape, dtype) for _ in range(config.n_layer)],
            "length": 0}


def cached_attention(x, params, name, n_head, kv, layer):
    """Attention for new positions x (B, t, C) over the cached past plus themselves."""
    xp = get_array_module(x)
    B, t, C = x.shape
    L = kv["length"]
    qkv, _ = linear_forward(x, params[name + ".w_qkv"], params[name + ".b_qkv"])
    q, k, v = (split_heads(qkv[..., i * C:(i + 1) * C], n_head) for i in range(3))
    kv["k"][layer][:, :, L:L + t] = k                                # store, then read back
    kv["v"][layer][:, :, L:L + t] = v                                # the whole prefix
    keys, values = kv["k"][layer][:, :, :L + t], kv["v"][layer][:, :, :L + t]
    scores = (q * (1 / math.sqrt(C // n_head))) @ keys.transpose(0, 1, 3, 2)  # (B, nh, t, L+t)
    if t > 1:  # new position i sits at L + i and may see keys 0 .. L + i (one token: all)
        scores += xp.triu(xp.full((t, L + t), -xp.inf, dtype=x.dtype), k=L + 1)
    y = merge_heads(softmax(scores) @ values)                        # (B, t, C)
    out, _ = linear_forward(y, params[name + ".w_proj"], params[name + ".b_proj"])
    return out


def gpt_forward_cached(ids, params, config, kv):
    """Logits (B, t, V) for new tokens ids (B, t) appended after the kv cache's prefix."""
    B, t = ids.shape
    L = kv["length"]
    if B != kv["k"][0].shape[0]:
        raise ShapeError(f"this KV cache holds {kv['k'][0].shape[0]} sequences, got {B}")
    if L + t > config.context:
        raise ConfigError(f"generation would run past the context of {config.context} tokens")
    tok, _ = embedding_forward(ids, params["gpt.wte"])
    x = tok + params["gpt.wpe"][L:L + t]
    for i in range(config.n_layer):
        name = f"gpt.h{i}"
        h, _ = layer_norm_named_forward(x, params, name + ".ln1")
        x = x + cached_attention(h, params, name + ".attn", config.n_head, kv, i)
        h, _ = layer_norm_named_forward(x, params, name + ".ln2")
        x = x + mlp_forward(h, params, name + ".mlp")[0]
    kv["length"] = L + t
    x, _ = layer_norm_named_forward(x, params, "gpt.ln_f")
    return x @ params["gpt.wte"].T


class NextTokenLogits:
    """Logits for the last position of growing sequences, with or without the KV cache.

    Call ``step(new_ids (B, t))`` with the prompt first, then one token at a time; it
    returns the logits (B, V) of the next token.
    """

    def __init__(self, params, config, batch, use_cache=True):
        self.params, self.config, self.use_cache = params, config, use_cache
        self.kv = new_kv_cache(params, config, batch) if use_cache else None
        self.seq = None  # the whole sequence so far, for the uncached path

    def step(self, new_ids):
        xp = get_array_module(self.params["gpt.wte"])
        new_ids = xp.asarray(new_ids)
        if self.use_cache:
            return gpt_forward_cached(new_ids, self.params, self.config, self.kv)[:, -1]
        self.seq = new_ids if self.seq is None else xp.concatenate([self.seq, new_ids], 1)
        check_ids(self.seq, self.config)
        return gpt_forward(self.seq, self.params, self.config)[0][:, -1]


# ---------------------------------------------------------------- choosing the next token

def check_sampling_args(temperature, top_k, top_p, cfg_scale=1.0):
    """Raise ConfigError for settings outside their ranges."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and not (isinstance(top_k, (int, float, np.integer)) and
                                  math.isfinite(top_k) and int(top_k) == top_k and top_k >= 1):
        raise ConfigError(f"top_k must be a whole number >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"top_p must lie in (0, 1], got {top_p}")
    if not cfg_scale >= 0:
        raise ConfigError(f"the guidance scale must be >= 0, got {cfg_scale}")


def filter_logits(logits, temperature=1.0, top_k=None, top_p=None, allowed=None):
    """logits (B, V) -> logits with disallowed tokens at -inf, divided by the temperature.

    allowed (V,) bool keeps sampling inside the right part of the vocabulary (image tokens
    inside an image). top_k keeps the k largest; top_p keeps the smallest set of tokens
    whose probability adds up to at least p (nucleus sampling).
    """
    xp = get_array_module(logits)
    logits = logits / temperature
    if allowed is not None:
        logits = xp.where(xp.asarray(allowed), logits, -xp.inf)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = xp.sort(logits, axis=-1)[:, -int(top_k)][:, None]
        logits = xp.where(logits < kth, -xp.inf, logits)
    if top_p is not None and top_p < 1:
        probs = softmax(logits)
        ranked = -xp.sort(-probs, axis=-1)                           # (B, V), largest first
        before = xp.cumsum(ranked, axis=-1) - ranked                 # mass of better tokens
        n_keep = (before < top_p).sum(axis=-1)                       # >= 1: the best is kept
        cutoff = ranked[xp.arange(ranked.shape[0]), n_keep - 1][:, None]
        logits = xp.where(probs < cutoff, -xp.inf, logits)
    return logits


def draw(logits, rng, greedy=False):
    """One token per row of logits (B, V): argmax if greedy, else a sample of softmax(logits).

    The uniform numbers come from the host generator rng, so a seed fixes the result on
    either backend; inverse-CDF sampling then picks the token on the device.
    """
    xp = get_array_module(logits)
    if greedy:
        return xp.argmax(logits, axis=-1)
    probs = softmax(logits.astype(xp.float64))
    cdf = xp.cumsum(probs, axis=-1)
    u = xp.asarray(rng.random(logits.shape[0]))[:, None] * cdf[:, -1:]
    return xp.minimum((cdf < u).sum(axis=-1), logits.shape[-1] - 1)


def guided(cond, uncond, scale):
    """Classifier-free guidance: uncond + scale * (cond - uncond); scale 1 is plain sampling."""
    return uncond + scale * (cond - uncond)
