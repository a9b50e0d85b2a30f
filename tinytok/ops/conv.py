"""2-D convolution and transposed convolution, as im2col plus one matrix product.

A convolution is many small dot products, one per output pixel and filter. im2col copies
every receptive field into a column, so that all of them become one matrix product:

    cols (C*kh*kw, Ho*Wo*N)     one column per output pixel, one row per (channel, ky, kx)
    out  = w (F, C*kh*kw) @ cols  ->  (F, Ho*Wo*N)

and BLAS does the arithmetic. The copy is done with kh*kw strided slices (one per kernel
offset), never a Python loop over images or pixels. col2im is its mirror: it adds the
columns back onto the image, again with kh*kw strided slice additions, so overlapping
fields accumulate.

Memory order. The columns are ordered (y, x, n), image index last, so the product comes out
as (F, Ho, Wo, N) in memory. We return the transposed *view* out.transpose(3, 0, 1, 2): its
shape is the usual (N, F, Ho, Wo), but its memory stays "CHWN", which is exactly the order
the next convolution's im2col reads. Element-wise ops keep that order, so a stack of
convolutions never pays for a transposing copy of its activations. Batch-last also makes the
strided copies fast: their innermost run is the N contiguous images of one pixel, where NCHW
would give runs of a few strided pixels (cuda-convnet used CHWN for the same reason).

The transposed convolution (the decoder's upsampling) is the same two steps in the other
order: a matrix product that scatters every input pixel into a kh x kw patch of columns, then
col2im. Its backward is im2col plus a product, which is the convolution's forward: the two
pairs are each other's mirror. The mirror goes both ways: at stride 1, a convolution *is*
the transposed convolution of its kernel turned by 180 degrees. That gives a third pair,
conv2d_as_transposed: the same numbers as conv2d, faster for a convolution that narrows the
channels (a residual block's 128 -> 32), see narrowing_conv_is_faster. The model picks the
pair for each layer (tinytok.tokenizer.vqvae.conv_pair).
"""
from typing import Any, NamedTuple

from tinytok.backend import get_array_module
from tinytok.errors import ConfigError, ShapeError
from tinytok.ops.checks import (require_float, require_ndim, require_positive_int,
                                require_same_dtype, require_shape)


def conv_output_size(size, kernel, stride, padding):
    """Output length of a convolution along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def im2col(x, kh, kw, stride, padding):
    """x (N, C, H, W) -> cols (C*kh*kw, Ho*Wo*N), plus (Ho, Wo).

    cols[(c, i, j), (y, x, n)] = x_padded[n, c, y*stride + i, x*stride + j]
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    Ho = conv_output_size(H, kh, stride, padding)
    Wo = conv_output_size(W, kw, stride, padding)
    if kh == kw == stride == 1 and padding == 0:
        # A 1x1 field is one pixel: the columns are the image itself (no copy if CHWN).
        return x.transpose(1, 2, 3, 0).reshape(C, H * W * N), (H, W)
    # Pad into a (C, H, W, N) buffer: one copy that both pads and puts the batch last.
    x_pad = xp.zeros((C, H + 2 * padding, W + 2 * padding, N), dtype=x.dtype)
    x_pad[:, padding:padding + H, padding:padding + W] = x.transpose(1, 2, 3, 0)
    cols = xp.empty((C, kh, kw, Ho, Wo, N), dtype=x.dtype)
    for i in range(kh):          # kh*kw strided copies, each moving a whole (C, Ho, Wo, N)
        for j in range(kw):
            cols[:, i, j] = x_pad[:, i:i + stride * Ho:stride, j:j + stride * Wo:stride]
    return cols.reshape(C * kh * kw, Ho * Wo * N), (Ho, Wo)


