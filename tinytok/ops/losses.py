"""Losses: mean squared error (reconstruction), the distance between amplitude spectra (detail
kept, wherever it sits), cross-entropy (next-token prediction) and the hinge losses of a
discriminator and of the generator it judges.

A loss pair returns a 0-d value of the backend (it stays on the device; call float() to
print it) and its backward takes the upstream gradient dloss first, usually 1.0.
"""
from typing import Any, NamedTuple

import numpy as np

from tinytok.backend import get_array_module, to_numpy
from tinytok.errors import ShapeError
from tinytok.ops.checks import require_float, require_int, require_same_dtype
from tinytok.ops.softmax import log_softmax


class MseCache(NamedTuple):
    diff: Any  # pred - target


def mse_forward(pred, target):
    """loss = mean((pred - target)^2) over every element. pred, target same shape -> 0-d."""
    require_float("pred", pred)
    require_same_dtype("pred", pred, ("target", target))
    if pred.shape != target.shape:
        raise ShapeError(f"mse: pred {tuple(pred.shape)} and target "
                         f"{tuple(target.shape)} must have the same shape")
    diff = pred - target
    return (diff * diff).mean(), MseCache(diff)


def mse_backward(dloss, cache):
    """dpred = 2 (pred - target) / n * dloss."""
    diff = cache.diff
    scale = get_array_module(diff).asarray(2 * dloss / diff.size, dtype=diff.dtype)
    return diff * scale  # scale cast first: a float64 dloss must not promote float32 grads


def radial_frequency(height, width):
    """|f| = sqrt(fy^2 + fx^2) in cycles per pixel of each coefficient of a height x width
    2-D DFT, fy and fx as np.fft.fftfreq orders them (0, 1/n, ... up to 0.5, then negative)."""
    return np.hypot(np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :])


def frequency_rings(height, width):
    """The band of each coefficient of a height x width DFT (int, (height, width)): its
    radial frequency to the nearest 1 / max(height, width) cycle per pixel, so ring 0 is
    the mean alone and each ring after it a circle of coefficients one step further out."""
    return np.rint(radial_frequency(height, width) * max(height, width)).astype(np.int64)


class AmplitudeLossCache(NamedTuple):
    spectrum: Any    # F(pred), complex: the orthonormal 2-D DFT over the last two axes
    amplitude: Any   # |F(pred)| of each band, (..., B) (of each coefficient without bands)
    gap: Any         # amplitude - the target's, pred's dtype
    member: Any      # (H W, B) one-hot: which band each coefficient is in (None: its own)


def amplitude_loss_forward(pred, target, bands=None):
    """loss = sum over bands b of (|F pred|_b - |F target|_b)^2 / n, n = pred.size, with F the
    orthonormal 2-D DFT over the last two axes (each picture's channel) and |F x|_b =
    sqrt(sum over the coefficients k in b of |F_k|^2), the amplitude of the band.

    bands: None, every coefficient a band of its own, so loss = mean((|F pred| - |F target|)^2);
    or the band of each coefficient, ints 0..B-1 of shape (H, W) (frequency_rings, say).
    pred, target (..., H, W) -> 0-d. The phases are left out, and within a band so is
    where the power sits: a reconstruction with as much detail as the picture in each band
    costs nothing, wherever that detail is. F is orthonormal, so by Parseval's theorem the
    loss is on mse's scale, and never above it: | |a| - |b| | <= |a - b| for vectors.
    """
    require_float("pred", pred)
    require_same_dtype("pred", pred, ("target", target))
    if pred.shape != target.shape or pred.ndim < 2:
        raise ShapeError(f"amplitude_loss: pred {tuple(pred.shape)} and target "
                         f"{tuple(target.shape)} must have one shape, (..., H, W)")
    xp = get_array_module(pred)
    member = None if bands is None else band_membership(bands, pred.shape[-2:], xp, pred.dtype)
    spectrum = xp.fft.fft2(pred, norm="ortho")
    amplitude = band_amplitude(spectrum, member)
    gap = amplitude - band_amplitude(xp.fft.fft2(target, norm="ortho"), member)
    return (gap * gap).sum() / pred.size, AmplitudeLossCache(spectrum, amplitude, gap, member)


def amplitude_loss_backward(dloss, cache):
    """dpred = Re F^H(2 gap_b / n * F_k / |F|_b) * dloss: each coefficient's gradient points
    along its own phase, scaled by its band's gap over the band's amplitude (0 where that is
    0, as PyTorch's abs), and F^H = F^-1 carries it back to the pixels."""
    spectrum, amplitude, gap, member = cache
    xp = get_array_module(gap)
    per_band = gap * xp.asarray(2 * dloss / spectrum.size, dtype=gap.dtype)
    per_band /= xp.where(amplitude > 0, amplitude, 1)
    if member is not None:                          # each coefficient hears from its band
        per_band = (per_band @ member.T).reshape(spectrum.shape)
    return xp.fft.ifft2(spectrum * per_band, norm="ortho").real.astype(gap.dtype)


def band_membership(bands, size, xp, dtype):
    """The (H W, B) one-hot matrix of an (H, W) array of band numbers 0..B-1, checked."""
    bands = to_numpy(bands)
    if bands.shape != tuple(size) or bands.dtype.kind not in "iu" or bands.min() < 0:
        raise ShapeError(f"amplitude_loss: bands must be ints >= 0 of shape {tuple(size)}, "
                         f"one band per coefficient (frequency_rings{tuple(size)}, say), got "
                         f"{bands.dtype} of shape {bands.shape}")
    member = np.zeros((bands.size, int(bands.max()) + 1))
    member[np.arange(bands.size), bands.ravel()] = 1
    return xp.asarray(member, dtype=dtype)


