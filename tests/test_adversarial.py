"""Adversarial tokenizer training (VQGAN), shown rather than claimed.

The patch discriminator as a model pair: float64 gradients against central differences
(w.r.t. the picture and every parameter, hypothesis over sizes), its forward against a
direct formulation (scipy's correlate, not the package's convolution), its receptive field,
bad configs. The adaptive weight: lambda from adversarial_grads against lambda from central
differences of the reconstruction loss (the MSE alone) and of L_G = -mean(D(x_hat)) at the
decoder's last weight, and against two separate full backward passes. The whole step: with
lambda held fixed, the tokenizer's gradients are those of recon + vq + lambda * L_G and D's
those of L_D with x_hat fixed. Batch parts on threads give one thread's numbers. Training:
exact resume, nothing of D before gan_start, the checkpoint read by Tokenizer.load and
export, and the command line's bad settings as one line each.
"""
import io
import re
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import reference
import reference_models as ref
from tinytok import parallel
from tinytok.data.datasets import make_shapes
from tinytok.errors import ConfigError, DTypeError, ShapeError
from tinytok.gradcheck import assert_gradients_close, relative_error
from tinytok.ops import (amplitude_loss_backward, amplitude_loss_forward, frequency_rings,
                         hinge_d_loss_forward, hinge_g_loss_backward, hinge_g_loss_forward)
from tinytok.tokenizer.discriminator import (DiscriminatorConfig, discriminator_backward,
                                             discriminator_forward, init_discriminator_params,
                                             is_discriminator_param)
from tinytok.tokenizer.quantize import vector_quantize_forward
from tinytok.tokenizer.vqvae import (conv_forward, decoder_forward, encoder_forward,
                                     init_tokenizer_params, tokenizer_backward, tokenizer_config,
                                     tokenizer_forward)
from tinytok.training.adversarial import (DELTA, MAX_LAMBDA, adaptive_weight,
                                          adversarial_grads)
from tinytok.training.checkpoint import load_checkpoint
from tinytok.training.optim import zeros_like_params

TOL = 1e-6
ALONE = lambda arrays: arrays          # noqa: E731  sum_everywhere on one process


def disc_params(config, seed=0, dtype="float64"):
    return init_discriminator_params(config, seed=seed, dtype=dtype)


# ---------------------------------------------------------------- the discriminator pair

def disc_as_op_pair(config, keys):
    """discriminator_forward/backward as an op pair (x, *param arrays) for check_pair."""
    def forward(x, *arrays):
        params = dict(zip(keys, arrays))
        scores, cache = discriminator_forward(x, params, config)
        return scores, (cache, params)

    def backward(dscores, cache):
        cache, params = cache
        grads = {k: np.zeros_like(v) for k, v in params.items()}
        before = dscores.copy()
        dx = discriminator_backward(dscores, cache, grads)
        np.testing.assert_array_equal(dscores, before)   # the backward leaves dscores alone
        return (dx,) + tuple(grads[k] for k in keys)
    return forward, backward


def disc_with_features_as_op_pair(config, keys, outputs):
    """The same pair with its features as outputs: forward's out is the chosen ones of
    (scores, h1, h2) flattened and joined, so check_pair's random upstream gradient makes a
    loss on them together; backward cuts it up and passes dscores (None when the scores are
    not chosen) and dfeatures (None for a feature not chosen)."""
    def forward(x, *arrays):
        params = dict(zip(keys, arrays))
        scores, cache = discriminator_forward(x, params, config)
        chosen = [a for a, name in zip((scores,) + cache.features, ("scores", "h1", "h2"))
                  if name in outputs]
        return np.concatenate([a.ravel() for a in chosen]), (cache, params, scores.shape)

    def backward(dout, cache):
        cache, params, scores_shape = cache
        shapes = dict(zip(("scores", "h1", "h2"), (scores_shape,) + tuple(
            f.shape for f in cache.features)))
        pieces, at = {}, 0
        for name in ("scores", "h1", "h2"):
            if name in outputs:
                size = int(np.prod(shapes[name]))
                pieces[name] = dout[at:at + size].reshape(shapes[name])
                at += size
        assert at == dout.size
        before = {k: v.copy() for k, v in pieces.items()}
        grads = {k: np.zeros_like(v) for k, v in params.items()}
        dx = discriminator_backward(pieces.get("scores"), cache, grads,
                                    dfeatures=(pieces.get("h1"), pieces.get("h2")))
        for k, v in pieces.items():                    # the backward leaves them alone
            np.testing.assert_array_equal(v, before[k], err_msg=k)
        return (dx,) + tuple(grads[k] for k in keys)
    return forward, backward


def kink_free(x, params, slope):
    """Whether no pre-activation of D's two leaky ReLUs lies within 1e-4 of the kink at 0,
    where a central difference straddling it is wrong by design (a 1e-5 step can move one
    that far)."""
    h1, _ = conv_forward(x, params, "disc.conv1", stride=2, padding=1)
    h2, _ = conv_forward(np.where(h1 > 0, h1, slope * h1), params, "disc.conv2", stride=2,
                         padding=1)
    return min(np.abs(h1).min(), np.abs(h2).min()) > 1e-4


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 2), size=st.sampled_from([4, 8, 12]), channels=st.integers(1, 3),
       slope=st.sampled_from([0.0, 0.2, 0.5]), seed=st.integers(0, 2 ** 16))
def test_discriminator_gradients_match_central_differences(n, size, channels, slope, seed):
    """Every argument: the picture and each of the six parameters, in float64. Leaky ReLU
    has a kink at 0: examples with a pre-activation near it are skipped (kink_free)."""
    config = DiscriminatorConfig(channels, slope)
    params = disc_params(config, seed)
    keys = sorted(params)
    x = np.random.default_rng(seed).standard_normal((n, 3, size, size))
    assume(kink_free(x, params, slope))
    forward, backward = disc_as_op_pair(config, keys)
    errors = assert_gradients_close(forward, backward, [x] + [params[k] for k in keys],
                                    tol=TOL, max_elements=60, seed=seed)
    assert len(errors) == 1 + 6


