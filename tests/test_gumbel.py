"""Gumbel-softmax quantization (DALL-E's dVAE): the mixture and the KL term are both
differentiable, so both are finite-differenced; plus references, limits and the schedule."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_models as ref
from tinytok.errors import DTypeError, ShapeError
from tinytok.gradcheck import assert_gradients_close, numerical_gradient, relative_error
from tinytok.tokenizer.gumbel import (gumbel_noise, gumbel_quantize_backward,
                                      gumbel_quantize_forward, temperature_at)

FEW = settings(max_examples=20, deadline=None)


def draw(seed, N=2, K=5, H=3, W=2, D=3, dtype=np.float64, noise=True):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((N, K, H, W)).astype(dtype)
    codebook = rng.standard_normal((K, D)).astype(dtype)
    g = gumbel_noise((N, K, H, W), rng, dtype) if noise else None
    return logits, codebook, g


def mixture_pair(tau, noise):
    """(logits, codebook) -> z_q, with the KL path switched off in the backward."""
    def forward(logits, codebook):
        z_q, _, _, cache = gumbel_quantize_forward(logits, codebook, tau, noise)
        return z_q, cache

    def backward(dz_q, cache):
        return gumbel_quantize_backward(dz_q, cache, dkl=0.0)
    return forward, backward


def kl_pair(codebook, tau, noise):
    """logits -> kl, with no gradient arriving through the mixture."""
    def forward(logits):
        z_q, _, kl, cache = gumbel_quantize_forward(logits, codebook, tau, noise)
        return kl, (cache, z_q.shape)

    def backward(dkl, cache):
        cache, shape = cache
        dlogits, dcodebook = gumbel_quantize_backward(np.zeros(shape), cache, dkl)
        np.testing.assert_array_equal(dcodebook, 0)  # the KL does not see the codebook
        return dlogits
    return forward, backward


# --- gradients ------------------------------------------------------------------------------

@FEW
@given(N=st.integers(1, 2), K=st.integers(1, 6), H=st.integers(1, 3), W=st.integers(1, 3),
       D=st.integers(1, 4), tau=st.floats(0.3, 3.0), noise=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_mixture_gradients_match_finite_differences(N, K, H, W, D, tau, noise, seed):
    logits, codebook, g = draw(seed, N, K, H, W, D, noise=noise)
    forward, backward = mixture_pair(tau, g)
    assert_gradients_close(forward, backward, [logits, codebook], seed=seed)


@FEW
@given(N=st.integers(1, 2), K=st.integers(1, 6), H=st.integers(1, 3), W=st.integers(1, 3),
       scale=st.floats(0.1, 4.0), seed=st.integers(0, 2 ** 16))
def test_kl_gradient_matches_finite_differences(N, K, H, W, scale, seed):
    logits, codebook, g = draw(seed, N, K, H, W)
    forward, backward = kl_pair(codebook, 0.7, g)
    assert_gradients_close(forward, backward, [logits * scale], seed=seed)


def test_mixture_pair_on_backend(xp):
    logits, codebook, g = draw(0)
    forward, backward = mixture_pair(0.5, xp.asarray(g))
    assert_gradients_close(forward, backward, [xp.asarray(logits), xp.asarray(codebook)])


@pytest.mark.parametrize("dkl", [1.0, 0.3])
def test_both_paths_together(dkl):
    """sum(g * z_q) + dkl * kl: the backward's two contributions add up."""
    logits, codebook, noise = draw(3)
    tau = 0.8
    z_q, _, kl, cache = gumbel_quantize_forward(logits, codebook, tau, noise)
    g = np.random.default_rng(1).standard_normal(z_q.shape)
    g_before = g.copy()
    dlogits, dcodebook = gumbel_quantize_backward(g, cache, dkl)
    np.testing.assert_array_equal(g, g_before)

    def total(l):
        zq, _, k, _ = gumbel_quantize_forward(l, codebook, tau, noise)
        return np.asarray(float((zq * g).sum() + dkl * k))

    num = numerical_gradient(total, logits.copy(), np.ones(()), np.arange(logits.size))
    assert relative_error(dlogits.reshape(-1), num) < 1e-8


# --- forward against a reference, limits ----------------------------------------------------

