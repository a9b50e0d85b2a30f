"""AdamW, clipping, the schedule and the guards, checked against straightforward references."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinytok.training.checkpoint import load_checkpoint, save_checkpoint
from tinytok.errors import ConfigError, DTypeError, ShapeError
from tinytok.training.optim import (adamw_init, adamw_step, clip_grad_norm, default_decay_filter,
                                    global_norm, has_nonfinite, lr_schedule)

quick = settings(max_examples=50, deadline=None)


def reference_adamw(p, grads, lrs, beta1, beta2, eps, weight_decay, decay):
    """AdamW written out plainly in float64, one step per (gradient, lr)."""
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        if decay:
            p = p - lr * weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g ** 2
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p, m, v


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {"blk.w": rng.standard_normal((3, 4)).astype(dtype),
            "blk.b": rng.standard_normal(4).astype(dtype),
            "conv.w": rng.standard_normal((2, 3, 2, 2)).astype(dtype),
            "ln.gain": rng.standard_normal(5).astype(dtype)}


def random_grads(params, n_steps, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(p.shape).astype(p.dtype) for k, p in params.items()}
            for _ in range(n_steps)]


def run_steps(params, state, grads, lrs, **hyper):
    for g, lr in zip(grads, lrs):
        adamw_step(params, {k: v.copy() for k, v in g.items()}, state, lr, **hyper)


# ---------------------------------------------------------------------------------------
# AdamW

@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_reference(dtype, tol, weight_decay):
    params = make_params(dtype)
    start = {k: v.copy() for k, v in params.items()}
    grads = random_grads(params, 6)
    lrs = [1e-2, 3e-2, 3e-2, 2e-2, 1e-2, 5e-3]
    hyper = dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)
    state = adamw_init(params)
    run_steps(params, state, grads, lrs, **hyper)
    assert state["t"] == 6
    for k, p in params.items():
        expected_p, expected_m, expected_v = reference_adamw(
            start[k], [g[k].astype(np.float64) for g in grads], lrs, 0.8, 0.99, 1e-6,
            weight_decay, decay=start[k].ndim >= 2)
        assert p.dtype == state["m"][k].dtype == state["v"][k].dtype == dtype
        np.testing.assert_allclose(p, expected_p, rtol=tol, atol=tol)
        np.testing.assert_allclose(state["m"][k], expected_m, rtol=tol, atol=tol)
        np.testing.assert_allclose(state["v"][k], expected_v, rtol=tol, atol=tol)


def test_adamw_updates_in_place():
    params = make_params(np.float32)
    state = adamw_init(params)
    before = {k: id(v) for k, v in params.items()}
    moments = {k: id(v) for k, v in state["m"].items()}
    adamw_step(params, random_grads(params, 1)[0], state, 1e-3)
    assert {k: id(v) for k, v in params.items()} == before
    assert {k: id(v) for k, v in state["m"].items()} == moments


def test_adamw_does_not_touch_grads():
    params = make_params(np.float64)
    grads = random_grads(params, 1)[0]
    copy = {k: v.copy() for k, v in grads.items()}
    adamw_step(params, grads, adamw_init(params), 1e-3, weight_decay=0.1)
    for k in grads:
        np.testing.assert_array_equal(grads[k], copy[k])


def zero_grads(params):
    return {k: np.zeros_like(v) for k, v in params.items()}


def test_default_filter_decays_only_matrices_and_kernels():
    # Zero gradients make Adam's own update exactly 0, leaving only the decay to see.
    params = make_params(np.float64)
    start = {k: v.copy() for k, v in params.items()}
    adamw_step(params, zero_grads(params), adamw_init(params), lr=0.1, weight_decay=0.5)
    for k in ("blk.w", "conv.w"):
        np.testing.assert_allclose(params[k], start[k] * (1 - 0.1 * 0.5), rtol=1e-15)
    for k in ("blk.b", "ln.gain"):
        np.testing.assert_array_equal(params[k], start[k])
    assert default_decay_filter("x", np.ones((2, 2))) and not default_decay_filter("x", np.ones(2))


def test_custom_decay_filter():
    params = make_params(np.float64)
    start = {k: v.copy() for k, v in params.items()}
    adamw_step(params, zero_grads(params), adamw_init(params), lr=0.1, weight_decay=0.5,
               decay_filter=lambda name, p: name.endswith(".b"))
    np.testing.assert_allclose(params["blk.b"], start["blk.b"] * 0.95, rtol=1e-15)
    for k in ("blk.w", "conv.w", "ln.gain"):
        np.testing.assert_array_equal(params[k], start[k])


def test_adamw_state_resumes_exactly_through_a_checkpoint(tmp_path):
    grads = random_grads(make_params(np.float32), 5)
    lrs = [lr_schedule(s, 1e-2, 2, 5) for s in range(1, 6)]
    hyper = dict(weight_decay=0.1)
    straight = make_params(np.float32)
    state = adamw_init(straight)
    run_steps(straight, state, grads, lrs, **hyper)

    resumed = make_params(np.float32)
    state = adamw_init(resumed)
    run_steps(resumed, state, grads[:3], lrs[:3], **hyper)
    save_checkpoint(tmp_path / "ck.npz", kind="prior", params=resumed, config={}, step=3,
                    optimizer_state=state)
    ck = load_checkpoint(tmp_path / "ck.npz", kind="prior")
    resumed, state = ck.params, ck.optimizer_state
    assert state["t"] == 3 and isinstance(state["t"], int)
    run_steps(resumed, state, grads[3:], lrs[3:], **hyper)
    for k in straight:
        assert resumed[k].dtype == np.float32
        np.testing.assert_array_equal(resumed[k], straight[k])   # bit for bit


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(lr=-1.0), ConfigError, "learning rate"),
    (dict(lr=float("nan")), ConfigError, "learning rate"),
    (dict(betas=(1.0, 0.999)), ConfigError, "betas"),
    (dict(betas=0.9), ConfigError, "betas"),
    (dict(eps=0.0), ConfigError, "eps"),
    (dict(weight_decay=-0.1), ConfigError, "weight_decay"),
])
def test_adamw_rejects_bad_hyperparameters(kwargs, error, message):
    params = make_params(np.float64)
    with pytest.raises(error, match=message):
        adamw_step(params, zero_grads(params), adamw_init(params), **{"lr": 1e-3, **kwargs})


def test_adamw_rejects_mismatched_grads():
    params = make_params(np.float64)
    state = adamw_init(params)
    grads = zero_grads(params)
    del grads["blk.b"]
    with pytest.raises(ConfigError, match="grads has no entry for parameters 'blk.b'"):
        adamw_step(params, grads, state, 1e-3)
    grads["blk.b"] = np.zeros(1)        # would broadcast silently in an in-place update
    with pytest.raises(ShapeError, match="'blk.b' has shape \\(1,\\)"):
        adamw_step(params, grads, state, 1e-3)
    params["new.w"] = np.ones((2, 2))
    grads["blk.b"] = np.zeros(4)
    grads["new.w"] = np.zeros((2, 2))
    with pytest.raises(ConfigError, match="optimizer m has no entry .*'new.w'"):
        adamw_step(params, grads, state, 1e-3)


shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)


@quick
@given(shape_list=st.lists(shapes, min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1),
       lr=st.floats(1e-4, 1e-1), beta1=st.floats(0.0, 0.99), beta2=st.floats(0.9, 0.9999),
       weight_decay=st.floats(0.0, 0.5), n_steps=st.integers(1, 4))
def test_adamw_matches_reference_on_random_shapes(shape_list, seed, lr, beta1, beta2,
                                                  weight_decay, n_steps):
    rng = np.random.default_rng(seed)
    params = {f"p{i}": rng.standard_normal(s) for i, s in enumerate(shape_list)}
    start = {k: np.array(v) for k, v in params.items()}
    grads = random_grads(params, n_steps, seed=seed)
    lrs = [lr] * n_steps
    hyper = dict(betas=(beta1, beta2), eps=1e-8, weight_decay=weight_decay)
    run_steps(params, adamw_init(params), grads, lrs, **hyper)
    for k, p in params.items():
        expected, _, _ = reference_adamw(start[k], [g[k] for g in grads], lrs, beta1, beta2,
                                         1e-8, weight_decay, decay=start[k].ndim >= 2)
        assert p.shape == start[k].shape
        np.testing.assert_allclose(p, expected, rtol=1e-10, atol=1e-12)


def test_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    params = make_params(np.float64)
    grads = random_grads(params, 4)
    lrs = [1e-2, 2e-2, 2e-2, 1e-2]
    tensors = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = torch.optim.AdamW(list(tensors.values()), lr=lrs[0], betas=(0.8, 0.99), eps=1e-6,
                            weight_decay=0.1)
    run_steps(params, adamw_init(params), grads, lrs, betas=(0.8, 0.99), eps=1e-6,
              weight_decay=0.1, decay_filter=lambda name, p: True)    # torch decays all
    for g, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        for k, t in tensors.items():
            t.grad = torch.tensor(g[k])
        opt.step()
    for k, t in tensors.items():
        np.testing.assert_allclose(params[k], t.detach().numpy(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------
# Gradient norm, clipping, guards

def test_global_norm_and_clipping():
    grads = {"a": np.array([3.0, 0.0], dtype=np.float32), "b": np.array([[4.0]])}
    assert global_norm(grads) == 5.0 and isinstance(global_norm(grads), float)
    assert clip_grad_norm(grads, 10.0) == 5.0                   # below the limit: untouched
    np.testing.assert_array_equal(grads["a"], [3.0, 0.0])
    norm = clip_grad_norm(grads, 1.0)
    assert norm == 5.0 and isinstance(norm, float)              # the norm before clipping
    assert grads["a"].dtype == np.float32
    np.testing.assert_allclose(grads["a"], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(grads["b"], [[0.8]], rtol=1e-6)
    assert global_norm(grads) == pytest.approx(1.0, rel=1e-6)
    assert global_norm({}) == 0.0


def test_clip_leaves_nonfinite_grads_alone():
    grads = {"a": np.array([1.0, np.nan]), "b": np.array([10.0])}
    assert math.isnan(clip_grad_norm(grads, 1.0))
    np.testing.assert_array_equal(grads["b"], [10.0])
    assert clip_grad_norm({"a": np.array([np.inf])}, 1.0) == math.inf


def test_scalars_are_refused_where_updates_are_in_place():
    # `p -= update` on a NumPy scalar makes a new scalar: the dict would never change.
    with pytest.raises(DTypeError, match="params\\['s'\\] is a float64"):
        adamw_step({"s": np.float64(1.0)}, {"s": np.ones(())}, {"m": {"s": 0}, "v": {"s": 0},
                                                                "t": 0}, 1e-3)
    with pytest.raises(DTypeError, match="grads\\['s'\\]"):
        clip_grad_norm({"s": np.float32(3.0)}, 1.0)


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan"), "1"])
def test_clip_rejects_bad_max_norm(max_norm):
    with pytest.raises(ConfigError, match="max_norm"):
        clip_grad_norm({"a": np.ones(2)}, max_norm)


@quick
@given(shape_list=st.lists(shapes, min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1),
       max_norm=st.floats(0.01, 10.0))
def test_clip_on_random_shapes(shape_list, seed, max_norm):
    rng = np.random.default_rng(seed)
    grads = {f"g{i}": np.asarray(rng.standard_normal(s) * 3) for i, s in enumerate(shape_list)}
    before = {k: v.copy() for k, v in grads.items()}
    expected = math.sqrt(sum(float(np.sum(g ** 2)) for g in before.values()))
    assert clip_grad_norm(grads, max_norm) == pytest.approx(expected, rel=1e-12)
    assert global_norm(grads) <= max_norm * (1 + 1e-9)
    scale = min(1.0, max_norm / (expected + 1e-6))
    for k in grads:
        np.testing.assert_allclose(grads[k], before[k] * scale, rtol=1e-12)


def test_has_nonfinite():
    grads = {"a": np.ones(3), "b": np.array([1.0, np.inf]), "c": np.array([np.nan])}
    assert has_nonfinite(grads) == "b"
    assert has_nonfinite({"a": np.ones(3), "c": np.array([[np.nan]], np.float32)}) == "c"
    assert has_nonfinite({"a": np.ones(3)}) is None
    assert has_nonfinite({}) is None


# ---------------------------------------------------------------------------------------
# Learning-rate schedule

def test_schedule_key_points():
    base, low = 1e-3, 1e-4
    assert lr_schedule(0, base, 10, 110, low) == 0.0
    assert lr_schedule(5, base, 10, 110, low) == pytest.approx(base / 2)
    assert lr_schedule(10, base, 10, 110, low) == pytest.approx(base)       # warm-up end
    assert lr_schedule(60, base, 10, 110, low) == pytest.approx((base + low) / 2)
    assert lr_schedule(110, base, 10, 110, low) == pytest.approx(low)       # the end
    assert lr_schedule(10_000, base, 10, 110, low) == low                   # clamped
    assert lr_schedule(0, base, 0, 100) == base                             # no warm-up
    assert isinstance(lr_schedule(np.int64(3), base, 10, 110), float)


@quick
@given(warmup=st.integers(0, 50), decay=st.integers(0, 100), base=st.floats(1e-6, 1.0),
       ratio=st.floats(0.0, 1.0))
def test_schedule_shape(warmup, decay, base, ratio):
    total = max(1, warmup + decay)
    low = base * ratio
    lrs = [lr_schedule(s, base, warmup, total, low) for s in range(total + 5)]
    assert all(0.0 <= lr <= base * (1 + 1e-12) for lr in lrs)
    rising, falling = lrs[:warmup + 1], lrs[warmup:]
    assert all(a < b for a, b in zip(rising, rising[1:-1]))                 # warm-up climbs
    assert all(a >= b - 1e-15 for a, b in zip(falling, falling[1:]))        # then decays
    assert lrs[total:] == [low] * 5


@pytest.mark.parametrize("args", [
    (-1, 1e-3, 10, 100), (1.5, 1e-3, 10, 100), (True, 1e-3, 10, 100),
    (0, 1e-3, -1, 100), (0, 1e-3, 200, 100), (0, 1e-3, 0, 0),
    (0, -1e-3, 10, 100), (0, 1e-3, 10, 100, 1e-2), (0, 1e-3, 10, 100, -1e-5),
])
def test_schedule_rejects_bad_arguments(args):
    with pytest.raises(ConfigError):
        lr_schedule(*args)


# ---------------------------------------------------------------------------------------
# CuPy: same numbers as NumPy

def test_cupy_matches_numpy(cupy_module):
    cp = cupy_module
    host = make_params(np.float64)
    device = {k: cp.asarray(v) for k, v in host.items()}
    grads = random_grads(host, 3)
    host_state, device_state = adamw_init(host), adamw_init(device)
    for g in grads:
        adamw_step(host, g, host_state, 1e-2, weight_decay=0.1)
        adamw_step(device, {k: cp.asarray(v) for k, v in g.items()}, device_state, 1e-2,
                   weight_decay=0.1)
    for k in host:
        np.testing.assert_allclose(cp.asnumpy(device[k]), host[k], rtol=1e-12)
    device_grads = {k: cp.asarray(v) for k, v in grads[0].items()}
    assert global_norm(device_grads) == pytest.approx(global_norm(grads[0]), rel=1e-12)
    assert has_nonfinite(device_grads) is None