FEATURE_LOSSES = [("scores", "h1", "h2"), ("h1", "h2"), ("scores", "h1"), ("h1",), ("h2",)]


@settings(max_examples=20, deadline=None)
@given(outputs=st.sampled_from(FEATURE_LOSSES), n=st.integers(1, 2),
       size=st.sampled_from([4, 8]), channels=st.integers(1, 3),
       slope=st.sampled_from([0.0, 0.2, 0.5]), seed=st.integers(0, 2 ** 16))
def test_discriminator_gradients_of_a_loss_on_its_features(outputs, n, size, channels, slope,
                                                           seed):
    """dfeatures: a loss on the scores and both features together, on the features alone
    (dscores None) or on one of them: the gradients at the picture and at every parameter
    against central differences, float64, kink-free examples only; those of the layers above
    the loss's lowest output exactly zero."""
    config = DiscriminatorConfig(channels, slope)
    params = disc_params(config, seed)
    keys = sorted(params)
    x = np.random.default_rng(seed).standard_normal((n, 3, size, size))
    assume(kink_free(x, params, slope))
    forward, backward = disc_with_features_as_op_pair(config, keys, outputs)
    args = [x] + [params[k] for k in keys]
    errors = assert_gradients_close(forward, backward, args, tol=TOL, max_elements=60,
                                    seed=seed)
    assert len(errors) == 1 + 6
    out, cache = forward(*args)
    grads = backward(np.random.default_rng(seed).standard_normal(out.shape), cache)
    reached = {"disc.conv1.w", "disc.conv1.b"}
    if "h2" in outputs or "scores" in outputs:
        reached |= {"disc.conv2.w", "disc.conv2.b"}
    if "scores" in outputs:
        reached |= {"disc.out.w", "disc.out.b"}
    for k, g in zip(keys, grads[1:]):   # (with slope 0, a layer all below 0 passes none)
        assert (bool(np.abs(g).max() > 0) == (k in reached)) or (slope == 0 and not g.any()), k


def test_discriminator_backward_needs_some_gradient():
    config = DiscriminatorConfig(2)
    params = disc_params(config)
    _, cache = discriminator_forward(np.zeros((1, 3, 8, 8)), params, config)
    for dfeatures in (None, (None, None)):
        with pytest.raises(ConfigError, match="needs a gradient: dscores, or dfeatures"):
            discriminator_backward(None, cache, zeros_like_params(params),
                                   dfeatures=dfeatures)


def reference_discriminator(x, params, slope):
    """The same network by scipy.signal.correlate (tests/reference.py) and np.where."""
    def conv(h, name, stride):
        w, b = params[f"disc.{name}.w"], params[f"disc.{name}.b"]
        return reference.conv2d_scipy(h, w, b, stride, 1)

    def leaky(h):
        return np.where(h > 0, h, slope * h)

    return conv(leaky(conv(leaky(conv(x, "conv1", 2)), "conv2", 2)), "out", 1)


@pytest.mark.parametrize("n, size, channels, slope", [(2, 8, 3, 0.2), (1, 16, 4, 0.0),
                                                      (3, 12, 2, 0.5)])
def test_discriminator_forward_matches_a_direct_formulation(n, size, channels, slope):
    config = DiscriminatorConfig(channels, slope)
    params = disc_params(config, seed=size)
    x = np.random.default_rng(n).standard_normal((n, 3, size, size))
    scores, _ = discriminator_forward(x, params, config)
    assert scores.shape == (n, 1, size // 4, size // 4)
    np.testing.assert_allclose(scores, reference_discriminator(x, params, slope),
                               rtol=1e-10, atol=1e-12)


def test_discriminator_parameters_are_named_and_shaped():
    params = disc_params(DiscriminatorConfig(5))
    assert {k: v.shape for k, v in params.items()} == {
        "disc.conv1.w": (5, 3, 4, 4), "disc.conv1.b": (5,),
        "disc.conv2.w": (10, 5, 4, 4), "disc.conv2.b": (10,),
        "disc.out.w": (1, 10, 3, 3), "disc.out.b": (1,)}
    assert all(is_discriminator_param(k) for k in params)
    assert not any(is_discriminator_param(k) for k in init_tokenizer_params(
        tokenizer_config("vqvae-tiny")))
    again = disc_params(DiscriminatorConfig(5))
    assert all(np.array_equal(params[k], again[k]) for k in params)     # seeded
    assert init_discriminator_params(DiscriminatorConfig(5))["disc.out.w"].dtype == np.float32


def test_each_score_sees_an_18_pixel_patch():
    """The module's claim: a score at (i, j) of a 32x32 picture depends on rows and columns
    4i-7 .. 4i+10 (18 pixels, cut at the border), and on no other pixel."""
    config = DiscriminatorConfig(3)
    params = disc_params(config, seed=1)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32))
    scores, cache = discriminator_forward(x, params, config)
    for i, j in [(0, 0), (3, 4), (7, 2)]:
        one = np.zeros_like(scores)
        one[0, 0, i, j] = 1.0
        dx = discriminator_backward(one, cache, zeros_like_params(params))
        rows, cols = np.nonzero(np.abs(dx[0]).sum(0))
        assert (rows.min(), rows.max()) == (max(4 * i - 7, 0), min(4 * i + 10, 31))
        assert (cols.min(), cols.max()) == (max(4 * j - 7, 0), min(4 * j + 10, 31))


def test_only_the_parameter_gradients_when_the_picture_needs_none():
    config = DiscriminatorConfig(2)
    params = disc_params(config)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    scores, cache = discriminator_forward(x, params, config)
    with_dx, without = zeros_like_params(params), zeros_like_params(params)
    assert discriminator_backward(np.ones_like(scores), cache, with_dx) is not None
    assert discriminator_backward(np.ones_like(scores), cache, without, image_grad=False) is None
    for k in params:
        np.testing.assert_array_equal(with_dx[k], without[k])


