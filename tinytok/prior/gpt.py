"""The prior: a small causal transformer (nanoGPT-style) over one stream of text and image tokens.

    ids (B, T) -> token + position embeddings -> n_layer pre-LayerNorm blocks
               -> final LayerNorm -> logits (B, T, V) over the joint vocabulary

A block is  x = x + attention(ln1(x));  x = x + mlp(ln2(x)),  the MLP being
linear (C -> 4C), GELU, linear (4C -> C). The output head reuses the token embedding
(weight tying, as in GPT-2 and nanoGPT): logits = ln_f(x) @ wte.T. That weight is therefore
used twice, and its gradient is simply the sum of both uses, added into the same grads entry.

Blocks and the model follow the tokenizer's contract: ``thing_forward(x, params, ...) ->
(y, cache)``, with a named cache, and ``thing_backward(dy, cache, grads, ...) -> dx``, adding
parameter gradients into grads.

Sampling runs the same forwards with a KV cache (new_kv_cache: one attention KVCache per
layer): the ids are then the next tokens after those the cache holds, each layer's attention
reads the earlier tokens' keys and values from it, and only the new tokens go through the
model. Such a forward is for sampling only: it returns no cache (None), and the backwards
refuse one.
"""
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from tinytok.backend import rng as host_rng, to_device
from tinytok.errors import ConfigError, ShapeError
from tinytok.ops import (cross_entropy_backward, cross_entropy_forward, embedding_backward,
                         embedding_forward, gelu_backward, gelu_forward, layer_norm_backward,
                         layer_norm_forward, linear_backward, linear_forward,
                         self_attention_backward, self_attention_forward)
from tinytok.ops.attention import KVCache, require_backward_cache
from tinytok.ops.checks import require_int, require_ndim, require_positive_int


@dataclass
class GPTConfig:
    """Sizes of a prior. The defaults are gpt-ref, the benchmarked prior; vocab_size comes
    from the Vocab."""
    name: str = "gpt-ref"
    vocab_size: int = 600
    context: int = 80       # 16 text tokens + 64 image tokens
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    scales: tuple = ()      # a next-scale prior's map sizes (prior/scales.py); () otherwise

    def __post_init__(self):
        # each a Python int (NumPy's are taken too), as the checkpoint's JSON holds it
        for name in ("vocab_size", "context", "n_layer", "n_head", "n_embd"):
            setattr(self, name, require_positive_int(f"prior config: {name}",
                                                     getattr(self, name)))
        self.scales = tuple(require_positive_int("prior config: scales", s)
                            for s in self.scales)
        if self.n_embd % self.n_head:
            raise ConfigError(f"prior config: n_head={self.n_head} must divide "
                              f"n_embd={self.n_embd}")


CONFIGS = {
    "gpt-ref": GPTConfig(),
    "gpt-small": GPTConfig("gpt-small", n_layer=3, n_head=4, n_embd=96),
    "gpt-tiny": GPTConfig("gpt-tiny", n_layer=2, n_head=2, n_embd=32),
}


