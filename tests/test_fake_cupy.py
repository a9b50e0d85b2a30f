"""The whole CuPy code path, run on the CPU through a strict fake CuPy (tests/fake_cupy.py).

Each test runs a piece of tinytok twice, once on NumPy and once with the fake CuPy active,
and asserts that the device run (a) never converts to the host implicitly, never indexes
with host arrays and never calls NumPy on device arrays (the fake raises if it does), (b)
keeps its results on the device where the API says so, and (c) computes exactly what NumPy
computes (the fake runs the same NumPy kernels, so equal means bit-for-bit equal).

A failure here is a CuPy bug in the package, or a breach of the rule that device code
calls only ``xp`` and leaves for NumPy only at the documented host edges, after an explicit
``to_numpy``: the error names the call, and says whether real CuPy would have failed too.
"""
import io
import math

import numpy as np
import pytest

import fake_cupy
from conftest import LOSSES, build_case
from tinytok import backend
from tinytok.prior.settings import PLAIN
from tinytok.ops import PAIRS, scatter_add
from device_helpers import active, host

FAKE = fake_cupy.cupy


@pytest.fixture
def fake(monkeypatch):
    """The fake CuPy as the active backend; backend.use("cupy") also gives it."""
    monkeypatch.setattr(backend, "_active", FAKE)
    monkeypatch.setattr(backend, "_load_cupy", lambda: FAKE)
    monkeypatch.delenv("TINYTOK_BACKEND", raising=False)
    return FAKE


def on_device(x):
    return isinstance(x, fake_cupy.ndarray)


def assert_all_on_device(tree, what="result"):
    """Every array in tree is a (fake) device array."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            assert_all_on_device(v, f"{what}[{k!r}]")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            assert_all_on_device(v, f"{what}[{i}]")
    elif isinstance(tree, np.ndarray) or on_device(tree):
        assert on_device(tree), f"{what} came back on the host ({type(tree).__name__})"


def assert_same(numpy_result, device_result, what="result"):
    """Equal values, dtypes and shapes; the device side compared after an explicit .get()."""
    a, b = host(numpy_result), host(device_result)
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            assert_same(a[k], b[k], f"{what}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{what}[{i}]")
    elif isinstance(a, (np.ndarray, np.generic)):
        assert isinstance(b, (np.ndarray, np.generic)), f"{what}: {type(b).__name__}"
        assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} vs {b.dtype}"
        np.testing.assert_array_equal(a, b, err_msg=what)
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), \
            f"{what}: {a!r} vs {b!r}"


def numpy_and_device(run, fake, *args):
    """run(xp, *args) on NumPy and on the fake device: (NumPy result, device result)."""
    with active(np):
        want = run(np, *args)
    return want, run(fake, *args)


def assert_device_matches_numpy(run, fake, *args, what="result"):
    """run on both backends: the device results stay on the device and equal NumPy's."""
    want, got = numpy_and_device(run, fake, *args)
    assert_all_on_device(got, what)
    assert_same(want, got, what)
    return got


# ---------------------------------------------------------------- the fake itself

def test_fake_refuses_what_cupy_refuses():
    x = FAKE.asarray(np.arange(6.0).reshape(2, 3))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)
    with pytest.raises(TypeError, match="Unsupported type"):
        x + np.ones(3)
    with pytest.raises(TypeError, match="Unsupported type"):
        np.ones(3) * x
    with pytest.raises(TypeError, match="Unsupported type"):
        FAKE.maximum(x, np.zeros(3))
    with pytest.raises(IndexError, match="host NumPy"):
        x[np.array([0, 1])]
    with pytest.raises(TypeError):
        np.exp(x)
    with pytest.raises(TypeError, match="numpy.stack"):
        np.stack([x, x])
    with pytest.raises(AttributeError):
        FAKE.block          # NumPy has it, CuPy does not
    with pytest.raises(AttributeError):
        x.resize((3, 2))    # likewise for an ndarray method
    with pytest.raises(TypeError, match="out="):
        FAKE.multiply(x, 2.0, out=np.empty((2, 3)))
    with pytest.raises(IndexError, match="host NumPy"):
        FAKE.add.at(x, np.array([0]), 1.0)


