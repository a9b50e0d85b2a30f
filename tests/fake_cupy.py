"""A strict stand-in for CuPy, built on NumPy: runs tinytok's CuPy code path on a CPU.

CuPy imports on a machine without a GPU but cannot allocate, so the code that only runs
with ``TINYTOK_BACKEND=cupy`` would otherwise never run before it meets a real GPU. This
module is a ``cupy``-shaped module whose arrays live in NumPy but refuse what CuPy refuses:

* ``np.asarray(device_array)``, ``np.array(...)``, Pillow and anything else that asks for
  ``__array__`` raise TypeError, with CuPy's own message ("Implicit conversion to a NumPy
  array is not allowed ...");
* mixing a host NumPy array (not 0-d) with a device array in an operator or a function
  raises TypeError, as CuPy's kernels do ("Unsupported type <class 'numpy.ndarray'>");
* indexing a device array with a NumPy index array (int or bool, not 0-d) raises IndexError;
* a NumPy ufunc or function applied to a device array (``np.exp(x)``, ``np.stack([x])``,
  ``np.shape(x)``) raises TypeError. This is stricter than CuPy, which dispatches many of
  those to its own functions: tinytok's rule is that code working on device arrays calls
  ``xp`` (the module ``tinytok.backend`` hands out), and only the documented host edges
  call NumPy, after an explicit ``to_numpy``. The message says whether real CuPy would
  have dispatched or failed, so a finding can be sorted;
* only the names that the installed real ``cupy`` module (and ``cupy.ndarray``,
  ``cupy.random``, ``cupy.linalg``) has are exposed: a NumPy-only function is an
  AttributeError here as there. Without CuPy installed, NumPy's namespace is used instead.

What CuPy allows, this allows: ``float()``, ``int()``, ``bool()`` of a one-element array,
``print``/``repr``, ``.item()``, ``.tolist()``, ``.get()`` (a NumPy copy),
``xp.asarray(host_array)`` (an explicit upload), ``device[...] = host_array``, NumPy scalars
(``np.float32(2) * x``) and 0-d NumPy arrays beside device arrays. Reductions return 0-d
device arrays, as in CuPy, never NumPy scalars.

NCCL (``cupy.cuda.nccl``): communicators whose ranks are threads of this process, for the
NCCL world of tinytok.distributed. As strict as NCCL where it matters: buffers are given as
``x.data.ptr`` of device arrays (a host address is refused), counts must fit behind them,
and a collective returns only once every rank has called it; the sums, taken in rank
order through the addresses, land in the device arrays themselves.

Activate it for tinytok with ``monkeypatch.setattr(tinytok.backend, "_active", fake_cupy.cupy)``;
``tinytok.backend.get_array_module`` then returns this module for its arrays (their type's
module starts with "cupy"). ``backend.use("cupy")`` can be pointed at it by patching
``backend._load_cupy`` to ``lambda: fake_cupy.cupy`` (used for the CLI and the bench).

The array type is a wrapper around a NumPy array, not an ``ndarray`` subclass: NumPy never
calls ``__array__`` on its own subclasses, so a subclass could not make ``np.asarray`` fail,
and ``isinstance(x, np.ndarray)`` is False for real CuPy arrays too.
"""
import numbers
import os
import types

import numpy as np

try:  # the real namespace decides which names exist; CuPy imports without a GPU
    import cupy as _real
except Exception:  # pragma: no cover - CuPy not installed: NumPy's names instead
    _real = None

# FAKE_CUPY_DISPATCH=1: behave as real CuPy does for numpy.f(device_array), dispatching to
# cupy.f where it exists, instead of refusing it (the default, tinytok's own rule). Useful to
# look past principle-3 findings for the crashes real CuPy would have.
DISPATCH_NUMPY_FUNCTIONS = os.environ.get("FAKE_CUPY_DISPATCH") == "1"

