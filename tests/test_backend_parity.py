"""NumPy versus CuPy: the same seeds and inputs give the same numbers, to float32 rounding.

Runs where ``tinytok.backend.use("cupy")`` works (a GPU); elsewhere every test is skipped
with the BackendError's reason. To rehearse these tests on a CPU, stand the strict fake CuPy
in for the real one (results are then bit-identical, which the tolerances allow):

    PYTHONPATH=tests python -m pytest -p fake_cupy tests/test_backend_parity.py

Tolerances. float64: 1e-10 relative to each array's largest magnitude. float32: 1e-4
(cuBLAS and OpenBLAS sum in different orders, and a few chained ops compound that; a real
bug is off by far more). Training: the loss curves of a few steps agree to 1e-3 relative.
"""
import io
import math

import numpy as np
import pytest

from conftest import LOSSES, build_case
from tinytok import backend
from tinytok.errors import BackendError
from tinytok.ops import PAIRS
from device_helpers import active, host

TOL = {"float32": 1e-4, "float64": 1e-10}


@pytest.fixture(scope="module")
def cp():
    """The CuPy module, or a skip that says why CuPy cannot run here."""
    saved = backend._active
    try:
        module = backend.use("cupy")
    except BackendError as e:
        pytest.skip(f"NumPy-vs-CuPy parity needs a usable GPU: {e}")
    finally:
        backend._active = saved
    return module


def assert_close(want, got, tol, what="result"):
    """Same structure, shapes and dtypes; values within tol of the largest magnitude."""
    a, b = host(want), host(got)
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            assert_close(a[k], b[k], tol, f"{what}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, tol, f"{what}[{i}]")
    elif isinstance(a, (np.ndarray, np.generic)):
        b = np.asarray(b)
        assert a.shape == b.shape, f"{what}: shape {a.shape} vs {b.shape}"
        assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} vs {b.dtype}"
        if a.dtype.kind in "iub":
            np.testing.assert_array_equal(a, b, err_msg=what)
            return
        scale = max(1.0, float(np.max(np.abs(a)))) if a.size else 1.0
        err = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        assert err <= tol * scale, f"{what}: max difference {err:.3g} > {tol:g} * {scale:.3g}"
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=tol, abs_tol=tol), f"{what}: {a} vs {b}"
    else:
        assert a == b, f"{what}: {a!r} vs {b!r}"


def on_device(tree, cp):
    arrays = []

    def walk(t):
        if isinstance(t, dict):
            [walk(v) for v in t.values()]
        elif isinstance(t, (list, tuple)):
            [walk(v) for v in t]
        elif isinstance(t, np.ndarray) or backend.is_cupy_array(t):
            arrays.append(t)
    walk(tree)
    return all(isinstance(a, cp.ndarray) for a in arrays)


# ---------------------------------------------------------------- op pairs

def run_pair(name, xp, dtype):
    forward, backward = PAIRS[name]
    case = build_case(name, xp=xp, dtype=dtype)
    with active(xp):
        out, cache = forward(*case.args, **case.kwargs)
        if name in LOSSES:
            grads = backward(1.0, cache)
        else:
            dout = np.random.default_rng(1).standard_normal(host(out).shape).astype(dtype)
            grads = backward(xp.asarray(dout), cache)
    return out, grads if isinstance(grads, tuple) else (grads,)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_op_pair_parity(cp, name, dtype):
    want = run_pair(name, np, dtype)
    got = run_pair(name, cp, dtype)
    assert on_device(got, cp), f"{name} returned host arrays on CuPy"
    assert_close(want, got, TOL[dtype], name)


@pytest.mark.parametrize("name", ["conv2d", "conv_transpose2d", "causal_self_attention",
                                  "self_attention"])
def test_gradient_check_on_cupy(cp, name):
    from tinytok.gradcheck import check_pair
    forward, backward = PAIRS[name]
    case = build_case(name, xp=cp, dtype=np.float64)
    with active(cp):
        errors = check_pair(forward, backward, case.args, case.kwargs, wrt=case.wrt,
                            max_elements=30)
    assert max(errors.values()) < 1e-6, errors


