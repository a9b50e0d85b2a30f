"""Helpers shared by the tests that run tinytok on another array backend."""
from contextlib import contextmanager

from tinytok import backend


@contextmanager
def active(module):
    """Run a block with `module` (np or the fake) as tinytok's backend."""
    saved = backend._active
    backend._active = module
    try:
        yield module
    finally:
        backend._active = saved


def host(x):
    """Device arrays (also inside dicts, lists, tuples) as NumPy; other values unchanged."""
    if isinstance(x, dict):
        return {k: host(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(host(v) for v in x)
    if backend.is_cupy_array(x):
        return x.get()
    return x