IMPLICIT_MESSAGE = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` "
                    "to construct a NumPy array explicitly.")

# Functions that take host data on purpose: they are CuPy's explicit uploads.
HOST_INPUT_FUNCTIONS = {"array", "asarray", "asanyarray", "ascontiguousarray",
                        "asfortranarray"}


def _has(real_obj, name):
    if real_obj is None:
        return True
    try:
        return hasattr(real_obj, name)
    except Exception:
        return False


# ------------------------------------------------------------------------------ wrapping

def _is_host_array(x):
    """A NumPy array that CuPy would refuse beside device arrays (0-d ones pass)."""
    return isinstance(x, np.ndarray) and x.ndim > 0


def _unwrap(x, where, allow_host=False):
    """Device arrays -> their NumPy payload; host arrays refused unless allow_host."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (list, tuple)):
        items = [_unwrap(v, where, allow_host) for v in x]
        return items if isinstance(x, list) else tuple(items)
    if not allow_host and _is_host_array(x):
        raise TypeError(f"Unsupported type {type(x)} (fake CuPy: a host NumPy array "
                        f"{x.dtype}{x.shape} was passed to {where}; move it with xp.asarray "
                        "first)")
    return x


def _unwrap_kwargs(kwargs, where, allow_host=False):
    return {k: _unwrap(v, f"{where}({k}=...)", allow_host) for k, v in kwargs.items()}


def _wrap(x):
    """NumPy results -> device arrays (scalars become 0-d arrays, as CuPy returns)."""
    if isinstance(x, np.ndarray):
        return ndarray._from(x)
    if isinstance(x, np.generic):
        return ndarray._from(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _real_name(name):
    return _real is not None and _has(_real, name)


def _index(key):
    """An index for a device array: device index arrays unwrapped, NumPy index arrays refused."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, ndarray):
        return key._a
    if _is_host_array(key):
        raise IndexError(f"fake CuPy: a host NumPy {key.dtype} array {key.shape} was used to "
                         "index a device array; CuPy needs device index arrays "
                         "(xp.asarray(index) first)")
    if isinstance(key, list) and any(isinstance(k, (ndarray, np.ndarray)) for k in key):
        return [_index(k) for k in key]
    return key


# ------------------------------------------------------------------------------ the array

_NDARRAY_NAMES = (set(dir(_real.ndarray)) if _real is not None else set(dir(np.ndarray)))


class ndarray:
    """A device array: a NumPy payload that refuses implicit trips to the host."""

    __slots__ = ("_a",)
    __array_ufunc__ = None          # NumPy ufuncs refuse it; operators defer to it
    __array_priority__ = 1000
    __hash__ = None

    def __init__(self, shape, dtype=float, order="C"):
        self._a = np.empty(shape, dtype=dtype, order=order)

    @classmethod
    def _from(cls, a):
        obj = object.__new__(cls)
        obj._a = a
        return obj

    # --- what CuPy refuses
    def __array__(self, *args, **kwargs):
        raise TypeError(IMPLICIT_MESSAGE)

    def __array_function__(self, func, types, args, kwargs):
        name = getattr(func, "__name__", str(func))
        if DISPATCH_NUMPY_FUNCTIONS and _real_name(name) and name in cupy.__dict__:
            return getattr(cupy, name)(*args, **kwargs)   # what real CuPy does
        on_cupy = ("real CuPy would dispatch it to cupy." + name) if _real_name(name) else \
            "real CuPy has no such function and would fail"
        raise TypeError(f"fake CuPy: NumPy function numpy.{name} called on a device array "
                        f"({on_cupy}); use xp.{name}, or convert explicitly with "
                        "tinytok.backend.to_numpy at a host edge")

    # --- explicit moves
    def get(self, stream=None, order="C", out=None, blocking=True):
        """A NumPy copy on the host."""
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        if isinstance(arr, ndarray):
            raise TypeError("fake CuPy: set() takes a host array")
        self._a[...] = np.asarray(arr)

    @property
    def device(self):
        return cuda.Device(0)

    @property
    def data(self):
        """cupy.cuda.MemoryPointer's stand-in: .ptr, the address of the first element, for
        NCCL (the fake NCCL takes only addresses handed out here)."""
        ptr = self._a.ctypes.data
        _DEVICE_POINTERS[ptr] = max(_DEVICE_POINTERS.get(ptr, 0), self._a.nbytes)
        return types.SimpleNamespace(ptr=ptr, mem=None)

    # --- basic attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    T = property(lambda self: ndarray._from(self._a.T))

    def __getattr__(self, name):
        if name.startswith("__") or name not in _NDARRAY_NAMES:
            raise AttributeError(f"fake CuPy: 'cupy.ndarray' object has no attribute {name!r}")
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)
        where = f"ndarray.{name}"

        def method(*args, **kwargs):
            result = attr(*_unwrap(args, where), **_unwrap_kwargs(kwargs, where))
            if kwargs.get("out") is not None:
                return kwargs["out"]
            return _wrap(result)
        return method

    # --- conversions CuPy allows (they synchronise and copy one number)
    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __complex__(self):
        return complex(self._a)

    def __bool__(self):
        return bool(self._a)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (ndarray._from(self._a[i]) for i in range(len(self._a)))

    def __repr__(self):
        return repr(self._a)

    def __str__(self):
        return str(self._a)

    def __format__(self, spec):
        if self._a.ndim == 0:
            return format(self._a.item(), spec)
        return format(str(self), spec)

    def __copy__(self):
        return ndarray._from(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray._from(self._a.copy())

    def __reduce__(self):
        return (_from_host, (self._a.copy(),))

    # --- indexing
    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        # CuPy uploads a host value on assignment (an explicit write into the device array)
        self._a[_index(key)] = value._a if isinstance(value, ndarray) else value

    def __delitem__(self, key):
        raise ValueError("cannot delete array elements")


def _from_host(a):
    return ndarray._from(a)


def _binary(op, reflected=False, inplace=False):
    def method(self, other):
        if isinstance(other, ndarray):
            other = other._a
        elif _is_host_array(other):
            raise TypeError(f"Unsupported type {type(other)} (fake CuPy: operator "
                            f"{op.__name__} mixes a device array with a host NumPy array "
                            f"{other.dtype}{other.shape})")
        elif not isinstance(other, (numbers.Number, np.generic, np.ndarray, bool)):
            return NotImplemented
        if inplace:
            op(self._a, other)
            return self
        return _wrap(op(other, self._a) if reflected else op(self._a, other))
    return method


_OPERATORS = {
    "add": "__add__", "sub": "__sub__", "mul": "__mul__", "truediv": "__truediv__",
    "floordiv": "__floordiv__", "mod": "__mod__", "pow": "__pow__", "matmul": "__matmul__",
    "and_": "__and__", "or_": "__or__", "xor": "__xor__", "lshift": "__lshift__",
    "rshift": "__rshift__",
}
import operator as _operator  # noqa: E402

for _name, _dunder in _OPERATORS.items():
    _op = getattr(_operator, _name)
    setattr(ndarray, _dunder, _binary(_op))
    setattr(ndarray, "__r" + _dunder[2:], _binary(_op, reflected=True))
    setattr(ndarray, "__i" + _dunder[2:], _binary(getattr(_operator, "i" + _name.rstrip("_")),
                                                  inplace=True))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(ndarray, f"__{_name}__", _binary(getattr(_operator, _name)))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__",
            (lambda op: lambda self: _wrap(op(self._a)))(getattr(_operator, _name)))
ndarray.__module__ = "cupy._fake"
ndarray.__qualname__ = "ndarray"


# ------------------------------------------------------------------------------ functions

class ufunc:
    """A NumPy ufunc working on device arrays (call, at, reduce, accumulate, outer)."""

    def __init__(self, np_ufunc):
        self._u = np_ufunc
        self.__name__ = np_ufunc.__name__
        self.nin, self.nout = np_ufunc.nin, np_ufunc.nout

    def _call(self, method, args, kwargs):
        where = f"cupy.{self.__name__}" + ("" if method == "__call__" else "." + method)
        if any(isinstance(a, (list, tuple)) for a in args[:self.nin]) and method == "__call__":
            raise TypeError(f"Unsupported type {type(args[0])} (fake CuPy: {where} takes "
                            "arrays or scalars, not Python sequences)")
        out = kwargs.get("out")
        for o in (out if isinstance(out, tuple) else (out,)):
            if o is not None and not isinstance(o, ndarray):
                raise TypeError(f"Unsupported type {type(o)} (fake CuPy: out= of {where} "
                                "must be a device array)")
        fn = self._u if method == "__call__" else getattr(self._u, method)
        result = fn(*_unwrap(args, where), **_unwrap_kwargs(kwargs, where))
        if out is not None:
            return out
        return _wrap(result)

    def __call__(self, *args, **kwargs):
        return self._call("__call__", args, kwargs)

    def at(self, a, indices, b=None):
        if not isinstance(a, ndarray):
            raise TypeError(f"fake CuPy: cupy.{self.__name__}.at needs a device array")
        where = f"cupy.{self.__name__}.at"
        self._u.at(a._a, _index(indices), *(() if b is None else (_unwrap(b, where),)))

    def reduce(self, *args, **kwargs):
        return self._call("reduce", args, kwargs)

    def accumulate(self, *args, **kwargs):
        return self._call("accumulate", args, kwargs)

    def reduceat(self, *args, **kwargs):
        return self._call("reduceat", args, kwargs)

    def outer(self, *args, **kwargs):
        return self._call("outer", args, kwargs)

    def __repr__(self):
        return f"<fake cupy ufunc {self.__name__}>"


def _function(np_func, name):
    allow_host = name in HOST_INPUT_FUNCTIONS
    where = f"cupy.{name}"

    def f(*args, **kwargs):
        out = kwargs.get("out")
        if out is not None and not isinstance(out, ndarray):
            raise TypeError(f"fake CuPy: out= of {where} must be a device array")
        result = np_func(*_unwrap(args, where, allow_host),
                         **_unwrap_kwargs(kwargs, where, allow_host))
        return out if out is not None else _wrap(result)

    f.__name__ = f.__qualname__ = name
    f.__doc__ = f"fake CuPy: numpy.{name} on device arrays"
    return f


def _asarray(a, dtype=None, order=None, *, blocking=False):
    if isinstance(a, ndarray):
        if dtype is None or np.dtype(dtype) == a.dtype:
            return a                       # CuPy returns the same array, no copy
        return ndarray._from(a._a.astype(dtype))
    a = _unwrap(a, "cupy.asarray", allow_host=True)
    return ndarray._from(np.array(a, dtype=dtype, order=order or "K", copy=True))


def _array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    obj = _unwrap(obj, "cupy.array", allow_host=True)
    return ndarray._from(np.array(obj, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    """CuPy's explicit download: a NumPy array of a (device or host)."""
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)


def get_array_module(*args):
    return cupy if any(isinstance(a, ndarray) for a in args) else np


def is_available():
    return True


# ------------------------------------------------------------------------------ submodules

class _MemoryPool:
    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_bytes(self):
        return 0

    def free_all_blocks(self, stream=None):
        pass

    def n_free_blocks(self):
        return 0

    def set_limit(self, size=None, fraction=None):
        pass

    def get_limit(self):
        return 0


_POOL, _PINNED_POOL = _MemoryPool(), _MemoryPool()


class _Device:
    """cupy.cuda.Device: synchronize() and use() are no-ops here."""

    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)

    def synchronize(self):
        pass

    def use(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    compute_capability = "90"

    def __repr__(self):
        return f"<fake CUDA Device {self.id}>"


class _Stream:
    ptr = 0  # the null stream's handle, as NCCL is given it

    def __init__(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_Stream.null = _Stream()


class _Event:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        pass

    def synchronize(self):
        pass


cuda = types.ModuleType("cupy.cuda")
cuda.Device = _Device
cuda.Stream = _Stream
cuda.Event = _Event
cuda.is_available = is_available
cuda.get_current_stream = lambda device_id=-1: _Stream.null
cuda.get_elapsed_time = lambda start, end: 0.0
cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, deviceSynchronize=lambda: None,
                                     runtimeGetVersion=lambda: 12000,
                                     driverGetVersion=lambda: 12000,
                                     getDeviceProperties=lambda i: {"name": b"fake GPU"})
cuda.MemoryPool = _MemoryPool


# ------------------------------------------------------------------------------ NCCL

_DEVICE_POINTERS = {}   # address -> bytes behind it, of every .data.ptr handed out


class _NcclGroup:
    """The communicators made with one unique id: ranks meet at a barrier for each call."""

    def __init__(self, ndev):
        import threading
        self.ndev, self.slots = ndev, [None] * ndev
        self.barrier = threading.Barrier(ndev, timeout=60)


class _NcclCommunicator:
    """cupy.cuda.nccl.NcclCommunicator for ranks that are threads of this process.

    Strict where NCCL is: pointers are integers from a device array's .data.ptr (a host
    array's address is refused), the count must fit behind the pointer, every rank must
    join with the same ndev, and a collective returns only once every rank has called it.
    The sums are taken in rank order, so every rank gets the same bits, as with NCCL.
    """
    _groups, _lock = {}, None

    def __init__(self, ndev, commId, rank):
        import threading
        if not (isinstance(commId, tuple) and len(commId) == 128):
            raise TypeError("fake NCCL: commId must be the 128-tuple get_unique_id() returns")
        if not 0 <= rank < ndev:
            raise ValueError(f"fake NCCL: rank {rank} is not in [0, {ndev})")
        _NcclCommunicator._lock = _NcclCommunicator._lock or threading.Lock()
        with _NcclCommunicator._lock:
            group = self._groups.setdefault(commId, _NcclGroup(ndev))
        if group.ndev != ndev:
            raise ValueError(f"fake NCCL: ndev {ndev} but the group has {group.ndev}")
        self.group, self.rank = group, rank

    def _view(self, ptr, count, datatype):
        import ctypes
        if not isinstance(ptr, int) or ptr not in _DEVICE_POINTERS:
            raise ValueError(f"fake NCCL: {ptr!r} is not the address of a device array "
                             "(pass x.data.ptr of a CuPy array)")
        dtype = np.dtype(_NCCL_DTYPES[datatype])
        if count * dtype.itemsize > _DEVICE_POINTERS[ptr]:
            raise ValueError(f"fake NCCL: {count} {dtype} do not fit behind {ptr:#x}")
        raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=count)

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        if op != _nccl.NCCL_SUM:
            raise ValueError("fake NCCL: only NCCL_SUM is implemented")
        g = self.group
        g.slots[self.rank] = self._view(sendbuf, count, datatype).copy()
        g.barrier.wait()
        total = g.slots[0].copy()
        for part in g.slots[1:]:
            total += part
        g.barrier.wait()              # everyone has read the slots before any is reused
        self._view(recvbuf, count, datatype)[...] = total

    def bcast(self, buff, count, datatype, root, stream):
        g = self.group
        if self.rank == root:
            g.slots[root] = self._view(buff, count, datatype).copy()
        g.barrier.wait()
        value = g.slots[root]
        g.barrier.wait()
        self._view(buff, count, datatype)[...] = value


def _unique_id():
    return tuple(int(b) - 128 for b in os.urandom(128))


_nccl = types.ModuleType("cupy.cuda.nccl")
_nccl.available = True
_nccl.NCCL_SUM, _nccl.NCCL_MAX = 0, 2
_nccl.NCCL_INT64, _nccl.NCCL_FLOAT32, _nccl.NCCL_FLOAT64 = 4, 7, 8
_NCCL_DTYPES = {4: np.int64, 7: np.float32, 8: np.float64}
_nccl.get_unique_id = _unique_id
_nccl.NcclCommunicator = _NcclCommunicator
cuda.nccl = _nccl


def _make_random():
    """cupy.random: the legacy functions, drawn by a private NumPy RandomState."""
    mod = types.ModuleType("cupy.random")
    state = np.random.RandomState()
    real = getattr(_real, "random", None)
    for name in dir(np.random.RandomState):
        if name.startswith("_") or not _has(real, name):
            continue
        mod.__dict__[name] = (lambda n: lambda *a, **k: _wrap(
            getattr(state, n)(*_unwrap(a, f"cupy.random.{n}"),
                              **_unwrap_kwargs(k, f"cupy.random.{n}"))))(name)
    mod.seed = lambda seed=None: state.seed(None if seed is None else int(seed) % 2 ** 32)
    if _has(real, "rand"):
        mod.rand = lambda *shape, dtype=float: _wrap(state.random_sample(shape).astype(dtype))
    if _has(real, "randn"):
        mod.randn = lambda *shape, dtype=float: _wrap(state.standard_normal(shape).astype(dtype))

    class _Generator:
        """cupy.random.Generator's common draws (what NumPy's Generator also has)."""

        def __init__(self, seed=None):
            self._g = np.random.default_rng(seed)

        def __getattr__(self, name):
            attr = getattr(self._g, name)
            return lambda *a, **k: _wrap(attr(*_unwrap(a, f"Generator.{name}"),
                                              **_unwrap_kwargs(k, f"Generator.{name}")))

    if _has(real, "default_rng"):
        mod.default_rng = _Generator
    return mod


def _make_submodule(np_mod, name):
    mod = types.ModuleType(f"cupy.{name}")
    real = getattr(_real, name, None)
    for attr in dir(np_mod):
        if attr.startswith("_") or not _has(real, attr):
            continue
        obj = getattr(np_mod, attr)
        mod.__dict__[attr] = _function(obj, f"{name}.{attr}") if callable(obj) and not \
            isinstance(obj, type) else obj
    return mod


# ------------------------------------------------------------------------------ the module

def _build():
    mod = types.ModuleType("cupy", __doc__)
    mod.__fake__ = True
    exposed = []
    for name in dir(np):
        if name.startswith("_") or not _has(_real, name):
            continue
        obj = getattr(np, name)
        if isinstance(obj, types.ModuleType):
            continue
        real_obj = getattr(_real, name, None) if _real is not None else None
        if isinstance(obj, np.ufunc):
            value = ufunc(obj)
        elif real_obj is not None and real_obj is obj:
            value = obj                    # shared with NumPy: dtypes, finfo, issubdtype...
        elif isinstance(obj, type) or not callable(obj):
            value = obj                    # scalar types, constants (inf, pi, newaxis)
        else:
            value = _function(obj, name)
        mod.__dict__[name] = value
        exposed.append(name)
    mod.asarray = _asarray
    mod.array = _array
    if _has(_real, "asanyarray"):
        mod.asanyarray = _asarray
    mod.ndarray = ndarray
    mod.ufunc = ufunc
    mod.asnumpy = asnumpy
    mod.get_array_module = get_array_module
    mod.is_available = is_available
    mod.cuda = cuda
    mod.random = _make_random()
    mod.linalg = _make_submodule(np.linalg, "linalg")
    mod.fft = _make_submodule(np.fft, "fft")
    mod.get_default_memory_pool = lambda: _POOL
    mod.get_default_pinned_memory_pool = lambda: _PINNED_POOL
    mod.__version__ = "0.0-fake"
    mod.EXPOSED = tuple(sorted(exposed))
    return mod


cupy = _build()
REAL = _real  # the installed CuPy (None if absent)
STRICT_NAMESPACE = _real is not None


# ------------------------------------------------------------------------------ pytest plugin

def pytest_configure(config):
    """``python -m pytest -p fake_cupy``: ``import cupy`` gives this fake instead.

    A rehearsal on a machine without a GPU: ``backend.use("cupy")`` then imports the fake
    (it reports a usable GPU), so the suite's CuPy variants (the ``xp`` fixture's "cupy"
    parameter, the lessons' ``# lesson: gpu`` blocks, the parity tests) run on it. Needs
    tests/ on the import path (``PYTHONPATH=tests``). Nothing changes unless the plugin is
    named with -p. The real module stays available as ``fake_cupy.REAL``.
    """
    import sys
    sys.modules["cupy"] = cupy
