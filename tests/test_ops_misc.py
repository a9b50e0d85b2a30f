"""linear, relu, gelu, layer_norm, embedding (and scatter_add), cross_entropy, mse: gradients,
references, errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from tinytok.backend import to_numpy
from tinytok.errors import DTypeError, ShapeError
from tinytok.gradcheck import assert_gradients_close
from tinytok.ops import (cross_entropy_backward, cross_entropy_forward, embedding_backward,
                         embedding_forward, gelu_backward, gelu_forward, layer_norm_backward,
                         layer_norm_forward, linear_backward, linear_forward, mse_backward,
                         mse_forward, relu_backward, relu_forward, scatter_add)

FEW = settings(max_examples=30, deadline=None)
seeds = st.integers(0, 2 ** 16)
lead_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


def normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def close(got, expected, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(to_numpy(got), expected, rtol=rtol, atol=atol)


# --- linear -------------------------------------------------------------------------------

@FEW
@given(lead=lead_shapes, n_in=st.integers(1, 5), n_out=st.integers(1, 5), seed=seeds)
def test_linear_gradients_match_finite_differences(xp, lead, n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    x, w, b = (xp.asarray(rng.standard_normal(s)) for s in (lead + (n_in,), (n_in, n_out),
                                                            (n_out,)))
    assert_gradients_close(linear_forward, linear_backward, [x, w, b], seed=seed)


@FEW
@given(lead=lead_shapes, n_in=st.integers(1, 4), n_out=st.integers(1, 4), seed=seeds)
def test_linear_matches_loops(xp, lead, n_in, n_out, seed):
    x, w, b = normal(seed, *lead, n_in), normal(seed + 1, n_in, n_out), normal(seed + 2, n_out)
    y, _ = linear_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b))
    assert y.shape == lead + (n_out,)
    close(y, ref.linear(x, w, b))


def test_linear_rejects_in_mismatch_between_x_and_w():
    with pytest.raises(ShapeError, match=r"must agree on 'in', got x \(2, 3\) and w \(4, 5\)"):
        linear_forward(np.ones((2, 3)), np.ones((4, 5)), np.ones(5))


def test_linear_rejects_w_without_two_axes():
    with pytest.raises(ShapeError, match=r"w \(in, out\) must agree"):
        linear_forward(np.ones((2, 3)), np.ones(3), np.ones(3))


def test_linear_rejects_bias_of_wrong_shape():
    with pytest.raises(ShapeError, match=r"b must have shape \(out,\) = \(5,\), got \(1, 5\)"):
        linear_forward(np.ones((2, 3)), np.ones((3, 5)), np.ones((1, 5)))


def test_linear_rejects_integer_and_mixed_dtypes():
    with pytest.raises(DTypeError, match="x must be float32 or float64, got int64"):
        linear_forward(np.ones((2, 3), np.int64), np.ones((3, 5)), np.ones(5))
    with pytest.raises(DTypeError, match="w is float32 but x is float64"):
        linear_forward(np.ones((2, 3)), np.ones((3, 5), np.float32), np.ones(5))


# --- relu and gelu ------------------------------------------------------------------------

@FEW
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), seed=seeds)
def test_relu_gradients_match_finite_differences(xp, shape, seed):
    x = ref.away_from_zero(normal(seed, *shape))  # |x| >= 0.1: no kink within reach of h
    assert_gradients_close(relu_forward, relu_backward, [xp.asarray(x)], seed=seed)


@FEW
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), seed=seeds)
def test_gelu_gradients_match_finite_differences(xp, shape, seed):
    """Inputs in [-3, 3] and off gelu's minimum at -0.75, where the true slope is ~0 and a
    one-element check would compare finite-difference noise with itself."""
    x = np.clip(2 * normal(seed, *shape), -3, 3)
    x = -0.75 + ref.away_from_zero(x + 0.75)
    assert_gradients_close(gelu_forward, gelu_backward, [xp.asarray(x)], seed=seed)


def test_relu_and_gelu_match_their_formulas(xp):
    x = np.concatenate([np.linspace(-6, 6, 49), [0.0, -0.0, 1e-8, -30.0, 30.0]])
    close(relu_forward(xp.asarray(x))[0], ref.relu(x))
    close(gelu_forward(xp.asarray(x))[0], ref.gelu(x))


def test_relu_passes_gradient_only_where_the_input_was_positive(xp):
    x = np.array([-2.0, -0.5, 0.5, 2.0])
    _, cache = relu_forward(xp.asarray(x))
    close(relu_backward(xp.asarray([1.0, 2.0, 3.0, 4.0]), cache), [0, 0, 3.0, 4.0])


def test_gelu_known_values():
    """gelu(0) = 0, gelu(x) ~ x for large x, ~ 0 for very negative x; tanh form at x = 1."""
    y, _ = gelu_forward(np.array([0.0, 1.0, 10.0, -10.0]))
    np.testing.assert_allclose(y, [0.0, 0.8411919906082768, 10.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("forward", [relu_forward, gelu_forward])
def test_activations_reject_integer_input(forward):
    with pytest.raises(DTypeError, match="x must be float32 or float64, got int64"):
        forward(np.arange(4))


# --- layer norm ---------------------------------------------------------------------------

@FEW
@given(lead=lead_shapes, C=st.integers(3, 7), seed=seeds)
def test_layer_norm_gradients_match_finite_differences(xp, lead, C, seed):
    """C >= 3: with two channels xhat is +-1 up to eps, the true dx is ~1e-6, all noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(lead + (C,)) * 2 + 1
    gamma, beta = 1 + 0.3 * rng.standard_normal(C), rng.standard_normal(C)
    assert_gradients_close(layer_norm_forward, layer_norm_backward,
                           [xp.asarray(a) for a in (x, gamma, beta)], seed=seed)


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_layer_norm_matches_loops(xp, eps):
    x, gamma, beta = normal(0, 2, 3, 5) * 3 + 2, normal(1, 5), normal(2, 5)
    y, _ = layer_norm_forward(*(xp.asarray(a) for a in (x, gamma, beta)), eps=eps)
    close(y, ref.layer_norm(x, gamma, beta, eps))


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(2, 40), C=st.integers(1, 300), start=st.integers(0, 39),
       seed=seeds)