def band_amplitude(spectrum, member):
    """sqrt of each band's power, (..., B); |spectrum| itself without bands."""
    xp = get_array_module(spectrum)
    size = xp.abs(spectrum)
    if member is None:
        return size
    power = (size * size).reshape(*spectrum.shape[:-2], -1) @ member   # a sum per band, BLAS
    return xp.sqrt(power)


class CrossEntropyCache(NamedTuple):
    log_probs: Any     # (M, V) log softmax(logits), the logits' leading axes as rows
    targets: Any       # (M,) int, ignored positions replaced by 0 (any valid column)
    keep: Any          # (M,) bool: target != ignore_index
    count: int         # how many positions count (at least 1)
    logits_shape: tuple


def cross_entropy_forward(logits, targets, ignore_index=-1):
    """loss = mean over kept positions of -log softmax(logits)[target],
    kept: target != ignore_index.

    logits (..., V) float, targets (...) int in [0, V) or ignore_index -> 0-d loss.
    With every position ignored the loss is 0 (PyTorch returns nan there).
    """
    require_float("logits", logits)
    require_int("targets", targets)
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ShapeError(f"targets must have shape {tuple(logits.shape[:-1])} (logits "
                         f"without the last axis), got {tuple(targets.shape)}")
    xp = get_array_module(logits)
    V = logits.shape[-1]
    t = targets.reshape(-1)                          # (M,)
    keep = t != ignore_index                         # (M,) bool
    if bool(((t < 0) | (t >= V))[keep].any()):
        raise ShapeError(f"targets must lie in [0, {V}) or equal ignore_index={ignore_index}")
    t = xp.where(keep, t, 0)                         # any valid column for ignored rows
    log_probs = log_softmax(logits.reshape(-1, V))   # (M, V)
    nll = -log_probs[xp.arange(len(t)), t]           # (M,) -log p[target]
    count = max(int(keep.sum()), 1)
    loss = (nll * keep).sum() / count
    return loss, CrossEntropyCache(log_probs, t, keep, count, logits.shape)


def cross_entropy_backward(dloss, cache):
    """dlogits = (softmax(logits) - onehot(target)) / count * dloss, 0 on ignored positions."""
    log_probs, t, keep, count, shape = cache
    xp = get_array_module(log_probs)
    dz = xp.exp(log_probs)                           # (M, V) softmax(logits), a new array
    dz[xp.arange(len(t)), t] -= 1
    dz *= (keep[:, None] * (dloss / count)).astype(dz.dtype)
    return dz.reshape(shape)


def require_scores(name, scores):
    """A discriminator's scores: a float array with at least one score to average."""
    require_float(name, scores)
    if scores.size == 0:
        raise ShapeError(f"{name} holds no scores (shape {tuple(scores.shape)}): the mean "
                         "of nothing is undefined; give at least one")


class HingeDLossCache(NamedTuple):
    short_real: Any   # bool, real's shape: where 1 - real > 0, the margin not yet met
    short_fake: Any   # bool, fake's shape: where 1 + fake > 0
    dtype: Any        # the scores' dtype, which the gradients keep


def hinge_d_loss_forward(real, fake):
    """loss = mean(relu(1 - real)) + mean(relu(1 + fake)): the discriminator's.

    real, fake: its scores (logits, any shapes, one dtype) on real pictures and on
    reconstructions -> 0-d. A score beyond its margin (real > 1, fake < -1) costs nothing
    and teaches nothing; one exactly on it counts as beyond (gradient 0, as relu's at 0 in
    PyTorch). VQGAN's code halves this sum: that only rescales D's learning rate.
    """
    require_scores("real", real)
    require_scores("fake", fake)
    require_same_dtype("real", real, ("fake", fake))
    xp = get_array_module(real)
    gap_real, gap_fake = 1 - real, 1 + fake    # how far short of its margin each score is
    loss = xp.maximum(gap_real, 0).mean() + xp.maximum(gap_fake, 0).mean()
    return loss, HingeDLossCache(gap_real > 0, gap_fake > 0, real.dtype)


def hinge_d_loss_backward(dloss, cache):
    """dreal = -dloss / n_real where 1 - real > 0, else 0;
    dfake = +dloss / n_fake where 1 + fake > 0, else 0."""
    short_real, short_fake, dtype = cache
    dreal = short_real.astype(dtype)  # 1 where the margin is not met; the dtype first, so
    dreal *= -dloss / dreal.size      # that a float64 dloss cannot promote float32 grads
    dfake = short_fake.astype(dtype)
    dfake *= dloss / dfake.size
    return dreal, dfake


class HingeGLossCache(NamedTuple):
    fake: Any   # the scores, for their shape, dtype and array module (never read)


def hinge_g_loss_forward(fake):
    """loss = -mean(fake): the generator (the tokenizer) wants the discriminator to score
    its pictures high. fake (any shape) -> 0-d."""
    require_scores("fake", fake)
    return -fake.mean(), HingeGLossCache(fake)


def hinge_g_loss_backward(dloss, cache):
    """dfake = -dloss / n, the same for every score."""
    fake = cache.fake
    dfake = get_array_module(fake).ones_like(fake)
    dfake *= -dloss / fake.size     # in place: fake's dtype whatever dloss's type
    return dfake