@pytest.mark.parametrize("kwargs, message", [
    (dict(channels=0), "discriminator channels must be a whole number >= 1, got 0"),
    (dict(channels=2.5), "discriminator channels must be a whole number >= 1, got 2.5"),
    (dict(channels=True), "discriminator channels must be a whole number >= 1, got True"),
    (dict(slope=1.0), "discriminator slope must be a number in [0, 1), got 1.0"),
    (dict(slope=-0.1), "discriminator slope must be a number in [0, 1), got -0.1"),
    (dict(slope=float("nan")), "discriminator slope must be a number in [0, 1), got nan"),
    (dict(slope="0.2"), "discriminator slope must be a number in [0, 1), got '0.2'"),
])
def test_bad_discriminator_configs_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError) as e:
        DiscriminatorConfig(**kwargs)
    assert str(e.value) == message


def test_bad_pictures_for_the_discriminator_are_one_line_errors():
    config = DiscriminatorConfig(2)
    params = init_discriminator_params(config)
    for x, error, words in [
            (np.zeros((1, 1, 8, 8), np.float32), ShapeError, "expects C = 3 input channels"),
            (np.zeros((3, 8, 8), np.float32), ShapeError, "(N, C, H, W)"),
            (np.zeros((1, 3, 8, 8)), DTypeError, "float32 but x is float64"),
            (np.zeros((1, 3, 2, 2), np.float32), ShapeError, "does not fit")]:
        with pytest.raises(error) as e:
            discriminator_forward(x, params, config)
        assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("changes, message", [
    (dict(gan_weight=-1.0), "gan_weight must be a number >= 0"),
    (dict(gan_weight=float("inf")), "gan_weight must be a number >= 0"),
    (dict(gan_start=-1), "gan_start must be a whole number >= 0, got -1"),
    (dict(gan_start=1.5), "gan_start must be a whole number >= 0, got 1.5"),
    (dict(disc_channels=0), "discriminator channels must be a whole number >= 1, got 0"),
    (dict(disc_start=3, gan_start=2), "gan_start (2) must not come before disc_start (3)"),
    (dict(disc_lr_scale=0), "disc_lr_scale must be a number > 0"),
    (dict(feature_weight=-0.5), "feature_weight must be a number >= 0, got -0.5"),
    (dict(feature_weight=float("nan")), "feature_weight must be a number >= 0, got nan"),
    (dict(gan_weight=0.0, feature_weight=0.5), "feature_weight (0.5) matches the "
                                               "discriminator's features: it needs one"),
    (dict(amplitude_weight=-1), "amplitude_weight must be a number >= 0, got -1"),
    (dict(amplitude_weight=float("inf")), "amplitude_weight must be a number >= 0, got inf"),
    (dict(gan_weight=0.0, amplitude_weight=2), "amplitude_weight (2) is a term of the "
                                               "adversarial loss's L_rec"),
])
def test_bad_recipes_are_one_line_errors(changes, message):
    from tinytok.training import TokenizerRecipe
    with pytest.raises(ConfigError, match=re.escape(message)):
        TokenizerRecipe(**{"gan_weight": 0.1, **changes}).check()
    TokenizerRecipe(gan_weight=0.0, gan_start=5, disc_channels=3).check()   # all fine


# ---------------------------------------------------------------- one step, float64

def tiny_config():
    """vqvae-tiny's layers at 16x16 pictures, narrow enough for central differences."""
    return replace(tokenizer_config("vqvae-tiny"), image_size=16, hidden=8, res_hidden=4,
                   code_dim=3, num_codes=6)


DISC = DiscriminatorConfig(3)


FEATURE_WEIGHTS = [0.0, 0.7]     # without L_F, and with it weighing about as much as the mse
# (feature_weight, amplitude_weight): neither term, L_F alone, and both, L_A outweighing mse
TERMS = [(0.0, 0.0), (0.7, 0.0), (0.7, 1.5)]


def step_setup(seed=0, gan_weight=0.5, feature_weight=0.0, decoder_only=False,
               amplitude_weight=0.0):
    """float64 params of both models (the tokenizer scaled up, so that several codes are
    used, each latent's nearest code by a clear margin), two pictures, adversarial_grads."""
    config = tiny_config()
    params = {k: 3.0 * v for k, v in init_tokenizer_params(config, seed, "float64").items()}
    params.update(disc_params(DISC, seed + 1))
    x = np.random.default_rng(seed + 10).uniform(-0.5, 0.5, (2, 3, 16, 16))
    grads = zeros_like_params(params)
    out = adversarial_grads(x, params, config, DISC, grads, gan_weight, ALONE,
                            feature_weight=feature_weight, decoder_only=decoder_only,
                            amplitude_weight=amplitude_weight)
    z = out["z"]
    rows = z.transpose(0, 2, 3, 1).reshape(-1, config.code_dim)
    d = ((rows[:, None] - params["quant.codebook"][None]) ** 2).sum(-1)
    top2 = np.sort(d, axis=1)[:, :2]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-4 and len(np.unique(out["ids"])) > 1
    return config, params, x, grads, out


class Losses(NamedTuple):
    x_hat: np.ndarray
    ids: np.ndarray
    mse: float
    vq: float
    gen: float         # L_G = -mean(D(x_hat))
    features: float    # L_F = sum over D's features of mean((f(x_hat) - f(x))^2)
    amplitude: float   # L_A, the rings' amplitudes compared


