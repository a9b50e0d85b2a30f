"""Exercise · 2-D convolution: the forward is given, the backward is yours.

    out[n, f, y, x] = b[f] + sum over c, i, j of  xpad[n, c, y*stride + i, x*stride + j]
                                                   * w[f, c, i, j]

x (N, C, H, W), w (F, C, kh, kw), b (F,) -> out (N, F, Ho, Wo), xpad = x with `padding`
zeros around, Ho = (H + 2*padding - kh) // stride + 1 (Wo likewise). The forward loops
over the kh*kw kernel offsets (i, j); at each, one window of xpad meets w[:, :, i, j].
The backward gets dout (N, F, Ho, Wo) and returns dx (x's shape), dw (w's shape) and db
(F,). Hint: run the same loop, and ask at each offset which numbers met which. The checker
tries stride 2 with padding 1 and a 3x2 kernel too.

Check:     tinytok check conv2d lessons/exercises/conv2d.py
Solution:  tinytok/ops/conv.py (the package's uses im2col: the same sums as one product)
"""
import numpy as np


def conv2d_forward(x, w, b, stride=1, padding=0):
    """-> (out (N, F, Ho, Wo), cache (x, w, stride, padding))."""
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (W + 2 * padding - kw) // stride + 1
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.zeros((N, F, Ho, Wo)) + b[:, None, None]
    for i in range(kh):
        for j in range(kw):
            window = xpad[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride]
            out += np.einsum("nchw,fc->nfhw", window, w[:, :, i, j])
    return out, (x, w, stride, padding)


def conv2d_backward(dout, cache):
    """dout (N, F, Ho, Wo), cache (x, w, stride, padding) -> (dx, dw, db)."""
    x, w, stride, padding = cache
    # TODO
    return None
