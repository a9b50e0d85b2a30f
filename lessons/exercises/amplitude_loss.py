"""Exercise · The distance between amplitude spectra: the forward is given, the backward is yours.

    loss = mean((|F pred| - |F target|)^2),   F the orthonormal 2-D DFT over the last two axes

pred, target (..., H, W) -> a 0-d loss; the backward takes dloss (a number) first and returns
dpred (pred's shape). The target is data: no gradient for it. Work in two steps. First the
gradient at each coefficient: |F| grows fastest along F's own direction in the complex plane,
its phase F / |F| (give a coefficient of exactly 0 no gradient). Then carry it back to the
pixels: F is linear and orthonormal, so its adjoint is its inverse, np.fft.ifft2(.,
norm="ortho"), and pred is real, so keep the real part.

Check:     tinytok check amplitude_loss lessons/exercises/amplitude_loss.py
Solution:  tinytok/ops/losses.py
"""
import numpy as np


def amplitude_loss_forward(pred, target):
    """pred, target (..., H, W) -> (loss, cache (spectrum, gap))."""
    spectrum = np.fft.fft2(pred, norm="ortho")                               # complex
    gap = np.abs(spectrum) - np.abs(np.fft.fft2(target, norm="ortho"))       # real
    return (gap * gap).mean(), (spectrum, gap)


def amplitude_loss_backward(dloss, cache):
    """dloss (a number), cache (spectrum, gap) -> dpred (pred's shape)."""
    spectrum, gap = cache
    # TODO
    return None
