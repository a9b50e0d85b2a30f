"""Resizing a feature map: area (box) averaging and bilinear interpolation, to any size.

Both are linear maps, and separable: each output row mixes input rows with fixed weights,
each output column mixes input columns, and the two mixings commute. With A_h (H_out, H)
and A_w (W_out, W) the 1-D weight matrices, one (H, W) plane x of each image and channel
is resized as

    y = A_h x A_w^T                     x (N, C, H, W)  ->  y (N, C, H_out, W_out)

and the backward of a linear map is its adjoint, the transpose:

    dx = A_h^T dy A_w                   dy (N, C, H_out, W_out)  ->  dx (N, C, H, W)

so each output's gradient is spread back onto the inputs it was made of, with the weights
it was made with. The pair differ only in the matrices, which follow PyTorch's
``F.interpolate`` (``mode="area"``, and ``mode="bilinear", align_corners=False``) exactly:

    area:     output i is the mean of inputs floor(i n_in / n_out) .. ceil((i+1) n_in / n_out) - 1,
              the input cells that its own cell of the line covers (adaptive average pooling);
    bilinear: output i sits at input coordinate s = (i + 1/2) n_in / n_out - 1/2 (pixel centres
              line up, not corners), clamped at 0; it takes 1 - (s - floor s) of input floor s
              and s - floor s of the next one (the last input again at the upper edge).

A matrix is built on the host with NumPy (a few hundred numbers), moved to the array's
backend in its dtype, and the map is then two matrix products over the whole batch: no loop
over pixels, images or channels.
"""
from typing import Any, NamedTuple

import numpy as np

from tinytok.backend import get_array_module
from tinytok.errors import ShapeError
from tinytok.ops.checks import require_float, require_ndim, require_positive_int


class ResizeCache(NamedTuple):
    a_h: Any  # (H_out, H) the rows' weights, on x's backend in x's dtype
    a_w: Any  # (W_out, W) the columns' weights


# ---------------------------------------------------------------- the 1-D weight matrices

def area_matrix(n_in, n_out):
    """(n_out, n_in) float64: row i averages inputs floor(i n_in / n_out) up to
    ceil((i+1) n_in / n_out) - 1, so each row sums to 1.

    Downsampling by a whole factor k gives disjoint blocks of k (a box filter); otherwise
    neighbouring cells share the input they both partly cover, each counting it whole, as
    PyTorch's adaptive average pooling does (not weighted by the covered fraction).
    """
    i = np.arange(n_out)
    start = i * n_in // n_out
    stop = -(-(i + 1) * n_in // n_out)                 # ceil by floor division of negatives
    j = np.arange(n_in)
    covered = (j >= start[:, None]) & (j < stop[:, None])
    return covered / (stop - start)[:, None]


def bilinear_matrix(n_in, n_out):
    """(n_out, n_in) float64: row i weighs the two inputs nearest to its source coordinate.

        s = max((n_in / n_out) (i + 1/2) - 1/2, 0)     lo = floor(s), hi = min(lo + 1, n_in - 1)
        A[i, lo] = 1 - (s - lo),   A[i, hi] += s - lo

    The half-pixel shifts put the centre of output cell i over the point of the input that
    its cell's centre covers (align_corners=False). Near the edges s falls outside the input
    centres: below 0 it is clamped (the first input, whole); above the last centre, hi is
    the last input too and the two weights add up on it. Written in PyTorch's order of
    operations (scale first), so that float64 matrices agree to the last bit or so.
    """
    i = np.arange(n_out)
    source = np.maximum((n_in / n_out) * (i + 0.5) - 0.5, 0.0)
    lo = np.floor(source).astype(np.intp)              # <= n_in - 1: s < n_in - 1/2
    hi = np.minimum(lo + 1, n_in - 1)
    frac = source - lo
    a = np.zeros((n_out, n_in))
    a[i, lo] = 1 - frac
    a[i, hi] += frac                                   # one entry per row: no repeats
    return a


# ---------------------------------------------------------------- the pairs

def area_resize_forward(x, size):
    """x (N, C, H, W), size int or (H_out, W_out) -> (y (N, C, H_out, W_out), cache).

    Each output is the mean of the input cells its own cell covers (area_matrix along H and
    along W): F.interpolate(x, size, mode="area"). Down by a whole factor k it is the mean
    of each k x k block; up, it copies (and at uneven ratios averages neighbours).
    """
    return _resize_forward("area_resize", area_matrix, x, size)


def area_resize_backward(dy, cache):
    """dy (N, C, H_out, W_out) -> dx (N, C, H, W) = A_h^T dy A_w: each input gets the mean's
    weight 1/count of the gradient of every output whose cell covers it."""
    return _resize_backward(dy, cache)


def bilinear_resize_forward(x, size):
    """x (N, C, H, W), size int or (H_out, W_out) -> (y (N, C, H_out, W_out), cache).

    Each output is a weighted mean of the 2 x 2 input centres nearest to the point it sits
    on, the weights the point's distances to the far side (bilinear_matrix along H and along
    W): F.interpolate(x, size, mode="bilinear", align_corners=False), no antialiasing.
    """
    return _resize_forward("bilinear_resize", bilinear_matrix, x, size)


def bilinear_resize_backward(dy, cache):
    """dy (N, C, H_out, W_out) -> dx (N, C, H, W) = A_h^T dy A_w: each output's gradient is
    shared among its 2 x 2 input neighbours with the weights it was interpolated with."""
    return _resize_backward(dy, cache)


def _resize_forward(name, matrix, x, size):
    """y = A_h x A_w^T for every (image, channel) plane: the columns' product as one
    (N C H, W) @ (W, W_out) matrix product, then the rows' as one product per plane."""
    out_h, out_w = _check(name, x, size)
    xp = get_array_module(x)
    N, C, H, W = x.shape
    a_h = xp.asarray(matrix(H, out_h), dtype=x.dtype)
    a_w = xp.asarray(matrix(W, out_w), dtype=x.dtype)
    along_w = (x.reshape(-1, W) @ a_w.T).reshape(N * C, H, out_w)  # x A_w^T
    y = xp.matmul(a_h, along_w)                                      # A_h (x A_w^T)
    return y.reshape(N, C, out_h, out_w), ResizeCache(a_h, a_w)


def _resize_backward(dy, cache):
    """dx = A_h^T dy A_w, the same two products with the transposed matrices."""
    a_h, a_w = cache
    xp = get_array_module(dy)
    N, C, out_h, out_w = dy.shape
    (H, W) = a_h.shape[1], a_w.shape[1]
    along_w = (dy.reshape(-1, out_w) @ a_w).reshape(N * C, out_h, W)  # dy A_w
    dx = xp.matmul(a_h.T, along_w)                                      # A_h^T (dy A_w)
    return dx.reshape(N, C, H, W)


def _check(name, x, size):
    """The output's (H_out, W_out), after one-line errors for what cannot be resized."""
    require_float("x", x)
    require_ndim("x", x, 4, "(N, C, H, W)")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ShapeError(f"{name}: x must have H >= 1 and W >= 1 to resize, got shape "
                         f"{tuple(x.shape)}")
    pair = (size, size) if not isinstance(size, (tuple, list)) else tuple(size)
    if len(pair) != 2:
        raise ShapeError(f"{name}: size must be an int or (H_out, W_out), got {size!r}")
    return tuple(require_positive_int(f"{name}: size", s) for s in pair)
