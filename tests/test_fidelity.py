"""How close a reconstruction is: SSIM and the share of high-frequency power kept
(tinytok.evaluate.metrics), against slow references written from the definitions
(tests/reference.py), scikit-image where installed, and cases whose answer is known."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from scipy.ndimage import gaussian_filter

import reference
from tinytok.data.datasets import make_shapes
from tinytok.errors import ConfigError, DTypeError, ImageError, ShapeError
from tinytok.evaluate import fidelity, hf_share, ssim
from tinytok.evaluate.metrics import gaussian_window, radial_frequency, window_means

RNG = np.random.default_rng(0)


def noisy(x, sigma, seed=1):
    """x (uint8) plus Gaussian noise of sigma grey levels, clipped back to uint8."""
    noise = np.random.default_rng(seed).normal(0, sigma, x.shape)
    return np.clip(x + noise, 0, 255).round().astype(np.uint8)


def blurred(x, sigma=1.0):
    """Each picture and channel of x blurred in space only (not across pictures or colours)."""
    return gaussian_filter(x.astype(np.float64), sigma=(0, sigma, sigma, 0), mode="wrap")


SHAPES = make_shapes(4, seed=3).images


# ---------------------------------------------------------------- SSIM

def test_ssim_of_identical_pictures_is_one():
    assert np.allclose(ssim(SHAPES, SHAPES), 1.0, atol=1e-12)


@pytest.mark.parametrize("shape, sigma", [((2, 12, 13, 3), 20.0), ((1, 11, 11, 1), 60.0),
                                          ((2, 15, 12, 2), 5.0)])
def test_ssim_matches_the_loop_reference(shape, sigma):
    a = RNG.integers(0, 256, shape).astype(np.uint8)
    b = noisy(a, sigma)
    want = reference.ssim(a, b)
    assert np.allclose(ssim(a, b), want, rtol=0, atol=1e-10)
    assert (want < 1).all() and (want > -1).all()


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    a, b = SHAPES, noisy(SHAPES, 25.0)
    want = [metrics.structural_similarity(x, y, channel_axis=-1, data_range=255,
                                          gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False) for x, y in zip(a, b)]
    assert np.allclose(ssim(a, b), want, rtol=0, atol=1e-10)


def test_window_means_is_a_separable_gaussian_filter_cut_to_whole_windows():
    x = RNG.normal(size=(2, 20, 17, 3))
    want = gaussian_filter(x, sigma=(0, 1.5, 1.5, 0), truncate=5 / 1.5, mode="constant")
    assert np.allclose(window_means(x, gaussian_window()), want[:, 5:-5, 5:-5], atol=1e-12)
    assert np.isclose(gaussian_window().sum(), 1) and len(gaussian_window()) == 11


def test_ssim_falls_with_noise_and_blur():
    more_noise = [ssim(SHAPES, noisy(SHAPES, s)).mean() for s in (2, 10, 40)]
    assert more_noise == sorted(more_noise, reverse=True) and more_noise[0] < 1
    assert ssim(SHAPES, blurred(SHAPES, 1.5)).mean() < 0.99


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, (2, 11, 12, 3)), arrays(np.uint8, (2, 11, 12, 3)))
def test_ssim_is_symmetric_and_at_most_one(a, b):
    ab, ba = ssim(a, b), ssim(b, a)
    assert np.allclose(ab, ba, atol=1e-12)
    assert (ab <= 1 + 1e-12).all() and (ab >= -1 - 1e-12).all()
    assert np.allclose(ssim(a, a), 1.0, atol=1e-12)


# ---------------------------------------------------------------- high-frequency power

def test_identical_pictures_keep_all_their_power():
    assert hf_share(SHAPES, SHAPES) == pytest.approx(1.0, abs=1e-12)
    assert hf_share(SHAPES, SHAPES, 0.35) == pytest.approx(1.0, abs=1e-12)


def test_a_blur_keeps_less_and_less_at_higher_frequencies():
    soft = blurred(SHAPES, 1.0)
    kept = [hf_share(SHAPES, soft, low) for low in (0.1, 0.25, 0.35, 0.5)]
    assert all(0 < k < 1 for k in kept) and kept == sorted(kept, reverse=True)
    assert hf_share(SHAPES, blurred(SHAPES, 2.0)) < kept[1]


def test_a_known_wave():
    """A wave of 3/8 cycle per pixel (in the band) at half its amplitude keeps a quarter of
    its power; a wave of 1/8 cycle (below the band) added to both changes nothing."""
    y, x = np.mgrid[0:16, 0:16]
    fine, coarse = np.cos(2 * np.pi * 0.375 * x), np.sin(2 * np.pi * 0.125 * (x + y))
    original = (100 + 40 * fine + 30 * coarse)[None, :, :, None]
    kept = (100 + 20 * fine + 30 * coarse)[None, :, :, None]
    assert hf_share(original, kept) == pytest.approx(0.25, abs=1e-12)
    assert hf_share(original, kept, 0.375) == pytest.approx(0.25, abs=1e-12)
    assert hf_share(original, original * 0 + 100 + 30 * coarse[None, :, :, None]) == \
        pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("shape, low", [((2, 8, 8, 3), 0.25), ((1, 9, 7, 2), 0.35),
                                        ((3, 6, 10, 1), 0.1), ((1, 8, 8, 1), 0.5)])
def test_hf_share_matches_the_dft_written_out(shape, low):
    a = RNG.integers(0, 256, shape).astype(np.uint8)
    b = np.clip(blurred(a, 0.8) + RNG.normal(0, 5, shape), 0, 255)
    assert hf_share(a, b, low) == pytest.approx(reference.hf_share(a, b, low), rel=1e-10)


def test_radial_frequency_in_cycles_per_pixel():
    f = radial_frequency(4, 8)
    assert f[0, 0] == 0 and f[0, 1] == 1 / 8 and f[2, 0] == 0.5 and f[0, 7] == 1 / 8
    assert f.max() == pytest.approx(np.hypot(0.5, 0.5))


@settings(max_examples=25, deadline=None)
@given(arrays(np.float64, (2, 8, 8, 3), elements=st.floats(0, 255)), st.floats(0.1, 3.0),
       st.floats(-50, 50))
def test_scaled_detail_keeps_the_square_of_the_scale(a, scale, offset):
    """A flat offset lives at 0 cycles, outside the band; scaling the picture scales its power
    by the square, at every frequency."""
    if np.ptp(a, axis=(1, 2)).max() < 1:
        return  # (nearly) flat pictures have no detail to keep
    assert hf_share(a, scale * a + offset) == pytest.approx(scale ** 2, rel=1e-9)


def test_fidelity_figures():
    f = fidelity(SHAPES, noisy(SHAPES, 8.0))
    assert set(f) == {"psnr_db", "psnr_db_median", "ssim", "hf_share", "hf_share_035"}
    assert 0 < f["ssim"] < 1 and f["hf_share"] > 1   # noise adds power it did not have
    assert all(isinstance(v, float) for v in f.values())


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, error, words", [
    (lambda: ssim(SHAPES, SHAPES[:2]), ShapeError, "same shape"),
    (lambda: ssim(SHAPES[0], SHAPES[0]), ShapeError, "(N, H, W, C)"),
    (lambda: ssim(SHAPES[:, :10, :10], SHAPES[:, :10, :10]), ShapeError, "at least 11x11"),
    (lambda: ssim(SHAPES[:0], SHAPES[:0]), ShapeError, "non-empty"),
    (lambda: ssim(SHAPES > 0, SHAPES > 0), DTypeError, "bool"),
    (lambda: hf_share(SHAPES, SHAPES[..., :2]), ShapeError, "same shape"),
    (lambda: hf_share(SHAPES, SHAPES, 0.8), ConfigError, "(0, 0.707]"),
    (lambda: hf_share(SHAPES, SHAPES, 0), ConfigError, "low must be"),
    (lambda: hf_share(SHAPES, SHAPES, float("nan")), ConfigError, "low must be"),
    (lambda: hf_share(SHAPES, SHAPES, "high"), ConfigError, "low must be"),
    (lambda: hf_share(np.full((1, 8, 8, 3), 7, np.uint8), np.zeros((1, 8, 8, 3), np.uint8)),
     ImageError, "no power"),
])
def test_bad_input_is_one_line(call, error, words):
    with pytest.raises(error) as caught:
        call()
    assert words in str(caught.value) and "\n" not in str(caught.value)
