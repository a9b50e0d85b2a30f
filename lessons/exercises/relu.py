"""Exercise · ReLU, forward and backward (both yours to write).

    y = max(x, 0)                    x: any shape  ->  y: the same shape

The backward gets dout = dL/dy (y's shape) and returns dx = dL/dx (x's shape). Where x > 0,
y moved one for one with x; elsewhere y was stuck at 0.

Check:     tinytok check relu lessons/exercises/relu.py
Solution:  tinytok/ops/activations.py

The cache is yours: put in it whatever the backward needs. Until a body is written it
returns None and the checker says "not written yet". The checker also notices if a
function changes an array it was given.
"""
import numpy as np


def relu_forward(x):
    """x (any shape) -> (y, cache)."""
    # TODO: compute y and a cache
    return None


def relu_backward(dout, cache):
    """dout (x's shape), your cache -> dx (x's shape)."""
    # TODO
    return None