def amplitude_distance(x_hat, x):
    """L_A written out with NumPy's FFT: each ring's power (its coefficients' distance from
    0, to the nearest 1/S cycle) summed, square-rooted, compared; over the pixels' count."""
    S = x.shape[-1]
    radius = np.rint(S * np.hypot(*np.meshgrid(np.fft.fftfreq(S), np.fft.fftfreq(S))))

    def amplitudes(a):
        power = np.abs(np.fft.fft2(a, axes=(-2, -1), norm="ortho")) ** 2
        return np.stack([np.sqrt(power[..., radius == r].sum(-1)) for r in np.unique(radius)])
    return float(((amplitudes(x_hat) - amplitudes(x)) ** 2).sum() / x.size)


def feature_distance(x_hat, x, params):
    """L_F written out: D's two features of each picture, their mean squared distance."""
    _, fake = discriminator_forward(x_hat, params, DISC)
    _, real = discriminator_forward(x, params, DISC)
    return float(sum(np.mean((f - r) ** 2) for f, r in zip(fake.features, real.features)))


def forward_both(x, params, config):
    """The losses of the step by the forward passes alone."""
    o, _ = tokenizer_forward(x, params, config)
    fake, _ = discriminator_forward(o["x_hat"], params, DISC)
    return Losses(o["x_hat"], o["ids"], float(o["recon_loss"]), float(o["vq_loss"]),
                  float(-fake.mean()), feature_distance(o["x_hat"], x, params),
                  amplitude_distance(o["x_hat"], x))


@pytest.mark.parametrize("feature_weight, amplitude_weight", TERMS)
def test_adaptive_weight_is_vqgans_ratio_at_the_decoders_last_weight(feature_weight,
                                                                      amplitude_weight):
    """lambda = gan_weight * |dL_rec/dw| / (|dL_G/dw| + 1e-4), w = dec.up2.w, with L_rec the
    mean squared error plus feature_weight * L_F plus amplitude_weight * L_A: both gradients
    by central differences over every element of w (a decoder weight: the codes cannot
    change)."""
    gan_weight = 0.5
    config, params, x, grads, out = step_setup(gan_weight=gan_weight,
                                               feature_weight=feature_weight,
                                               amplitude_weight=amplitude_weight)
    w = params["dec.up2.w"].reshape(-1)
    rec, gen, mse = np.empty(w.size), np.empty(w.size), np.empty(w.size)
    h = 1e-5
    for i in range(w.size):
        old = w[i]
        w[i] = old + h
        plus = forward_both(x, params, config)
        w[i] = old - h
        minus = forward_both(x, params, config)
        w[i] = old
        mse[i] = (plus.mse - minus.mse) / (2 * h)
        rec[i] = mse[i] + (feature_weight * (plus.features - minus.features)
                           + amplitude_weight * (plus.amplitude - minus.amplitude)) / (2 * h)
        gen[i] = (plus.gen - minus.gen) / (2 * h)
    want = gan_weight * np.linalg.norm(rec) / (np.linalg.norm(gen) + DELTA)
    assert 0 < want < gan_weight * MAX_LAMBDA           # not clipped: the ratio itself
    assert out["gan_lambda"] == pytest.approx(want, rel=1e-7)
    # and not the ratio of any other loss's gradient: the total loss with lambda * L_G has
    # another gradient at w, and with L_F the mse alone another
    total = rec + out["gan_lambda"] * gen
    for other_rec in [total] + ([mse] if feature_weight or amplitude_weight else []):
        other = gan_weight * np.linalg.norm(other_rec) / (np.linalg.norm(gen) + DELTA)
        assert abs(other - want) > 1e-3 * want


def feature_matching_grad(x_hat, x, params):
    """dL_F/dx_hat: D's backward from the features alone, the derivative of each mean
    squared distance, 2 (f(x_hat) - f(x)) / size, written out here."""
    _, fake_cache = discriminator_forward(x_hat, params, DISC)
    _, real_cache = discriminator_forward(x, params, DISC)
    dfeatures = tuple(2 * (f - r) / f.size
                      for f, r in zip(fake_cache.features, real_cache.features))
    return discriminator_backward(None, fake_cache, zeros_like_params(disc_params(DISC)),
                                  dfeatures=dfeatures)


@pytest.mark.parametrize("feature_weight, amplitude_weight", TERMS)
def test_adaptive_weight_equals_two_separate_full_backward_passes(feature_weight,
                                                                  amplitude_weight):
    """The independent route: one whole tokenizer backward for the reconstruction loss (its
    quantizer loss too, which cannot reach the decoder; the gradients of feature_weight * L_F
    and amplitude_weight * L_A fed in at x_hat), one for L_G alone (dloss=0, D's picture
    gradient fed in at x_hat); lambda from their dec.up2.w gradients."""
    gan_weight = 0.8
    config, params, x, _, out = step_setup(seed=0, gan_weight=gan_weight,
                                           feature_weight=feature_weight,
                                           amplitude_weight=amplitude_weight)
    tokenizer = {k: v for k, v in params.items() if not is_discriminator_param(k)}
    o, cache = tokenizer_forward(x, tokenizer, config)
    rec_grads = zeros_like_params(tokenizer)
    rings = frequency_rings(*x.shape[-2:])
    amplitude_grad = amplitude_loss_backward(amplitude_weight,
                                             amplitude_loss_forward(o["x_hat"], x, rings)[1])
    tokenizer_backward(cache, rec_grads, config,                     # mse + vq + L_F + L_A
                       dx_hat_extra=feature_weight * feature_matching_grad(o["x_hat"], x,
                                                                           params)
                       + amplitude_grad)
    fake, fake_cache = discriminator_forward(o["x_hat"], params, DISC)
    _, g_cache = hinge_g_loss_forward(fake)
    dx_gen = discriminator_backward(hinge_g_loss_backward(1.0, g_cache), fake_cache,
                                    zeros_like_params(disc_params(DISC)))
    gen_grads = zeros_like_params(tokenizer)
    tokenizer_backward(cache, gen_grads, config, dloss=0.0, dx_hat_extra=dx_gen)  # L_G alone
    rec_w, gen_w = rec_grads["dec.up2.w"], gen_grads["dec.up2.w"]
    want = gan_weight * np.linalg.norm(rec_w) / (np.linalg.norm(gen_w) + 1e-4)
    assert out["gan_lambda"] == pytest.approx(want, rel=1e-12)
    assert adaptive_weight(rec_w, gen_w, gan_weight) == pytest.approx(want, rel=1e-12)
    assert np.abs(gen_grads["enc.out.w"]).max() > 0       # L_G did reach the encoder


