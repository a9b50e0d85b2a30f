"""Input checks shared by the op pairs: one clear message instead of a broadcasting puzzle.

Each check is a cheap look at shape and dtype (no pass over the data), so it is done on
every forward call. The whole-number check is the package's one: configs, settings and
arguments everywhere use is_whole_number and require_positive_int, and is_finite_number
for real-valued settings.
"""
import math
import numbers
import operator

from tinytok.errors import ConfigError, DTypeError, ShapeError

FLOAT_ITEMSIZES = (4, 8)  # float32, float64 (kind "f"; float16 is refused)


def require_float(name, x):
    """x must be a float32 or float64 array."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        raise DTypeError(f"{name} must be a float32 or float64 array, got {type(x).__name__}")
    # kind and itemsize, not str(dtype): this runs on every op call, and str() is slow
    if dtype.kind != "f" or dtype.itemsize not in FLOAT_ITEMSIZES:
        raise DTypeError(f"{name} must be float32 or float64, got {dtype}"
                         " (convert with .astype('float32'))")


def require_int(name, x):
    """x must be an array of integers (token or class ids)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or dtype.kind not in "iu":
        raise DTypeError(f"{name} must be an integer array of ids, got "
                         f"{dtype if dtype is not None else type(x).__name__}")


def require_ndim(name, x, ndim, layout):
    """x must have exactly ndim axes; layout names them for the message, e.g. "(N, C, H, W)"."""
    if x.ndim != ndim:
        raise ShapeError(f"{name} must have shape {layout}, got shape {tuple(x.shape)}")


def require_shape(name, x, shape, layout):
    """x must have exactly this shape."""
    if tuple(x.shape) != tuple(shape):
        raise ShapeError(f"{name} must have shape {layout} = {tuple(shape)}, "
                         f"got {tuple(x.shape)}")


def require_same_dtype(x_name, x, *others):
    """Every (name, array) in others must share x's dtype, so nothing is silently promoted."""
    for name, a in others:
        if a is not None and a.dtype != x.dtype:
            raise DTypeError(f"{name} is {a.dtype} but {x_name} is {x.dtype}; "
                             "use one float dtype for all arguments")


def is_whole_number(value, minimum=0):
    """Whether value is an integer >= minimum: Python and NumPy integers are (anything with
    __index__); bools, floats and strings are not."""
    try:
        return not isinstance(value, bool) and operator.index(value) >= minimum
    except TypeError:
        return False


def is_finite_number(value):
    """Whether value is a finite real number (Python or NumPy); bools and strings are not,
    nor an integer too large for a float (10**400)."""
    try:
        return (isinstance(value, numbers.Real) and not isinstance(value, bool)
                and math.isfinite(value))
    except OverflowError:
        return False


def require_positive_int(name, value, minimum=1):
    """A hyperparameter such as stride (>= 1), padding (>= 0) or a config's size must be a
    whole number (is_whole_number); returns it as a Python int."""
    if not is_whole_number(value, minimum):
        raise ConfigError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return operator.index(value)