def col2im(cols, x_shape, kh, kw, stride, padding):
    """cols (C*kh*kw, Ho*Wo*N) -> x (N, C, H, W): the adjoint of im2col.

    Each column is added back where im2col read it; pixels shared by several receptive
    fields receive the sum. The result is a view with CHWN memory (see the module docstring).
    """
    xp = get_array_module(cols)
    N, C, H, W = x_shape
    Ho = conv_output_size(H, kh, stride, padding)
    Wo = conv_output_size(W, kw, stride, padding)
    if kh == kw == stride == 1 and padding == 0:  # the mirror of im2col's 1x1 case
        return cols.reshape(C, H, W, N).transpose(3, 0, 1, 2)
    cols = cols.reshape(C, kh, kw, Ho, Wo, N)
    x_pad = xp.zeros((C, H + 2 * padding, W + 2 * padding, N), dtype=cols.dtype)
    for i in range(kh):          # kh*kw strided additions, the mirror of im2col's copies
        for j in range(kw):
            x_pad[:, i:i + stride * Ho:stride, j:j + stride * Wo:stride] += cols[:, i, j]
    return x_pad[:, padding:padding + H, padding:padding + W].transpose(3, 0, 1, 2)


def _check_conv_args(x, w, b, stride, padding, w_layout, channels_axis):
    require_float("x", x)
    require_same_dtype("x", x, ("w", w), ("b", b))
    require_ndim("x", x, 4, "(N, C, H, W)")
    require_ndim("w", w, 4, w_layout)
    require_positive_int("stride", stride, 1)
    require_positive_int("padding", padding, 0)
    if w.shape[channels_axis] != x.shape[1]:
        raise ShapeError(f"w {w_layout} = {tuple(w.shape)} expects C = "
                         f"{w.shape[channels_axis]} input channels, x {tuple(x.shape)} has "
                         f"{x.shape[1]}")
    out_channels = w.shape[1 - channels_axis]
    if b is not None:
        require_shape("b", b, (out_channels,), "(F,)")


def _check_conv2d_args(x, w, b, stride, padding):
    """conv2d's checks, shared by its two pairs: the arguments, and a kernel that fits."""
    _check_conv_args(x, w, b, stride, padding, "(F, C, kh, kw)", channels_axis=1)
    kh, kw = w.shape[2:]
    if min(conv_output_size(s, k, stride, padding) for s, k in zip(x.shape[2:], (kh, kw))) < 1:
        raise ShapeError(f"conv2d: a {kh}x{kw} kernel with padding {padding} does not fit "
                         f"in a {x.shape[2]}x{x.shape[3]} input")


class Conv2dCache(NamedTuple):
    cols: Any        # (C*kh*kw, Ho*Wo*N) im2col of x
    w: Any           # (F, C, kh, kw)
    has_bias: bool
    x_shape: tuple   # (N, C, H, W)
    stride: int
    padding: int


def conv2d_forward(x, w, b, stride=1, padding=0):
    """Cross-correlation, as torch.nn.functional.conv2d:  out = w @ im2col(x) + b.

    x (N, C, H, W), w (F, C, kh, kw), b (F,) or None -> out (N, F, Ho, Wo),
    Ho = (H + 2*padding - kh) // stride + 1 (Wo likewise).
    """
    _check_conv2d_args(x, w, b, stride, padding)
    F, C, kh, kw = w.shape
    N = x.shape[0]
    cols, (Ho, Wo) = im2col(x, kh, kw, stride, padding)     # (C*kh*kw, Ho*Wo*N)
    out = w.reshape(F, -1) @ cols                           # (F, Ho*Wo*N)
    if b is not None:
        out += b[:, None]                                   # one bias per filter
    out = out.reshape(F, Ho, Wo, N).transpose(3, 0, 1, 2)   # (N, F, Ho, Wo), CHWN memory
    return out, Conv2dCache(cols, w, b is not None, x.shape, stride, padding)


