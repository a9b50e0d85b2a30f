"""The patch discriminator's pairs: leaky_relu, hinge_d_loss, hinge_g_loss. Gradients,
references, the kink at 0 and the margins at +-1 (where no derivative exists, so the
convention is tested on its own), errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import reference as ref
from tinytok.backend import to_numpy
from tinytok.errors import ConfigError, DTypeError, ShapeError, TinytokError
from tinytok.gradcheck import assert_gradients_close
from tinytok.ops import (hinge_d_loss_backward, hinge_d_loss_forward, hinge_g_loss_backward,
                         hinge_g_loss_forward, leaky_relu_backward, leaky_relu_forward,
                         relu_backward, relu_forward)

FEW = settings(max_examples=30, deadline=None)
seeds = st.integers(0, 2 ** 16)
shapes = st.lists(st.integers(1, 4), min_size=0, max_size=4).map(tuple)  # 0-d included
slopes = st.one_of(st.sampled_from([0.0, 0.2, 1.0]), st.floats(0.0, 1.0))


def normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def close(got, expected, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(to_numpy(got), expected, rtol=rtol, atol=atol)


def scores_with_ties(shape, tie):
    """Scores in [-4, 4], some exactly on the margin `tie`."""
    return arrays(np.float64, shape, elements=st.one_of(st.just(tie), st.floats(-4, 4)))


# --- leaky relu ---------------------------------------------------------------------------

@FEW
@given(shape=shapes, slope=slopes, seed=seeds)
def test_leaky_relu_gradients_match_finite_differences(xp, shape, slope, seed):
    x = ref.away_from_zero(normal(seed, *shape))  # |x| >= 0.1: no kink within reach of h
    assert_gradients_close(leaky_relu_forward, leaky_relu_backward, [xp.asarray(x)],
                           {"slope": slope}, seed=seed)


@FEW
@given(x=arrays(np.float64, shapes, elements=st.one_of(st.just(0.0), st.floats(-5, 5))),
       slope=slopes)
def test_leaky_relu_matches_loops_and_takes_the_slope_side_at_zero(xp, x, slope):
    """At x = 0 exactly, y = 0 and dx = slope * dy: the derivative from the left, PyTorch's."""
    y, cache = leaky_relu_forward(xp.asarray(x), slope)
    close(y, ref.leaky_relu(x, slope))
    dy = normal(0, *x.shape)
    dx = to_numpy(leaky_relu_backward(xp.asarray(dy), cache))
    h = 1e-6
    from_the_left = (ref.leaky_relu(x, slope) - ref.leaky_relu(x - h, slope)) / h
    at_zero = x == 0
    np.testing.assert_allclose(dx[at_zero], (from_the_left * dy)[at_zero], rtol=1e-6,
                               atol=1e-12)


def test_leaky_relu_with_slope_0_is_relu_and_with_slope_1_the_identity(xp):
    x = np.concatenate([np.linspace(-3, 3, 13), [0.0, -0.0, 1e-300, -1e-300]])
    dy = normal(1, x.size)
    y0, cache0 = leaky_relu_forward(xp.asarray(x), slope=0.0)
    relu_y, relu_cache = relu_forward(xp.asarray(x))
    close(y0, to_numpy(relu_y), rtol=0, atol=0)
    close(leaky_relu_backward(xp.asarray(dy), cache0),
          to_numpy(relu_backward(xp.asarray(dy), relu_cache)), rtol=0, atol=0)
    y1, cache1 = leaky_relu_forward(xp.asarray(x), slope=1)
    close(y1, x, rtol=0, atol=0)
    close(leaky_relu_backward(xp.asarray(dy), cache1), dy, rtol=0, atol=0)


def test_leaky_relu_keeps_float32_with_a_float64_slope():
    x = np.array([-2.0, 0.0, 3.0], np.float32)
    y, cache = leaky_relu_forward(x, slope=np.float64(0.1))
    dx = leaky_relu_backward(np.ones(3, np.float32), cache)
    assert y.dtype == dx.dtype == np.float32
    np.testing.assert_array_equal(y, np.array([-0.2, 0.0, 3.0], np.float32))


def test_leaky_relu_rejects_integer_input():
    with pytest.raises(DTypeError, match="x must be float32 or float64, got int64"):
        leaky_relu_forward(np.arange(4))


@pytest.mark.parametrize("slope", ["0.2", None, True, float("nan"), float("inf"), [0.2],
                                   -0.1, 1.5, 10 ** 400])
def test_leaky_relu_rejects_a_slope_outside_0_to_1(slope):
    with pytest.raises(ConfigError, match=r"^slope must be a number in \[0, 1\] \(0: ReLU, "
                                          r"1: the identity; 0.2 for a discriminator\), got "):
        leaky_relu_forward(np.ones(3), slope=slope)


# --- hinge_d_loss -------------------------------------------------------------------------

