"""amplitude_loss: the distance between two pictures' amplitude spectra. Gradients, the DFT
from its definition, the properties that make it a measure of detail (blind to where the
detail sits, never above mse), a coefficient of 0, dtypes, errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from tinytok.backend import to_numpy
from tinytok.errors import DTypeError, ShapeError
from tinytok.gradcheck import assert_gradients_close
from tinytok.ops import (amplitude_loss_backward, amplitude_loss_forward, frequency_rings,
                         mse_forward)

FEW = settings(max_examples=30, deadline=None)
seeds = st.integers(0, 2 ** 16)
# (..., H, W): no leading axes up to two, sides of 1 (a single coefficient) to 6
shapes = st.tuples(st.lists(st.integers(1, 3), max_size=2), st.integers(1, 6),
                   st.integers(1, 6)).map(lambda t: (*t[0], t[1], t[2]))


def normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def random_bands(shape, seed, kind):
    """kind 0: none; 1: frequency_rings; 2: random band numbers, some numbers unused."""
    H, W = shape[-2:]
    if kind == 0:
        return None
    if kind == 1:
        return frequency_rings(H, W)
    return np.random.default_rng(seed).integers(0, 4, size=(H, W)) * 2


@FEW
@given(shape=shapes, seed=seeds, kind=st.integers(0, 2))
def test_amplitude_loss_gradients_match_finite_differences_with_bands(xp, shape, seed, kind):
    pred, target = normal(seed, *shape), normal(seed + 1, *shape)
    assert_gradients_close(amplitude_loss_forward, amplitude_loss_backward,
                           [xp.asarray(pred), xp.asarray(target)],
                           {"bands": random_bands(shape, seed, kind)}, wrt=[0], seed=seed)


@FEW
@given(shape=shapes, seed=seeds, kind=st.integers(0, 2))
def test_amplitude_loss_matches_the_dft_from_its_definition(xp, shape, seed, kind):
    pred, target = normal(seed, *shape), normal(seed + 1, *shape)
    bands = random_bands(shape, seed, kind)
    loss, _ = amplitude_loss_forward(xp.asarray(pred), xp.asarray(target), bands)
    np.testing.assert_allclose(float(loss), ref.amplitude_loss(pred, target, bands),
                               rtol=1e-10, atol=1e-12)


def test_rings_forgive_a_turn_and_coefficients_do_not(xp):
    """A square picture turned by 90 degrees has its coefficients turned too, each to the
    same radius: the same power in every ring (loss 0 with frequency_rings), not at every
    coefficient. Rings of a 32 x 32 DFT: 0 (the mean alone) to 23, one step of 1/32 each."""
    x = normal(3, 2, 3, 8, 8)
    turned = np.rot90(x, axes=(-2, -1)).copy()
    with_rings, _ = amplitude_loss_forward(xp.asarray(turned), xp.asarray(x),
                                           frequency_rings(8, 8))
    alone, _ = amplitude_loss_forward(xp.asarray(turned), xp.asarray(x))
    assert float(with_rings) < 1e-24 < 1e-3 < float(alone)
    rings = frequency_rings(32, 32)
    assert rings[0, 0] == 0 and (rings == 0).sum() == 1 and rings.max() == 23
    assert rings[0, 5] == rings[5, 0] == rings[-5, 0] == rings[3, 4] == 5


def test_detail_anywhere_costs_nothing_and_the_loss_never_exceeds_mse(xp):
    """A picture moved round by whole pixels (periodically) has the same amplitudes: the
    loss is 0 where mse is large. Any pair: loss <= mse (| |a| - |b| | <= |a - b|, and the
    orthonormal DFT keeps sums of squares)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8))
    moved = np.roll(x, (3, -2), axis=(-2, -1))
    loss, _ = amplitude_loss_forward(xp.asarray(moved), xp.asarray(x))
    assert float(loss) < 1e-24
    assert float(mse_forward(xp.asarray(moved), xp.asarray(x))[0]) > 1
    for seed in range(20):
        pred, target = normal(seed, 2, 5, 7), normal(seed + 100, 2, 5, 7) * seed / 10
        for bands in (None, frequency_rings(5, 7)):     # | ||a|| - ||b|| | <= ||a - b|| too
            assert (float(amplitude_loss_forward(pred, target, bands)[0])
                    <= float(mse_forward(pred, target)[0]) + 1e-12)


def test_sharpening_a_blur_lowers_the_loss():
    """A blurred picture has less power than the picture at high frequencies: scaling those
    back up (here, undoing the blur exactly) brings the loss to 0, and the gradient at the
    blur points along that way (it lowers the loss)."""
    x = normal(0, 1, 16, 16)
    kernel = np.zeros((16, 16))
    kernel[0, 0], kernel[0, 1], kernel[1, 0], kernel[0, -1], kernel[-1, 0] = 0.6, 0.1, 0.1, 0.1, 0.1
    blurred = np.fft.ifft2(np.fft.fft2(x) * np.fft.fft2(kernel)).real
    loss, cache = amplitude_loss_forward(blurred, x)
    step = blurred - 0.5 * amplitude_loss_backward(1.0, cache)
    assert float(amplitude_loss_forward(step, x)[0]) < float(loss)


def test_a_coefficient_of_zero_gets_no_gradient(xp):
    """pred all zeros: no coefficient has a phase to grow along; the gradient is 0 there,
    as PyTorch's abs gives (tested against it in test_torch_parity)."""
    pred, target = np.zeros((1, 4, 4)), normal(0, 1, 4, 4)
    loss, cache = amplitude_loss_forward(xp.asarray(pred), xp.asarray(target))
    assert float(loss) == pytest.approx(np.mean(target ** 2))   # Parseval
    assert not np.any(to_numpy(amplitude_loss_backward(1.0, cache)))


def test_float32_stays_float32(xp):
    pred, target = (xp.asarray(normal(s, 2, 3, 4, 4), dtype=np.float32) for s in (0, 1))
    loss, cache = amplitude_loss_forward(pred, target)
    assert loss.dtype == np.float32
    assert amplitude_loss_backward(np.float64(0.5), cache).dtype == np.float32


def test_amplitude_loss_rejects_bad_input():
    with pytest.raises(ShapeError, match=r"must have one shape, \(\.\.\., H, W\)"):
        amplitude_loss_forward(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ShapeError, match="must have one shape"):
        amplitude_loss_forward(np.zeros(5), np.zeros(5))
    with pytest.raises(DTypeError):
        amplitude_loss_forward(np.zeros((2, 3), np.int64), np.zeros((2, 3)))
    with pytest.raises(DTypeError):
        amplitude_loss_forward(np.zeros((2, 3)), np.zeros((2, 3), np.float32))
    for bands in (np.zeros((3, 2), np.int64), np.zeros((2, 3)), -np.ones((2, 3), np.int64)):
        with pytest.raises(ShapeError, match=r"bands must be ints >= 0 of shape \(2, 3\), one "
                                             r"band per coefficient \(frequency_rings\(2, 3\)"):
            amplitude_loss_forward(np.zeros((2, 3)), np.ones((2, 3)), bands)