def test_adaptive_weight_is_clipped_and_finite():
    rec, nothing = np.full((2, 3), 1.0), np.zeros((2, 3))      # |rec| = sqrt(6)
    assert adaptive_weight(rec, nothing, 0.1) == pytest.approx(0.1 * MAX_LAMBDA)
    small = rec * 1e-3                                           # |small| / 1e-4 = 24.5
    assert adaptive_weight(small, nothing, 0.1) == pytest.approx(0.1 * np.sqrt(6) * 10)
    assert adaptive_weight(rec, rec, 2.0) == pytest.approx(2.0 * 6 ** 0.5 / (6 ** 0.5 + 1e-4))
    assert adaptive_weight(rec, rec, 0.0) == 0.0


@pytest.mark.parametrize("feature_weight, amplitude_weight", TERMS)
def test_tokenizer_gradients_are_those_of_recon_vq_and_lambda_times_l_g(feature_weight,
                                                                        amplitude_weight):
    """Decoder: the plain derivative of mse + vq + feature_weight * L_F + amplitude_weight *
    L_A + lambda * L_G (lambda as computed, held fixed). Encoder: the straight-through
    surrogate's, the codes checked unchanged."""
    config, params, x, grads, out = step_setup(seed=0, feature_weight=feature_weight,
                                               amplitude_weight=amplitude_weight)
    lam = out["gan_lambda"]
    ids0 = out["ids"]

    def total(p):
        f = forward_both(x, p, config)
        np.testing.assert_array_equal(f.ids, ids0)
        return (f.mse + f.vq + feature_weight * f.features + amplitude_weight * f.amplitude
                + lam * f.gen)

    decoder = [k for k in params if k.startswith("dec.")]
    errors = assert_param_grads(total, params, grads, decoder)
    assert len(errors) == len(decoder)

    z0 = out["z"].copy()
    e0, _, _, _ = vector_quantize_forward(z0, params["quant.codebook"], config.beta)

    def surrogate(p):      # what straight-through differentiates: z_q = z + (e0 - z0)
        z, _ = encoder_forward(x, p, config)
        _, ids, _, _ = vector_quantize_forward(z, p["quant.codebook"], config.beta)
        np.testing.assert_array_equal(ids, ids0)
        x_hat, _ = decoder_forward(z + (e0 - z0), p, config)
        fake, _ = discriminator_forward(x_hat, p, DISC)
        return float(np.mean((x_hat - x) ** 2) + config.beta * np.mean((z - e0) ** 2)
                     + feature_weight * feature_distance(x_hat, x, p)
                     + amplitude_weight * amplitude_distance(x_hat, x) - lam * fake.mean())

    assert_param_grads(surrogate, params, grads, [k for k in params if k.startswith("enc.")])


@pytest.mark.parametrize("feature_weight", FEATURE_WEIGHTS)
def test_discriminator_gradients_are_those_of_its_hinge_loss_with_x_hat_fixed(feature_weight):
    """L_D = mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))): none of L_G's gradient at D's
    parameters (computed on the way to lambda), nor of L_F's, may leak into them."""
    config, params, x, grads, out = step_setup(seed=0, feature_weight=feature_weight)
    x_hat = out["x_hat"].copy()

    def l_d(p):
        real, _ = discriminator_forward(x, p, DISC)
        fake, _ = discriminator_forward(x_hat, p, DISC)
        assert np.abs(real).max() < 0.9 and np.abs(fake).max() < 0.9   # away from the hinge
        return float(hinge_d_loss_forward(real, fake)[0])

    assert float(out["d_loss"]) == pytest.approx(l_d(params), rel=1e-12)
    # the last bias moves every score alike: -1 from the real half, +1 from the fake half
    assert_param_grads(l_d, params, grads, [k for k in params if is_discriminator_param(k)],
                       zero={"disc.out.b"})


def test_the_feature_term_trains_the_tokenizer_and_not_the_discriminator():
    """With feature_weight, D's gradients are those without it, bit for bit (D learns L_D
    alone), while every tokenizer gradient that L_F reaches (the decoder's, the encoder's)
    changes; decoder_only gives the same decoder and D gradients and none elsewhere."""
    *_, without, _ = step_setup(seed=0)
    *_, with_f, _ = step_setup(seed=0, feature_weight=0.7)
    *_, decoder_only, _ = step_setup(seed=0, feature_weight=0.7, decoder_only=True)
    for k in without:
        if is_discriminator_param(k):
            np.testing.assert_array_equal(with_f[k], without[k], err_msg=k)
        elif k != "quant.codebook":          # the codebook's: the vq loss's alone
            assert not np.allclose(with_f[k], without[k], rtol=1e-6, atol=0), k
        if is_discriminator_param(k) or k.startswith("dec."):
            np.testing.assert_array_equal(decoder_only[k], with_f[k], err_msg=k)
        else:
            assert not np.any(decoder_only[k]), k


def assert_param_grads(loss_fn, params, grads, keys, tol=TOL, max_elements=25, seed=0,
                       zero=()):
    """Central differences of loss_fn(params) at up to max_elements positions of each key;
    only the keys in `zero` may have a zero gradient there (else the check checks nothing)."""
    rng = np.random.default_rng(seed)
    errors = {}
    for key in keys:
        idx = ref.sample_indices(params[key].size, max_elements, rng)
        num = ref.numerical_param_gradient(loss_fn, params, key, idx)
        assert key in zero or np.abs(num).max() > 1e-8, f"{key}: a zero gradient checks nothing"
        errors[key] = relative_error(grads[key].reshape(-1)[idx], num)
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"gradient check failed: {bad}; all: {errors}"
    return errors


