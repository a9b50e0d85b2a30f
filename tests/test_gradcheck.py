"""tinytok.gradcheck: it must catch broken backwards, not only pass correct ones."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tinytok.gradcheck import (assert_gradients_close, check_pair, numerical_gradient,
                               relative_error)
from tinytok.ops import (conv2d_backward, conv2d_forward, layer_norm_backward,
                         layer_norm_forward, linear_backward, linear_forward)


def linear_args(seed=0, n=4):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, n)), rng.standard_normal((n, 2)), rng.standard_normal(2)]


# --- a correct backward passes, a wrong one fails -----------------------------------------

def test_correct_backward_passes_with_errors_far_below_tolerance():
    errors = assert_gradients_close(linear_forward, linear_backward, linear_args())
    assert set(errors) == {"arg0", "arg1", "arg2"}
    assert max(errors.values()) < 1e-8


def test_backward_scaled_by_1_01_is_caught():
    def backward(dy, cache):
        dx, dw, db = linear_backward(dy, cache)
        return dx, dw * 1.01, db

    errors = check_pair(linear_forward, backward, linear_args())
    assert errors["arg1"] > 1e-3 and errors["arg0"] < 1e-8
    with pytest.raises(AssertionError, match=r"gradient check failed \(tol 1e-06\).*arg1"):
        assert_gradients_close(linear_forward, backward, linear_args())


def layer_norm_backward_missing_a_term(dy, cache):
    """Layer norm's backward without the variance term: a classic derivation slip."""
    xhat, gamma, rstd = cache
    g = dy * gamma
    dx = (g - g.mean(axis=-1, keepdims=True)) * rstd
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


def test_backward_missing_a_term_is_caught():
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((4, 5)), 1 + 0.1 * rng.standard_normal(5),
            rng.standard_normal(5)]
    with pytest.raises(AssertionError, match="arg0"):
        assert_gradients_close(layer_norm_forward, layer_norm_backward_missing_a_term, args)


def test_random_upstream_gradient_catches_what_all_ones_would_miss():
    """With dout = ones (and gamma = ones) the broken and the true dx are both zero."""
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((4, 5)), np.ones(5), np.zeros(5)]
    _, cache = layer_norm_forward(*args)
    ones = np.ones((4, 5))
    np.testing.assert_allclose(layer_norm_backward_missing_a_term(ones, cache)[0],
                               layer_norm_backward(ones, cache)[0], atol=1e-12)  # fooled
    errors = check_pair(layer_norm_forward, layer_norm_backward_missing_a_term, args)
    assert errors["arg0"] > 1e-2  # caught with the default random dout


def test_backward_returning_the_wrong_number_of_gradients_is_an_error():
    with pytest.raises(ValueError, match="backward returned 2 gradients for 3 inputs"):
        check_pair(linear_forward, lambda dy, c: linear_backward(dy, c)[:2], linear_args())


def test_check_pair_accepts_conv_without_bias():
    """conv2d(x, w, None): the backward's db is None and should just be skipped."""
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3)), None]
    errors = check_pair(conv2d_forward, conv2d_backward, args, {"padding": 1})
    assert set(errors) == {"arg0", "arg1"} and max(errors.values()) < 1e-6


def test_wrt_selects_the_arguments_to_check():
    errors = check_pair(linear_forward, lambda dy, c: linear_backward(dy, c)[1],
                        linear_args(), wrt=[1])
    assert list(errors) == ["arg1"]


# --- inputs, sampling ---------------------------------------------------------------------

def test_check_pair_leaves_its_inputs_unchanged():
    args = linear_args()
    before = [a.copy() for a in args]
    check_pair(linear_forward, linear_backward, args)
    for a, b in zip(args, before):
        assert np.array_equal(a, b)


class ProbeRecorder:
    """A linear forward that records which element of x differs from x0 on each call."""

    def __init__(self, x0):
        self.x0, self.calls, self.probed = x0.copy(), 0, set()

    def forward(self, x, w, b):
        self.calls += 1
        self.probed.update(np.flatnonzero(x != self.x0).tolist())
        return linear_forward(x, w, b)