def conv2d_backward(dout, cache, need_dx=True):
    """dout (N, F, Ho, Wo) -> dx (N, C, H, W), dw (F, C, kh, kw), db (F,) or None.

        dw = dout2 @ cols^T      db = sum of dout2 over the pixels      (dout2: (F, Ho*Wo*N))
        dx = col2im(w^T @ dout2)

    need_dx=False skips dx (returned as None): a network's first layer, whose input is the
    data, needs only its weight gradients.
    """
    cols, w, has_bias, x_shape, stride, padding = cache
    F, C, kh, kw = w.shape
    dout2 = dout.transpose(1, 2, 3, 0).reshape(F, -1)      # (F, Ho*Wo*N); free if CHWN
    dw = weight_gradient(dout2, cols).reshape(w.shape)      # (F, C*kh*kw) -> (F, C, kh, kw)
    db = dout2.sum(axis=1) if has_bias else None            # (F,)
    if not need_dx:
        return None, dw, db
    dcols = w.reshape(F, -1).T @ dout2                      # (C*kh*kw, Ho*Wo*N)
    dx = col2im(dcols, x_shape, kh, kw, stride, padding)    # (N, C, H, W)
    return dx, dw, db


def weight_gradient(dout2, cols):
    """dout2 (F, P) @ cols (K, P)^T -> dw (F, K): a sum over the P pixels of the batch.

    Computed as (cols @ dout2^T)^T, the same numbers: OpenBLAS runs a product with the long
    (K, P) operand on the left up to 25% faster when F is small (a 32-filter convolution),
    and transposing the small (K, F) result back costs next to nothing.
    """
    return (cols @ dout2.T).T


def narrowing_conv_is_faster(w_shape, stride, padding):
    """Whether a convolution with fewer output than input channels (F < C) runs faster as
    conv2d_as_transposed (the transposed convolution of its flipped kernel) than as conv2d.
    Both give the same numbers.

    With stride 1, conv2d(x, w, padding) = conv_transpose2d(x, flip_kernel(w), kh-1-padding):
    the transposed convolution spreads every input pixel through the turned kernel, and the
    spreads add up to the same sums. What differs is the memory moved:

    as conv2d:             im2col copies x into (C*kh*kw, Ho*Wo*N) columns, kept for the
                           backward, and the product has only F rows;
    as conv_transpose2d:   the product writes (F*kh*kw, Ho*Wo*N) columns, which col2im adds
                           up, and the backward reads x itself (no copy).

    So the transposed way moves F/C as much memory and its products are wider. A residual
    block's 128 -> 32 convolution runs about 2x faster this way (timed per op in the
    vqvae-ref step). It needs stride 1, a square kernel and padding <= kh - 1
    (conv2d_as_transposed_applies).
    """
    F, C = w_shape[:2]
    return conv2d_as_transposed_applies(w_shape, stride, padding) and F < C


def conv2d_as_transposed_applies(w_shape, stride, padding):
    """Whether conv2d_as_transposed can compute this convolution: stride 1, a square kernel,
    padding <= kh - 1 (the transposed convolution's padding kh - 1 - padding is >= 0)."""
    kh, kw = w_shape[2:]
    return stride == 1 and kh == kw and padding <= kh - 1


def flip_kernel(w):
    """w (A, B, kh, kw) -> (B, A, kh, kw), each kernel turned by 180 degrees, as a new array.

    A conv2d kernel (F, C, ...) becomes the conv_transpose2d kernel (C, F, ...) that computes
    the same convolution, and flipping twice gives w back."""
    return get_array_module(w).ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


class Conv2dAsTransposedCache(NamedTuple):
    transposed: "ConvTranspose2dCache"  # the cache of conv_transpose2d(x, flip_kernel(w))