@pytest.mark.parametrize("feature_weight, amplitude_weight", TERMS)
def test_the_figures_are_the_losses(feature_weight, amplitude_weight):
    """loss and recon_loss as without D (neither lambda * L_G nor L_F nor L_A in them),
    g_loss L_G, feature_loss L_F and amplitude_loss L_A unweighted (0 when off)."""
    config, params, x, _, out = step_setup(seed=0, feature_weight=feature_weight,
                                           amplitude_weight=amplitude_weight)
    f = forward_both(x, params, config)
    assert float(out["recon_loss"]) == pytest.approx(f.mse, rel=1e-12)
    assert float(out["loss"]) == pytest.approx(f.mse + f.vq, rel=1e-12)
    assert float(out["g_loss"]) == pytest.approx(f.gen, rel=1e-12)
    assert f.features > 0.01 * f.mse                          # a distance worth checking
    want = f.features if feature_weight else 0.0
    assert float(out["feature_loss"]) == pytest.approx(want, rel=1e-12, abs=0)
    assert 0 < f.amplitude < f.mse                     # below mse, as it must be
    want = f.amplitude if amplitude_weight else 0.0
    assert float(out["amplitude_loss"]) == pytest.approx(want, rel=1e-12, abs=0)


# ---------------------------------------------------------------- batch parts on threads

@pytest.fixture
def one_thread_after():
    yield
    parallel.use_cores(1)


def float32_step(threads, n=7, feature_weight=0.0):
    parallel.use_cores(threads)
    config = replace(tokenizer_config("vqvae-tiny"), image_size=16)
    params = init_tokenizer_params(config, seed=2)
    params.update(init_discriminator_params(DiscriminatorConfig(8), seed=3))
    x = np.random.default_rng(4).uniform(-0.5, 0.5, (n, 3, 16, 16)).astype(np.float32)
    grads = zeros_like_params(params)
    out = adversarial_grads(x, params, config, DiscriminatorConfig(8), grads, 0.1, ALONE,
                            feature_weight=feature_weight)
    return grads, out


@pytest.mark.parametrize("feature_weight", [0.0, 0.5])
def test_batch_parts_give_one_threads_gradients_and_lambda(one_thread_after, feature_weight):
    one_grads, one = float32_step(1, feature_weight=feature_weight)
    three_grads, three = float32_step(3, feature_weight=feature_weight)
    assert len(parallel.row_blocks(7, parallel.threads())) == 3       # parts really ran
    np.testing.assert_array_equal(three["ids"], one["ids"])
    assert three["gan_lambda"] == pytest.approx(one["gan_lambda"], rel=1e-5)
    for key in ("loss", "recon_loss", "g_loss", "d_loss", "feature_loss"):
        assert float(three[key]) == pytest.approx(float(one[key]), rel=1e-5), key
    assert (float(one["feature_loss"]) > 0) == (feature_weight > 0)
    for k, g in one_grads.items():
        assert g.dtype == np.float32 and (np.abs(g).max() > 0 or k == "disc.out.b"), k
        np.testing.assert_allclose(three_grads[k], g, rtol=1e-5,
                                   atol=1e-5 * np.abs(g).max(), err_msg=k)
    again_grads, again = float32_step(3, feature_weight=feature_weight)   # same count:
    assert again["gan_lambda"] == three["gan_lambda"]                      # same bits
    for k in three_grads:
        np.testing.assert_array_equal(again_grads[k], three_grads[k], err_msg=k)


# ---------------------------------------------------------------- training

N_STEPS, DISC_START, GAN_START, STOP = 12, 2, 4, 6
GAN = dict(gan_weight=0.1, disc_start=DISC_START, gan_start=GAN_START, disc_channels=8,
           feature_weight=0.5, amplitude_weight=2.0)


@pytest.fixture(scope="module")
def shapes_images():
    return make_shapes(32, seed=1).images                              # (32, 32, 32, 3)


def gan_run(images, out, stream=None, resume=False, **recipe):
    from tinytok.training import TokenizerRecipe, TrainSettings, train_tokenizer
    settings = TrainSettings(steps=N_STEPS, batch_size=4, lr=3e-3, warmup=2, seed=5,
                             checkpoint_every=3, log_every=1)
    return train_tokenizer(images, tokenizer_config("vqvae-tiny"), settings, str(out),
                           TokenizerRecipe(kmeans_images=16, restart_every=3, **recipe),
                           resume=resume, log=lambda *a: None,
                           progress_stream=stream or io.StringIO())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_images):
    """The adversarial run straight through, the same stopped at step 6 and resumed, and
    the adversarial and the plain run each stopped after step 4 (gan_start)."""
    from test_resume import StopAt
    from tinytok.training import TrainingStopped
    d = tmp_path_factory.mktemp("gan")
    gan_run(shapes_images, d / "straight.npz", **GAN)
    with pytest.raises(TrainingStopped):
        gan_run(shapes_images, d / "resumed.npz", StopAt(STOP, "sigint"), **GAN)
    assert load_checkpoint(d / "resumed.npz").step == STOP
    gan_run(shapes_images, d / "resumed.npz", resume=True, **GAN)
    for name, recipe in (("gan_at_start.npz", GAN), ("plain_at_start.npz", {})):
        with pytest.raises(TrainingStopped):
            gan_run(shapes_images, d / name, StopAt(GAN_START, "sigint"), **recipe)
    return d


