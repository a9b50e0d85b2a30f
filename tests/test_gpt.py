"""The prior: end-to-end gradient check of the loss, the block and MLP pairs, the tied head,
causality, ignored targets, the context limit, the KV cache (the block and the model fed in
pieces) and parity with a PyTorch re-implementation."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_models as ref
from tinytok.errors import ConfigError, DTypeError, ShapeError
from tinytok.ops.attention import KVCache
from tinytok.prior.gpt import (GPTConfig, block_backward, block_forward, gpt_backward, gpt_config,
                               gpt_forward, gpt_loss_backward, gpt_loss_forward, init_gpt_params,
                               layer_norm_named_backward, layer_norm_named_forward, mlp_backward,
                               mlp_forward, new_kv_cache)
from tinytok.training.optim import zeros_like_params
from tinytok.gradcheck import assert_gradients_close, relative_error
from tinytok.ops import (cross_entropy_backward, cross_entropy_forward, embedding_backward,
                         embedding_forward, linear_backward, linear_forward)

TINY = GPTConfig("test-tiny", vocab_size=11, context=8, n_layer=2, n_head=2, n_embd=8)


def scaled_params(config, seed=0, dtype="float64"):
    """Random parameters big enough that LayerNorm, GELU and softmax are far from linear:
    weights N(0, 0.5), biases N(0, 0.3), LayerNorm gains 1 + N(0, 0.3)."""
    params = init_gpt_params(config, seed=seed, dtype="float64")
    rng = np.random.default_rng(seed + 1000)
    out = {}
    for k, v in params.items():
        if k.endswith(".g"):
            out[k] = 1 + 0.3 * rng.standard_normal(v.shape)
        elif k.endswith(".b") or ".b_" in k:
            out[k] = 0.3 * rng.standard_normal(v.shape)
        else:
            out[k] = 0.5 * rng.standard_normal(v.shape)
    return {k: v.astype(dtype) for k, v in out.items()}


def batch(config, seed=0, B=2, T=None, ignore=True):
    rng = np.random.default_rng(seed)
    T = T or config.context
    ids = rng.integers(0, config.vocab_size, (B, T))
    targets = rng.integers(0, config.vocab_size, (B, T))
    if ignore:
        targets[0, 1] = targets[1, -1] = -1
    return ids, targets


def loss_and_grads(ids, targets, params, config):
    loss, cache = gpt_loss_forward(ids, targets, params, config)
    logits = cache.logits
    grads = zeros_like_params(params)
    gpt_loss_backward(cache, grads, config)
    return float(loss), logits, grads


# --- end-to-end gradient check --------------------------------------------------------------

@pytest.mark.parametrize("T", [8, 5])  # the full context, and a shorter sequence
def test_gpt_loss_gradients_match_finite_differences_for_every_param(T):
    params = scaled_params(TINY)
    ids, targets = batch(TINY, T=T)
    _, _, grads = loss_and_grads(ids, targets, params, TINY)
    rng = np.random.default_rng(0)

    def loss(p):
        return float(gpt_loss_forward(ids, targets, p, TINY)[0])

    errors = {}
    for key in params:
        idx = ref.sample_indices(params[key].size, 30, rng)
        num = ref.numerical_param_gradient(loss, params, key, idx)
        errors[key] = relative_error(grads[key].reshape(-1)[idx], num)
    assert len(errors) == 4 + 12 * TINY.n_layer
    bad = {k: v for k, v in errors.items() if not v < 1e-6}
    assert not bad, f"{bad}; all: {errors}"
    # rows of wpe beyond T get no gradient
    np.testing.assert_array_equal(grads["gpt.wpe"][T:], 0)


@pytest.mark.parametrize("mask", ["full", "block"])
def test_gpt_loss_gradients_with_another_mask(mask):
    """The same model with the attention told to see every position ("full", a masked
    prior's) or a block-causal boolean mask (a next-scale prior's): float64 gradients of
    every parameter against central differences."""
    T = 6
    if mask == "block":   # three blocks of two: each sees its own block and those before
        mask = np.repeat(np.repeat(np.tril(np.ones((3, 3), bool)), 2, 0), 2, 1)
    params = scaled_params(TINY)
    ids, targets = batch(TINY, T=T)
    logits, cache = gpt_forward(ids, params, TINY, mask=mask)
    loss, cache = gpt_loss_forward(ids, targets, params, TINY, mask=mask)
    grads = zeros_like_params(params)
    gpt_loss_backward(cache, grads, TINY)
    rng = np.random.default_rng(1)

    def loss_of(p):
        return float(gpt_loss_forward(ids, targets, p, TINY, mask=mask)[0])

    for key in params:
        idx = ref.sample_indices(params[key].size, 12, rng)
        num = ref.numerical_param_gradient(loss_of, params, key, idx)
        assert relative_error(grads[key].reshape(-1)[idx], num) < 1e-6, key


def test_the_causal_mask_is_the_default_and_full_sees_the_future():
    params = scaled_params(TINY)
    ids, _ = batch(TINY)
    causal, _ = gpt_forward(ids, params, TINY)
    np.testing.assert_array_equal(gpt_forward(ids, params, TINY, mask="causal")[0], causal)
    full, _ = gpt_forward(ids, params, TINY, mask="full")
    changed = ids.copy()
    changed[:, -1] = (changed[:, -1] + 1) % TINY.vocab_size
    full2, _ = gpt_forward(changed, params, TINY, mask="full")
    assert np.abs(full2[:, 0] - full[:, 0]).max() > 1e-6      # the first token sees the last
    causal2, _ = gpt_forward(changed, params, TINY)
    np.testing.assert_array_equal(causal2[:, 0], causal[:, 0])    # with the causal mask not


# --- block, MLP and LayerNorm pairs ---------------------------------------------------------

def model_pair(forward, backward, keys, name, *extra):
    """A named model pair (x, params, name, ...) as an op pair (x, *arrays) for check_pair."""
    def f(x, *arrays):
        params = dict(zip(keys, arrays))
        y, cache = forward(x, params, name, *extra)
        return y, (cache, params)

    def b(dy, cache):
        cache, params = cache
        grads = zeros_like_params(params)
        dy_before = dy.copy()
        dx = backward(dy, cache, grads, name)
        np.testing.assert_array_equal(dy, dy_before)  # backward must not write into dy
        return (dx,) + tuple(grads[k] for k in keys)
    return f, b


def x_in(seed=1, B=2, T=5, C=8):
    return np.random.default_rng(seed).standard_normal((B, T, C)) * 1.5


def test_block_pair():
    params = scaled_params(TINY)
    keys = [k for k in params if k.startswith("gpt.h1.")]
    f, b = model_pair(block_forward, block_backward, keys, "gpt.h1", TINY.n_head)
    assert_gradients_close(f, b, [x_in()] + [params[k] for k in keys], tol=1e-7)


def test_mlp_pair():
    params = scaled_params(TINY)
    keys = [k for k in params if k.startswith("gpt.h0.mlp.")]
    f, b = model_pair(mlp_forward, mlp_backward, keys, "gpt.h0.mlp")
    assert_gradients_close(f, b, [x_in(2)] + [params[k] for k in keys], tol=1e-7)


def test_layer_norm_named_pair():
    params = scaled_params(TINY)
    keys = ["gpt.ln_f.g", "gpt.ln_f.b"]
    f, b = model_pair(layer_norm_named_forward, layer_norm_named_backward, keys, "gpt.ln_f")
    assert_gradients_close(f, b, [x_in(3)] + [params[k] for k in keys], tol=1e-7)


# --- the tied head --------------------------------------------------------------------------

def untied_loss_and_grads(ids, targets, params, head, config):
    """The same model with a separate output head: returns loss, d/d wte (embedding use only)
    and d/d head."""
    T = ids.shape[1]
    tok, c_tok = embedding_forward(ids, params["gpt.wte"])
    x = tok + params["gpt.wpe"][:T]
    caches = []
    for i in range(config.n_layer):
        x, c = block_forward(x, params, f"gpt.h{i}", config.n_head)
        caches.append(c)
    x, c_lnf = layer_norm_named_forward(x, params, "gpt.ln_f")
    logits, c_head = linear_forward(x, head.T, None)
    loss, c_loss = cross_entropy_forward(logits, targets)
    grads = zeros_like_params(params)
    dx, dhead_t, _ = linear_backward(cross_entropy_backward(1.0, c_loss), c_head)
    dx = layer_norm_named_backward(dx, c_lnf, grads, "gpt.ln_f")
    for i in reversed(range(config.n_layer)):
        dx = block_backward(dx, caches[i], grads, f"gpt.h{i}")
    return float(loss), embedding_backward(dx, c_tok), dhead_t.T


def test_tied_embedding_gradient_is_the_sum_of_both_uses():
    params = scaled_params(TINY)
    ids, targets = batch(TINY, T=6)
    loss, _, grads = loss_and_grads(ids, targets, params, TINY)
    head = params["gpt.wte"].copy()
    loss_u, d_embed, d_head = untied_loss_and_grads(ids, targets, params, head, TINY)
    assert loss_u == pytest.approx(loss, rel=1e-12)
    assert relative_error(grads["gpt.wte"], d_embed + d_head) < 1e-12
    # both uses matter: neither alone is the tied gradient
    assert relative_error(grads["gpt.wte"], d_embed) > 1e-2
    assert relative_error(grads["gpt.wte"], d_head) > 1e-2
    # and the head's share is right on its own (finite differences of the untied model)
    idx = np.arange(0, head.size, 3)
    num = ref.numerical_param_gradient(
        lambda p: untied_loss_and_grads(ids, targets, params, p["head"], TINY)[0],
        {"head": head}, "head", idx)
    assert relative_error(d_head.reshape(-1)[idx], num) < 1e-6


# --- causality, ignored targets, the context ------------------------------------------------

@pytest.mark.parametrize("t", [0, 3, 6])
def test_changing_a_later_token_leaves_earlier_logits_unchanged(t):
    params = scaled_params(TINY)
    ids, _ = batch(TINY)
    logits, _ = gpt_forward(ids, params, TINY)
    changed = ids.copy()
    changed[:, t + 1] = (changed[:, t + 1] + 1) % TINY.vocab_size
    logits2, _ = gpt_forward(changed, params, TINY)
    np.testing.assert_allclose(logits2[:, :t + 1], logits[:, :t + 1], rtol=0, atol=1e-12)
    assert np.abs(logits2[:, t + 1] - logits[:, t + 1]).max() > 1e-3


def test_ignored_targets_do_not_contribute():
    params = scaled_params(TINY)
    ids, targets = batch(TINY, T=7, ignore=False)
    targets[:, -1] = -1  # the last position counts nowhere
    targets[1, 2] = -1
    loss, logits, grads = loss_and_grads(ids, targets, params, TINY)
    # the loss is the mean over kept positions only
    keep = targets != -1
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.where(keep, targets, 0)[..., None], -1)[..., 0]
    assert loss == pytest.approx(nll[keep].mean(), rel=1e-12)
    # with the last position ignored, the model might as well not have seen it (causality)
    loss_s, _, grads_s = loss_and_grads(ids[:, :-1], targets[:, :-1], params, TINY)
    assert loss_s == pytest.approx(loss, rel=1e-12)
    for k in params:
        assert relative_error(grads[k], grads_s[k]) < 1e-12, k
    # and what the model predicts at ignored positions is irrelevant: real targets there
    # would change the loss
    filled = np.where(keep, targets, 0)
    assert loss_and_grads(ids, filled, params, TINY)[0] != pytest.approx(loss, rel=1e-6)


def test_sequences_longer_than_the_context_are_a_shape_error():
    params = scaled_params(TINY)
    ids = np.zeros((1, TINY.context + 1), dtype=np.int64)
    with pytest.raises(ShapeError, match="context"):
        gpt_forward(ids, params, TINY)
    with pytest.raises(ShapeError):
        gpt_loss_forward(ids, ids, params, TINY)
    gpt_forward(ids[:, :TINY.context], params, TINY)  # exactly the context is fine


def test_ids_must_be_a_2d_int_array():
    params = scaled_params(TINY)
    with pytest.raises(DTypeError):
        gpt_forward(np.zeros((1, 3)), params, TINY)
    with pytest.raises(ShapeError):
        gpt_forward(np.zeros(3, dtype=np.int64), params, TINY)


# --- the KV cache ---------------------------------------------------------------------------

@st.composite
def cuts_of(draw, T):
    """The ends of the pieces a sequence of T tokens is fed in: a prompt, then any split."""
    inner = draw(st.sets(st.integers(1, T - 1), max_size=T - 1)) if T > 1 else set()
    return sorted(inner) + [T]


@settings(max_examples=25, deadline=None)
@given(data=st.data(), T=st.integers(1, 8), seed=st.integers(0, 2 ** 16))
def test_block_fed_in_pieces_through_a_kv_cache_equals_the_whole(data, T, seed):
    params = scaled_params(TINY, seed=seed % 7)
    x = x_in(seed, T=T)
    want, _ = block_forward(x, params, "gpt.h1", TINY.n_head)
    kv = KVCache.empty((2, TINY.n_head, TINY.context, TINY.n_embd // TINY.n_head), like=x)
    got, start = [], 0
    for end in data.draw(cuts_of(T)):
        y, _ = block_forward(x[:, start:end], params, "gpt.h1", TINY.n_head, kv)
        got.append(y)
        start = end
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, rtol=1e-12, atol=1e-12)
    assert kv.length == T


@settings(max_examples=25, deadline=None)
@given(data=st.data(), T=st.integers(1, 8), seed=st.integers(0, 2 ** 16))
def test_model_fed_in_pieces_through_a_kv_cache_equals_the_whole(data, T, seed):
    """Each piece's tokens get their positions after the cached ones: the logits are the
    plain forward's, and every layer's cache holds the T tokens."""
    params = scaled_params(TINY, seed=seed % 7)
    ids, _ = batch(TINY, seed=seed, T=T, ignore=False)
    want, _ = gpt_forward(ids, params, TINY)
    kv = new_kv_cache(params, TINY, 2)
    got, start = [], 0
    for end in data.draw(cuts_of(T)):
        logits, _ = gpt_forward(ids[:, start:end], params, TINY, kv)
        got.append(logits)
        start = end
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, rtol=1e-12, atol=1e-12)
    assert [layer.length for layer in kv] == [T] * TINY.n_layer


def test_new_kv_cache_is_empty_room_for_the_context_on_the_params_dtype():
    params = scaled_params(TINY, dtype="float32")
    kv = new_kv_cache(params, TINY, 3)
    assert len(kv) == TINY.n_layer
    for layer in kv:
        assert layer.length == 0
        assert layer.k.shape == layer.v.shape == (3, 2, TINY.context, 4)
        assert layer.k.dtype == np.float32 and not layer.k.any()


def test_forwards_with_a_kv_cache_give_no_cache_and_the_backwards_say_so():
    params = scaled_params(TINY)
    ids, _ = batch(TINY, T=4)
    kv = new_kv_cache(params, TINY, 2)
    logits, cache = gpt_forward(ids, params, TINY, kv)
    assert cache is None
    y, block_cache = block_forward(x_in(T=2), params, "gpt.h1", TINY.n_head,
                                   KVCache.empty((2, 2, 8, 4), like=logits))
    assert block_cache is None
    grads = zeros_like_params(params)
    with pytest.raises(ConfigError, match="gpt_backward: no cache, as its forward ran with a "
                                          "KV cache.*without kv to train"):
        gpt_backward(np.ones_like(logits), cache, grads, TINY)
    with pytest.raises(ConfigError, match="block_backward: no cache"):
        block_backward(np.ones_like(y), block_cache, grads, "gpt.h1")
    assert not any(g.any() for g in grads.values())


def test_kv_cache_misuse_is_a_clear_error():
    params = scaled_params(TINY)
    ids, _ = batch(TINY, T=5)
    kv = new_kv_cache(params, TINY, 2)
    gpt_forward(ids, params, TINY, kv)
    with pytest.raises(ConfigError, match="5 tokens and 4 more would run past the context of 8"):
        gpt_forward(ids[:, :4], params, TINY, kv)
    with pytest.raises(ShapeError, match="KV cache holds 2 sequences"):
        gpt_forward(ids[:1, :1], params, TINY, kv)
    with pytest.raises(ShapeError, match="the KV cache has 1 layers, the model 2"):
        gpt_forward(ids, params, TINY, kv[:1])
    assert [layer.length for layer in kv] == [5, 5]          # nothing was fed


# --- parameters and configs -----------------------------------------------------------------

def test_init_shapes_determinism_and_dtype():
    cfg = gpt_config("gpt-tiny", vocab_size=50)
    a = init_gpt_params(cfg, seed=1)
    b = init_gpt_params(cfg, seed=1)
    assert a["gpt.wte"].shape == (50, 32) and a["gpt.wpe"].shape == (80, 32)
    assert a["gpt.h1.attn.w_qkv"].shape == (32, 96)
    assert a["gpt.h0.mlp.fc.w"].shape == (32, 128)
    assert "gpt.head.w" not in a and not any("head" in k for k in a)  # tied: no head param
    for k in a:
        assert a[k].dtype == np.float32
        np.testing.assert_array_equal(a[k], b[k])
    params = init_gpt_params(cfg, seed=1)
    loss, cache = gpt_loss_forward(*batch(cfg, T=5), params, cfg)
    logits = cache.logits
    grads = zeros_like_params(params)
    gpt_loss_backward(cache, grads, cfg)
    assert logits.dtype == loss.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())
    # at init the loss is close to log V (nearly uniform predictions)
    assert float(loss) == pytest.approx(math.log(50), rel=0.05)


def test_gpt_config_names_and_overrides():
    assert gpt_config("gpt-ref") == GPTConfig()
    assert gpt_config("gpt-tiny", context=20).context == 20
    assert gpt_config({"name": "x", "n_embd": 16}).n_embd == 16
    with pytest.raises(ConfigError):
        gpt_config("gpt-huge")


# --- parity with PyTorch --------------------------------------------------------------------

def torch_gpt_loss(torch, ids, targets, P, config):
    """The same architecture written with torch ops, for autograd to differentiate."""
    F = torch.nn.functional
    B, T = ids.shape
    C, nh = config.n_embd, config.n_head
    hs = C // nh
    x = P["gpt.wte"][ids] + P["gpt.wpe"][:T]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for i in range(config.n_layer):
        h = f"gpt.h{i}."
        a = F.layer_norm(x, (C,), P[h + "ln1.g"], P[h + "ln1.b"], eps=1e-5)
        q, k, v = (a @ P[h + "attn.w_qkv"] + P[h + "attn.b_qkv"]).split(C, dim=-1)
        q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ P[h + "attn.w_proj"] + P[h + "attn.b_proj"]
        m = F.layer_norm(x, (C,), P[h + "ln2.g"], P[h + "ln2.b"], eps=1e-5)
        m = F.gelu(m @ P[h + "mlp.fc.w"] + P[h + "mlp.fc.b"], approximate="tanh")
        x = x + m @ P[h + "mlp.proj.w"] + P[h + "mlp.proj.b"]
    x = F.layer_norm(x, (C,), P["gpt.ln_f.g"], P["gpt.ln_f.b"], eps=1e-5)
    logits = x @ P["gpt.wte"].T
    loss = F.cross_entropy(logits.reshape(-1, config.vocab_size), targets.reshape(-1),
                           ignore_index=-1)
    return loss, logits


def test_matches_pytorch_in_float32():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    cfg = GPTConfig("parity", vocab_size=13, context=10, n_layer=2, n_head=2, n_embd=16)
    params = scaled_params(cfg, seed=3, dtype="float32")
    ids, targets = batch(cfg, seed=4, B=3, T=9)
    loss, logits, grads = loss_and_grads(ids, targets, params, cfg)

    P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    t_loss, t_logits = torch_gpt_loss(torch, torch.from_numpy(ids), torch.from_numpy(targets),
                                      P, cfg)
    t_loss.backward()
    assert logits.dtype == np.float32
    assert relative_error(logits, t_logits.detach().numpy()) < 1e-5
    assert loss == pytest.approx(t_loss.item(), rel=1e-5)
    errors = {k: relative_error(grads[k], P[k].grad.numpy()) for k in params}
    bad = {k: v for k, v in errors.items() if not v < 1e-4}
    assert not bad, f"{bad}; all: {errors}"
