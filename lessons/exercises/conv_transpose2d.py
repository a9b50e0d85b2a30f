"""Exercise · Transposed convolution (the decoder's upsampling): forward given, backward yours.

Each input pixel paints a kh x kw patch, weighted by w, into an output `stride` times larger:

    outpad[n, f, y*stride + i, x*stride + j] += x[n, c, y, x] * w[c, f, i, j]
    out = outpad without `padding` pixels on each side, + b[f]

x (N, C, H, W), w (C, F, kh, kw), b (F,) -> out (N, F, Ho, Wo),
Ho = (H - 1) * stride - 2 * padding + kh (Wo likewise). It is conv2d's backward with respect
to its input, so its backward looks like conv2d's forward. The backward gets dout
(N, F, Ho, Wo) and returns dx (x's shape), dw (w's shape) and db (F,).

Check:     tinytok check conv_transpose2d lessons/exercises/conv_transpose2d.py
Solution:  tinytok/ops/conv.py
"""
import numpy as np


def conv_transpose2d_forward(x, w, b, stride=1, padding=0):
    """-> (out (N, F, Ho, Wo), cache (x, w, stride, padding))."""
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    outpad = np.zeros((N, F, (H - 1) * stride + kh, (W - 1) * stride + kw))
    for i in range(kh):
        for j in range(kw):
            outpad[:, :, i:i + stride * H:stride, j:j + stride * W:stride] += np.einsum(
                "nchw,cf->nfhw", x, w[:, :, i, j])
    out = outpad[:, :, padding:outpad.shape[2] - padding, padding:outpad.shape[3] - padding]
    return out + b[:, None, None], (x, w, stride, padding)


def conv_transpose2d_backward(dout, cache):
    """dout (N, F, Ho, Wo), cache (x, w, stride, padding) -> (dx, dw, db)."""
    x, w, stride, padding = cache
    # TODO
    return None
