"""The op pairs: every computation in tinytok is built from these.

Each is ``NAME_forward(...) -> (out, cache)`` and ``NAME_backward(dout, cache) -> grads``,
the gradients in the order of the forward's float array arguments. A loss's backward takes
the upstream gradient of the loss first (usually 1.0). Each cache is a named tuple of what
the backward needs (``LinearCache(x, w, has_bias)``, ...), one type per op.
``causal_self_attention`` is ``self_attention`` with its default mask, the causal one, under
the name the raster prior and lesson 10 use. ``area_resize`` and ``bilinear_resize`` resize
a feature map (N, C, H, W) to any (H_out, W_out), as F.interpolate's modes "area" and
"bilinear" (align_corners=False) do: y = A_h x A_w^T, dx = A_h^T dy A_w.

Besides the pairs of PAIRS: conv2d_as_transposed, the same numbers as conv2d by another
route (faster for a narrowing convolution); softmax and log_softmax; scatter_add, the
accumulating write behind a lookup's gradient; radial_frequency and frequency_rings, the
frequencies of a 2-D DFT's coefficients and their rings (amplitude_loss's bands).
"""
from tinytok.ops.activations import (gelu_backward, gelu_forward, leaky_relu_backward,
                                    leaky_relu_forward, relu_backward, relu_forward)
from tinytok.ops.attention import (causal_self_attention_backward, causal_self_attention_forward,
                                   self_attention_backward, self_attention_forward)
from tinytok.ops.conv import (conv2d_as_transposed_backward, conv2d_as_transposed_forward,
                              conv2d_backward, conv2d_forward, conv_transpose2d_backward,
                              conv_transpose2d_forward, narrowing_conv_is_faster)
from tinytok.ops.embedding import embedding_backward, embedding_forward, scatter_add
from tinytok.ops.linear import linear_backward, linear_forward
from tinytok.ops.losses import (amplitude_loss_backward, amplitude_loss_forward,
                                cross_entropy_backward, cross_entropy_forward, frequency_rings,
                                hinge_d_loss_backward, hinge_d_loss_forward,
                                hinge_g_loss_backward, hinge_g_loss_forward, mse_backward,
                                mse_forward, radial_frequency)
from tinytok.ops.norm import (l2_normalize_backward, l2_normalize_forward, layer_norm_backward,
                              layer_norm_forward)
from tinytok.ops.resample import (area_resize_backward, area_resize_forward,
                                  bilinear_resize_backward, bilinear_resize_forward)
from tinytok.ops.softmax import log_softmax, softmax

PAIRS = {
    "linear": (linear_forward, linear_backward),
    "conv2d": (conv2d_forward, conv2d_backward),
    "conv_transpose2d": (conv_transpose2d_forward, conv_transpose2d_backward),
    "relu": (relu_forward, relu_backward),
    "leaky_relu": (leaky_relu_forward, leaky_relu_backward),
    "gelu": (gelu_forward, gelu_backward),
    "layer_norm": (layer_norm_forward, layer_norm_backward),
    "l2_normalize": (l2_normalize_forward, l2_normalize_backward),
    "embedding": (embedding_forward, embedding_backward),
    "causal_self_attention": (causal_self_attention_forward, causal_self_attention_backward),
    "self_attention": (self_attention_forward, self_attention_backward),  # mask= any pattern
    "cross_entropy": (cross_entropy_forward, cross_entropy_backward),
    "mse": (mse_forward, mse_backward),
    "amplitude_loss": (amplitude_loss_forward, amplitude_loss_backward),
    "hinge_d_loss": (hinge_d_loss_forward, hinge_d_loss_backward),
    "hinge_g_loss": (hinge_g_loss_forward, hinge_g_loss_backward),
    "area_resize": (area_resize_forward, area_resize_backward),
    "bilinear_resize": (bilinear_resize_forward, bilinear_resize_backward),
}

__all__ = [name for pair in PAIRS.values() for name in (f.__name__ for f in pair)] + [
    "PAIRS", "conv2d_as_transposed_forward", "conv2d_as_transposed_backward",
    "narrowing_conv_is_faster", "softmax", "log_softmax", "scatter_add", "frequency_rings",
    "radial_frequency"]