# ---------------------------------------------------------------- models

def _tokenizer_step(xp, quantizer, dtype):
    from tinytok.training.optim import zeros_like_params
    from tinytok.tokenizer.gumbel import gumbel_noise
    from tinytok.tokenizer.vqvae import (init_tokenizer_params, tokenizer_backward,
                                         tokenizer_config, tokenizer_forward, with_quantizer)
    config = with_quantizer(tokenizer_config("vqvae-tiny"), quantizer)
    with active(xp):
        params = init_tokenizer_params(config, seed=0, dtype=dtype)
        x = xp.asarray(np.random.default_rng(1).uniform(-0.5, 0.5, (4, 3, 32, 32)), dtype=dtype)
        noise = None
        if quantizer == "gumbel":
            noise = xp.asarray(gumbel_noise((4, config.num_codes, 8, 8),
                                            np.random.default_rng(2), dtype))
        out, cache = tokenizer_forward(x, params, config, tau=0.9, noise=noise)
        grads = zeros_like_params(params)
        tokenizer_backward(cache, grads, config)
    return {"loss": out["loss"], "x_hat": out["x_hat"], "ids": out["ids"], "grads": grads}


@pytest.mark.parametrize("quantizer", ["vq", "gumbel"])
def test_tokenizer_parity(cp, quantizer):
    # float64, so that no code assignment flips on a near tie between two codes
    want = _tokenizer_step(np, quantizer, "float64")
    got = _tokenizer_step(cp, quantizer, "float64")
    assert on_device(got, cp)
    assert_close(want, got, TOL["float64"], "tokenizer")


def _gpt_step(xp, dtype):
    from tinytok.prior.gpt import (gpt_config, gpt_loss_backward, gpt_loss_forward, init_gpt_params,
                                   zeros_like_params)
    config = gpt_config("gpt-tiny", vocab_size=50, context=24)
    rng = np.random.default_rng(1)
    ids, targets = rng.integers(0, 50, (3, 24)), rng.integers(0, 50, (3, 24))
    targets[:, :4] = -1
    with active(xp):
        params = init_gpt_params(config, seed=0, dtype=dtype)
        loss, cache = gpt_loss_forward(xp.asarray(ids), xp.asarray(targets), params, config)
        logits = cache.logits
        grads = zeros_like_params(params)
        gpt_loss_backward(cache, grads, config)
    return {"loss": loss, "logits": logits, "grads": grads}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpt_parity(cp, dtype):
    want, got = _gpt_step(np, dtype), _gpt_step(cp, dtype)
    assert on_device(got, cp)
    assert_close(want, got, TOL[dtype], "gpt")


def test_kv_cache_sampling_parity(cp):
    from tinytok.prior.gpt import gpt_config, init_gpt_params
    from tinytok.prior.sample import NextTokenLogits, draw, filter_logits
    config = gpt_config("gpt-tiny", vocab_size=40, context=16)
    prompt = np.random.default_rng(0).integers(0, 40, (4, 3))
    results = {}
    for xp in (np, cp):
        with active(xp):
            params = init_gpt_params(config, seed=0)
            state = NextTokenLogits(params, config, 4, use_cache=True)
            logits = [state.step(prompt)]
            for i in range(5):  # feed the same host tokens to both backends
                logits.append(state.step(np.full((4, 1), 7 + i)))
            z = xp.asarray(host(logits[-1]))
            # the same logits in, the same tokens out (host uniform numbers, device CDF)
            token = draw(filter_logits(z, 0.9, top_k=10, top_p=0.95),
                         np.random.default_rng(3))
        results[xp.__name__] = (logits, token)
    assert_close(results["numpy"][0], results[cp.__name__][0], TOL["float32"], "logits")
    np.testing.assert_array_equal(host(results["numpy"][1]), host(results[cp.__name__][1]))


# ---------------------------------------------------------------- training

