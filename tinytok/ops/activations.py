"""Elementwise non-linearities: ReLU and GELU (tanh approximation, as in GPT-2)."""
import math

from tinytok.backend import get_array_module
from tinytok.ops.checks import require_float
from tinytok.parallel import for_elementwise_blocks

GELU_C = math.sqrt(2.0 / math.pi)  # the tanh approximation's constant


def relu_forward(x):
    """y = max(x, 0). x (any shape) -> y (same shape)."""
    require_float("x", x)
    xp = get_array_module(x)
    y, positive = xp.empty_like(x), xp.empty_like(x, dtype=bool)   # x's memory order
    for_elementwise_blocks(_relu_rows, x, y, positive)
    return y, positive  # the mask, not y: a caller may later change y in place (h += skip)


def _relu_rows(x, y, positive):
    xp = get_array_module(x)
    xp.maximum(x, 0, out=y)
    xp.greater(y, 0, out=positive)


def relu_backward(dy, cache):
    """dx = dy where the input was positive, else 0.

    Builds a new array: writing the mask into dy in place would corrupt the caller's gradient.
    """
    positive = cache
    dx = get_array_module(dy).empty_like(dy)
    for_elementwise_blocks(_multiply_into, dy, positive, dx)
    return dx


def _multiply_into(a, b, out):
    get_array_module(a).multiply(a, b, out=out)


def gelu_forward(x):
    """y = x * s, s = 0.5 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3). x -> y (same shape).

    s, the "gate" (a smooth step from 0 to 1), is kept for the backward. Written as in-place
    steps on two buffers, with the constants folded together: the MLP's activations are the
    largest arrays of the prior, and every pass over them counts. Runs on blocks in parallel
    (tinytok.parallel).
    """
    require_float("x", x)
    xp = get_array_module(x)
    y, s = xp.empty_like(x), xp.empty_like(x)
    for_elementwise_blocks(_gelu_forward_rows, x, y, s)
    return y, (x, s)


def _gelu_forward_rows(x, y, s):
    """Writes y = GELU(x) and the gate s for a block of rows."""
    xp = get_array_module(x)
    xp.multiply(x, x, out=s)
    s *= GELU_C * 0.044715
    s += GELU_C
    s *= x                        # u = sqrt(2/pi) (x + 0.044715 x^3)
    xp.tanh(s, out=s)
    s *= 0.5
    s += 0.5                      # s = 0.5 (1 + tanh(u))
    xp.multiply(x, s, out=y)


def gelu_backward(dy, cache):
    """dx = dy * (s + x ds/dx), ds/dx = 0.5 (1 - tanh(u)^2) du/dx = 2 s (1 - s) du/dx,
    du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)."""
    x, s = cache
    dx = get_array_module(dy).empty_like(dy)
    for_elementwise_blocks(_gelu_backward_rows, dy, x, s, dx)
    return dx


def _gelu_backward_rows(dy, x, s, g):
    """Writes g = dL/dx for a block of rows (the mirror of _gelu_forward_rows)."""
    xp = get_array_module(x)
    xp.multiply(x, x, out=g)
    g *= 2 * GELU_C * 3 * 0.044715
    g += 2 * GELU_C               # 2 du/dx
    g *= x
    g *= s
    g *= xp.subtract(1, s)        # x * 2 s (1 - s) du/dx = x ds/dx
    g += s
    g *= dy