@FEW
@given(K=st.integers(1, 6), D=st.integers(1, 4), tau=st.floats(0.2, 3.0),
       noise=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_forward_matches_naive_loop(K, D, tau, noise, seed):
    logits, codebook, g = draw(seed, K=K, D=D, noise=noise)
    z_q, ids, kl, _ = gumbel_quantize_forward(logits, codebook, tau, g)
    want_zq, want_ids, want_kl = ref.gumbel_quantize(logits, codebook, tau, g)
    np.testing.assert_allclose(z_q, want_zq, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(ids, want_ids)
    assert float(kl) == pytest.approx(want_kl, rel=1e-9, abs=1e-12)


def test_ids_are_argmax_of_the_noise_free_logits():
    logits, codebook, g = draw(4, K=7)
    g = g * 10  # big noise: argmax(logits + g) differs from argmax(logits) somewhere
    _, ids, _, _ = gumbel_quantize_forward(logits, codebook, 1.0, g)
    noisy = (logits + g).argmax(axis=1)
    assert np.any(noisy != logits.argmax(axis=1))
    np.testing.assert_array_equal(ids, logits.argmax(axis=1))


def test_small_temperature_gives_the_one_hot_choice():
    logits, codebook, g = draw(5, K=6)
    noisy = logits + g
    top2 = np.sort(noisy, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-3  # no near-ties in this draw
    winners = noisy.argmax(axis=1)                   # (N, H, W)
    z_q, _, _, _ = gumbel_quantize_forward(logits, codebook, 1e-5, g)
    np.testing.assert_allclose(z_q, ref.gather_codes(codebook, winners), rtol=0, atol=1e-12)
    # and a large temperature gives nearly the plain average of the codes
    z_q, _, _, _ = gumbel_quantize_forward(logits, codebook, 1e6, g)
    np.testing.assert_allclose(z_q, np.broadcast_to(codebook.mean(0)[None, :, None, None],
                                                    z_q.shape), atol=1e-4)


def test_kl_is_zero_for_uniform_logits():
    _, codebook, _ = draw(0, K=5)
    logits = np.full((2, 5, 3, 2), 1.3)
    _, _, kl, _ = gumbel_quantize_forward(logits, codebook, 1.0)
    assert float(kl) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("K", [2, 5, 64])
def test_kl_reaches_log_K_for_one_hot_logits(K):
    codebook = np.zeros((K, 2))
    logits = np.zeros((1, K, 2, 2))
    logits[:, 1] = 1e3
    _, _, kl, _ = gumbel_quantize_forward(logits, codebook, 1.0)
    assert float(kl) == pytest.approx(math.log(K), rel=1e-9)


@FEW
@given(K=st.integers(1, 8), scale=st.floats(0.01, 50), seed=st.integers(0, 2 ** 16))
def test_kl_lies_between_zero_and_log_K(K, scale, seed):
    logits, codebook, _ = draw(seed, K=K)
    _, _, kl, _ = gumbel_quantize_forward(logits * scale, codebook, 1.0)
    assert -1e-12 <= float(kl) <= math.log(K) + 1e-9


def test_float32_stays_float32():
    logits, codebook, g = draw(0, dtype=np.float32)
    z_q, ids, kl, cache = gumbel_quantize_forward(logits, codebook, 0.5, g)
    dl, dc = gumbel_quantize_backward(np.ones_like(z_q), cache)
    assert z_q.dtype == kl.dtype == dl.dtype == dc.dtype == np.float32


# --- noise and schedule ---------------------------------------------------------------------

def test_gumbel_noise_is_seeded_and_has_gumbel_mean():
    a = gumbel_noise((20000,), np.random.default_rng(0))
    b = gumbel_noise((20000,), np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32
    assert float(a.mean()) == pytest.approx(0.5772156649, abs=0.03)  # Euler-Mascheroni
    assert float(a.var()) == pytest.approx(math.pi ** 2 / 6, rel=0.05)


def test_temperature_schedule_endpoints_and_shape():
    assert temperature_at(0, 100) == pytest.approx(1.0)
    assert temperature_at(100, 100) == pytest.approx(1 / 16)
    assert temperature_at(500, 100) == pytest.approx(1 / 16)    # clamped after the end
    assert temperature_at(-5, 100) == pytest.approx(1.0)        # and before the start
    assert temperature_at(50, 100) == pytest.approx(0.25)       # geometric midpoint
    assert temperature_at(0, 10, start=2.0, end=0.5) == pytest.approx(2.0)
    assert temperature_at(10, 10, start=2.0, end=0.5) == pytest.approx(0.5)
    taus = [temperature_at(s, 40) for s in range(41)]
    assert all(a > b for a, b in zip(taus, taus[1:]))
    assert temperature_at(0, 0) == pytest.approx(1.0)            # no division by zero


# --- errors ---------------------------------------------------------------------------------

def test_codebook_size_mismatch_is_a_shape_error():
    logits, _, _ = draw(0, K=5)
    with pytest.raises(ShapeError, match="codebook has 4"):
        gumbel_quantize_forward(logits, np.zeros((4, 3)))


def test_wrong_ndim_and_dtype_are_rejected():
    logits, codebook, g = draw(0)
    with pytest.raises(ShapeError):
        gumbel_quantize_forward(logits[0], codebook)
    with pytest.raises(DTypeError):
        gumbel_quantize_forward(logits, codebook.astype(np.float32))
    with pytest.raises(DTypeError):
        gumbel_quantize_forward(logits, codebook, 1.0, g.astype(np.float32))