def test_layer_norm_of_a_row_does_not_depend_on_the_other_rows(rows, C, start, seed):
    """Same bits for a row alone or in a batch (float32): a picture's score (lesson 14's
    reranking) and a KV-cache step must not change with what else is in the batch."""
    start = min(start, rows - 1)
    rng = np.random.default_rng(seed)
    x, dy = (rng.standard_normal((rows, C)).astype(np.float32) for _ in range(2))
    gamma, beta = (rng.standard_normal(C).astype(np.float32) for _ in range(2))
    y_all, cache_all = layer_norm_forward(x, gamma, beta)
    y_one, cache_one = layer_norm_forward(x[start:start + 1], gamma, beta)
    np.testing.assert_array_equal(y_one, y_all[start:start + 1])
    dx_all = layer_norm_backward(dy, cache_all)[0]
    dx_one = layer_norm_backward(dy[start:start + 1], cache_one)[0]
    np.testing.assert_array_equal(dx_one, dx_all[start:start + 1])


def test_layer_norm_rows_have_zero_mean_and_unit_variance(xp):
    x = normal(3, 4, 16) * 5 + 7
    y = to_numpy(layer_norm_forward(xp.asarray(x), xp.ones(16), xp.zeros(16))[0])
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=-1), 1, rtol=1e-5)


def test_layer_norm_rejects_gamma_or_beta_of_wrong_shape():
    with pytest.raises(ShapeError, match=r"gamma must have shape \(C,\) = \(3,\), got \(4,\)"):
        layer_norm_forward(np.ones((2, 3)), np.ones(4), np.zeros(3))
    with pytest.raises(ShapeError, match=r"beta must have shape \(C,\) = \(3,\), got \(1, 3\)"):
        layer_norm_forward(np.ones((2, 3)), np.ones(3), np.zeros((1, 3)))


def test_layer_norm_rejects_integer_and_mixed_dtypes():
    with pytest.raises(DTypeError, match="x must be float32 or float64, got int64"):
        layer_norm_forward(np.ones((2, 3), np.int64), np.ones(3), np.zeros(3))
    with pytest.raises(DTypeError, match="gamma is float32 but x is float64"):
        layer_norm_forward(np.ones((2, 3)), np.ones(3, np.float32), np.zeros(3))


# --- embedding ----------------------------------------------------------------------------

@FEW
@given(ids_shape=st.lists(st.integers(1, 4), min_size=1, max_size=2).map(tuple),
       V=st.integers(1, 6), C=st.integers(1, 4), seed=seeds)
def test_embedding_gradients_match_finite_differences(xp, ids_shape, V, C, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=ids_shape)
    table = rng.standard_normal((V, C))
    assert_gradients_close(embedding_forward, embedding_backward,
                           [xp.asarray(ids), xp.asarray(table)], seed=seed)


def test_embedding_picks_rows_and_accumulates_repeated_ids(xp):
    """An id used three times receives the sum of its three upstream gradients."""
    ids = np.array([[2, 0, 2], [2, 4, 1]])
    table, dout = normal(0, 5, 3), normal(1, 2, 3, 3)
    out, cache = embedding_forward(xp.asarray(ids), xp.asarray(table))
    close(out, ref.embedding(ids, table))
    dtable = embedding_backward(xp.asarray(dout), cache)
    close(dtable, ref.embedding_backward(dout, ids, 5))
    close(dtable[2], dout[0, 0] + dout[0, 2] + dout[1, 0])
    close(dtable[3], np.zeros(3))


