"""What kind of wrong: a learner's array held against the right one.

Every diagnosis here is a test that was run, never a guess from the error's size alone: the
learner's array is transposed, scaled, flipped or summed and compared again, and only a
transform that makes it match is reported. Op-specific tests (an embedding that assigns
instead of adding, a convolution's kernel not turned) come in as hints from cases.py and
are tried first.
"""
import itertools
from typing import Callable, NamedTuple

import numpy as np

from tinytok.gradcheck import relative_error

TOL = 1e-6  # float64 pairs agree to ~1e-12, central differences to ~1e-9
NOT_WRITTEN = "not written yet"


class Hint(NamedTuple):
    """An op-specific test: matches(got) -> bool, and what to say when it does."""
    matches: Callable
    message: str


def close(a, b):
    """Whether a and b are the same array, up to the checker's tolerance."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(relative_error(a, b) < TOL)


def like(mistaken, message):
    """A hint that fires when got equals `mistaken`, what a known mistake computes."""
    return Hint(lambda got: close(got, mistaken), message)


def as_array(value):
    """The learner's value as a float or int array, or None if it is not one."""
    try:
        a = np.asarray(value)
    except (TypeError, ValueError):  # ragged lists and the like
        return None
    return a if a.dtype.kind in "fiub" else None


def diagnose(got, want, hints=()):
    """One phrase saying how got differs from want, or None if no test explains it."""
    if got is None:
        return NOT_WRITTEN
    a = as_array(got)
    if a is None:
        return f"not an array (got {type(got).__name__})"
    if not np.all(np.isfinite(a)):
        return "contains NaN or inf"
    for hint in hints:
        if hint.matches(a):
            return hint.message
    if a.shape != want.shape:
        return shape_problem(a, want)
    if not np.any(a) and np.any(want):
        return "all zeros: no gradient gets through"
    return transposed(a, want) or scaled(a, want)


def shape_problem(a, want):
    """Why a has the wrong shape, if a transpose, a sum over the batch or a reshape fixes it."""
    shapes = f"got {a.shape}, expected {want.shape}"
    lead = a.ndim - want.ndim
    if lead > 0 and a.shape[lead:] == want.shape and close(a.sum(axis=tuple(range(lead))),
                                                           want):
        return f"not summed over the batch ({shapes}): add up the rows' gradients"
    if lead < 0 and want.shape[-lead:] == a.shape and close(
            a, want.sum(axis=tuple(range(-lead)))):
        return (f"summed over the batch ({shapes}): each example keeps its own gradient")
    moved = transposed(a, want)
    if moved:
        return f"{moved} ({shapes})"
    if a.size == want.size and close(a.reshape(want.shape), want):
        return f"the right numbers in the wrong shape ({shapes}): reshape"
    return f"wrong shape: {shapes}"


def transposed(a, want):
    """'transposed' if some other order of a's axes gives want."""
    if a.ndim > 5:
        return None
    for order in itertools.permutations(range(a.ndim)):
        if order != tuple(range(a.ndim)) and close(a.transpose(order), want):
            return ("transposed: its .T is right" if a.ndim == 2 else
                    f"axes in the wrong order: its .transpose{order} is right")
    return None


def scaled(a, want):
    """A phrase for a constant factor c with a == c * want (c fitted by least squares)."""
    size = float(np.sum(want * want))
    if size == 0:
        return None
    c = float(np.sum(a * want)) / size
    if not close(a, c * want) or abs(c - 1) < TOL:
        return None
    if abs(c + 1) < TOL:
        return "sign flipped: -1x the right values"
    sign = "sign flipped and " if c < 0 else ""
    m = abs(c)
    n, inverse = round(m), round(1 / m)
    if n >= 2 and abs(m - n) < 1e-6 * n:
        why = "a factor 2 too many?" if n == 2 else f"a sum where a mean over {n} belongs?"
        return f"{sign}{c:.4g}x too large: {why}"
    if inverse >= 2 and abs(1 / m - inverse) < 1e-6 * inverse:
        why = ("a factor 2 missing?" if inverse == 2 else
               f"a mean over {inverse} where a sum belongs?")
        return f"{sign}{c:.4g}x (1/{inverse}) too small: {why}"
    if a.size == 1:
        return None  # one number is always some multiple of another: only nice ones count
    return f"{sign}{c:.4g}x the right values: a constant factor is off"


def cosine(a, b):
    """How alike two arrays of one shape are in direction: 1 the same, 0 unrelated."""
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.sum(a * b)) / norms if norms else 0.0
