"""Exercise · Mean squared error, forward and backward (both yours to write).

    loss = mean((pred - target)^2)   over every element     pred, target: one shape -> 0-d

A loss's backward takes dloss = dL/dloss first (a number, usually 1.0, here not always)
and returns dpred (pred's shape). The target is data: it gets no gradient.

Check:     tinytok check mse lessons/exercises/mse.py
Solution:  tinytok/ops/losses.py

The cache is yours. Until a body is written it returns None ("not written yet").
"""
import numpy as np


def mse_forward(pred, target):
    """pred, target (same shape) -> (loss (a number or 0-d array), cache)."""
    # TODO
    return None


def mse_backward(dloss, cache):
    """dloss (a number), your cache -> dpred (pred's shape)."""
    # TODO
    return None