@pytest.mark.parametrize("bad_id", [-1, 5, 100])
def test_embedding_rejects_ids_out_of_range(bad_id):
    """Negative ids would silently wrap around in NumPy indexing; they are refused."""
    with pytest.raises(ShapeError, match=rf"ids must lie in \[0, 5\).*from {min(bad_id, 0)}"):
        embedding_forward(np.array([0, bad_id, 3]), np.ones((5, 2)))


def test_embedding_rejects_float_ids():
    with pytest.raises(DTypeError, match="ids must be an integer array of ids, got float64"):
        embedding_forward(np.array([0.0, 1.0]), np.ones((5, 2)))


def test_embedding_rejects_integer_table_and_table_without_two_axes():
    with pytest.raises(DTypeError, match="table must be float32 or float64, got int64"):
        embedding_forward(np.array([0, 1]), np.ones((5, 2), np.int64))
    with pytest.raises(ShapeError, match=r"table must have shape \(V, C\), got \(5,\)"):
        embedding_forward(np.array([0, 1]), np.ones(5))


# --- scatter_add (the embedding backward's and the codebook gradient's write) ----------

def test_scatter_add_accumulates_repeated_indices():
    target = np.zeros(4)
    scatter_add(target, np.array([1, 3, 1, 1]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert target.tolist() == [0.0, 8.0, 0.0, 2.0]


def test_scatter_add_adds_whole_rows_in_place_and_returns_the_target():
    rng = np.random.default_rng(0)
    target, index, values = rng.standard_normal((5, 3)), rng.integers(0, 5, 20), \
        rng.standard_normal((20, 3))
    expected = target.copy()
    for i, row in zip(index, values):
        expected[i] += row
    out = scatter_add(target, index, values)
    assert out is target
    np.testing.assert_allclose(target, expected, rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(K=st.integers(1, 8), M=st.integers(0, 40), tail=st.sampled_from([(), (3,), (2, 2)]),
       seed=st.integers(0, 2 ** 16))
def test_scatter_add_equals_numpy_add_at(K, M, tail, seed):
    """Sorted runs summed with add.reduceat against the one-at-a-time reference, add.at:
    any number of repeats, ids never used, no ids at all, rows of any shape."""
    rng = np.random.default_rng(seed)
    target = rng.standard_normal((K, *tail))
    index, values = rng.integers(0, K, M), rng.standard_normal((M, *tail))
    expected = target.copy()
    np.add.at(expected, index, values)
    scatter_add(target, index, values)
    np.testing.assert_allclose(target, expected, rtol=1e-12, atol=1e-12)


# --- cross-entropy ------------------------------------------------------------------------

@FEW
@given(lead=st.lists(st.integers(1, 4), min_size=1, max_size=2).map(tuple),
       V=st.integers(2, 6), ignore_index=st.sampled_from([-1, -100]), seed=seeds)
def test_cross_entropy_gradients_match_finite_differences(xp, lead, V, ignore_index, seed):
    rng = np.random.default_rng(seed)
    logits = 2 * rng.standard_normal(lead + (V,))
    targets = rng.integers(0, V, size=lead)
    targets[rng.random(lead) < 0.3] = ignore_index
    targets.reshape(-1)[0] = 0  # at least one position counts
    assert_gradients_close(cross_entropy_forward, cross_entropy_backward,
                           [xp.asarray(logits), xp.asarray(targets)],
                           {"ignore_index": ignore_index}, seed=seed)


@pytest.mark.parametrize("ignore_index", [-1, -100, 3])
def test_cross_entropy_matches_log_softmax_by_hand(xp, ignore_index):
    rng = np.random.default_rng(0)
    logits, targets = 3 * rng.standard_normal((2, 4, 5)), rng.integers(0, 5, size=(2, 4))
    targets[0, 0] = targets[1, 2] = ignore_index
    loss, _ = cross_entropy_forward(xp.asarray(logits), xp.asarray(targets), ignore_index)
    expected = ref.cross_entropy(logits, targets, ignore_index)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-12)


def test_cross_entropy_gradient_is_softmax_minus_onehot_over_count(xp):
    logits, targets = normal(0, 3, 4), np.array([1, -1, 3])
    _, cache = cross_entropy_forward(xp.asarray(logits), xp.asarray(targets))
    dlogits = to_numpy(cross_entropy_backward(2.0, cache))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    p[[0, 2], [1, 3]] -= 1
    np.testing.assert_allclose(dlogits[[0, 2]], 2.0 * p[[0, 2]] / 2, rtol=1e-12)
    assert np.all(dlogits[1] == 0)  # the ignored row gets nothing


def test_cross_entropy_is_stable_for_huge_logits(xp):
    logits = np.array([[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 0.0]])
    loss, cache = cross_entropy_forward(xp.asarray(logits), xp.asarray(np.array([0, 2])))
    np.testing.assert_allclose(float(loss), 500.0, rtol=1e-12)
    assert np.all(np.isfinite(to_numpy(cross_entropy_backward(1.0, cache))))


def test_cross_entropy_with_every_position_ignored_is_zero(xp):
    loss, cache = cross_entropy_forward(xp.asarray(normal(0, 2, 3)), xp.asarray([-1, -1]))
    assert float(loss) == 0.0
    assert np.all(to_numpy(cross_entropy_backward(1.0, cache)) == 0)


def test_cross_entropy_rejects_targets_of_wrong_shape():
    with pytest.raises(ShapeError, match=r"targets must have shape \(2, 3\).*got \(2,\)"):
        cross_entropy_forward(np.zeros((2, 3, 5)), np.zeros(2, np.int64))
    with pytest.raises(ShapeError, match=r"targets must have shape \(2, 3\).*got \(2, 3, 5\)"):
        cross_entropy_forward(np.zeros((2, 3, 5)), np.zeros((2, 3, 5), np.int64))


@pytest.mark.parametrize("bad", [5, 7, -2])
def test_cross_entropy_rejects_targets_out_of_range(bad):
    with pytest.raises(ShapeError, match=r"targets must lie in \[0, 5\) or equal ignore_index=-1"):
        cross_entropy_forward(np.zeros((3, 5)), np.array([0, bad, 4]))


def test_cross_entropy_rejects_float_targets_and_integer_logits():
    with pytest.raises(DTypeError, match="targets must be an integer array of ids, got float64"):
        cross_entropy_forward(np.zeros((3, 5)), np.array([0.0, 1.0, 2.0]))
    with pytest.raises(DTypeError, match="logits must be float32 or float64, got int64"):
        cross_entropy_forward(np.zeros((3, 5), np.int64), np.array([0, 1, 2]))


# --- mse ----------------------------------------------------------------------------------

@FEW
@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), seed=seeds)
def test_mse_gradients_match_finite_differences(xp, shape, seed):
    pred, target = normal(seed, *shape), normal(seed + 1, *shape)
    assert_gradients_close(mse_forward, mse_backward, [xp.asarray(pred), xp.asarray(target)],
                           wrt=[0], seed=seed)


