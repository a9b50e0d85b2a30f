"""The linear (fully connected) layer: y = x @ w + b.

All leading axes of x are rows: x (..., in) is seen as one (M, in) matrix, so a whole batch
of sequences is one matrix product (x @ w on a 3-D x would make NumPy run one small product
per sequence instead).
"""
from typing import Any, NamedTuple

from tinytok.errors import ShapeError
from tinytok.ops.checks import require_float, require_same_dtype, require_shape


class LinearCache(NamedTuple):
    x: Any          # (..., in)
    w: Any          # (in, out)
    has_bias: bool


def linear_forward(x, w, b):
    """y = x @ w + b over the last axis of x.

    x (..., in), w (in, out), b (out,) or None -> y (..., out)
    The weight is stored (in, out) so that the formula reads left to right, as written.
    """
    require_float("x", x)
    require_same_dtype("x", x, ("w", w), ("b", b))
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ShapeError(f"linear: x (..., in) and w (in, out) must agree on 'in', got "
                         f"x {tuple(x.shape)} and w {tuple(w.shape)}")
    if b is not None:
        require_shape("b", b, (w.shape[1],), "(out,)")
    y = x.reshape(-1, x.shape[-1]) @ w          # (M, in) @ (in, out) -> (M, out)
    if b is not None:
        y += b                                  # in place: no second (M, out) array
    return y.reshape(*x.shape[:-1], w.shape[1]), LinearCache(x, w, b is not None)


def linear_backward(dy, cache):
    """dy (..., out) -> dx (..., in), dw (in, out), db (out,) or None

        dx = dy @ w^T        dw = x^T @ dy        db = sum of dy over the rows

    Every row of x met every column of w, so dw and db sum over all leading axes.
    """
    x, w, has_bias = cache
    x2 = x.reshape(-1, x.shape[-1])             # (M, in)
    dy2 = dy.reshape(-1, dy.shape[-1])          # (M, out)
    dx = dy2 @ w.T                              # (M, in)
    dw = x2.T @ dy2                             # (in, out)
    db = dy2.sum(axis=0) if has_bias else None  # (out,)
    return dx.reshape(x.shape), dw, db
