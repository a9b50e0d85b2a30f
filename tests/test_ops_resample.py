"""area_resize and bilinear_resize: gradients, the loop references, the properties that
define them, errors, and the CuPy path through the fake CuPy. (PyTorch parity is in
tests/test_torch_parity.py.)"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fake_cupy
import reference as ref
from device_helpers import active
from tinytok.backend import to_numpy
from tinytok.errors import ConfigError, DTypeError, ShapeError
from tinytok.gradcheck import assert_gradients_close
from tinytok.ops import (PAIRS, area_resize_backward, area_resize_forward,
                         bilinear_resize_backward, bilinear_resize_forward)
from tinytok.ops.resample import area_matrix, bilinear_matrix

FEW = settings(max_examples=30, deadline=None)
seeds = st.integers(0, 2 ** 16)
sides = st.integers(1, 9)          # N, C, H, W
sizes = st.integers(1, 12)         # H_out, W_out
MODES = {"area": (area_resize_forward, area_resize_backward, ref.area_resize),
         "bilinear": (bilinear_resize_forward, bilinear_resize_backward, ref.bilinear_resize)}
modes = pytest.mark.parametrize("mode", list(MODES))


def normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def close(got, expected, rtol=1e-12, atol=1e-12):
    np.testing.assert_allclose(to_numpy(got), expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- gradients and references

@modes
@FEW
@given(N=sides, C=sides, H=sides, W=sides, Ho=sizes, Wo=sizes, seed=seeds)
def test_gradients_match_finite_differences(xp, mode, N, C, H, W, Ho, Wo, seed):
    forward, backward, _ = MODES[mode]
    x = xp.asarray(normal(seed, N, C, H, W))
    assert_gradients_close(forward, backward, [x], {"size": (Ho, Wo)}, seed=seed,
                           max_elements=60)


@modes
@FEW
@given(N=st.integers(1, 2), C=st.integers(1, 3), H=sides, W=sides, Ho=sizes, Wo=sizes,
       seed=seeds)
def test_forward_matches_the_loops_over_output_pixels(xp, mode, N, C, H, W, Ho, Wo, seed):
    forward, _, reference = MODES[mode]
    x = normal(seed, N, C, H, W)
    y, _ = forward(xp.asarray(x), (Ho, Wo))
    assert y.shape == (N, C, Ho, Wo)
    close(y, reference(x, (Ho, Wo)))


@pytest.mark.parametrize("mode, n_in, n_out, row", [
    ("area", 5, 3, [0.5, 0.5, 0, 0, 0]),           # cells [0, 5/3): inputs 0 and 1
    ("area", 3, 5, [1, 0, 0]),                      # cell [0, 3/5): input 0 alone
    ("bilinear", 3, 8, [1, 0, 0]),                  # s = 3/16 - 1/2 < 0: clamped
    ("bilinear", 8, 3, [1 / 6, 5 / 6, 0, 0, 0, 0, 0, 0]),  # s = 8/6 - 1/2 = 5/6
    ("bilinear", 2, 4, [1, 0])])
def test_the_first_row_of_the_weights_worked_by_hand(mode, n_in, n_out, row):
    matrix = area_matrix if mode == "area" else bilinear_matrix
    np.testing.assert_allclose(matrix(n_in, n_out)[0], row, atol=1e-15)


def test_bilinear_last_row_puts_both_weights_on_the_last_input():
    """3 -> 8: s = (7.5) 3/8 - 1/2 = 2.3125 is beyond the last centre (2): all on input 2."""
    np.testing.assert_allclose(bilinear_matrix(3, 8)[-1], [0, 0, 1])


# ---------------------------------------------------------------- properties

@modes
@FEW
@given(N=sides, C=sides, H=sides, W=sides, seed=seeds)
def test_resizing_to_the_same_size_is_the_identity(xp, mode, N, C, H, W, seed):
    forward, backward, _ = MODES[mode]
    x = normal(seed, N, C, H, W)
    y, cache = forward(xp.asarray(x), (H, W))
    close(y, x, rtol=0, atol=0)
    close(backward(xp.asarray(x), cache), x, rtol=0, atol=0)


@FEW
@given(N=st.integers(1, 3), C=st.integers(1, 3), Ho=st.integers(1, 5), Wo=st.integers(1, 5),
       kh=st.integers(1, 4), kw=st.integers(1, 4), seed=seeds)
def test_area_down_by_whole_factors_is_the_mean_of_each_block(xp, N, C, Ho, Wo, kh, kw, seed):
    x = normal(seed, N, C, Ho * kh, Wo * kw)
    y, _ = area_resize_forward(xp.asarray(x), (Ho, Wo))
    close(y, x.reshape(N, C, Ho, kh, Wo, kw).mean(axis=(3, 5)))


@FEW
@given(N=st.integers(1, 3), C=st.integers(1, 3), Ho=st.integers(1, 6), Wo=st.integers(1, 6),
       seed=seeds)
def test_bilinear_halving_is_the_mean_of_each_2x2_block(xp, N, C, Ho, Wo, seed):
    """Down by 2, output i sits at s = 2i + 1/2, halfway between inputs 2i and 2i + 1."""
    x = normal(seed, N, C, 2 * Ho, 2 * Wo)
    y, _ = bilinear_resize_forward(xp.asarray(x), (Ho, Wo))
    close(y, x.reshape(N, C, Ho, 2, Wo, 2).mean(axis=(3, 5)))


@modes
@FEW
@given(H=sides, W=sides, Ho=sizes, Wo=sizes, value=st.floats(-10, 10))
def test_a_constant_map_stays_constant(xp, mode, H, W, Ho, Wo, value):
    """Every output is a weighted mean: its weights add up to 1."""
    forward = MODES[mode][0]
    y, _ = forward(xp.asarray(np.full((2, 3, H, W), value)), (Ho, Wo))
    close(y, np.full((2, 3, Ho, Wo), value), rtol=1e-14, atol=1e-14)


@modes
@FEW
@given(N=sides, C=sides, H=sides, W=sides, Ho=sizes, Wo=sizes, seed=seeds)
def test_the_backward_is_the_adjoint(xp, mode, N, C, H, W, Ho, Wo, seed):
    """<A x, g> = <x, A^T g> for any x and g: the backward is the transpose of the forward."""
    forward, backward, _ = MODES[mode]
    x, g = normal(seed, N, C, H, W), normal(seed + 1, N, C, Ho, Wo)
    y, cache = forward(xp.asarray(x), (Ho, Wo))
    dx = backward(xp.asarray(g), cache)
    lhs, rhs = float(np.sum(to_numpy(y) * g)), float(np.sum(x * to_numpy(dx)))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


@modes
@pytest.mark.parametrize("n_in, n_out", [(3, 8), (8, 3), (5, 7), (7, 5), (1, 8), (8, 1), (6, 6)])
def test_each_row_of_the_weights_sums_to_one_and_is_not_negative(mode, n_in, n_out):
    a = (area_matrix if mode == "area" else bilinear_matrix)(n_in, n_out)
    assert a.shape == (n_out, n_in) and a.min() >= 0
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-15)


@modes
def test_an_int_size_is_square_and_the_input_is_left_alone(mode):
    forward, backward, _ = MODES[mode]
    x = normal(0, 2, 3, 5, 4)
    kept = x.copy()
    y, cache = forward(x, 6)
    assert y.shape == (2, 3, 6, 6)
    assert backward(y, cache).shape == x.shape
    assert np.array_equal(x, kept)


@modes
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_dtype_is_kept(xp, mode, dtype):
    forward, backward, _ = MODES[mode]
    y, cache = forward(xp.asarray(normal(0, 1, 2, 3, 5), dtype=dtype), (7, 2))
    assert y.dtype == dtype and backward(y, cache).dtype == dtype


@modes
def test_a_non_contiguous_input_gives_the_same_numbers(mode):
    forward, _, _ = MODES[mode]
    x = normal(3, 2, 3, 6, 5)
    view = np.swapaxes(np.ascontiguousarray(np.swapaxes(x, 2, 3)), 2, 3)
    assert not view.flags.c_contiguous
    assert np.array_equal(forward(view, (4, 9))[0], forward(x, (4, 9))[0])


def test_the_pairs_are_registered():
    assert PAIRS["area_resize"] == (area_resize_forward, area_resize_backward)
    assert PAIRS["bilinear_resize"] == (bilinear_resize_forward, bilinear_resize_backward)


# ---------------------------------------------------------------- bad input

@modes
@pytest.mark.parametrize("size, error, message", [
    (0, ConfigError, r"_resize: size must be a whole number >= 1, got 0$"),
    ((4, -1), ConfigError, r"size must be a whole number >= 1, got -1$"),
    (2.5, ConfigError, r"size must be a whole number >= 1, got 2.5$"),
    ((4, 4.0), ConfigError, r"size must be a whole number >= 1, got 4.0$"),
    ("4", ConfigError, r"got '4'$"),
    ((4, 4, 4), ShapeError, r"size must be an int or \(H_out, W_out\), got \(4, 4, 4\)$")])
def test_a_bad_size_is_refused_in_one_line(mode, size, error, message):
    forward = MODES[mode][0]
    with pytest.raises(error, match=message):
        forward(np.ones((1, 1, 4, 4)), size)


@modes
def test_bad_inputs_are_refused_in_one_line(mode):
    forward = MODES[mode][0]
    with pytest.raises(ShapeError, match=r"^x must have shape \(N, C, H, W\), got shape "
                                         r"\(3, 4, 4\)$"):
        forward(np.ones((3, 4, 4)), 2)
    with pytest.raises(ShapeError, match=r"H >= 1 and W >= 1 to resize, got shape "
                                         r"\(1, 1, 0, 4\)$"):
        forward(np.ones((1, 1, 0, 4)), 2)
    with pytest.raises(DTypeError, match="x must be float32 or float64, got int64"):
        forward(np.ones((1, 1, 4, 4), np.int64), 2)


# ---------------------------------------------------------------- the CuPy path (fake)

@modes
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape, size", [((2, 3, 3, 8), (8, 3)), ((1, 2, 5, 1), (7, 8)),
                                         ((2, 1, 8, 8), (1, 1))])
def test_the_fake_cupy_gives_the_same_numbers_on_the_device(mode, dtype, shape, size):
    """Through the strict fake CuPy: no implicit host conversion, results on the device,
    bit for bit NumPy's numbers (the fake runs NumPy's kernels)."""
    forward, backward, _ = MODES[mode]
    fake = fake_cupy.cupy
    x, g = normal(0, *shape).astype(dtype), normal(1, *shape[:2], *size).astype(dtype)
    y, cache = forward(x, size)
    dx = backward(g, cache)
    with active(fake):
        y_dev, cache_dev = forward(fake.asarray(x), size)
        dx_dev = backward(fake.asarray(g), cache_dev)
    for got in (y_dev, dx_dev, *cache_dev):
        assert isinstance(got, fake_cupy.ndarray)
    assert np.array_equal(y_dev.get(), y) and y_dev.dtype == dtype
    assert np.array_equal(dx_dev.get(), dx) and dx_dev.dtype == dtype


def test_gradient_check_on_the_fake_cupy():
    fake = fake_cupy.cupy
    with active(fake):
        for forward, backward, _ in MODES.values():
            assert_gradients_close(forward, backward, [fake.asarray(normal(2, 2, 2, 5, 3))],
                                   {"size": (3, 7)}, max_elements=30)