def test_big_arrays_are_checked_at_a_random_subset_of_max_elements():
    x, w, b = linear_args(n=300)          # x has 900 elements
    rec = ProbeRecorder(x)
    check_pair(rec.forward, lambda dy, c: linear_backward(dy, c)[0], [x, w, b], wrt=[0],
               max_elements=50)
    assert rec.calls == 1 + 2 * 50        # one forward, then two probes per element
    assert len(rec.probed) == 50
    assert max(rec.probed) > 50           # spread over the array, not just the first 50


def test_the_subset_depends_on_the_seed_and_is_reproducible():
    def probed(seed):
        x, w, b = linear_args(n=300)
        rec = ProbeRecorder(x)
        check_pair(rec.forward, lambda dy, c: linear_backward(dy, c)[0], [x, w, b], wrt=[0],
                   max_elements=20, seed=seed)
        return rec.probed

    assert probed(0) == probed(0)
    assert probed(0) != probed(1)


def test_small_arrays_are_checked_everywhere():
    x, w, b = linear_args()
    rec = ProbeRecorder(x)
    check_pair(rec.forward, lambda dy, c: linear_backward(dy, c)[0], [x, w, b], wrt=[0])
    assert rec.probed == set(range(x.size))


# --- numerical_gradient -------------------------------------------------------------------

def test_numerical_gradient_of_a_quadratic_is_exact_and_restores_x():
    """d sum(x^2 * g)/dx = 2 x g; central differences are exact for quadratics."""
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    g = np.array([[1.0, 2.0], [-1.0, 0.5]])
    kept = x.copy()
    slopes = numerical_gradient(lambda v: v * v, x, g, np.arange(4))
    np.testing.assert_allclose(slopes, (2 * kept * g).reshape(-1), rtol=1e-8)
    assert np.array_equal(x, kept)


def test_numerical_gradient_at_chosen_indices_only():
    x = np.arange(6.0)
    slopes = numerical_gradient(lambda v: 3 * v, x, np.ones(6), np.array([1, 4]))
    np.testing.assert_allclose(slopes, [3.0, 3.0], rtol=1e-9)


# --- relative_error -----------------------------------------------------------------------

finite = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(a=arrays(np.float64, st.integers(1, 8), elements=finite),
       b=arrays(np.float64, st.integers(1, 8), elements=finite))
def test_relative_error_properties(a, b):
    """Zero on equal arrays, symmetric, within [0, 1], unchanged by a common scale."""
    if a.shape != b.shape:
        b = np.resize(b, a.shape)
    assert relative_error(a, a) == 0.0
    err = relative_error(a, b)
    assert err == relative_error(b, a)
    assert 0.0 <= err <= 1.0
    if np.abs(a).max() + np.abs(b).max() > 1e-3:
        assert relative_error(7 * a, 7 * b) == pytest.approx(err, rel=1e-9, abs=1e-15)


def test_relative_error_of_opposite_arrays_is_one():
    a = np.array([1.0, -2.0, 3.0])
    assert relative_error(a, -a) == 1.0


def test_relative_error_of_a_small_perturbation_is_about_its_size():
    a = np.array([1.0, -2.0, 3.0])
    assert relative_error(a, a * (1 + 1e-7)) == pytest.approx(0.5e-7, rel=1e-3)


def test_relative_error_rejects_different_shapes_and_accepts_empty_arrays():
    with pytest.raises(ValueError, match=r"shapes \(3,\) and \(2,\)"):
        relative_error(np.zeros(3), np.zeros(2))
    assert relative_error(np.zeros(0), np.zeros(0)) == 0.0
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0


def test_relative_error_computes_in_float64():
    a = np.float32([1.0, 2.0])
    assert relative_error(a, a.astype(np.float64) + 1e-12) < 1e-11


def test_numerical_gradient_probes_a_non_contiguous_array():
    """x.T is a view whose reshape(-1) is a copy: nudges must still reach f, or all slopes
    silently come out zero."""
    x = np.arange(6.0).reshape(2, 3).T          # (3, 2), not C-contiguous
    slopes = numerical_gradient(lambda v: 3 * v, x, np.ones((3, 2)), np.arange(6))
    np.testing.assert_allclose(slopes, np.full(6, 3.0), rtol=1e-9)