def test_fake_allows_what_cupy_allows():
    x = FAKE.asarray(np.arange(6.0).reshape(2, 3))
    assert on_device(x) and backend.is_cupy_array(x)
    assert isinstance(x.get(), np.ndarray) and not isinstance(x, np.ndarray)
    s = x.sum()
    assert on_device(s) and s.ndim == 0 and float(s) == 15.0 and f"{s:.1f}" == "15.0"
    assert on_device(np.float32(2) * x) and on_device(x * np.array(2.0))  # scalars, 0-d
    y = FAKE.zeros(3)
    FAKE.add.at(y, FAKE.asarray([0, 0, 2]), FAKE.asarray([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(y.get(), [3.0, 0.0, 3.0])
    y[...] = np.arange(3)          # an explicit upload by assignment
    np.testing.assert_array_equal(y.get(), [0.0, 1.0, 2.0])
    out = FAKE.empty(3)
    assert FAKE.multiply(y, 2.0, out=out) is out
    FAKE.cuda.Device().synchronize()
    assert FAKE.get_default_memory_pool().total_bytes() == 0


def test_backend_sees_the_fake_as_cupy(fake):
    x = backend.to_device(np.ones((2, 2)), dtype="float32")
    assert on_device(x) and backend.get_array_module(x) is fake
    assert backend.name() == "cupy" and backend.xp() is fake
    assert isinstance(backend.to_numpy(x), np.ndarray)
    assert backend.get_array_module(np.ones(2)) is np
    params = backend.params_to_device({"a": np.ones(3), "b": np.zeros((2, 2))})
    assert_all_on_device(params)
    assert all(isinstance(v, np.ndarray) for v in backend.params_to_numpy(params).values())
    backend.seed(3)
    scatter_add(x, fake.asarray([0, 0]), fake.ones((2, 2), dtype="float32"))
    np.testing.assert_array_equal(x.get(), [[3, 3], [1, 1]])


def test_namespace_is_cupys():
    if not fake_cupy.STRICT_NAMESPACE:
        pytest.skip("CuPy is not installed: the fake falls back to NumPy's names")
    real = fake_cupy.REAL
    assert all(hasattr(real, name) for name in FAKE.EXPOSED)
    assert all(hasattr(real.ndarray, name) for name in fake_cupy._NDARRAY_NAMES)


# ---------------------------------------------------------------- op pairs

def _dout(out, seed=1):
    return np.random.default_rng(seed).standard_normal(np.shape(host(out))).astype(out.dtype)


def run_pair(name, xp, dtype):
    forward, backward = PAIRS[name]
    case = build_case(name, xp=xp, dtype=dtype)
    out, cache = forward(*case.args, **case.kwargs)
    if name in LOSSES:
        grads = backward(1.0, cache)
    else:
        grads = backward(xp.asarray(_dout(out)), cache)
    return out, grads if isinstance(grads, tuple) else (grads,)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_op_pair_on_device_equals_numpy(fake, name, dtype):
    assert_device_matches_numpy(lambda xp: run_pair(name, xp, dtype), fake, what=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_amplitude_loss_with_rings_on_device_equals_numpy(fake, dtype):
    """The bands' one-hot matrix goes to the device with the pictures (a host array of band
    numbers in, device arrays out)."""
    from tinytok.ops import amplitude_loss_backward, amplitude_loss_forward, frequency_rings

    def run(xp):
        pred, target = build_case("amplitude_loss", xp=xp, dtype=dtype).args
        loss, cache = amplitude_loss_forward(pred, target, frequency_rings(5, 4))
        return loss, amplitude_loss_backward(0.5, cache)
    assert_device_matches_numpy(run, fake, what="amplitude_loss with rings")


@pytest.mark.parametrize("name", ["linear", "layer_norm", "causal_self_attention",
                                  "self_attention", "conv2d",
                                  "leaky_relu", "hinge_d_loss", "hinge_g_loss"])
def test_gradcheck_on_device(fake, name):
    from tinytok.gradcheck import assert_gradients_close
    forward, backward = PAIRS[name]
    case = build_case(name, xp=fake, dtype=np.float64)
    assert_gradients_close(forward, backward, case.args, case.kwargs, wrt=case.wrt,
                           max_elements=20)


@pytest.mark.parametrize("name", LOSSES)
def test_loss_backward_takes_a_0d_device_dloss(fake, name):
    """A loss times a weight, still on the device, as dloss: float32 gradients on the device."""
    case = build_case(name, xp=fake, dtype=np.float32)
    forward, backward = PAIRS[name]
    _, cache = forward(*case.args, **case.kwargs)
    grads = backward(fake.asarray(0.5, dtype="float64"), cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    assert_all_on_device(grads)
    assert all(g.dtype == np.float32 for g in grads)


def test_relative_error_of_device_arrays(fake):
    from tinytok.gradcheck import relative_error
    a = fake.asarray(np.arange(4.0))
    assert relative_error(a, a) == 0.0 and relative_error(a, np.arange(4.0)) == 0.0


# ---------------------------------------------------------------- quantizers

def _latents(seed=0, shape=(2, 4, 3, 3)):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _vq_run(xp):
    from tinytok.tokenizer.quantize import (ema_init, ema_update, vector_quantize_backward,
                                            vector_quantize_forward)
    from tinytok.tokenizer.codebook import code_counts, usage_stats
    z = xp.asarray(_latents())
    codebook = xp.asarray(np.random.default_rng(1).standard_normal((6, 4)), dtype="float32")
    z_q, ids, loss, cache = vector_quantize_forward(z, codebook, beta=0.25)
    dz, dcodebook = vector_quantize_backward(xp.asarray(_latents(2)), cache, dloss=1.0)
    counts = code_counts(ids, 6)
    state = ema_init(codebook)
    ema_update(codebook, state, z, ids, decay=0.9)
    return {"z_q": z_q, "ids": ids, "loss": loss, "dz": dz, "dcodebook": dcodebook,
            "counts": counts, "ema_codebook": codebook, "ema_state": state,
            "stats": usage_stats(counts)}


def test_vector_quantizer_and_ema_on_device(fake):
    want, got = numpy_and_device(_vq_run, fake)
    assert_all_on_device({k: v for k, v in got.items() if k != "stats"})
    assert_same(want, got, "vq")


def _kmeans_and_restart(xp):
    from tinytok.tokenizer.quantize import ema_init
    from tinytok.tokenizer.codebook import code_counts, kmeans_init, restart_dead_codes
    z = xp.asarray(_latents(3, (4, 4, 4, 4)))
    codebook = kmeans_init(z, 8, seed=0, iterations=5)
    assert codebook.dtype == np.float32
    ids = xp.asarray(np.zeros((4, 4, 4), dtype=np.int64))  # only code 0 used: 7 dead
    state = ema_init(codebook)
    n = restart_dead_codes(codebook, code_counts(ids, 8), z, seed=[0, 1, 2], ema_state=state)
    return {"codebook": codebook, "restarted": n, "state": state}


def test_kmeans_init_and_dead_code_restart_on_device(fake):
    want, got = numpy_and_device(_kmeans_and_restart, fake)
    assert got["restarted"] == 7
    assert_all_on_device(got["codebook"]), assert_all_on_device(got["state"])
    assert_same(want, got, "kmeans+restart")


def _gumbel_run(xp):
    from tinytok.tokenizer.gumbel import (gumbel_noise, gumbel_quantize_backward,
                                          gumbel_quantize_forward)
    logits = xp.asarray(_latents(4, (2, 5, 3, 3)))
    codebook = xp.asarray(_latents(5, (5, 4, 1, 1)).reshape(5, 4))
    noise = xp.asarray(gumbel_noise((2, 5, 3, 3), np.random.default_rng(6)))
    z_q, ids, kl, cache = gumbel_quantize_forward(logits, codebook, tau=0.7, noise=noise)
    dlogits, dcodebook = gumbel_quantize_backward(xp.asarray(_latents(7, (2, 4, 3, 3))), cache,
                                                  dkl=0.5)
    return {"z_q": z_q, "ids": ids, "kl": kl, "dlogits": dlogits, "dcodebook": dcodebook}


def test_gumbel_quantizer_on_device(fake):
    assert_device_matches_numpy(_gumbel_run, fake, what="gumbel")


def _fsq_run(xp):
    from tinytok.training.optim import zeros_like_params
    from tinytok.tokenizer.fsq import fsq_backward, fsq_codes, fsq_forward
    from tinytok.tokenizer.vqvae import (TokenizerConfig, decode_ids, encode_ids,
                                         init_tokenizer_params, tokenizer_backward,
                                         tokenizer_forward)
    z = xp.asarray(_latents(8, (2, 3, 3, 3)))
    z_q, ids, cache = fsq_forward(z, (8, 6, 5))
    dz = fsq_backward(xp.asarray(_latents(9, (2, 3, 3, 3))), cache)
    config = TokenizerConfig("test-tiny", image_size=32, hidden=16, res_hidden=8, n_res=1,
                             code_dim=2, num_codes=16, quantizer="fsq", levels=(4, 4))
    params = init_tokenizer_params(config, seed=0)
    x = xp.asarray(np.random.default_rng(1).uniform(-0.5, 0.5, (2, 3, 32, 32)),
                   dtype="float32")
    out, tok_cache = tokenizer_forward(x, params, config)
    grads = zeros_like_params(params)
    tokenizer_backward(tok_cache, grads, config)
    tok_ids = encode_ids(x, params, config)
    return {"z_q": z_q, "ids": ids, "dz": dz, "codes": fsq_codes(ids, (8, 6, 5)),
            "out": out, "grads": grads, "tok_ids": tok_ids,
            "x_hat": decode_ids(tok_ids, params, config)}


def test_fsq_quantizer_and_tokenizer_on_device(fake):
    assert_device_matches_numpy(_fsq_run, fake, what="fsq")


# ---------------------------------------------------------------- models

def _tiny_tokenizer_config(quantizer="vq"):
    from tinytok.tokenizer.vqvae import TokenizerConfig
    return TokenizerConfig("test-tiny", image_size=32, hidden=16, res_hidden=8, n_res=1,
                           code_dim=8, num_codes=16, quantizer=quantizer)


def _tokenizer_run(xp, quantizer):
    from tinytok.training.optim import zeros_like_params
    from tinytok.tokenizer.gumbel import gumbel_noise
    from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_backward, tokenizer_forward
    config = _tiny_tokenizer_config(quantizer)
    params = init_tokenizer_params(config, seed=0)
    x = xp.asarray(np.random.default_rng(1).uniform(-0.5, 0.5, (2, 3, 32, 32)),
                   dtype="float32")
    noise = (xp.asarray(gumbel_noise((2, 16, 8, 8), np.random.default_rng(2)))
             if quantizer == "gumbel" else None)
    out, cache = tokenizer_forward(x, params, config, tau=0.9, noise=noise)
    grads = zeros_like_params(params)
    dx = tokenizer_backward(cache, grads, config)
    return {"params": params, "out": out, "grads": grads, "dx": dx}


@pytest.mark.parametrize("quantizer", ["vq", "gumbel", "cosine", "factorized"])
def test_tokenizer_forward_backward_on_device(fake, quantizer):
    assert_device_matches_numpy(_tokenizer_run, fake, quantizer, what="tokenizer")


def _gpt_run(xp):
    from tinytok.prior.gpt import gpt_config, gpt_loss_backward, gpt_loss_forward, init_gpt_params
    from tinytok.training.optim import zeros_like_params
    config = gpt_config("gpt-tiny", vocab_size=30, context=12)
    params = init_gpt_params(config, seed=0)
    rng = np.random.default_rng(1)
    ids = xp.asarray(rng.integers(0, 30, (2, 10)))
    targets = rng.integers(0, 30, (2, 10))
    targets[0, :3] = -1
    loss, cache = gpt_loss_forward(ids, xp.asarray(targets), params, config)
    logits = cache.logits
    grads = zeros_like_params(params)
    gpt_loss_backward(cache, grads, config)
    return {"loss": loss, "logits": logits, "grads": grads}


def test_gpt_forward_backward_on_device(fake):
    assert_device_matches_numpy(_gpt_run, fake, what="gpt")


def _optim_run(xp):
    from tinytok.training.optim import (adamw_init, adamw_step, clip_grad_norm, global_norm,
                                        has_nonfinite)
    rng = np.random.default_rng(0)
    params = {"w": xp.asarray(rng.standard_normal((3, 4)), dtype="float32"),
              "b": xp.asarray(rng.standard_normal(4), dtype="float32")}
    grads = {k: xp.asarray(rng.standard_normal(v.shape), dtype="float32")
             for k, v in params.items()}
    state = adamw_init(params)
    norm = clip_grad_norm(grads, 0.5)
    for _ in range(2):
        adamw_step(params, grads, state, 1e-2, weight_decay=0.1)
    bad = dict(grads, b=grads["b"] * float("nan"))
    return {"params": params, "state": state, "norm": norm, "norm_after": global_norm(grads),
            "ok": has_nonfinite(grads), "bad": has_nonfinite(bad)}


def test_optimizer_on_device(fake):
    want, got = numpy_and_device(_optim_run, fake)
    assert got["bad"] == "b" and got["ok"] is None
    assert isinstance(got["norm"], float)
    assert_all_on_device(got["params"]), assert_all_on_device(got["state"]["m"])
    assert_same(want, got, "adamw")


# ---------------------------------------------------------------- sampling

def _sampling_run(xp):
    from tinytok.prior.gpt import gpt_config, init_gpt_params
    from tinytok.prior.sample import NextTokenLogits, draw, filter_logits, guided
    config = gpt_config("gpt-tiny", vocab_size=20, context=10)
    params = init_gpt_params(config, seed=3)
    prompt = np.random.default_rng(0).integers(0, 20, (3, 4))
    allowed = np.arange(20) >= 5
    out = {}
    for use_cache in (True, False):
        state = NextTokenLogits(params, config, 3, use_cache=use_cache)
        logits = state.step(prompt)
        rng = np.random.default_rng(1)
        tokens = []
        for i in range(4):
            mixed = guided(logits, logits * 0.5, 1.5)
            token = draw(filter_logits(mixed, 0.8, top_k=6, top_p=0.9, allowed=allowed), rng)
            tokens.append(token)
            logits = state.step(token[:, None])
        out[use_cache] = {"tokens": tokens, "last_logits": logits,
                          "greedy": draw(logits, rng, greedy=True)}
    return out


def test_sampling_with_and_without_kv_cache_on_device(fake):
    got = assert_device_matches_numpy(_sampling_run, fake, what="sampling")
    np.testing.assert_allclose(got[True]["last_logits"].get(), got[False]["last_logits"].get(),
                               rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- training loops

def _quiet():
    return {"log": lambda *a: None, "progress_stream": io.StringIO()}


class _CtrlCAt:
    """A progress stream that sends this process a Ctrl-C (SIGINT) once step `at` is logged."""

    def __init__(self, at, total):
        self.mark, self.sent = f" {at}/{total} [", False      # "tokenizer 2/4 [00:01<..."

    def write(self, text):
        if self.mark in text and not self.sent:
            import os
            import signal
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)

    def flush(self):
        pass


def _train_tokenizer(xp, quantizer, out, resume=False, stream=None):
    from tinytok.data.datasets import make_shapes
    from tinytok.training import TokenizerRecipe, TrainSettings, train_tokenizer
    images = make_shapes(24, seed=0).images
    settings = TrainSettings(steps=4, batch_size=4, lr=1e-3, warmup=1,
                             checkpoint_every=100, log_every=1)
    recipe = TokenizerRecipe(kmeans_images=16, restart_every=2)
    with active(xp):
        return train_tokenizer(images, _tiny_tokenizer_config(quantizer), settings, str(out),
                               recipe, resume=resume, log=lambda *a: None,
                               progress_stream=stream or io.StringIO())


@pytest.mark.parametrize("quantizer", ["vq", "ema", "gumbel", "cosine", "factorized"])
def test_train_tokenizer_on_device_matches_numpy(fake, tmp_path, quantizer):
    from tinytok.training.checkpoint import load_checkpoint
    want = _train_tokenizer(np, quantizer, tmp_path / "numpy.npz")
    got = _train_tokenizer(fake, quantizer, tmp_path / "device.npz")
    assert len(got) == 2 and all(math.isfinite(h["loss"]) for h in got)
    assert_same(want, got, "history")
    a, b = load_checkpoint(tmp_path / "numpy.npz"), load_checkpoint(tmp_path / "device.npz")
    assert_same(a.params, b.params, "params")
    assert_same(a.optimizer_state, b.optimizer_state, "optimizer state")
    assert_same(a.extra, b.extra, "extra")


def test_train_tokenizer_stops_and_resumes_on_device(fake, tmp_path):
    """Ctrl-C after step 2 writes a checkpoint from the device; --resume finishes the run."""
    from tinytok.training.checkpoint import load_checkpoint
    from tinytok.training import TrainingStopped
    _train_tokenizer(fake, "ema", tmp_path / "straight.npz")
    with pytest.raises(TrainingStopped):
        _train_tokenizer(fake, "ema", tmp_path / "resumed.npz", stream=_CtrlCAt(2, 4))
    assert load_checkpoint(tmp_path / "resumed.npz").step == 2
    _train_tokenizer(fake, "ema", tmp_path / "resumed.npz", resume=True)
    a, b = load_checkpoint(tmp_path / "straight.npz"), load_checkpoint(tmp_path / "resumed.npz")
    assert b.step == 4
    assert_same(a.params, b.params, "params")
    assert_same(a.optimizer_state, b.optimizer_state, "optimizer state")


def _prior_data():
    from tinytok.data.datasets import make_shapes
    from tinytok.training.prior_data import shapes_vocab
    from tinytok.training import PriorData
    shapes = make_shapes(12, seed=0)
    vocab = shapes_vocab(16, grid_size=2)
    codes = np.random.default_rng(0).integers(0, 16, (12, 2, 2))
    return PriorData(codes, [vocab.encode_text(c) for c in shapes.captions], vocab)


def _train_prior(xp, out, data):
    from tinytok.prior.gpt import gpt_config
    from tinytok.training import TrainSettings, train_prior
    config = gpt_config("gpt-tiny", vocab_size=data.vocab.size, context=20)
    settings = TrainSettings(steps=3, batch_size=4, lr=1e-3, warmup=1, weight_decay=0.1,
                             checkpoint_every=100, log_every=1)
    with active(xp):
        return train_prior(data, config, settings, str(out), **_quiet())


def test_train_prior_on_device_matches_numpy(fake, tmp_path):
    from tinytok.training.checkpoint import load_checkpoint
    data = _prior_data()
    want = _train_prior(np, tmp_path / "numpy.npz", data)
    got = _train_prior(fake, tmp_path / "device.npz", data)
    assert len(got) == 3
    assert_same(want, got, "history")
    a, b = load_checkpoint(tmp_path / "numpy.npz"), load_checkpoint(tmp_path / "device.npz")
    assert_same(a.params, b.params, "params")


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_saved_on_device_loads_on_host_and_back(fake, tmp_path):
    from tinytok.training.checkpoint import load_checkpoint, save_checkpoint
    from tinytok.training.optim import adamw_init, adamw_state_to_device
    from tinytok.tokenizer.vqvae import config_dict, init_tokenizer_params
    config = _tiny_tokenizer_config()
    params = init_tokenizer_params(config, seed=0)
    assert_all_on_device(params)
    state = adamw_init(params)
    state["m"]["quant.codebook"] += 1.5
    save_checkpoint(tmp_path / "c.npz", kind="tokenizer", params=params,
                    config={"model": config_dict(config)}, step=3, optimizer_state=state,
                    extra={"window": fake.arange(4), "n": 2})
    with active(np):
        ckpt = load_checkpoint(tmp_path / "c.npz", kind="tokenizer")
        assert all(type(v) is np.ndarray for v in ckpt.params.values())
        assert_same(host(params), ckpt.params, "params")
        assert_same(host(state["m"]), ckpt.optimizer_state["m"], "m")
        np.testing.assert_array_equal(ckpt.extra["window"], np.arange(4))
    back = backend.params_to_device(ckpt.params)
    assert_all_on_device(back)
    assert_same(params, back, "params back on the device")
    moved = adamw_state_to_device(ckpt.optimizer_state)
    assert_all_on_device(moved["m"]) and moved["t"] == 0


# ---------------------------------------------------------------- the user-facing objects

def _tiny_pipeline(xp):
    from tinytok.prior.gpt import gpt_config, init_gpt_params
    from tinytok.pipeline import Pipeline, Prior, Tokenizer
    from tinytok.training.prior_data import shapes_vocab
    from tinytok.tokenizer.vqvae import init_tokenizer_params
    config = _tiny_tokenizer_config()
    vocab = shapes_vocab(config.num_codes, config.grid_size)
    prior_config = gpt_config("gpt-tiny", vocab_size=vocab.size, context=80)
    with active(np):  # the same host parameters for both backends
        tok_params = backend.params_to_numpy(init_tokenizer_params(config, seed=0))
        prior_params = backend.params_to_numpy(init_gpt_params(prior_config, seed=1))
    with active(xp):
        return Pipeline(Tokenizer(tok_params, config), Prior(prior_params, prior_config, vocab))


def _pipeline_run(xp, tmp_path):
    from tinytok.data.datasets import make_shapes
    from tinytok.evaluate import adherence, caption_accuracy, eval_tokenizer
    from tinytok.pipeline import Tokenizer
    pipe = _tiny_pipeline(xp)
    shapes = make_shapes(3, seed=1)
    with active(xp):
        ids = pipe.tokenizer.encode(shapes.images)
        recon = pipe.tokenizer.decode(ids)
        single = pipe.tokenizer.decode(ids[0])
        pipe.tokenizer.save(tmp_path / f"tok-{xp.__name__}.npz")
        reloaded = Tokenizer.load(tmp_path / f"tok-{xp.__name__}.npz")
        figures, _, _ = eval_tokenizer(pipe.tokenizer, shapes.images, batch_size=2)
        images = pipe.generate(["a small red circle at the top left"], n=2, seed=0,
                               sampling=PLAIN.but(top_k=8, cfg_scale=2.0))
        images_nocache = pipe.generate("a large blue square", n=1, seed=1,
                                       sampling=PLAIN.but(top_p=0.9), use_cache=False)
        captions = pipe.caption(shapes.images[:2])
        share, _, matches = adherence(pipe, shapes.labels[:1], n_per_prompt=1,
                                      sampling=PLAIN.but(cfg_scale=1.5))
        accuracy, written = caption_accuracy(pipe, shapes.images[:2], shapes.labels[:2])
        reencoded = reloaded.encode(shapes.images)
    return {"ids": ids, "recon": recon, "single": single, "figures": figures,
            "images": images, "images_nocache": images_nocache, "captions": captions,
            "share": share, "matches": matches, "accuracy": accuracy, "written": written,
            "reencoded": reencoded}


def test_tokenizer_pipeline_and_evaluation_on_device(fake, tmp_path):
    want = _pipeline_run(np, tmp_path)
    got = _pipeline_run(fake, tmp_path)
    # the API's edge: token ids, images and captions come back as host values
    for key in ("ids", "recon", "images", "images_nocache"):
        assert type(got[key]) is np.ndarray, key
    assert got["ids"].dtype == np.int64 and got["recon"].dtype == np.uint8
    assert got["images"].shape == (2, 32, 32, 3)
    assert all(isinstance(c, str) for c in got["captions"])
    assert_same(want, got, "pipeline")


def test_tokenizer_accepts_device_images_and_ids(fake):
    pipe = _tiny_pipeline(fake)
    from tinytok.data.datasets import make_shapes
    images = make_shapes(2, seed=2).images
    ids = pipe.tokenizer.encode(fake.asarray(images))
    np.testing.assert_array_equal(ids, pipe.tokenizer.encode(images))
    np.testing.assert_array_equal(pipe.tokenizer.decode(fake.asarray(ids)),
                                  pipe.tokenizer.decode(ids))


def test_evaluation_accepts_device_images(fake):
    """eval_tokenizer takes uint8 images; check_images accepts NumPy and CuPy arrays alike."""
    from tinytok.data.datasets import make_shapes
    from tinytok.evaluate import eval_tokenizer
    pipe = _tiny_pipeline(fake)
    images = make_shapes(2, seed=2).images
    want, _, _ = eval_tokenizer(pipe.tokenizer, images)
    got, _, _ = eval_tokenizer(pipe.tokenizer, fake.asarray(images))
    assert_same(want, got, "figures")


def test_caption_codes_accepts_device_ids(fake):
    """Token grids straight from the device (e.g. the quantizer's ids) can be captioned."""
    from tinytok.data.datasets import make_shapes
    pipe = _tiny_pipeline(fake)
    codes = pipe.tokenizer.encode(make_shapes(2, seed=2).images)
    assert pipe.caption_codes(fake.asarray(codes)) == pipe.caption_codes(codes)


# ---------------------------------------------------------------- the command line and bench

def test_cli_commands_with_backend_cupy(fake, tmp_path, capsys):
    """Every model command of `tinytok --backend cupy ...`, chained on tiny sizes."""
    import json

    from PIL import Image

    from tinytok import cli
    from tinytok.data.datasets import make_shapes

    def run(*argv):
        code = cli.main(["--backend", "cupy", *map(str, argv)])
        captured = capsys.readouterr()
        assert code == 0, f"tinytok {' '.join(map(str, argv))}: {captured.err}"
        assert backend.xp() is fake
        return captured.out

    tok, prior = tmp_path / "tok.npz", tmp_path / "prior.npz"
    run("train-tokenizer", "--config", "vqvae-tiny", "--quantizer", "ema", "--n-images", 16,
        "--steps", 2, "--batch-size", 4, "--warmup", 1, "--restart-every", 1, "--out", tok)
    run("train-prior", "--tokenizer", tok, "--config", "gpt-tiny", "--n-images", 8,
        "--steps", 1, "--batch-size", 2, "--warmup", 1, "--out", prior)
    png = tmp_path / "a.png"
    Image.fromarray(make_shapes(1, seed=0).images[0]).save(png)
    grids = json.loads(run("encode", "--tokenizer", tok, "--json", png))
    (tmp_path / "ids.json").write_text(json.dumps(grids))
    run("decode", "--tokenizer", tok, "--ids", tmp_path / "ids.json", "--out", tmp_path / "d.png")
    run("eval-tokenizer", "--tokenizer", tok, "--n-images", 4, "--json",
        "--pictures", tmp_path / "pictures")
    pipeline = ("--tokenizer", tok, "--prior", prior)
    run("sample", "--prompt", "a small red circle at the top left", "-n", 1, "--top-k", 5,
        "--out", tmp_path / "s.png", *pipeline)
    assert str(png) in run("caption", png, *pipeline)
    figures = json.loads(run("eval-prior", "--prompts", 1, "-n", 1, "--captions", 2, "--json",
                             *pipeline))
    assert 0 <= figures["adherence_train"] <= 1


def test_viz_takes_device_arrays(fake, tmp_path):
    from tinytok import viz
    from tinytok.data.datasets import make_shapes
    images = fake.asarray(make_shapes(4, seed=0).images)
    ids = fake.asarray(np.arange(64).reshape(8, 8) % 5)
    counts = fake.asarray(np.array([3, 0, 1, 2]))
    viz.image_grid(images, path=tmp_path / "grid.png")
    viz.codebook_palette(images, counts, path=tmp_path / "palette.png")
    viz.token_map(images[0], ids, path=tmp_path / "map.png")
    viz.prompt_grid(images, ["a", "b"], 2, marks=fake.asarray(np.array([1, 0, 1, 1], bool)),
                    path=tmp_path / "prompts.png")
    viz.loss_curve(fake.asarray(np.linspace(2, 1, 10)), path=tmp_path / "loss.png")
    assert "4 codes, 3 used" in viz.palette_title(counts)


def test_bench_quick_with_backend_cupy(fake):
    from tinytok import bench
    result = bench.run_bench(backend="cupy", quick=True, isolate=False, repeats=1, warmup=0)
    assert result["meta"]["backend"] == "cupy"
    assert result["vqvae-ref"]["device_pool_mb"] == 0.0
    assert result["gpt-ref"]["train_gflops"] > 0
