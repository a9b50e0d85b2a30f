"""The op pairs: every computation in tinytok is built from these.

Each is ``NAME_forward(...) -> (out, cache)`` and ``NAME_backward(dout, cache) -> grads``,
the gradients in the order of the forward's float array arguments. A loss's backward takes
the upstream gradient of the loss first (usually 1.0).
"""
from tinytok.ops.activations import gelu_backward, gelu_forward, relu_backward, relu_forward
from tinytok.ops.attention import causal_self_attention_backward, causal_self_attention_forward
from tinytok.ops.conv import (conv2d_backward, conv2d_forward, conv_transpose2d_backward,
                              conv_transpose2d_forward)
from tinytok.ops.embedding import embedding_backward, embedding_forward
from tinytok.ops.linear import linear_backward, linear_forward
from tinytok.ops.losses import (cross_entropy_backward, cross_entropy_forward, mse_backward,
                                mse_forward)
from tinytok.ops.norm import layer_norm_backward, layer_norm_forward

PAIRS = {
    "linear": (linear_forward, linear_backward),
    "conv2d": (conv2d_forward, conv2d_backward),
    "conv_transpose2d": (conv_transpose2d_forward, conv_transpose2d_backward),
    "relu": (relu_forward, relu_backward),
    "gelu": (gelu_forward, gelu_backward),
    "layer_norm": (layer_norm_forward, layer_norm_backward),
    "embedding": (embedding_forward, embedding_backward),
    "causal_self_attention": (causal_self_attention_forward, causal_self_attention_backward),
    "cross_entropy": (cross_entropy_forward, cross_entropy_backward),
    "mse": (mse_forward, mse_backward),
}

__all__ = [name for pair in PAIRS.values() for name in (f.__name__ for f in pair)] + ["PAIRS"]
