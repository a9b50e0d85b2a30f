"""The op contract, checked for every pair in tinytok.ops.PAIRS.

forward(*args) -> (out, cache); backward(dout, cache) -> one gradient per float argument
(mse: dpred only), each shaped and typed like its argument. Neither call writes into what it
was given, and a cache can be used more than once.
"""
import numpy as np
import pytest

from conftest import LOSSES
from tinytok.backend import get_array_module, to_numpy
from tinytok.ops import PAIRS

every_pair = pytest.mark.parametrize("name", list(PAIRS))


def forward_and_dout(name, case, seed=1):
    """(out, cache, dout) for one forward call; dout random, shaped and typed like out."""
    forward, _ = PAIRS[name]
    out, cache = forward(*case.args, **case.kwargs)
    xp = get_array_module(*case.args)
    dout = xp.asarray(np.random.default_rng(seed).standard_normal(out.shape), dtype=out.dtype)
    return out, cache, dout


def run_pair(name, case, dout=None, seed=1):
    """(out, dout, grads) for one forward and backward call; random dout of out's dtype."""
    out, cache, random_dout = forward_and_dout(name, case, seed)
    dout = random_dout if dout is None else dout
    grads = PAIRS[name][1](dout, cache)
    return out, dout, grads if isinstance(grads, tuple) else (grads,)


def test_every_pair_of_the_design_is_exported():
    assert set(PAIRS) == {"linear", "conv2d", "conv_transpose2d", "relu", "leaky_relu",
                          "gelu", "layer_norm", "l2_normalize", "embedding", "causal_self_attention",
                          "self_attention", "cross_entropy", "mse", "amplitude_loss", "hinge_d_loss",
                          "hinge_g_loss",
                          "area_resize", "bilinear_resize"}


def test_the_losses_are_exactly_the_pairs_with_a_0d_output(make_case):
    """conftest.LOSSES, which the tests give a number as dloss, is not a list to forget."""
    zero_d = {name for name, (forward, _) in PAIRS.items()
              if np.shape(forward(*make_case(name).args, **make_case(name).kwargs)[0]) == ()}
    assert zero_d == set(LOSSES)


@every_pair
def test_forward_and_backward_leave_their_inputs_unchanged(xp, make_case, name):
    case = make_case(name, xp)
    before = [to_numpy(a).copy() for a in case.args]
    run_pair(name, case)
    for a, b in zip(case.args, before):
        assert np.array_equal(to_numpy(a), b)


@every_pair
def test_backward_leaves_dout_unchanged(xp, make_case, name):
    """A backward must not write into its upstream gradient (relu's in-place mask trap)."""
    case = make_case(name, xp)
    _, cache, dout = forward_and_dout(name, case)
    backward = PAIRS[name][1]
    kept = to_numpy(dout).copy()
    backward(dout, cache)
    assert np.array_equal(to_numpy(dout), kept)


@every_pair
def test_backward_can_run_twice_on_one_cache(xp, make_case, name):
    """The cache is not consumed or modified: a pair can be replayed (guidance, tied weights)."""
    case = make_case(name, xp)
    _, cache, dout = forward_and_dout(name, case)
    backward = PAIRS[name][1]
    first = [to_numpy(g).copy() for g in _as_tuple(backward(dout, cache))]
    second = [to_numpy(g) for g in _as_tuple(backward(dout, cache))]
    for a, b in zip(first, second):
        assert np.array_equal(a, b)


@every_pair
def test_gradients_match_their_arguments_in_number_and_shape(xp, make_case, name):
    case = make_case(name, xp)
    _, _, grads = run_pair(name, case)
    assert len(grads) == len(case.wrt)
    for i, g in zip(case.wrt, grads):
        assert g.shape == case.args[i].shape


@every_pair
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_and_gradients_keep_the_input_dtype(xp, make_case, name, dtype):
    """float32 stays float32 (no silent promotion to float64); float64 stays float64."""
    case = make_case(name, xp, dtype=dtype)
    out, _, grads = run_pair(name, case)
    assert out.dtype == dtype
    for g in grads:
        assert g.dtype == dtype


@every_pair
def test_float32_results_match_float64_to_float32_rounding(xp, make_case, name):
    out32, _, grads32 = run_pair(name, make_case(name, xp, dtype=np.float32))
    out64, _, grads64 = run_pair(name, make_case(name, xp, dtype=np.float64))
    for a, b in zip((out32,) + grads32, (out64,) + grads64):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dloss", [1.0, 2, np.float32(1.0), np.float64(1.0),
                                   np.asarray(1.0, np.float64)],
                         ids=["float", "int", "np.float32", "np.float64", "0-d float64"])
def test_loss_backward_keeps_float32_whatever_scalar_dloss_is(make_case, name, dloss):
    """A float64 dloss (a NumPy scalar, say) must not promote float32 gradients."""
    case = make_case(name, dtype=np.float32)
    forward, backward = PAIRS[name]
    _, cache = forward(*case.args, **case.kwargs)
    assert all(g.dtype == np.float32 for g in _as_tuple(backward(dloss, cache)))


@pytest.mark.parametrize("name", LOSSES)
def test_loss_is_a_scalar(make_case, name):
    loss, _ = PAIRS[name][0](*make_case(name).args)
    assert np.shape(loss) == ()


def _as_tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)
