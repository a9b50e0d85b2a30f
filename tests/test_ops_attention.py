"""self_attention and its causal name: gradients, a per-head loop reference for each mask
(causal, full, a given boolean one), the causal path unchanged to the bit, what a mask hides,
the KV cache (the same outputs fed in pieces), errors."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import reference as ref
from tinytok.backend import get_array_module, to_numpy
from tinytok.errors import ConfigError, DTypeError, ShapeError, TinytokError
from tinytok.gradcheck import assert_gradients_close
from tinytok.ops import (causal_self_attention_backward, causal_self_attention_forward,
                         self_attention_backward, self_attention_forward)
from tinytok.ops.attention import KVCache, causal_mask, merge_heads, split_heads
from tinytok.ops.linear import linear_forward
from tinytok.ops.softmax import softmax


def attention_inputs(B, T, n_head, hs, seed, xp=np, dtype=np.float64):
    """x (B, T, C) and the four parameters, C = n_head * hs, on xp."""
    C = n_head * hs
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((B, T, C)),
              rng.standard_normal((C, 3 * C)) / np.sqrt(C),
              rng.standard_normal(3 * C) * 0.1,
              rng.standard_normal((C, C)) / np.sqrt(C),
              rng.standard_normal(C) * 0.1]
    return [xp.asarray(a, dtype=dtype) for a in arrays]


shapes = st.tuples(st.integers(1, 2), st.integers(1, 6), st.integers(1, 3),
                   st.integers(1, 3), st.integers(0, 2 ** 16))


@settings(max_examples=30, deadline=None)
@given(shape=shapes)
def test_attention_gradients_match_finite_differences(xp, shape):
    B, T, n_head, hs, seed = shape
    args = attention_inputs(B, T, n_head, hs, seed, xp)
    assert_gradients_close(causal_self_attention_forward, causal_self_attention_backward,
                           args, {"n_head": n_head}, seed=seed)


@settings(max_examples=25, deadline=None)
@given(shape=shapes)
def test_attention_matches_per_head_loop(xp, shape):
    B, T, n_head, hs, seed = shape
    args = attention_inputs(B, T, n_head, hs, seed, xp)
    out, _ = causal_self_attention_forward(*args, n_head=n_head)
    expected = ref.causal_self_attention(*map(to_numpy, args), n_head=n_head)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-10, atol=1e-12)


def test_attention_with_one_position_returns_the_projected_value(xp):
    """At T=1 the only visible key is the position itself: y = v @ w_proj + b_proj."""
    x, w_qkv, b_qkv, w_proj, b_proj = map(to_numpy, attention_inputs(3, 1, 2, 2, 0))
    out, _ = causal_self_attention_forward(*(xp.asarray(a) for a in
                                             (x, w_qkv, b_qkv, w_proj, b_proj)), n_head=2)
    v = x @ w_qkv[:, 8:] + b_qkv[8:]
    np.testing.assert_allclose(to_numpy(out), v @ w_proj + b_proj, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("t", range(6))
def test_causal_mask_hides_the_future_bit_for_bit(xp, t):
    """Changing tokens t+1.. leaves the outputs at positions <= t exactly unchanged."""
    x, *params = attention_inputs(2, 7, 2, 3, seed=t, xp=xp)
    before, _ = causal_self_attention_forward(x, *params, n_head=2)
    changed = to_numpy(x).copy()
    changed[:, t + 1:] = np.random.default_rng(100 + t).standard_normal(changed[:, t + 1:].shape)
    after, _ = causal_self_attention_forward(xp.asarray(changed), *params, n_head=2)
    before, after = to_numpy(before), to_numpy(after)
    assert np.array_equal(before[:, :t + 1], after[:, :t + 1])
    assert not np.allclose(before[:, t + 1:], after[:, t + 1:])


@pytest.mark.parametrize("t", [0, 3, 6])
def test_future_positions_get_no_gradient_from_the_past(xp, t):
    """A gradient at position t reaches x only at positions <= t, exactly zero after."""
    args = attention_inputs(2, 7, 2, 3, seed=1, xp=xp)
    out, cache = causal_self_attention_forward(*args, n_head=2)
    dout = np.zeros(out.shape)
    dout[:, t] = np.random.default_rng(2).standard_normal(dout[:, t].shape)
    dx = to_numpy(causal_self_attention_backward(xp.asarray(dout), cache)[0])
    assert np.all(dx[:, t + 1:] == 0)
    assert np.all(np.abs(dx[:, :t + 1]).sum(axis=-1) > 0)


def test_heads_use_consecutive_column_chunks():
    """Zeroing head 1's query/key/value columns changes head 1's output channels only."""
    args = [a.copy() for a in attention_inputs(1, 4, 2, 3, seed=5)]
    x, w_qkv, b_qkv, _, b_proj = args
    w_proj, b_proj = np.eye(6), np.zeros(6)  # identity projection exposes the heads
    y, _ = causal_self_attention_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_head=2)
    w_qkv2 = w_qkv.copy()
    for part in range(3):                    # q, k, v blocks, head 1 = channels 3..5
        w_qkv2[:, part * 6 + 3:part * 6 + 6] *= 2.0
    y2, _ = causal_self_attention_forward(x, w_qkv2, b_qkv, w_proj, b_proj, n_head=2)
    assert np.array_equal(y[..., :3], y2[..., :3])
    assert not np.allclose(y[..., 3:], y2[..., 3:])


# --- the mask: causal, full or given ---------------------------------------------------------

@st.composite
def masked_shapes(draw):
    """B, T, n_head, hs, seed and a boolean (T, T) mask with a True in every row (the rest
    drawn freely: a query may skip itself, see the future, or see one key only)."""
    B, T, n_head, hs, seed = draw(shapes)
    mask = draw(hnp.arrays(bool, (T, T)))
    mask[np.arange(T), draw(st.lists(st.integers(0, T - 1), min_size=T, max_size=T))] = True
    return B, T, n_head, hs, seed, mask


def allowed(mask, T):
    """The (T, T) boolean pattern a mask argument stands for."""
    if isinstance(mask, str):
        return np.tril(np.ones((T, T), bool)) if mask == "causal" else np.ones((T, T), bool)
    return mask


@pytest.mark.parametrize("name", ["causal", "full"])
@settings(max_examples=20, deadline=None)
@given(shape=shapes)
def test_named_masks_gradients_match_finite_differences(xp, name, shape):
    B, T, n_head, hs, seed = shape
    args = attention_inputs(B, T, n_head, hs, seed, xp)
    assert_gradients_close(self_attention_forward, self_attention_backward, args,
                           {"n_head": n_head, "mask": name}, seed=seed)


@settings(max_examples=30, deadline=None)
@given(case=masked_shapes())
def test_given_mask_gradients_match_finite_differences(xp, case):
    B, T, n_head, hs, seed, mask = case
    args = attention_inputs(B, T, n_head, hs, seed, xp)
    assert_gradients_close(self_attention_forward, self_attention_backward, args,
                           {"n_head": n_head, "mask": mask}, seed=seed)


@pytest.mark.parametrize("name", ["causal", "full", "given"])
@settings(max_examples=15, deadline=None)
@given(case=masked_shapes())
def test_each_mask_matches_the_per_head_loop(xp, name, case):
    """The loops visit, for query t, exactly the keys s with allowed[t, s]."""
    B, T, n_head, hs, seed, given_mask = case
    mask = given_mask if name == "given" else name
    args = attention_inputs(B, T, n_head, hs, seed, xp)
    out, _ = self_attention_forward(*args, n_head=n_head, mask=mask)
    expected = ref.masked_self_attention(*map(to_numpy, args), n_head=n_head,
                                         allowed=allowed(mask, T))
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-10, atol=1e-12)


def causal_attention_before_masks(x, w_qkv, b_qkv, w_proj, b_proj, n_head):
    """The causal forward as it was written before it took a mask, step for step: the
    causal path must still be exactly this arithmetic (the prior's numbers, to the bit)."""
    C = x.shape[2]
    qkv, _ = linear_forward(x, w_qkv, b_qkv)
    q, k, v = (split_heads(qkv[..., i * C:(i + 1) * C], n_head) for i in range(3))
    scores = (q * (1 / math.sqrt(C // n_head))) @ k.transpose(0, 1, 3, 2)
    if x.shape[1] > 1:
        scores += causal_mask(x.shape[1], get_array_module(x), x.dtype)
    att = softmax(scores, out=scores)
    return linear_forward(merge_heads(att @ v), w_proj, b_proj)[0]


@settings(max_examples=25, deadline=None)
@given(shape=shapes, dtype=st.sampled_from([np.float32, np.float64]))
def test_the_causal_path_is_bit_identical_to_the_one_before_masks(xp, shape, dtype):
    """The default mask, the causal name and the causal pattern given as a boolean array
    give the same bits as the causal forward before masks, and the same gradients."""
    B, T, n_head, hs, seed = shape
    args = attention_inputs(B, T, n_head, hs, seed, xp, dtype)
    want = to_numpy(causal_attention_before_masks(*args, n_head))
    dout = xp.asarray(np.random.default_rng(seed).standard_normal(want.shape), dtype=dtype)
    runs = [self_attention_forward(*args, n_head), causal_self_attention_forward(*args, n_head),
            self_attention_forward(*args, n_head, mask=np.tril(np.ones((T, T), bool)))]
    grads = [[to_numpy(g) for g in self_attention_backward(dout, cache)] for _, cache in runs]
    for (out, _), g in zip(runs, grads):
        assert np.array_equal(to_numpy(out), want)
        assert all(np.array_equal(a, b) for a, b in zip(g, grads[0]))


@settings(max_examples=25, deadline=None)
@given(case=masked_shapes())
def test_a_hidden_key_changes_nothing_bit_for_bit(xp, case):
    """Rewriting every position that query t may not see (other than t itself) leaves its
    output exactly unchanged; its gradient reaches x there as exact zeros."""
    B, T, n_head, hs, seed, mask = case
    x, *params = attention_inputs(B, T, n_head, hs, seed, xp)
    t = seed % T
    hidden = ~mask[t]
    hidden[t] = False                               # x[t] makes query t: never hidden from it
    before, cache = self_attention_forward(x, *params, n_head, mask=mask)
    changed = to_numpy(x).copy()
    changed[:, hidden] = np.random.default_rng(seed + 1).standard_normal(changed[:, hidden].shape)
    after, _ = self_attention_forward(xp.asarray(changed), *params, n_head, mask=mask)
    assert np.array_equal(to_numpy(before)[:, t], to_numpy(after)[:, t])
    only_t = np.zeros(before.shape)
    only_t[:, t] = 1.0
    dx = to_numpy(self_attention_backward(xp.asarray(only_t), cache)[0])
    assert np.all(dx[:, hidden] == 0)


def test_full_attention_sees_the_future(xp):
    """Changing the last token moves every position's output, the first one's included."""
    x, *params = attention_inputs(2, 6, 2, 3, seed=7, xp=xp)
    before, _ = self_attention_forward(x, *params, 2, mask="full")
    changed = to_numpy(x).copy()
    changed[:, -1] += 1.0
    after, _ = self_attention_forward(xp.asarray(changed), *params, 2, mask="full")
    assert np.all(np.abs(to_numpy(after) - to_numpy(before)).max(axis=-1) > 1e-6)


@settings(max_examples=25, deadline=None)
@given(case=masked_shapes())
def test_attention_follows_its_mask_when_positions_are_permuted(case):
    """Attention has no notion of order beyond its mask: permuting the positions of x and
    the rows and columns of the mask permutes the outputs (full: any permutation)."""
    B, T, n_head, hs, seed, mask = case
    x, *params = attention_inputs(B, T, n_head, hs, seed)
    order = np.random.default_rng(seed).permutation(T)
    for m, permuted in ((mask, mask[order][:, order]), ("full", "full")):
        out, _ = self_attention_forward(x, *params, n_head, mask=m)
        moved, _ = self_attention_forward(x[:, order], *params, n_head, mask=permuted)
        np.testing.assert_allclose(moved, out[:, order], rtol=1e-12, atol=1e-12)


# --- the KV cache ---------------------------------------------------------------------------

def empty_kv(x, n_head, capacity):
    B, _, C = x.shape
    return KVCache.empty((B, n_head, capacity, C // n_head), like=x)


def fed_in_pieces(x, params, n_head, cuts, capacity=None):
    """The outputs for x (B, T, C) fed through one KV cache in pieces x[:, a:b] (cuts lists
    the b's), concatenated, and the cache."""
    kv = empty_kv(x, n_head, capacity or x.shape[1])
    xp = get_array_module(x)
    outs, start = [], 0
    for end in cuts:
        out, _ = causal_self_attention_forward(x[:, start:end], *params, n_head, kv=kv)
        assert kv.length == end
        outs.append(out)
        start = end
    return xp.concatenate(outs, axis=1), kv


@st.composite
def pieces(draw):
    """B, T, n_head, hs, seed and the ends of the pieces T is fed in (prefix lengths)."""
    B, T, n_head, hs, seed = draw(shapes)
    cuts = sorted(draw(st.sets(st.integers(1, T - 1), max_size=T - 1)) if T > 1 else set())
    return B, T, n_head, hs, seed, cuts + [T]


@settings(max_examples=40, deadline=None)
@given(case=pieces(), extra=st.integers(0, 3))
def test_attention_fed_in_pieces_through_a_kv_cache_equals_the_whole(xp, case, extra):
    """Each piece sees the cached prefix and itself, causally: the outputs are the plain
    forward's over the whole sequence, with room to spare in the cache or none."""
    B, T, n_head, hs, seed, cuts = case
    x, *params = attention_inputs(B, T, n_head, hs, seed, xp)
    want, _ = causal_self_attention_forward(x, *params, n_head)
    got, kv = fed_in_pieces(x, params, n_head, cuts, capacity=T + extra)
    np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=1e-12, atol=1e-12)
    _, plain = causal_self_attention_forward(x, *params, n_head)
    for cached, whole in ((kv.k, plain.k), (kv.v, plain.v)):   # the keys and values stored
        np.testing.assert_allclose(to_numpy(cached[:, :, :T]), to_numpy(whole), rtol=1e-12,
                                   atol=1e-12)


@pytest.mark.parametrize("T, past", [(1, 0), (3, 0), (1, 4), (3, 2), (4, 5)])
def test_causal_mask_after_past_keys(T, past):
    """Query t sits at position past + t: it sees keys 0 .. past + t and no later one."""
    mask = causal_mask(T, np, np.float64, past)
    assert mask.shape == (T, past + T)
    s, t = np.meshgrid(np.arange(past + T), np.arange(T))
    assert np.all(mask[s <= past + t] == 0)
    assert np.all(np.isneginf(mask[s > past + t]))


def test_repeated_kv_cache_copies_each_sequence():
    x, *params = attention_inputs(2, 3, 2, 2, seed=4)
    kv = empty_kv(x, 2, 5)
    causal_self_attention_forward(x, *params, 2, kv=kv)
    copy = kv.repeated(3)
    assert copy.length == 3 and copy.k.shape == (6, 2, 5, 2)
    np.testing.assert_array_equal(copy.k[:3], np.repeat(kv.k[:1], 3, axis=0))
    np.testing.assert_array_equal(copy.v[3:], np.repeat(kv.v[1:], 3, axis=0))
    copy.k[...] = 0                                  # its own buffers
    assert np.any(kv.k != 0)


def test_a_forward_with_a_kv_cache_gives_no_cache_and_the_backward_says_so():
    """Sampling never runs backward, and a cached forward's gradient would also belong to
    the cached tokens: the forward keeps nothing for a backward, which says why."""
    x, *params = attention_inputs(1, 4, 2, 3, seed=0)
    kv = empty_kv(x, 2, 4)
    for piece in (x[:, :3], x[:, 3:]):          # the whole prompt, then one token after it
        out, cache = causal_self_attention_forward(piece, *params, 2, kv=kv)
        assert cache is None
        with pytest.raises(ConfigError, match="no cache, as its forward ran with a KV cache"):
            causal_self_attention_backward(np.ones_like(out), cache)


def test_attention_rejects_a_kv_cache_that_does_not_fit():
    x, *params = attention_inputs(2, 3, 2, 3, seed=0)             # B 2, C 6: 2 heads of 3
    with pytest.raises(ShapeError, match="holds 1 sequences of 2 heads of width 3, x needs 2"):
        causal_self_attention_forward(x, *params, 2, kv=KVCache.empty((1, 2, 8, 3), like=x))
    with pytest.raises(ShapeError, match="3 heads of width 2, x needs 2 of 2 of width 3"):
        causal_self_attention_forward(x, *params, 2, kv=KVCache.empty((2, 3, 8, 2), like=x))
    kv = KVCache.empty((2, 2, 5, 3), like=x)
    causal_self_attention_forward(x, *params, 2, kv=kv)
    with pytest.raises(ShapeError, match="room for 5 tokens and holds 3: 3 more do not fit"):
        causal_self_attention_forward(x, *params, 2, kv=kv)
    assert kv.length == 3                                        # nothing written
    with pytest.raises(DTypeError, match="the KV cache is float32 but x is float64"):
        causal_self_attention_forward(
            x, *params, 2, kv=KVCache.empty((2, 2, 5, 3), like=x.astype(np.float32)))


def piece_of(cuts, T):
    """(T,) the number of the piece each position is fed in."""
    return np.searchsorted(np.asarray(cuts), np.arange(T), side="right")


@settings(max_examples=30, deadline=None)
@given(case=pieces())
def test_full_attention_fed_in_pieces_is_block_causal_over_the_whole(xp, case):
    """With mask="full" each piece's queries see every cached key and all of their own
    piece: the whole sequence under the block-causal mask whose blocks are the pieces."""
    B, T, n_head, hs, seed, cuts = case
    x, *params = attention_inputs(B, T, n_head, hs, seed, xp)
    piece = piece_of(cuts, T)
    want, _ = self_attention_forward(x, *params, n_head, mask=piece[None, :] <= piece[:, None])
    kv, outs, start = empty_kv(x, n_head, T), [], 0
    for end in cuts:
        out, _ = self_attention_forward(x[:, start:end], *params, n_head, mask="full", kv=kv)
        outs.append(out)
        start = end
    got = xp.concatenate(outs, axis=1)
    np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(case=pieces(), data=st.data())
def test_a_given_mask_fed_in_pieces_equals_the_whole(xp, case, data):
    """A piece's queries get their rows of the whole mask over the keys fed so far,
    mask[a:b, :b], (T_q, P + T_q): the same outputs as the whole sequence at once, for any
    mask that hides from each query the pieces after its own."""
    B, T, n_head, hs, seed, cuts = case
    x, *params = attention_inputs(B, T, n_head, hs, seed, xp)
    piece = piece_of(cuts, T)
    mask = data.draw(hnp.arrays(bool, (T, T))) & (piece[None, :] <= piece[:, None])
    mask[np.arange(T), np.arange(T)] |= ~mask.any(axis=1)         # a key for every query
    want, _ = self_attention_forward(x, *params, n_head, mask=mask)
    kv, outs, start = empty_kv(x, n_head, T), [], 0
    for end in cuts:
        out, _ = self_attention_forward(x[:, start:end], *params, n_head,
                                        mask=mask[start:end, :end], kv=kv)
        outs.append(out)
        start = end
    got = xp.concatenate(outs, axis=1)
    np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=1e-12, atol=1e-12)


# --- errors -------------------------------------------------------------------------------

def test_attention_rejects_n_head_not_dividing_the_width():
    args = attention_inputs(1, 3, 2, 3, seed=0)  # C = 6
    with pytest.raises(ShapeError, match="n_head=4 must divide the width C=6"):
        causal_self_attention_forward(*args, n_head=4)


@pytest.mark.parametrize("n_head", [0, -2, 1.5])
def test_attention_rejects_a_non_positive_or_fractional_n_head(n_head):
    args = attention_inputs(1, 3, 2, 3, seed=0)
    with pytest.raises(ConfigError, match="n_head must be a whole number >= 1"):
        causal_self_attention_forward(*args, n_head=n_head)


def test_attention_rejects_x_without_three_axes():
    x, *params = attention_inputs(1, 3, 2, 3, seed=0)
    with pytest.raises(ShapeError, match=r"x must have shape \(B, T, C\), got shape \(3, 6\)"):
        causal_self_attention_forward(x[0], *params, n_head=2)


def test_attention_rejects_weights_of_the_wrong_shape():
    x, w_qkv, b_qkv, w_proj, b_proj = attention_inputs(1, 3, 2, 3, seed=0)
    with pytest.raises(ShapeError, match=r"w_qkv must have shape \(C, 3C\) = \(6, 18\)"):
        causal_self_attention_forward(x, w_qkv.T, b_qkv, w_proj, b_proj, n_head=2)
    with pytest.raises(ShapeError, match=r"w_proj must have shape \(C, C\) = \(6, 6\)"):
        causal_self_attention_forward(x, w_qkv, b_qkv, w_proj[:, :5], b_proj, n_head=2)


def test_attention_rejects_biases_of_the_wrong_shape():
    """The message names the bias the caller passed, not the inner linear layer's 'b'."""
    x, w_qkv, b_qkv, w_proj, b_proj = attention_inputs(1, 3, 2, 3, seed=0)
    with pytest.raises(ShapeError, match=r"b_qkv must have shape .*\(18,\)"):
        causal_self_attention_forward(x, w_qkv, b_qkv[:17], w_proj, b_proj, n_head=2)
    with pytest.raises(ShapeError, match=r"b_proj must have shape .*\(6,\)"):
        causal_self_attention_forward(x, w_qkv, b_qkv, w_proj, b_proj[:5], n_head=2)


def test_attention_rejects_integer_input():
    x, *params = attention_inputs(1, 3, 2, 3, seed=0)
    with pytest.raises(DTypeError, match="must be float32 or float64, got int64"):
        causal_self_attention_forward(x.astype(np.int64), *params, n_head=2)


@pytest.mark.parametrize("position, name", [(1, "w_qkv"), (2, "b_qkv"), (3, "w_proj"),
                                            (4, "b_proj")])
def test_attention_rejects_mixed_float32_and_float64(position, name):
    """The message names the argument the caller passed (w_proj, ...), not an inner 'w'."""
    args = attention_inputs(1, 3, 2, 3, seed=0, dtype=np.float32)
    args[position] = args[position].astype(np.float64)
    with pytest.raises(DTypeError, match=f"{name} is float64 but x is float32"):
        causal_self_attention_forward(*args, n_head=2)


def test_attention_errors_are_tinytok_errors():
    args = attention_inputs(1, 3, 2, 3, seed=0)
    with pytest.raises(TinytokError):
        causal_self_attention_forward(*args, n_head=4)


# --- a bad mask: one line, before anything is written ------------------------------------

@pytest.mark.parametrize("mask, error, message", [
    ("bidirectional", ConfigError, "mask must be 'causal', 'full' or a boolean array "
                                   r"\(T_q, T_k\), got 'bidirectional'"),
    (None, DTypeError, "True where a query may attend, got NoneType"),
    (np.ones((3, 3)), DTypeError, "True where a query may attend, got float64 values"),
    (np.ones((3, 3), int), DTypeError, "got int64 values"),
    (np.ones((3, 4), bool), ShapeError, r"mask must have shape \(T_q, T_k\) = \(3, 3\) for 3 "
                                        r"queries, got \(3, 4\)"),
    (np.ones(3, bool), ShapeError, r"= \(3, 3\) for 3 queries, got \(3,\)"),
    (np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0]], bool), ConfigError,
     "mask row 1 has no True: query 1 would attend to no key"),
])
def test_attention_rejects_a_bad_mask(mask, error, message):
    args = attention_inputs(2, 3, 2, 3, seed=0)
    with pytest.raises(error, match=message):
        self_attention_forward(*args, n_head=2, mask=mask)


def test_a_mask_with_a_kv_cache_covers_the_cached_keys_and_a_bad_one_writes_nothing():
    x, *params = attention_inputs(2, 5, 2, 3, seed=0)
    kv = empty_kv(x, 2, 5)
    self_attention_forward(x[:, :3], *params, 2, mask="full", kv=kv)
    with pytest.raises(ShapeError, match=r"= \(2, 5\) for 2 queries after 3 cached keys, "
                                         r"got \(2, 2\)"):
        self_attention_forward(x[:, 3:], *params, 2, mask=np.ones((2, 2), bool), kv=kv)
    with pytest.raises(ConfigError, match="mask row 1 has no True"):   # row 0 sees key 4
        self_attention_forward(x[:, 3:], *params, 2, mask=np.eye(2, 5, k=4, dtype=bool),
                               kv=kv)
    assert kv.length == 3                                         # nothing written
    self_attention_forward(x[:, 3:], *params, 2, mask=np.ones((2, 5), bool), kv=kv)
    assert kv.length == 5


def test_the_mask_and_the_kv_cache_are_keywords():
    """Positionally, a KV cache could be taken for a mask: the general forward refuses."""
    x, *params = attention_inputs(1, 3, 2, 3, seed=0)
    with pytest.raises(TypeError):
        self_attention_forward(x, *params, 2, "full")
