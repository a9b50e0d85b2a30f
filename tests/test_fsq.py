"""Finite scalar quantization: the smooth squashing is finite-differenced with the rounding
held fixed; z_q and ids against a per-element loop; the id grid; the tokenizer built on it."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinytok.errors import ConfigError, DTypeError, ShapeError
from tinytok.gradcheck import numerical_gradient, relative_error
from tinytok.tokenizer.fsq import fsq_backward, fsq_codes, fsq_forward

FEW = settings(max_examples=25, deadline=None)
LEVELS = st.sampled_from([(8, 5, 5, 5), (8, 6, 5), (3,), (2, 2), (2,), (7, 4), (4, 4)])


def draw(seed, levels, N=2, H=3, W=2, scale=2.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (scale * rng.standard_normal((N, len(levels), H, W))).astype(dtype)


# --- the reference: one number at a time, sharing no code with tinytok.tokenizer.fsq ------

def naive_fsq(z, levels):
    """z_q and ids by loops over every element, straight from the paper's formulas."""
    N, C, H, W = z.shape
    z_q, ids = np.zeros(z.shape), np.zeros((N, H, W), dtype=np.int64)
    for n in range(N):
        for i in range(H):
            for j in range(W):
                place = 1
                for c in range(C):
                    L = levels[c]
                    half = (L - 1) * (1 - 1e-3) / 2
                    offset = 0.5 if L % 2 == 0 else 0.0
                    bounded = math.tanh(z[n, c, i, j] + math.tan(offset / half)) * half - offset
                    r = round(bounded)                  # half to even, like np.round
                    z_q[n, c, i, j] = r / (L // 2)
                    ids[n, i, j] += (r + L // 2) * place
                    place *= L
    return z_q, ids


@FEW
@given(levels=LEVELS, N=st.integers(1, 2), H=st.integers(1, 3), W=st.integers(1, 3),
       scale=st.floats(0.1, 4.0), seed=st.integers(0, 2 ** 16))
def test_forward_matches_a_per_element_loop(levels, N, H, W, scale, seed):
    z = draw(seed, levels, N, H, W, scale)
    z_q, ids, _ = fsq_forward(z, levels)
    want_q, want_ids = naive_fsq(z, levels)
    np.testing.assert_allclose(z_q, want_q, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(ids, want_ids)
    assert ids.dtype == np.int64 and ids.shape == (N, H, W)


# --- gradients ------------------------------------------------------------------------------

def smooth_part(z, levels):
    """bounded(z) / (L // 2): what z_q would be with round() taken out."""
    L = np.asarray(levels, dtype=np.float64).reshape(1, -1, 1, 1)
    half = (L - 1) * (1 - 1e-3) / 2
    offset = np.where(L % 2 == 0, 0.5, 0.0)
    return (np.tanh(z + np.tan(offset / half)) * half - offset) / (L // 2)


@FEW
@given(levels=LEVELS, seed=st.integers(0, 2 ** 16))
def test_backward_is_the_smooth_parts_slope(levels, seed):
    """Straight through round: dz is d(bounded / (L // 2))/dz times dz_q, which central
    differences of the smooth part check (the rounding held fixed, i.e. left out)."""
    z = draw(seed, levels)
    dz_q = np.random.default_rng(seed + 1).standard_normal(z.shape)
    _, _, cache = fsq_forward(z, levels)
    dz = fsq_backward(dz_q, cache)
    numeric = numerical_gradient(lambda x: smooth_part(x, levels), z.copy(), dz_q,
                                 np.arange(z.size))
    assert relative_error(dz.reshape(-1), numeric) < 1e-8


def test_straight_through_by_its_definition():
    """dz = dz_q / (L//2) * half * (1 - tanh(z + shift)^2), channel by channel."""
    levels = (8, 5, 2)
    z = draw(3, levels, N=3, H=4, W=4)
    dz_q = np.random.default_rng(4).standard_normal(z.shape)
    dz = fsq_backward(dz_q, fsq_forward(z, levels)[2])
    for c, L in enumerate(levels):
        half = (L - 1) * (1 - 1e-3) / 2
        shift = math.tan((0.5 if L % 2 == 0 else 0.0) / half)
        want = dz_q[:, c] / (L // 2) * half * (1 - np.tanh(z[:, c] + shift) ** 2)
        np.testing.assert_allclose(dz[:, c], want, rtol=1e-13, atol=0)


# --- the implicit codebook ------------------------------------------------------------------

@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (8, 6, 5), (3,), (2, 2), (4, 4)])
def test_ids_cover_every_code_once_on_a_dense_grid(levels):
    """A grid of inputs dense enough in every channel reaches every id, and only those."""
    axes = [np.linspace(-6, 6, 4 * L + 1) for L in levels]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=0).reshape(len(levels), -1)
    z = grid.T.reshape(-1, len(levels), 1, 1)                       # one cell per point
    z_q, ids, _ = fsq_forward(z, levels)
    assert set(np.unique(ids)) == set(range(math.prod(levels)))
    assert np.abs(z_q).max() <= 1


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (8, 6, 5), (3,), (2, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_codes_of_the_ids_are_z_q(levels, dtype):
    z = draw(5, levels, N=3, H=4, W=5, dtype=dtype)
    z_q, ids, _ = fsq_forward(z, levels)
    codes = fsq_codes(ids, levels, dtype)
    assert codes.dtype == dtype and z_q.dtype == dtype
    np.testing.assert_array_equal(codes, z_q)
    every = np.arange(math.prod(levels)).reshape(1, 1, -1)      # each id once, back and forth
    codes = fsq_codes(every, levels, np.float64).reshape(len(levels), -1)   # (C, K)
    assert len({tuple(col) for col in codes.T}) == every.size               # K distinct codes


def test_contract_inputs_and_dz_q_unchanged():
    levels = (8, 6, 5)
    z = draw(6, levels)
    dz_q = np.random.default_rng(7).standard_normal(z.shape)
    z0, dz_q0 = z.copy(), dz_q.copy()
    _, ids, cache = fsq_forward(z, levels)
    ids0 = ids.copy()
    fsq_backward(dz_q, cache)
    fsq_codes(ids, levels)
    np.testing.assert_array_equal(z, z0)
    np.testing.assert_array_equal(dz_q, dz_q0)
    np.testing.assert_array_equal(ids, ids0)
    assert type(cache).__name__ == "FSQCache" and hasattr(cache, "_fields")


@pytest.mark.parametrize("call, error, words", [
    (lambda: fsq_forward(np.zeros((1, 3, 2, 2)), (8, 5)), ShapeError, "C = 3 channels"),
    (lambda: fsq_forward(np.zeros((3, 2, 2)), (8, 5, 5)), ShapeError, "(N, C, H, W)"),
    (lambda: fsq_forward(np.zeros((1, 2, 2, 2), dtype=np.int64), (4, 4)), DTypeError, "float"),
    (lambda: fsq_forward(np.zeros((1, 2, 2, 2)), (4, 1)), ConfigError, ">= 2"),
    (lambda: fsq_forward(np.zeros((1, 2, 2, 2)), (4, 2.5)), ConfigError, "whole number >= 2"),
    (lambda: fsq_forward(np.zeros((1, 1, 2, 2)), ()), ConfigError, "non-empty"),
    (lambda: fsq_forward(np.zeros((1, 1, 2, 2)), 4), ConfigError, "sequence"),
    (lambda: fsq_codes(np.array([[[16]]]), (4, 4)), ShapeError, "[0, 16)"),
    (lambda: fsq_codes(np.array([[[-1]]]), (4, 4)), ShapeError, "[0, 16)"),
    (lambda: fsq_codes(np.zeros((1, 2, 2)), (4, 4)), DTypeError, "integer"),
    (lambda: fsq_codes(np.zeros((2, 2), dtype=np.int64), (4, 4)), ShapeError, "(N, H, W)"),
])
def test_bad_input_is_refused_clearly(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)


# --- the tokenizer on FSQ -------------------------------------------------------------------

def test_config_levels_fix_code_dim_and_num_codes():
    from tinytok.tokenizer.vqvae import (TokenizerConfig, init_tokenizer_params,
                                         tokenizer_config, with_quantizer)
    c = with_quantizer("vqvae-tiny", "fsq", (8, 5, 5, 5))
    assert (c.code_dim, c.num_codes, c.levels) == (4, 1000, (8, 5, 5, 5))
    assert tokenizer_config(dict(vars(c), levels=[8, 5, 5, 5])) == c     # read back from JSON
    params = init_tokenizer_params(c)
    assert "quant.codebook" not in params                               # no codebook at all
    assert params["enc.out.w"].shape[0] == 4 and params["dec.conv1.w"].shape[1] == 4
    with pytest.raises(ConfigError, match="fix code_dim = 4"):
        TokenizerConfig(quantizer="fsq", levels=(8, 5, 5, 5))        # 64 and 512: not so
    with pytest.raises(ConfigError, match="fsq quantizer only"):
        with_quantizer("vqvae-tiny", "vq", (4, 4))


def test_tokenizer_trains_saves_and_round_trips(tmp_path):
    from tinytok.data.datasets import make_shapes
    from tinytok.pipeline import Tokenizer
    from tinytok.tokenizer.vqvae import tokenizer_config, with_quantizer
    from tinytok.training import TokenizerRecipe, TrainSettings, train_tokenizer
    config = with_quantizer(tokenizer_config("vqvae-tiny"), "fsq", (4, 4, 3))
    images = make_shapes(64, seed=1).images
    logs = []
    history = train_tokenizer(images, config,
                              TrainSettings(steps=30, batch_size=8, lr=3e-3, warmup=2, seed=0,
                                            checkpoint_every=100, log_every=100),
                              str(tmp_path / "tok.npz"),
                              TokenizerRecipe(restart_every=0, stats_every=1),
                              log=logs.append, progress_stream=open(os.devnull, "w"))
    assert any("no codebook" in line for line in logs)                # k-means, restarts skipped
    losses = [h["loss"] for h in history]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    tok = Tokenizer.load(tmp_path / "tok.npz")
    assert tok.config == config
    ids = tok.encode(images[:5])
    assert ids.shape == (5, 8, 8) and ids.min() >= 0 and ids.max() < 48
    assert tok.decode(ids).shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(tok.encode(tok.decode(ids)).shape, ids.shape)


def test_cli_trains_an_fsq_tokenizer_and_a_prior_on_it(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "TINYTOK_BACKEND": "numpy"}

    def tinytok(*args):
        return subprocess.run([sys.executable, "-m", "tinytok.cli", *map(str, args)],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
    r = tinytok("train-tokenizer", "--data", "shapes", "--config", "vqvae-tiny",
                "--quantizer", "fsq", "--levels", "4,4", "--steps", 3, "--n-images", 32,
                "--batch-size", 4, "--log-every", 1, "--out", "tok.npz")
    assert r.returncode == 0, r.stderr
    assert "fsq, 16 codes" in r.stderr and "no codebook" in r.stderr
    assert "wrote tok.npz" in r.stdout
    r = tinytok("train-prior", "--tokenizer", "tok.npz", "--config", "gpt-tiny",
                "--n-images", 32, "--steps", 2, "--batch-size", 4, "--out", "prior.npz")
    assert r.returncode == 0, r.stderr
    for args, words in [(("--levels", "4,1"), ">= 2"), (("--levels", "4,x"), "commas"),
                        (("--codes", 9), "--codes does not apply"),
                        (("--quantizer", "vq", "--levels", "4,4"), "fsq only")]:
        args = args if "--quantizer" in args else ("--quantizer", "fsq") + args
        r = tinytok("train-tokenizer", *args, "--steps", 1, "--out", "x.npz")
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr
