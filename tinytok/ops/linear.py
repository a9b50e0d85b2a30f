"""The linear (fully connected) layer: y = x @ w + b.

The products run on blocks in parallel (tinytok.parallel): blocks of rows of x for y and dx,
blocks of columns of w for dw and db. Each block is a whole, independent part of the
result: nothing is added up across threads.
"""
from functools import partial

from tinytok.backend import get_array_module
from tinytok.errors import ShapeError
from tinytok.ops.checks import require_float, require_same_dtype, require_shape
from tinytok.parallel import for_column_blocks, for_row_blocks, matmul_blocks


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
    # One (M, in) @ (in, out) product over all leading axes: x @ w on a 3-D x would make
    # NumPy run one small product per sequence instead of a single large one.
    x2 = x.reshape(-1, x.shape[-1])                                   # (M, in)
    y2 = get_array_module(x).empty((x2.shape[0], w.shape[1]), dtype=x.dtype)  # (M, out)
    for_row_blocks(partial(_affine_rows, w=w, b=b), x2, y2)
    return y2.reshape(*x.shape[:-1], w.shape[1]), (x, w, b is not None)


def _affine_rows(x, y, w, b):
    """Writes y = x @ w (+ b) for a block of rows."""
    get_array_module(x).matmul(x, w, out=y)
    if b is not None:
        y += b


def linear_backward(dy, cache):
    """dy (..., out) -> dx (..., in), dw (in, out), db (out,) or None

    Every row of x met every column of w, so dw sums x^T dy over all leading axes.
    """
    x, w, has_bias = cache
    xp = get_array_module(dy)
    x2 = x.reshape(-1, x.shape[-1])    # (M, in): all leading axes are rows
    dy2 = dy.reshape(-1, dy.shape[-1])  # (M, out)
    dx2 = matmul_blocks(dy2, w.T)                                     # (M, in) = dy @ w^T
    dw = xp.empty(w.shape, dtype=dy.dtype)                            # (in, out)
    db = xp.empty(w.shape[1], dtype=dy.dtype) if has_bias else None   # (out,)
    if has_bias:
        for_column_blocks(partial(_weight_grad_columns, x2=x2), dy2, dw, db[None])
    else:
        for_column_blocks(partial(_weight_grad_columns, x2=x2, db=None), dy2, dw)
    return dx2.reshape(x.shape), dw, db


def _weight_grad_columns(dy, dw, db, x2):
    """Writes dw = x^T dy and db = column sums of dy for a block of columns of dy (M, o)."""
    xp = get_array_module(dy)
    xp.matmul(x2.T, dy, out=dw)
    if db is not None:  # the column sums as ones^T dy: one BLAS pass over the strided block
        xp.matmul(xp.ones(dy.shape[0], dtype=dy.dtype), dy, out=db[0])
