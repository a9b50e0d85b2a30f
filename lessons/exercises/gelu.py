"""Exercise · GELU (the tanh approximation of GPT-2), forward and backward (both yours).

    y = x * s,   s = (1 + tanh(u)) / 2,   u = sqrt(2/pi) * (x + 0.044715 * x^3)

x: any shape -> y: the same shape. s is a smooth step from 0 to 1 (the "gate"). For the
backward use the product rule on x * s and the chain rule through tanh and u;
d tanh(u) / du = 1 - tanh(u)^2.

Check:     tinytok check gelu lessons/exercises/gelu.py
Solution:  tinytok/ops/activations.py

The cache is yours. Until a body is written it returns None ("not written yet").
"""
import math

import numpy as np

GELU_C = math.sqrt(2 / math.pi)
GELU_A = 0.044715


def gelu_forward(x):
    """x (any shape) -> (y, cache)."""
    # TODO
    return None


def gelu_backward(dout, cache):
    """dout (x's shape), your cache -> dx (x's shape)."""
    # TODO
    return None