def conv2d_as_transposed_forward(x, w, b, stride=1, padding=0):
    """conv2d, computed as  conv_transpose2d(x, flip_kernel(w), b, 1, kh - 1 - padding).

    The same arguments, output and numbers as conv2d_forward; faster when F < C (see
    narrowing_conv_is_faster). Needs stride 1, a square kernel and padding <= kh - 1.
    """
    _check_conv2d_args(x, w, b, stride, padding)
    if not conv2d_as_transposed_applies(w.shape, stride, padding):
        raise ConfigError(f"conv2d_as_transposed needs stride 1, a square kernel and "
                          f"padding <= kh - 1, got stride {stride}, a {w.shape[2]}x"
                          f"{w.shape[3]} kernel and padding {padding}")
    kh = w.shape[2]
    out, cache = conv_transpose2d_forward(x, flip_kernel(w), b, 1, kh - 1 - padding)
    return out, Conv2dAsTransposedCache(cache)


def conv2d_as_transposed_backward(dout, cache, need_dx=True):
    """The transposed convolution's backward, its kernel gradient flipped back:
    dx, flip_kernel(dw_flipped), db. The same returns as conv2d_backward."""
    dx, dw_flipped, db = conv_transpose2d_backward(dout, cache.transposed, need_dx)
    return dx, flip_kernel(dw_flipped), db


def conv_transpose_output_size(size, kernel, stride, padding):
    """Output length of a transposed convolution along one axis (no output_padding)."""
    return (size - 1) * stride - 2 * padding + kernel


class ConvTranspose2dCache(NamedTuple):
    x2: Any          # (C, H*W*N) x as columns, one per input pixel
    w: Any           # (C, F, kh, kw)
    has_bias: bool
    x_shape: tuple   # (N, C, H, W)
    stride: int
    padding: int


def conv_transpose2d_forward(x, w, b, stride=1, padding=0):
    """Transposed convolution, as torch.nn.functional.conv_transpose2d:
    out = col2im(w^T @ x2) + b,  x2 = x as (C, H*W*N).

    x (N, C, H, W), w (C, F, kh, kw), b (F,) or None -> out (N, F, Ho, Wo),
    Ho = (H - 1) * stride - 2 * padding + kh (Wo likewise).
    It is conv2d's backward with respect to its input: each input pixel paints a kh x kw
    patch, weighted by w, into the (stride times larger) output.
    """
    _check_conv_args(x, w, b, stride, padding, "(C, F, kh, kw)", channels_axis=0)
    C, F, kh, kw = w.shape
    N, _, H, W = x.shape
    Ho = conv_transpose_output_size(H, kh, stride, padding)
    Wo = conv_transpose_output_size(W, kw, stride, padding)
    if Ho < 1 or Wo < 1:
        raise ShapeError(f"conv_transpose2d: padding {padding} crops away the whole "
                         f"{H}x{W} input's output")
    x2 = x.transpose(1, 2, 3, 0).reshape(C, -1)             # (C, H*W*N); free if CHWN
    cols = w.reshape(C, -1).T @ x2                          # (F*kh*kw, H*W*N)
    out = col2im(cols, (N, F, Ho, Wo), kh, kw, stride, padding)  # (N, F, Ho, Wo)
    if b is not None:
        out += b[:, None, None]
    return out, ConvTranspose2dCache(x2, w, b is not None, x.shape, stride, padding)


def conv_transpose2d_backward(dout, cache, need_dx=True):
    """dout (N, F, Ho, Wo) -> dx (N, C, H, W) or None (need_dx=False), dw (C, F, kh, kw),
    db (F,) or None.

        dcols = im2col(dout)     dw = x2 @ dcols^T     db = sum of dout over N, Ho, Wo
        dx = w @ dcols           (the forward's product, transposed)
    """
    x2, w, has_bias, x_shape, stride, padding = cache
    C, F, kh, kw = w.shape
    N, _, H, W = x_shape
    dcols, _ = im2col(dout, kh, kw, stride, padding)        # (F*kh*kw, H*W*N)
    dw = weight_gradient(x2, dcols).reshape(w.shape)        # (C, F*kh*kw) -> (C, F, kh, kw)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None     # (F,)
    if not need_dx:
        return None, dw, db
    dx = (w.reshape(C, -1) @ dcols).reshape(C, H, W, N).transpose(3, 0, 1, 2)  # (N, C, H, W)
    return dx, dw, db