def test_mse_matches_loops(xp):
    pred, target = normal(0, 2, 3, 4), normal(1, 2, 3, 4)
    loss, cache = mse_forward(xp.asarray(pred), xp.asarray(target))
    np.testing.assert_allclose(float(loss), ref.mse(pred, target), rtol=1e-12)
    close(mse_backward(3.0, cache), 3.0 * 2 * (pred - target) / pred.size)


def test_mse_rejects_shape_mismatch_and_bad_dtypes():
    with pytest.raises(ShapeError, match=r"pred \(2, 3\) and target \(3, 2\) must have the same"):
        mse_forward(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(DTypeError, match="pred must be float32 or float64, got int64"):
        mse_forward(np.zeros((2, 3), np.int64), np.zeros((2, 3)))
    with pytest.raises(DTypeError, match="target is float32 but pred is float64"):
        mse_forward(np.zeros((2, 3)), np.zeros((2, 3), np.float32))


def test_whole_numbers_are_integers_of_any_kind_but_bool():
    from tinytok.errors import ConfigError
    from tinytok.ops.checks import is_whole_number, require_positive_int
    for value in (0, 3, np.int64(3), np.uint8(3)):
        assert is_whole_number(value)
    for value in (-1, True, False, 3.0, np.float64(3), "3", None, np.bool_(True)):
        assert not is_whole_number(value)
    assert is_whole_number(2, minimum=2) and not is_whole_number(1, minimum=2)
    got = require_positive_int("stride", np.int64(2))
    assert got == 2 and type(got) is int
    with pytest.raises(ConfigError, match=r"^padding must be a whole number >= 0, got -1$"):
        require_positive_int("padding", -1, minimum=0)


def test_finite_numbers_are_reals_but_not_bools_infinities_or_huge_integers():
    from tinytok.ops.checks import is_finite_number
    for value in (0, -2.5, np.float32(0.2), np.int64(3), 10 ** 300):
        assert is_finite_number(value)
    for value in (True, float("nan"), float("inf"), "1", None, 10 ** 400, np.complex128(1)):
        assert not is_finite_number(value)
