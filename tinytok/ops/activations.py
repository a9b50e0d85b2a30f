"""Elementwise non-linearities: ReLU and GELU (tanh approximation, as in GPT-2)."""
import math

from tinytok.backend import get_array_module
from tinytok.ops.checks import require_float

GELU_C = math.sqrt(2.0 / math.pi)  # the tanh approximation's constant


def relu_forward(x):
    """y = max(x, 0). x (any shape) -> y (same shape)."""
    require_float("x", x)
    y = get_array_module(x).maximum(x, 0)
    return y, y > 0  # the mask, not y: a caller may later change y in place (h += skip)


def relu_backward(dy, cache):
    """dx = dy where the input was positive, else 0.

    Builds a new array: writing the mask into dy in place would corrupt the caller's gradient.
    """
    positive = cache
    return dy * positive


def gelu_forward(x):
    """y = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3). x -> y (same shape).

    Written as in-place steps on two buffers: the MLP's activations are the largest arrays
    of the prior, and each avoided temporary is a whole pass over memory.
    """
    require_float("x", x)
    xp = get_array_module(x)
    t = x * x
    t *= 0.044715
    t += 1
    t *= x
    t *= GELU_C                   # u = sqrt(2/pi) (x + 0.044715 x^3)
    xp.tanh(t, out=t)             # t = tanh(u)
    y = t + 1
    y *= x
    y *= 0.5
    return y, (x, t)


def gelu_backward(dy, cache):
    """dx = dy * (0.5 (1 + t) + 0.5 x (1 - t^2) du/dx), du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)."""
    x, t = cache
    g = x * x
    g *= 3 * 0.044715
    g += 1
    g *= GELU_C                   # du/dx
    g *= x
    g *= 1 - t * t                # x (1 - t^2) du/dx
    g += t
    g += 1
    g *= 0.5
    g *= dy
    return g
