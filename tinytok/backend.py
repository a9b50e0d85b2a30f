"""The one place that knows whether arrays live on the CPU (NumPy) or a GPU (CuPy).

Everything else in tinytok asks this module for its array module:

    from tinytok import backend
    xp = backend.xp()                 # the active module: numpy or cupy
    xp = backend.get_array_module(x)  # the module an existing array belongs to

Choose the backend with the environment variable ``TINYTOK_BACKEND=numpy|cupy`` (read at
import) or with ``backend.use("cupy")``. Code written against ``xp`` runs unchanged on both,
as long as it stays inside the API that NumPy and CuPy share. Work that only exists on the
host (Pillow, SciPy, printing) converts explicitly with ``to_numpy``.

Random numbers are drawn on the host with ``numpy.random.Generator`` and then moved, so the
same seed gives the same initial weights and data on both backends.
"""
import os

import numpy as np

from tinytok.errors import BackendError

BACKENDS = ("numpy", "cupy")

_active = None  # the module in use: numpy or cupy


def _load_cupy():
    """Import CuPy and prove it can allocate on a GPU, or raise one clear BackendError."""
    try:
        import cupy
    except ImportError as e:
        raise BackendError(
            "the 'cupy' backend was requested but CuPy is not installed "
            f"({e}); install it with: pip install 'tinytok[cuda]' "
            "(or pick TINYTOK_BACKEND=numpy)") from None
    # CuPy imports fine on a machine without an NVIDIA driver or GPU; it fails only at the
    # first allocation. Find out now, while we can still say why.
    try:
        available = cupy.is_available()
        if available:
            cupy.zeros(1)
    except Exception as e:  # CUDARuntimeError, CUDADriverError, ...
        raise BackendError(
            "the 'cupy' backend was requested and CuPy is installed, but it cannot use a GPU "
            f"here ({type(e).__name__}: {e}); check that an NVIDIA GPU and driver are present "
            "(nvidia-smi), or pick TINYTOK_BACKEND=numpy") from None
    if not available:
        raise BackendError(
            "the 'cupy' backend was requested and CuPy is installed, but no usable GPU was "
            "found (cupy.is_available() is False: no NVIDIA GPU or driver); "
            "check nvidia-smi, or pick TINYTOK_BACKEND=numpy")
    return cupy


def use(name):
    """Switch the active backend to "numpy" or "cupy" and return its array module."""
    global _active
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    _active = np if name.lower() == "numpy" else _load_cupy()
    return _active


def xp():
    """The active array module (numpy or cupy)."""
    if _active is None:
        use(os.environ.get("TINYTOK_BACKEND", "numpy") or "numpy")
    return _active


def name():
    """The active backend's name: "numpy" or "cupy"."""
    return xp().__name__


def is_cupy_array(x):
    """True when x is a CuPy array (checked without importing CuPy)."""
    module = type(x).__module__
    return module == "cupy" or module.startswith("cupy.")


def get_array_module(*arrays):
    """numpy or cupy, whichever the given arrays belong to (numpy for plain Python values).

    Called by every op, thousands of times a second when sampling: a NumPy array is
    recognised first, by its exact type."""
    for a in arrays:
        if type(a) is not np.ndarray and is_cupy_array(a):
            # the active device module if the array is its own (tests stand in a fake CuPy)
            if _active is not None and _active is not np and isinstance(a, _active.ndarray):
                return _active
            import cupy
            return cupy
    return np


def to_numpy(x):
    """A host (NumPy) copy of x, or x itself if it already lives on the host."""
    return x.get() if is_cupy_array(x) else np.asarray(x)


def to_device(x, dtype=None):
    """x as an array of the active backend (a no-op copy-free move when already there)."""
    mod = xp()
    if mod is np:
        return np.asarray(to_numpy(x), dtype=dtype)
    return mod.asarray(x, dtype=dtype)


def nccl():
    """CuPy's NCCL module (``cupy.cuda.nccl``), which adds arrays across GPUs for
    tinytok.distributed; BackendError, saying what to install, where there is none."""
    mod = xp()
    if mod is np:
        raise BackendError("NCCL adds GPU arrays: it needs the 'cupy' backend (--backend cupy)")
    module = getattr(mod.cuda, "nccl", None)
    if module is None:
        try:
            from cupy.cuda import nccl as module
        except ImportError as e:
            raise BackendError(f"CuPy's NCCL module cannot be imported ({e})") from None
    if not getattr(module, "available", True):
        raise BackendError("several GPUs add their gradients with NCCL, and this CuPy has none "
                           "(cupy.cuda.nccl.available is False); install it (pip install "
                           "nvidia-nccl-cu12), or leave --backend cupy out (MPI on the host)")
    return module


def params_to_numpy(params):
    """A dict of arrays moved to the host; keys and order unchanged."""
    return {k: to_numpy(v) for k, v in params.items()}


def params_to_device(params):
    """A dict of arrays moved to the active backend; keys and order unchanged."""
    return {k: to_device(v) for k, v in params.items()}


def rng(seed=None):
    """A host random generator; draw on the host, then move with to_device."""
    return np.random.default_rng(seed)


def seed(seed_value):
    """Seed the legacy global generators of NumPy (and CuPy when active), for scripts."""
    np.random.seed(seed_value)
    if _active is not None and _active is not np:
        _active.random.seed(seed_value)
