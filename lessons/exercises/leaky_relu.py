"""Exercise · Leaky ReLU, forward and backward (both yours to write).

    y = x where x > 0, else slope * x     x: any shape  ->  y: the same shape, 0 <= slope <= 1

The discriminator's non-linearity (slope 0.2): unlike ReLU it lets some gradient through
where x <= 0, so the picture the discriminator judges gets a gradient everywhere. The
backward gets dout = dL/dy and returns dx = dL/dx; at x = 0 exactly take the slope side,
as PyTorch does (the checker keeps its inputs away from 0). Use the slope argument: the
checker also calls it with another slope than 0.2.

Check:     tinytok check leaky_relu lessons/exercises/leaky_relu.py
Solution:  tinytok/ops/activations.py

The cache is yours. Until a body is written it returns None ("not written yet").
"""
import numpy as np


def leaky_relu_forward(x, slope=0.2):
    """x (any shape), slope (a number) -> (y, cache)."""
    # TODO
    return None


def leaky_relu_backward(dout, cache):
    """dout (x's shape), your cache -> dx (x's shape)."""
    # TODO
    return None
