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
    """y = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3). x -> y (same shape).

    Written as in-place steps on two buffers (the MLP's activations are the largest arrays
    of the prior, and each avoided temporary is a whole pass over memory), run on blocks of
    rows in parallel (tinytok.parallel).
    """
    require_float("x", x)
    xp = get_array_module(x)
    y, t = xp.empty_like(x), xp.empty_like(x)
    for_elementwise_blocks(_gelu_forward_rows, x, y, t)
    return y, (x, t)


def _gelu_forward_rows(x, y, t):
    """Writes y = GELU(x) and t = tanh(u) (kept for the backward) for a block of rows."""
    xp = get_array_module(x)
    xp.multiply(x, x, out=t)
    t *= 0.044715
    t += 1
    t *= x
    t *= GELU_C                   # u = sqrt(2/pi) (x + 0.044715 x^3)
    xp.tanh(t, out=t)             # t = tanh(u)
    xp.add(t, 1, out=y)
    y *= x
    y *= 0.5


def gelu_backward(dy, cache):
    """dx = dy * (0.5 (1 + t) + 0.5 x (1 - t^2) du/dx), du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)."""
    x, t = cache
    dx = get_array_module(dy).empty_like(dy)
    for_elementwise_blocks(_gelu_backward_rows, dy, x, t, dx)
    return dx


def _gelu_backward_rows(dy, x, t, g):
    """Writes g = dL/dx for a block of rows (the mirror of _gelu_forward_rows)."""
    xp = get_array_module(x)
    xp.multiply(x, x, out=g)
    g *= 3 * 0.044715
    g += 1
    g *= GELU_C                   # du/dx
    g *= x
    g *= 1 - t * t                # x (1 - t^2) du/dx
    g += t
    g += 1
    g *= 0.5
    g *= dy
