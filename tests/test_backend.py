"""tinytok.backend: choosing NumPy or CuPy, clear errors where CuPy cannot run, device moves.

CuPy is simulated with fake modules put into sys.modules, so every branch runs on any machine.
"""
import sys
import types

import numpy as np
import pytest

from tinytok import backend
from tinytok.errors import BackendError


@pytest.fixture(autouse=True)
def fresh_backend(monkeypatch):
    """Each test starts with no backend chosen and no TINYTOK_BACKEND; both restored after."""
    monkeypatch.setattr(backend, "_active", None)
    monkeypatch.delenv("TINYTOK_BACKEND", raising=False)


class FakeCupyArray:
    """Looks like a CuPy array to is_cupy_array (its type lives in a 'cupy' module)."""
    __module__ = "cupy._core.core"

    def __init__(self, data):
        self.data = np.array(data)

    def get(self):
        return self.data.copy()


class CUDARuntimeError(RuntimeError):
    """Stands in for cupy_backends.cuda.api.runtime.CUDARuntimeError."""


def fake_cupy(available=True, zeros_error=None):
    """A module named cupy: is_available() as given; zeros raises zeros_error if set."""
    cupy = types.ModuleType("cupy")
    cupy.is_available = lambda: available

    def zeros(shape, dtype=None):
        if zeros_error is not None:
            raise zeros_error
        return FakeCupyArray(np.zeros(shape, dtype))

    cupy.zeros = zeros
    cupy.asarray = lambda x, dtype=None: FakeCupyArray(np.asarray(x, dtype))
    cupy.random = types.SimpleNamespace(seeded=[], seed=lambda s: cupy.random.seeded.append(s))
    return cupy


# --- choosing a backend -------------------------------------------------------------------

def test_default_backend_is_numpy():
    assert backend.xp() is np
    assert backend.name() == "numpy"


def test_use_returns_and_activates_the_module():
    assert backend.use("numpy") is np
    assert backend.use("NumPy") is np  # case does not matter
    assert backend.xp() is np


@pytest.mark.parametrize("bad", ["torch", "", "gpu", None, 1])
def test_unknown_backend_names_the_choices(bad):
    with pytest.raises(BackendError, match=r"unknown backend .*; choose one of numpy, cupy"):
        backend.use(bad)


def test_backend_errors_are_runtime_errors():
    with pytest.raises(RuntimeError):
        backend.use("torch")


def test_cupy_not_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail
    with pytest.raises(BackendError, match=r"CuPy is not installed.*pip install 'tinytok\[cuda\]'"):
        backend.use("cupy")
    assert backend._active is None  # nothing half-switched


def test_cupy_installed_without_a_gpu_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(available=False))
    with pytest.raises(BackendError, match=r"CuPy is installed, but no usable GPU.*"
                                           r"is_available\(\) is False.*nvidia-smi"):
        backend.use("cupy")


def test_cupy_failing_at_first_allocation_reports_the_cuda_error(monkeypatch):
    error = CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(zeros_error=error))
    with pytest.raises(BackendError, match=r"cannot use a GPU here \(CUDARuntimeError: "
                                           r"cudaErrorInsufficientDriver.*nvidia-smi"):
        backend.use("cupy")


def test_cupy_is_available_itself_raising_is_reported(monkeypatch):
    cupy = fake_cupy()

    def broken():
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    cupy.is_available = broken
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    with pytest.raises(BackendError, match="CUDARuntimeError: cudaErrorNoDevice"):
        backend.use("cupy")


def test_working_cupy_becomes_the_active_backend(monkeypatch):
    cupy = fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    assert backend.use("cupy") is cupy
    assert backend.xp() is cupy and backend.name() == "cupy"
    backend.seed(7)
    assert cupy.random.seeded == [7]


# --- TINYTOK_BACKEND ----------------------------------------------------------------------

@pytest.mark.parametrize("value", ["numpy", "NUMPY", ""])
def test_env_var_numpy_or_empty_gives_numpy(monkeypatch, value):
    monkeypatch.setenv("TINYTOK_BACKEND", value)
    assert backend.xp() is np


def test_env_var_cupy_is_respected(monkeypatch):
    cupy = fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setenv("TINYTOK_BACKEND", "cupy")
    assert backend.xp() is cupy


def test_env_var_cupy_without_cupy_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setenv("TINYTOK_BACKEND", "cupy")
    with pytest.raises(BackendError, match=r"pip install 'tinytok\[cuda\]'"):
        backend.xp()


def test_env_var_with_an_unknown_name_is_an_error(monkeypatch):
    monkeypatch.setenv("TINYTOK_BACKEND", "jax")
    with pytest.raises(BackendError, match="unknown backend 'jax'"):
        backend.xp()


def test_use_overrides_the_env_var(monkeypatch):
    monkeypatch.setenv("TINYTOK_BACKEND", "cupy")
    backend.use("numpy")
    assert backend.xp() is np


# --- arrays and device moves --------------------------------------------------------------

def test_get_array_module_of_numpy_and_plain_values_is_numpy():
    assert backend.get_array_module(np.zeros(2)) is np
    assert backend.get_array_module(1.0, [1, 2], None) is np
    assert backend.get_array_module() is np


def test_get_array_module_finds_a_cupy_array_among_others(monkeypatch):
    cupy = fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    assert backend.is_cupy_array(FakeCupyArray([1.0]))
    assert not backend.is_cupy_array(np.zeros(1))
    assert backend.get_array_module(np.zeros(1), FakeCupyArray([1.0])) is cupy


def test_to_numpy_copies_device_arrays_and_passes_host_arrays_through():
    host = np.arange(3.0)
    assert backend.to_numpy(host) is host
    device = FakeCupyArray([1.0, 2.0])
    out = backend.to_numpy(device)
    assert isinstance(out, np.ndarray) and out.tolist() == [1.0, 2.0]
    assert backend.to_numpy([1, 2]).tolist() == [1, 2]


def test_to_device_on_numpy_does_not_copy_and_can_cast():
    x = np.arange(4.0)
    assert backend.to_device(x) is x
    assert backend.to_device(x, dtype=np.float32).dtype == np.float32


def test_params_to_numpy_and_back_keep_keys_order_and_values():
    params = {"enc.conv1.w": np.ones((2, 3)), "enc.conv1.b": np.zeros(2), "a": np.arange(3.0)}
    host = backend.params_to_numpy(params)
    back = backend.params_to_device(host)
    assert list(host) == list(back) == list(params)
    for k in params:
        assert isinstance(back[k], np.ndarray) and np.array_equal(back[k], params[k])


def test_params_to_device_moves_every_array_to_the_active_backend(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    backend.use("cupy")
    moved = backend.params_to_device({"w": np.ones(2), "b": np.zeros(1)})
    assert list(moved) == ["w", "b"]
    assert all(backend.is_cupy_array(v) for v in moved.values())
    back = backend.params_to_numpy(moved)
    assert all(isinstance(v, np.ndarray) for v in back.values())
    assert back["w"].tolist() == [1.0, 1.0]


def test_rng_is_a_reproducible_host_generator():
    assert np.array_equal(backend.rng(3).standard_normal(4), backend.rng(3).standard_normal(4))
    assert isinstance(backend.rng(0), np.random.Generator)