@FEW
@given(real_shape=shapes, fake_shape=shapes, seed=seeds)
def test_hinge_d_loss_gradients_match_finite_differences(xp, real_shape, fake_shape, seed):
    """Scores on both sides of their margins, at least 0.1 from them (the kinks)."""
    real = 1 + ref.away_from_zero(1.5 * normal(seed, *real_shape))
    fake = -1 + ref.away_from_zero(1.5 * normal(seed + 1, *fake_shape))
    assert_gradients_close(hinge_d_loss_forward, hinge_d_loss_backward,
                           [xp.asarray(real), xp.asarray(fake)], seed=seed)


@FEW
@given(real=scores_with_ties(shapes, 1.0), fake=scores_with_ties(shapes, -1.0),
       dloss=st.floats(-3, 3))
def test_hinge_d_loss_matches_branches_with_ties_on_the_margins(xp, real, fake, dloss):
    """A score exactly on its margin costs 0 and gets gradient 0 (the flat branch)."""
    loss, cache = hinge_d_loss_forward(xp.asarray(real), xp.asarray(fake))
    np.testing.assert_allclose(float(loss), ref.hinge_d_loss(real, fake), rtol=1e-12,
                               atol=1e-12)
    dreal, dfake = hinge_d_loss_backward(dloss, cache)
    want_real, want_fake = ref.hinge_d_loss_backward(dloss, real, fake)
    close(dreal, want_real)
    close(dfake, want_fake)


def test_hinge_d_loss_known_values(xp):
    """real [2, 0]: costs 0 and 1; fake [0.5, -3]: costs 1.5 and 0. Means 0.5 + 0.75."""
    loss, cache = hinge_d_loss_forward(xp.asarray([2.0, 0.0]), xp.asarray([0.5, -3.0]))
    assert float(loss) == 1.25
    dreal, dfake = hinge_d_loss_backward(2.0, cache)
    close(dreal, [0.0, -1.0])
    close(dfake, [1.0, 0.0])


def test_a_sure_discriminator_has_no_loss_and_no_gradient(xp):
    loss, cache = hinge_d_loss_forward(xp.asarray([1.0, 5.0]), xp.asarray([[-1.0, -2.0]]))
    assert float(loss) == 0.0
    assert all(not np.any(to_numpy(g)) for g in hinge_d_loss_backward(1.0, cache))


def test_hinge_d_loss_rejects_bad_scores():
    with pytest.raises(DTypeError, match="real must be float32 or float64, got int64"):
        hinge_d_loss_forward(np.arange(3), np.ones(3))
    with pytest.raises(DTypeError, match="fake must be a float32 or float64 array, got list"):
        hinge_d_loss_forward(np.ones(3), [1.0, 2.0])
    with pytest.raises(DTypeError, match="fake is float32 but real is float64"):
        hinge_d_loss_forward(np.ones(3), np.ones(3, np.float32))
    with pytest.raises(ShapeError, match=r"^fake holds no scores \(shape \(2, 0\)\)"):
        hinge_d_loss_forward(np.ones(3), np.ones((2, 0)))


# --- hinge_g_loss -------------------------------------------------------------------------

@FEW
@given(shape=shapes, seed=seeds)
def test_hinge_g_loss_gradients_match_finite_differences(xp, shape, seed):
    fake = 2 * normal(seed, *shape)
    assert_gradients_close(hinge_g_loss_forward, hinge_g_loss_backward, [xp.asarray(fake)],
                           seed=seed)


@FEW
@given(fake=scores_with_ties(shapes, -1.0), dloss=st.floats(-3, 3))
def test_hinge_g_loss_matches_loops(xp, fake, dloss):
    """No margin here: every score, at -1 or anywhere, gets -dloss / n."""
    loss, cache = hinge_g_loss_forward(xp.asarray(fake))
    np.testing.assert_allclose(float(loss), ref.hinge_g_loss(fake), rtol=1e-12, atol=1e-12)
    close(hinge_g_loss_backward(dloss, cache), np.full(fake.shape, -dloss / fake.size))


def test_hinge_g_loss_rejects_bad_scores():
    with pytest.raises(DTypeError, match="fake must be float32 or float64, got int64"):
        hinge_g_loss_forward(np.arange(3))
    with pytest.raises(ShapeError, match=r"^fake holds no scores \(shape \(0,\)\): the mean "
                                         "of nothing is undefined; give at least one$"):
        hinge_g_loss_forward(np.ones(0))


# --- any input: a result in the input's dtype, or one TinytokError -----------------------

@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(["float32", "float64", "float16", "int64", "bool"]),
       shape=st.lists(st.integers(0, 3), max_size=3).map(tuple),
       other=st.sampled_from(["float32", "float64", "int32"]),
       slope=st.one_of(st.floats(), st.integers(), st.none(), st.text(max_size=2)))
def test_any_input_gives_a_result_of_its_dtype_or_a_tinytok_error(dtype, shape, other,
                                                                   slope):
    a, b = np.zeros(shape, dtype), np.zeros((2,), other)
    for run in (lambda: leaky_relu_forward(a, slope), lambda: hinge_d_loss_forward(a, b),
                lambda: hinge_d_loss_forward(b, a), lambda: hinge_g_loss_forward(a)):
        try:
            out, _ = run()
        except TinytokError as e:
            assert "\n" not in str(e)
            continue
        assert out.dtype == dtype
