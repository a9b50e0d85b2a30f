"""Element-wise non-linearities: ReLU, leaky ReLU (the discriminator's) and GELU (tanh
approximation, as in GPT-2)."""
import math
from typing import Any, NamedTuple

from tinytok.backend import get_array_module
from tinytok.errors import ConfigError
from tinytok.ops.checks import is_finite_number, require_float

GELU_C = math.sqrt(2.0 / math.pi)  # the tanh approximation's constants:
GELU_A = 0.044715                  # u = GELU_C * (x + GELU_A * x^3)


class ReluCache(NamedTuple):
    positive: Any  # bool, x's shape: where x > 0


def relu_forward(x):
    """y = max(x, 0). x (any shape) -> y (same shape, same memory order)."""
    require_float("x", x)
    y = get_array_module(x).maximum(x, 0)
    return y, ReluCache(positive=x > 0)  # the mask, not y: a caller may change y (h += skip)


def relu_backward(dy, cache):
    """dx = dy where x > 0, else 0. A new array: dy itself is the caller's and stays as is."""
    return dy * cache.positive


class LeakyReluCache(NamedTuple):
    positive: Any  # bool, x's shape: where x > 0
    slope: float   # the factor on the other inputs


def leaky_relu_forward(x, slope=0.2):
    """y = x where x > 0, else slope * x.   x (any shape) -> y (same shape), 0 <= slope <= 1.

    A discriminator uses it rather than ReLU so that no input gets a zero gradient: the
    tokenizer learns from D's gradient with respect to its picture, everywhere.
    """
    require_float("x", x)
    if not (is_finite_number(slope) and 0 <= slope <= 1):
        raise ConfigError(f"slope must be a number in [0, 1] (0: ReLU, 1: the identity; "
                          f"0.2 for a discriminator), got {slope!r}")
    positive = x > 0
    y = get_array_module(x).where(positive, x, x * x.dtype.type(slope))
    return y, LeakyReluCache(positive, float(slope))


def leaky_relu_backward(dy, cache):
    """dx = dy where x > 0, else slope * dy. At x = 0 exactly the slope side, as PyTorch."""
    xp = get_array_module(dy)
    return xp.where(cache.positive, dy, dy * dy.dtype.type(cache.slope))


class GeluCache(NamedTuple):
    x: Any  # the input
    s: Any  # the gate s = (1 + tanh(u)) / 2, x's shape


def gelu_forward(x):
    """y = x * s,   s = (1 + t) / 2,   t = tanh(u),   u = sqrt(2/pi) (x + 0.044715 x^3).

    x (any shape) -> y (same shape). s, the "gate", is a smooth step from 0 to 1. The steps
    are in place on one buffer: the MLP's activations are the prior's largest arrays, and
    each operation is one more pass over them.
    """
    require_float("x", x)
    xp = get_array_module(x)
    u = x * x                   # x^2
    u *= GELU_C * GELU_A
    u += GELU_C
    u *= x                      # u = sqrt(2/pi) x + sqrt(2/pi) 0.044715 x^3
    s = xp.tanh(u, out=u)       # t = tanh(u), in u's buffer
    s += 1
    s *= 0.5                    # s = (1 + t) / 2
    return x * s, GeluCache(x, s)


def gelu_backward(dy, cache):
    """dx = dy * (s + x ds/dx),   ds/dx = (1 - t^2) / 2 du/dx = 2 s (1 - s) du/dx,
    du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2).     (1 - t^2 = (1 - t)(1 + t) = 4 s (1 - s))
    """
    x, s = cache
    g = x * x                           # x^2
    g *= 2 * GELU_C * 3 * GELU_A
    g += 2 * GELU_C                     # 2 du/dx
    g *= s
    g *= 1 - s                          # ds/dx = 2 s (1 - s) du/dx
    g *= x
    g += s                              # s + x ds/dx
    g *= dy
    return g                            # dx