def test_an_adversarial_run_resumes_exactly(trained):
    from test_resume import assert_same_checkpoint
    assert_same_checkpoint(trained / "straight.npz", trained / "resumed.npz")
    ckpt = load_checkpoint(trained / "straight.npz")
    assert ckpt.optimizer_state["disc_adam"]["t"] == N_STEPS - DISC_START  # D from step 2 on
    assert ckpt.optimizer_state["adam"]["t"] == N_STEPS
    start = init_discriminator_params(DiscriminatorConfig(8), seed=[5, 3])
    same = [k for k in start if np.array_equal(ckpt.params[k], start[k])]
    # D learned; its last bias only once some score passes its margin (it moves every
    # score alike: -1 from the real half of L_D, +1 from the fake half)
    assert same in ([], ["disc.out.b"]), same


def test_the_history_carries_the_adversarial_figures(trained):
    """A line every restart_every (3) steps: the one at step 3 (D learning, not heeded yet)
    with lambda, feature_loss and amplitude_loss 0, the later ones with all three measured;
    the resumed run's lines those of the run straight through."""
    history = load_checkpoint(trained / "straight.npz").extra["history"]
    assert [h["step"] for h in history] == [3, 6, 9, 12]
    for h in history:
        assert ADVERSARIAL_HISTORY <= set(h), h
        heeded = h["step"] - 1 >= GAN_START
        measured = (h["gan_lambda"] > 0, h["feature_loss"] > 0, h["amplitude_loss"] > 0)
        assert measured == (heeded,) * 3, h
        assert h["d_loss"] > 0 and np.isfinite(h["feature_loss"]), h
    assert load_checkpoint(trained / "resumed.npz").extra["history"] == history


ADVERSARIAL_HISTORY = {"psnr", "g_loss", "d_loss", "gan_lambda", "feature_loss",
                       "amplitude_loss"}


def test_before_gan_start_the_tokenizer_trains_as_without_the_discriminator(trained):
    """D learns from disc_start (2) on, but until gan_start (4) the tokenizer does not heed
    it: its parameters, AdamW state and codes' counts are the plain run's, bit for bit."""
    from test_resume import assert_same
    gan = load_checkpoint(trained / "gan_at_start.npz")
    plain = load_checkpoint(trained / "plain_at_start.npz")
    assert gan.step == plain.step == GAN_START
    tokenizer = {k: v for k, v in gan.params.items() if not is_discriminator_param(k)}
    assert_same(tokenizer, plain.params, "tokenizer params")                  # bit for bit
    assert_same(gan.optimizer_state["adam"], plain.optimizer_state["adam"], "adam")
    assert_same(gan.extra["window_counts"], plain.extra["window_counts"], "window")
    history = [{k: v for k, v in h.items() if k not in ADVERSARIAL_HISTORY}
               for h in gan.extra["history"]]
    assert history == plain.extra["history"]
    assert any(h.get("gan_lambda") == 0.0 for h in gan.extra["history"])  # D, not heeded
    disc_adam = gan.optimizer_state["disc_adam"]
    assert disc_adam["t"] == GAN_START - DISC_START                          # D learned


def test_before_disc_start_the_discriminator_is_untouched(tmp_path, shapes_images):
    from test_resume import StopAt, assert_same
    from tinytok.training import TrainingStopped
    with pytest.raises(TrainingStopped):
        gan_run(shapes_images, tmp_path / "d.npz", StopAt(DISC_START, "sigint"), **GAN)
    gan = load_checkpoint(tmp_path / "d.npz")
    start = init_discriminator_params(DiscriminatorConfig(8), seed=[5, 3])
    assert_same({k: v for k, v in gan.params.items() if is_discriminator_param(k)},
                start, "D's params")                                          # untouched
    disc_adam = gan.optimizer_state["disc_adam"]
    assert disc_adam["t"] == 0
    assert all(not np.any(m) for m in disc_adam["m"].values())
    assert all(not np.any(v) for v in disc_adam["v"].values())


def test_the_checkpoint_loads_as_a_tokenizer_and_exports(trained, shapes_images, tmp_path,
                                                         capsys):
    from tinytok.cli import main
    from tinytok.pipeline import Tokenizer
    path = trained / "straight.npz"
    ckpt = load_checkpoint(path)
    config = tokenizer_config(ckpt.config["model"])
    plain = Tokenizer({k: v for k, v in ckpt.params.items() if not is_discriminator_param(k)},
                      config)
    assert main(["export", str(path), "--out", str(tmp_path / "shared.npz")]) == 0
    assert "wrote" in capsys.readouterr().out
    # after main, which sets the threads: a near-tie between two codes must be decided by
    # the same sums (a barely trained tokenizer has some)
    images = shapes_images[:5]
    want_ids = plain.encode(images)
    want_pictures = plain.decode(want_ids)
    for source in (path, tmp_path / "shared.npz"):
        tok = Tokenizer.load(source)
        assert not any(is_discriminator_param(k) for k in tok.params)
        ids = tok.encode(images)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(tok.decode(ids), want_pictures)


# ---------------------------------------------------------------- the command line

def cli(capsys, *args):
    from tinytok.cli import main
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


TRAIN = ["train-tokenizer", "--config", "vqvae-tiny", "--n-images", "16", "--batch-size", "4",
         "--log-every", "1", "--no-kmeans"]


@pytest.mark.parametrize("flag, value, message", [
    ("--gan-weight", "-1", "argument --gan-weight: must be a finite number >= 0, got -1"),
    ("--gan-weight", "nan", "argument --gan-weight: must be a finite number >= 0, got nan"),
    ("--gan-start", "-1", "argument --gan-start: must be >= 0, got -1"),
    ("--disc-channels", "0", "argument --disc-channels: must be >= 1, got 0"),
    ("--feature-weight", "-1", "argument --feature-weight: must be a finite number >= 0, "
                               "got -1"),
    ("--feature-weight", "inf", "argument --feature-weight: must be a finite number >= 0, "
                                "got inf"),
    ("--amplitude-weight", "-2", "argument --amplitude-weight: must be a finite number >= 0, "
                                 "got -2"),
])
def test_bad_adversarial_flags_are_one_line(capsys, tmp_path, flag, value, message):
    code, _, err = cli(capsys, *TRAIN, "--steps", "2", "--out", tmp_path / "t.npz", flag, value)
    assert code == 2 and err.count("\n") == 1 and err.startswith("tinytok: error: "), err
    assert message in err, err
    assert not (tmp_path / "t.npz").exists()