def gpt_config(name_or_dict, **overrides):
    """A GPTConfig from a name in CONFIGS or a dict of its fields, with overrides applied."""
    if isinstance(name_or_dict, GPTConfig):
        base = asdict(name_or_dict)
    elif isinstance(name_or_dict, dict):
        base = dict(name_or_dict)
    elif name_or_dict in CONFIGS:
        base = asdict(CONFIGS[name_or_dict])
    else:
        raise ConfigError(f"unknown prior config {name_or_dict!r}; choose one of "
                          f"{', '.join(CONFIGS)}")
    base.update(overrides)
    unknown = set(base) - set(GPTConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown prior config fields: {', '.join(sorted(unknown))}")
    return GPTConfig(**base)


def config_dict(config):
    """A JSON-able dict of a config, for checkpoints: scales (a list) only for a next-scale
    prior, so the other priors' configs read as before they existed."""
    d = asdict(config)
    d["scales"] = list(config.scales)
    if not config.scales:
        del d["scales"]
    return d


def init_gpt_params(config, seed=0, dtype="float32"):
    """Fresh parameters (nanoGPT's init): N(0, 0.02) weights, zero biases, unit LayerNorm gains.

    The projections back into the residual stream get a smaller std, 0.02 / sqrt(2 n_layer),
    so the stream's variance does not grow with depth.
    """
    c = config
    rng = host_rng(seed)
    C, V = c.n_embd, c.vocab_size
    normal = lambda *shape, std=0.02: rng.normal(0.0, std, shape)
    proj_std = 0.02 / np.sqrt(2 * c.n_layer)
    p = {"gpt.wte": normal(V, C), "gpt.wpe": normal(c.context, C)}
    for i in range(c.n_layer):
        h = f"gpt.h{i}"
        p[h + ".ln1.g"], p[h + ".ln1.b"] = np.ones(C), np.zeros(C)
        p[h + ".attn.w_qkv"], p[h + ".attn.b_qkv"] = normal(C, 3 * C), np.zeros(3 * C)
        p[h + ".attn.w_proj"], p[h + ".attn.b_proj"] = normal(C, C, std=proj_std), np.zeros(C)
        p[h + ".ln2.g"], p[h + ".ln2.b"] = np.ones(C), np.zeros(C)
        p[h + ".mlp.fc.w"], p[h + ".mlp.fc.b"] = normal(C, 4 * C), np.zeros(4 * C)
        p[h + ".mlp.proj.w"] = normal(4 * C, C, std=proj_std)
        p[h + ".mlp.proj.b"] = np.zeros(C)
    p["gpt.ln_f.g"], p["gpt.ln_f.b"] = np.ones(C), np.zeros(C)
    return {k: to_device(v, dtype=dtype) for k, v in p.items()}


def _add(grads, name, g):
    grads[name] += g


# ---------------------------------------------------------------- the MLP and the block

class MlpCache(NamedTuple):
    fc: tuple      # the first linear layer's cache, C -> 4C
    gelu: tuple    # GELU's
    proj: tuple    # the second linear layer's, 4C -> C


def mlp_forward(x, params, name):
    """x (B, T, C) -> linear to 4C, GELU, linear back to C."""
    h, c_fc = linear_forward(x, params[name + ".fc.w"], params[name + ".fc.b"])    # (B, T, 4C)
    h, c_gelu = gelu_forward(h)
    y, c_proj = linear_forward(h, params[name + ".proj.w"], params[name + ".proj.b"])  # (B, T, C)
    return y, MlpCache(c_fc, c_gelu, c_proj)


def mlp_backward(dy, cache, grads, name):
    """The mirror: the second linear layer, GELU, the first; dx (B, T, C)."""
    dh, dw, db = linear_backward(dy, cache.proj)
    _add(grads, name + ".proj.w", dw); _add(grads, name + ".proj.b", db)
    dh = gelu_backward(dh, cache.gelu)
    dx, dw, db = linear_backward(dh, cache.fc)
    _add(grads, name + ".fc.w", dw); _add(grads, name + ".fc.b", db)
    return dx


def attention_forward(x, params, name, n_head, kv=None, mask="causal"):
    """The attention op with this block's named parameters (and its layer's KVCache).
    mask: what each position may see, as self_attention takes it: "causal" (the raster
    prior's), "full", or a boolean (T_q, T_k) array."""
    return self_attention_forward(
        x, params[name + ".w_qkv"], params[name + ".b_qkv"],
        params[name + ".w_proj"], params[name + ".b_proj"], n_head, mask=mask, kv=kv)


def attention_backward(dy, cache, grads, name):
    dx, dw_qkv, db_qkv, dw_proj, db_proj = self_attention_backward(dy, cache)
    _add(grads, name + ".w_qkv", dw_qkv); _add(grads, name + ".b_qkv", db_qkv)
    _add(grads, name + ".w_proj", dw_proj); _add(grads, name + ".b_proj", db_proj)
    return dx


def layer_norm_named_forward(x, params, name):
    return layer_norm_forward(x, params[name + ".g"], params[name + ".b"])


def layer_norm_named_backward(dy, cache, grads, name):
    dx, dg, db = layer_norm_backward(dy, cache)
    _add(grads, name + ".g", dg); _add(grads, name + ".b", db)
    return dx


class BlockCache(NamedTuple):
    ln1: tuple     # layer norm before attention
    attn: tuple    # self-attention (causal unless asked otherwise)
    ln2: tuple     # layer norm before the MLP
    mlp: MlpCache


def block_forward(x, params, name, n_head, kv=None, mask="causal"):
    """x (B, T, C) -> x + attn(ln1(x)), then + mlp(ln2(.)). Same shape out.

    kv: this layer's KVCache, when sampling: x is then the tokens after those it holds,
    and the forward returns no cache (None), as the attention does. mask: the attention's
    (attention_forward)."""
    h, c_ln1 = layer_norm_named_forward(x, params, name + ".ln1")
    a, c_attn = attention_forward(h, params, name + ".attn", n_head, kv, mask)
    x = x + a
    h, c_ln2 = layer_norm_named_forward(x, params, name + ".ln2")
    m, c_mlp = mlp_forward(h, params, name + ".mlp")
    return x + m, (BlockCache(c_ln1, c_attn, c_ln2, c_mlp) if kv is None else None)


def block_backward(dy, cache, grads, name):
    """The mirror: each residual branch adds its dx to the gradient flowing straight through."""
    require_backward_cache(cache, "block_backward")
    dh = mlp_backward(dy, cache.mlp, grads, name + ".mlp")
    dx = dy + layer_norm_named_backward(dh, cache.ln2, grads, name + ".ln2")
    dh = attention_backward(dx, cache.attn, grads, name + ".attn")
    return dx + layer_norm_named_backward(dh, cache.ln1, grads, name + ".ln1")


# ---------------------------------------------------------------- the model

def check_ids(ids, config):
    """ids must be a (B, T) integer array with 1 <= T <= context."""
    require_int("ids", ids)
    require_ndim("ids", ids, 2, "(B, T)")
    if not 1 <= ids.shape[1] <= config.context:
        raise ShapeError(f"sequence length T={ids.shape[1]} must lie in [1, "
                         f"{config.context}] (the model's context)")


def new_kv_cache(params, config, batch):
    """An empty KV cache for batch sequences: one KVCache per layer, room for the context."""
    shape = (batch, config.n_head, config.context, config.n_embd // config.n_head)
    return [KVCache.empty(shape, like=params["gpt.wte"]) for _ in range(config.n_layer)]


def check_kv(kv, T, config):
    """kv must be one KVCache per layer with room for T more tokens; returns how many it
    holds."""
    if len(kv) != config.n_layer:
        raise ShapeError(f"the KV cache has {len(kv)} layers, the model {config.n_layer}")
    past = kv[0].length
    if past + T > config.context:
        raise ConfigError(f"{past} tokens and {T} more would run past the context of "
                          f"{config.context} tokens")
    return past


class TrunkCache(NamedTuple):
    blocks: list    # one BlockCache per layer
    ln_f: tuple     # the final layer norm's
    head: tuple     # the tied head's (a linear layer with wte^T as its weight)


class GPTCache(NamedTuple):
    tok: tuple          # the token embedding's
    trunk: TrunkCache   # the blocks, the final layer norm and the head
    T: int              # the sequence length (rows of the position table used)


def token_embedding_forward(ids, params, past=0):
    """ids (B, T) -> x (B, T, C) = wte[ids] + wpe[past:past + T] (position P + t gets row
    P + t), and the token lookup's cache."""
    tok, c_tok = embedding_forward(ids, params["gpt.wte"])
    return tok + params["gpt.wpe"][past:past + ids.shape[1]], c_tok


def token_embedding_backward(dx, cache, grads):
    """The mirror (from position 0): the position rows get dx summed over the batch, the
    token table its scatter (wte's second use, after the tied head's)."""
    grads["gpt.wpe"][:dx.shape[1]] += dx.sum(axis=0)                 # (T, C): summed over B
    _add(grads, "gpt.wte", embedding_backward(dx, cache))


def gpt_forward(ids, params, config, kv=None, mask="causal"):
    """ids (B, T) int -> logits (B, T, V), cache.

    kv (new_kv_cache's, for sampling): ids are the T tokens after the P the cache holds,
    position P + t gets row P + t of the position table, the cache then holds P + T, and
    the cache returned is None (forward-only). mask: what each position may see in every
    block: "causal" (the raster prior: each token its past), "full" (every token all of
    them), or a boolean (T, P + T) array (attention_forward).
    """
    check_ids(ids, config)
    T = ids.shape[1]
    past = 0 if kv is None else check_kv(kv, T, config)
    x, c_tok = token_embedding_forward(ids, params, past)           # (B, T, C)
    logits, c_trunk = trunk_forward(x, params, config, kv, mask)
    return logits, (GPTCache(c_tok, c_trunk, T) if kv is None else None)


def gpt_backward(dlogits, cache, grads, config):
    """dlogits (B, T, V) -> parameter gradients added into grads."""
    require_backward_cache(cache, "gpt_backward")
    dx = trunk_backward(dlogits, cache.trunk, grads, config)
    token_embedding_backward(dx, cache.tok, grads)


def trunk_forward(x, params, config, kv=None, mask="causal"):
    """The model after its inputs: x (B, T, C), the embedded positions -> the blocks, the
    final layer norm and the tied head -> logits (B, T, V), cache (None with kv).

    gpt_forward's inputs are token and position embeddings; a prior whose inputs are not
    all tokens (the next-scale prior's maps, prior/scales.py) embeds its own and runs the
    same trunk."""
    c_blocks = []
    for i in range(config.n_layer):
        x, c = block_forward(x, params, f"gpt.h{i}", config.n_head,
                             None if kv is None else kv[i], mask)
        c_blocks.append(c)
    x, c_lnf = layer_norm_named_forward(x, params, "gpt.ln_f")
    if kv is not None:  # sampling: the tied head as one product per sequence, the rounding
        # the shipped samples were drawn with (one product of all rows differs by ~1e-6)
        return x @ params["gpt.wte"].T, None
    logits, c_head = linear_forward(x, params["gpt.wte"].T, None)    # tied head: (B, T, V)
    return logits, TrunkCache(c_blocks, c_lnf, c_head)


def trunk_backward(dlogits, cache, grads, config):
    """The mirror of trunk_forward: dlogits (B, T, V) -> dx (B, T, C); the head's gradient
    is the first use of wte (the embedding, if any, adds the second)."""
    dx, dw_head, _ = linear_backward(dlogits, cache.head)
    _add(grads, "gpt.wte", dw_head.T)                                # first use of wte
    dx = layer_norm_named_backward(dx, cache.ln_f, grads, "gpt.ln_f")
    for i in reversed(range(config.n_layer)):
        dx = block_backward(dx, cache.blocks[i], grads, f"gpt.h{i}")
    return dx


class GPTLossCache(NamedTuple):
    model: GPTCache
    loss: tuple          # cross-entropy's
    logits: object       # (B, T, V): what the model predicted, for a caller to look at


def gpt_loss_forward(ids, targets, params, config, mask="causal"):
    """Mean cross-entropy over targets != -1: of the next token with the causal mask, of
    whatever targets the caller sets with another (gpt_forward's mask).

    ids, targets (B, T) -> loss (0-d), cache (its .logits are the model's (B, T, V)).
    """
    logits, c_model = gpt_forward(ids, params, config, mask=mask)
    loss, c_loss = cross_entropy_forward(logits, targets, ignore_index=-1)
    return loss, GPTLossCache(c_model, c_loss, logits)


def gpt_loss_backward(cache, grads, config, dloss=1.0):
    """Gradients of the mean loss with respect to every parameter, added into grads."""
    gpt_backward(cross_entropy_backward(dloss, cache.loss), cache.model, grads, config)