def _loss_curve_tokenizer(xp, quantizer, out):
    from tinytok.data.datasets import make_shapes
    from tinytok.training import TokenizerRecipe, TrainSettings, train_tokenizer
    from tinytok.tokenizer.vqvae import tokenizer_config, with_quantizer
    config = with_quantizer(tokenizer_config("vqvae-tiny"), quantizer)
    settings = TrainSettings(steps=5, batch_size=8, lr=1e-3, warmup=1, checkpoint_every=100,
                             log_every=1)
    recipe = TokenizerRecipe(kmeans_images=64, restart_every=1)
    with active(xp):
        history = train_tokenizer(make_shapes(64, seed=0).images, config, settings, str(out),
                                  recipe, log=lambda *a: None, progress_stream=io.StringIO())
    return [h["loss"] for h in history]


@pytest.mark.parametrize("quantizer", ["vq", "ema", "gumbel"])
def test_tokenizer_training_loss_curve_parity(cp, tmp_path, quantizer):
    want = _loss_curve_tokenizer(np, quantizer, tmp_path / "numpy.npz")
    got = _loss_curve_tokenizer(cp, quantizer, tmp_path / "cupy.npz")
    assert len(got) == 5 and all(math.isfinite(v) for v in got)
    np.testing.assert_allclose(got, want, rtol=1e-3, err_msg="tokenizer loss curve")


def test_prior_training_loss_curve_parity(cp, tmp_path):
    from tinytok.data.datasets import make_shapes
    from tinytok.prior.gpt import gpt_config
    from tinytok.training.prior_data import shapes_vocab
    from tinytok.training import PriorData, TrainSettings, train_prior
    shapes = make_shapes(32, seed=0)
    vocab = shapes_vocab(16, grid_size=4)
    data = PriorData(np.random.default_rng(0).integers(0, 16, (32, 4, 4)),
                     [vocab.encode_text(c) for c in shapes.captions], vocab)
    config = gpt_config("gpt-tiny", vocab_size=vocab.size, context=32)
    settings = TrainSettings(steps=5, batch_size=8, lr=1e-3, warmup=1, weight_decay=0.1,
                             checkpoint_every=100, log_every=1)
    curves = []
    for xp in (np, cp):
        with active(xp):
            history = train_prior(data, config, settings, str(tmp_path / f"{xp.__name__}.npz"),
                                  log=lambda *a: None, progress_stream=io.StringIO())
        curves.append([h["loss"] for h in history])
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-3, err_msg="prior loss curve")


# ---------------------------------------------------------------- checkpoints and bench

def test_checkpoint_from_gpu_loads_on_cpu_and_back(cp, tmp_path):
    from tinytok.training.checkpoint import load_checkpoint, save_checkpoint
    from tinytok.training.optim import adamw_init, adamw_state_to_device
    from tinytok.tokenizer.vqvae import config_dict, init_tokenizer_params, tokenizer_config
    config = tokenizer_config("vqvae-tiny")
    with active(cp):
        params = init_tokenizer_params(config, seed=0)
        state = adamw_init(params)
        save_checkpoint(tmp_path / "gpu.npz", kind="tokenizer", params=params,
                        config={"model": config_dict(config)}, step=1, optimizer_state=state)
    with active(np):
        ckpt = load_checkpoint(tmp_path / "gpu.npz", kind="tokenizer")
    assert all(type(v) is np.ndarray for v in ckpt.params.values())
    assert_close(params, ckpt.params, 0.0, "params")
    with active(cp):
        back = backend.params_to_device(ckpt.params)
        moved = adamw_state_to_device(ckpt.optimizer_state)
    assert on_device(back, cp) and on_device(moved["m"], cp)
    assert_close(params, back, 0.0, "params back on the GPU")


def test_bench_quick_runs_on_cupy(cp):
    from tinytok import bench
    result = bench.run_bench(backend="cupy", quick=True, isolate=False, repeats=1, warmup=0)
    assert result["meta"]["backend"] == "cupy"
    assert result["gpt-ref"]["train_gflops"] > 0 and "device_pool_mb" in result["gpt-ref"]