@pytest.mark.parametrize("flags, message", [
    (["--decoder-only"], "--decoder-only trains the decoder of an existing tokenizer"),
    (["--gan-weight", "0.1", "--disc-start", "3", "--gan-start", "2"],
     "gan_start (2) must not come before disc_start (3)"),
    (["--gan-weight", "0.1", "--disc-lr-scale", "0"], "argument --disc-lr-scale: must be"),
    (["--feature-weight", "0.5"], "feature_weight (0.5) matches the discriminator's "
                                  "features: it needs one, give gan_weight > 0"),
    (["--amplitude-weight", "3"], "amplitude_weight (3) is a term of the adversarial loss's "
                                  "L_rec, balanced against the discriminator: give "
                                  "gan_weight > 0"),
])
def test_bad_adversarial_settings_are_one_line(capsys, tmp_path, flags, message):
    code, _, err = cli(capsys, *TRAIN, "--steps", "2", "--out", tmp_path / "t.npz", *flags)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "t.npz").exists()


def test_init_from_another_configuration_is_one_line(capsys, tmp_path):
    assert cli(capsys, *TRAIN, "--steps", "1", "--out", tmp_path / "a.npz")[0] == 0
    code, _, err = cli(capsys, *TRAIN, "--steps", "1", "--codes", "32", "--gan-weight", "0.1",
                       "--init", tmp_path / "a.npz", "--out", tmp_path / "b.npz")
    assert code == 2 and err.count("\n") == 1 and err.startswith("tinytok: error: "), err
    assert f"--init {tmp_path / 'a.npz'}" in err and "another configuration" in err
    assert not (tmp_path / "b.npz").exists()


def error_lines(err):
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("tinytok: error:")]


def test_resuming_across_the_discriminator_says_what_to_do(capsys, tmp_path):
    """A plain checkpoint resumed with --gan-weight, or an adversarial one without: one
    error line naming the file, what it lacks or holds, and the way on (--init, new --out)."""
    plain, gan = tmp_path / "plain.npz", tmp_path / "gan.npz"
    assert cli(capsys, *TRAIN, "--steps", "2", "--out", plain)[0] == 0
    code, _, err = cli(capsys, *TRAIN, "--steps", "4", "--out", plain, "--resume",
                       "--gan-weight", "0.1")
    [line] = error_lines(err)
    assert code == 2 and str(plain) in line and "without a discriminator" in line
    assert f"--init {plain}" in line and "new --out" in line
    assert load_checkpoint(plain).step == 2                        # left as it was

    assert cli(capsys, *TRAIN, "--steps", "2", "--out", gan, "--gan-weight", "0.1")[0] == 0
    code, _, err = cli(capsys, *TRAIN, "--steps", "4", "--out", gan, "--resume")
    [line] = error_lines(err)
    assert code == 2 and str(gan) in line and "discriminator" in line
    assert "--gan-weight" in line and f"--init {gan}" in line
    code, _, err = cli(capsys, *TRAIN, "--steps", "4", "--out", gan, "--resume",
                       "--gan-weight", "0.1", "--disc-channels", "8")
    [line] = error_lines(err)
    assert code == 2 and "its discriminator has 64 (give --disc-channels 64)" in line
    assert load_checkpoint(gan).step == 2

    # the way it names works: --init with a new --out trains against D from the plain run
    code, _, err = cli(capsys, *TRAIN, "--steps", "2", "--out", tmp_path / "on.npz",
                       "--init", plain, "--gan-weight", "0.1")
    assert code == 0, err
    on = load_checkpoint(tmp_path / "on.npz")
    assert "disc_adam" in on.optimizer_state and on.optimizer_state["disc_adam"]["t"] == 2


# ---------------------------------------------------------------- the decoder alone

def test_decoder_only_keeps_the_tokens_and_trains_the_painter(tmp_path, shapes_images):
    """--decoder-only from an earlier tokenizer: the encoder and codebook (so every id) stay
    bit for bit; the decoder and D learn; without an init it is a one-line error."""
    from tinytok.pipeline import Tokenizer
    from tinytok.training import TrainSettings, TokenizerRecipe, train_tokenizer
    first = tmp_path / "first.npz"
    gan_run(shapes_images, first)                                   # a plain tokenizer
    init = load_checkpoint(first).params
    settings = TrainSettings(steps=4, batch_size=4, lr=3e-3, warmup=1, seed=5,
                             checkpoint_every=4, log_every=1)
    recipe = TokenizerRecipe(kmeans_images=16, restart_every=2, decoder_only=True, **GAN)
    out = tmp_path / "painter.npz"
    with pytest.raises(ConfigError, match="give its parameters as init"):
        train_tokenizer(shapes_images, tokenizer_config("vqvae-tiny"), settings, str(out),
                        recipe, log=lambda *a: None, progress_stream=io.StringIO())
    train_tokenizer(shapes_images, tokenizer_config("vqvae-tiny"), settings, str(out),
                    replace(recipe, disc_start=0, gan_start=1), log=lambda *a: None,
                    progress_stream=io.StringIO(), init=init)
    after = load_checkpoint(out).params
    for k, v in init.items():
        same = np.array_equal(after[k], v)
        assert same == (not k.startswith("dec.")), k              # only the decoder moved
    assert not np.array_equal(after["disc.out.w"],
                              init_discriminator_params(DiscriminatorConfig(8),
                                                        seed=[5, 3])["disc.out.w"])
    images = shapes_images[:8]
    np.testing.assert_array_equal(Tokenizer.load(out).encode(images),
                                  Tokenizer.load(first).encode(images))
