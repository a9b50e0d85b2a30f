"""Numerical gradient checking for forward/backward pairs (central differences).

A pair is checked by turning its output into a scalar with a random upstream gradient g,

    L(args) = sum(forward(*args).out * g)

whose exact gradient with respect to each argument is what ``backward(g, cache)`` returns.
Each element (all of them for small arrays, a random subset for big ones) is nudged by
+h and -h and the slope (L+ - L-) / 2h compared with the analytic value. A random g, not all
ones, matters: all ones only sees, for each input, the total of its effects on every output,
so a backward that reads dout in the wrong places or sums it where it should weight it
passes; and through softmax or layer norm (gamma = 1) the gradient of sum(y) is exactly zero,
so the check compares rounding noise. Use float64 inputs: in float32 the rounding error of L
swamps the slope.

    errors = check_pair(linear_forward, linear_backward, [x, w, b])
    # {'arg0': 3.1e-11, 'arg1': 2.2e-11, 'arg2': 1.0e-11}
"""
import numpy as np

from tinytok.backend import get_array_module, to_numpy


def relative_error(a, b, eps=1e-12):
    """max |a - b| / max(|a| + |b|): 0 for equal arrays, about 1 for unrelated ones."""
    a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare arrays of shapes {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(eps, float(np.max(np.abs(a) + np.abs(b)))))


def numerical_gradient(f, x, g, indices, h=1e-5):
    """d sum(f(x) * g) / dx at the given flat indices of x, by central differences.

    f must be a function of x alone returning an array shaped like g. x is modified in
    place while probing and restored afterwards.
    """
    slopes = np.empty(len(indices))
    for n, i in enumerate(indices):
        where = np.unravel_index(int(i), x.shape)  # works for views too, not just copies
        old = x[where].item()
        x[where] = old + h
        plus = float((f(x) * g).sum())
        x[where] = old - h
        minus = float((f(x) * g).sum())
        x[where] = old
        slopes[n] = (plus - minus) / (2 * h)
    return slopes


def _sample_indices(size, max_elements, rng):
    if size <= max_elements:
        return np.arange(size)
    return np.sort(rng.choice(size, max_elements, replace=False))


def check_pair(forward, backward, args, kwargs=None, wrt=None, seed=0, max_elements=200,
               h=1e-5, dout=None):
    """Relative error of backward against central differences, one figure per argument.

    forward(*args, **kwargs) -> (out, cache); backward(dout, cache) -> one gradient per
    index in ``wrt`` (default: every floating-point array among args, in order). Returns
    {"arg<i>": relative error}. Arrays with more than ``max_elements`` elements are checked
    at that many random positions. Inputs are not modified.
    """
    kwargs = kwargs or {}
    xp = get_array_module(*args)
    rng = np.random.default_rng(seed)
    args = [a.copy() if hasattr(a, "copy") else a for a in args]
    if wrt is None:
        wrt = [i for i, a in enumerate(args)
               if hasattr(a, "dtype") and xp.issubdtype(a.dtype, xp.floating)]

    out, cache = forward(*args, **kwargs)
    if dout is None:
        dout = xp.asarray(rng.standard_normal(out.shape), dtype=out.dtype)
    grads = backward(dout, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    grads = tuple(g for g in grads if g is not None)  # e.g. db of a conv called without bias
    if len(grads) != len(wrt):
        raise ValueError(f"backward returned {len(grads)} gradients for {len(wrt)} inputs")

    errors = {}
    for i, analytic in zip(wrt, grads):
        def f(xi, i=i):
            probe = list(args)
            probe[i] = xi
            return forward(*probe, **kwargs)[0]
        idx = _sample_indices(args[i].size, max_elements, rng)
        numeric = numerical_gradient(f, args[i], dout, idx, h)
        errors[f"arg{i}"] = relative_error(to_numpy(analytic).reshape(-1)[idx], numeric)
    return errors


def assert_gradients_close(forward, backward, args, kwargs=None, tol=1e-6, **options):
    """check_pair, raising AssertionError naming every argument whose error exceeds tol."""
    errors = check_pair(forward, backward, args, kwargs, **options)
    bad = {k: v for k, v in errors.items() if not v < tol}
    if bad:
        raise AssertionError(f"gradient check failed (tol {tol:g}): {bad}; all: {errors}")
    return errors
