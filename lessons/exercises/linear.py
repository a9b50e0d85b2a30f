"""Exercise · The linear layer, forward and backward (both yours to write).

    y = x @ w + b          x (..., in)   w (in, out)   b (out,)   ->   y (..., out)

All leading axes of x are rows: x (2, 3, in) is 6 rows. The backward gets dout = dL/dy
(y's shape) and returns dx (x's shape), dw (w's shape) and db (b's shape). Lesson 2 derives
them; the shape of each is a strong hint.

Check:     tinytok check linear lessons/exercises/linear.py
Solution:  tinytok/ops/linear.py

The cache is yours. Until a body is written it returns None ("not written yet").
"""
import numpy as np


def linear_forward(x, w, b):
    """x (..., in), w (in, out), b (out,) -> (y (..., out), cache)."""
    # TODO
    return None


def linear_backward(dout, cache):
    """dout (..., out), your cache -> (dx (..., in), dw (in, out), db (out,))."""
    # TODO
    return None
