"""Shared fixtures: the array backends to run on, and one small example call per op pair."""
import os

# One BLAS thread per test process, set before NumPy loads OpenBLAS: the tests multiply
# small matrices, where a second thread costs more in hand-offs than it saves, and on a
# busy machine spinning BLAS threads slow everything down (10x was measured here).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tinytok import backend
from tinytok.errors import BackendError

from reference import away_from_zero

# The pairs whose forward returns a 0-d loss and whose backward takes dloss (a number) first.
LOSSES = ("cross_entropy", "mse", "amplitude_loss", "hinge_d_loss", "hinge_g_loss")


def _backend_or_skip(name):
    """The array module of backend `name`, or skip the test with the BackendError's reason."""
    saved = backend._active
    try:
        return backend.use(name)
    except BackendError as e:
        pytest.skip(str(e))
    finally:
        backend._active = saved


@pytest.fixture(scope="session")
def cupy_module():
    """CuPy where it can really run (a GPU); elsewhere the test is skipped with the reason."""
    return _backend_or_skip("cupy")


@pytest.fixture(scope="session", params=["numpy", "cupy"])
def xp(request):
    """The array module to run a test on: NumPy always, CuPy where it can really run.

    Inputs are drawn on the host with a NumPy generator and moved with xp.asarray; results
    come back with tinytok.backend.to_numpy. The active backend is restored afterwards.
    """
    return _backend_or_skip(request.param)


@dataclass
class Case:
    """One call of an op pair: forward(*args, **kwargs); wrt lists the args with gradients."""
    args: list
    kwargs: dict = field(default_factory=dict)
    wrt: list = field(default_factory=list)


def build_case(name, xp=np, dtype=np.float64, seed=0):
    """A small, generic call of the named pair, floats of `dtype`, arrays on `xp`."""
    rng = np.random.default_rng(seed)

    def f(*shape, scale=1.0):
        return rng.standard_normal(shape) * scale

    kwargs = {}
    if name == "linear":
        args = [f(2, 3, 4), f(4, 5), f(5)]
    elif name == "conv2d":
        args = [f(2, 3, 7, 6), f(4, 3, 3, 2), f(4)]
        kwargs = {"stride": 2, "padding": 1}
    elif name == "conv_transpose2d":
        args = [f(2, 3, 4, 5), f(3, 2, 3, 4), f(2)]
        kwargs = {"stride": 2, "padding": 1}
    elif name == "relu":
        args = [away_from_zero(f(3, 4))]
    elif name == "leaky_relu":
        args = [away_from_zero(f(3, 4))]
    elif name == "gelu":
        args = [f(3, 4, scale=2.0)]
    elif name == "layer_norm":
        args = [f(2, 3, 6), 1 + f(6, scale=0.1), f(6, scale=0.1)]
    elif name == "l2_normalize":
        args = [f(2, 5, 3)]
        kwargs = {"axis": 1}
    elif name == "embedding":
        args = [rng.integers(0, 7, size=(2, 5)), f(7, 4)]
    elif name == "causal_self_attention":
        args = [f(2, 5, 6), f(6, 18, scale=0.5), f(18, scale=0.1), f(6, 6, scale=0.5),
                f(6, scale=0.1)]
        kwargs = {"n_head": 2}
    elif name == "self_attention":  # a given mask, neither causal nor full; row 2 skips itself
        args = [f(2, 5, 6), f(6, 18, scale=0.5), f(18, scale=0.1), f(6, 6, scale=0.5),
                f(6, scale=0.1)]
        kwargs = {"n_head": 2, "mask": np.array([[1, 1, 0, 0, 0], [0, 1, 1, 0, 1],
                                                 [1, 0, 0, 1, 0], [1, 1, 1, 1, 1],
                                                 [0, 0, 0, 0, 1]], dtype=bool)}
    elif name == "cross_entropy":
        targets = rng.integers(0, 7, size=(2, 5))
        targets[0, 1] = targets[1, 3] = -1  # two ignored positions
        args = [f(2, 5, 7, scale=2.0), targets]
    elif name == "mse":
        args = [f(3, 4), f(3, 4)]
    elif name == "amplitude_loss":   # pictures' channels (N, C, H, W), odd and even sides
        args = [f(2, 3, 5, 4), f(2, 3, 5, 4)]
    elif name == "hinge_d_loss":  # patch scores, at least 0.1 from their margins +1 and -1
        args = [1 + away_from_zero(f(2, 1, 3, 3)), -1 + away_from_zero(f(3, 1, 2, 2))]
    elif name == "hinge_g_loss":
        args = [f(2, 1, 3, 3)]
    elif name == "area_resize":  # H down by 7/3 (cells share an input), W up by 8/5
        args = [f(2, 3, 7, 5)]
        kwargs = {"size": (3, 8)}
    elif name == "bilinear_resize":  # H up by 7/4, W down by 3/5
        args = [f(2, 3, 4, 5)]
        kwargs = {"size": (7, 3)}
    else:
        raise KeyError(name)

    wrt = [i for i, a in enumerate(args) if a.dtype.kind == "f"]
    if name in ("mse", "amplitude_loss"):
        wrt = [0]  # the target is data: the backward returns dpred only
    args = [xp.asarray(a, dtype=dtype) if a.dtype.kind == "f" else xp.asarray(a) for a in args]
    return Case(args, kwargs, wrt)


@pytest.fixture(scope="session")
def make_case():
    """build_case(name, xp=np, dtype=np.float64, seed=0) -> Case."""
    return build_case


@pytest.fixture(autouse=True)
def one_thread_unless_a_test_asks():
    """Each test starts with tinytok.parallel on one thread, and whatever a test sets (the
    command line calls use_cores()) ends with it: with several threads a training step runs
    on parts of the batch, whose summed gradients differ in the last bits, and tests that
    compare two runs bit for bit must not depend on which test ran before them."""
    from tinytok import parallel
    saved = parallel._threads
    parallel._threads = 1
    yield
    parallel._threads = saved
