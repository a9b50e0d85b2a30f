"""Exact resume: stopping a run and resuming it computes what the uninterrupted run computes.

A run of N steps is compared, array by array and bit for bit, with a run stopped at step k
and resumed to N: parameters, optimizer state, EMA state, dead-code window, loss history.
The stop is a Ctrl-C (SIGINT: the loop finishes the step and writes a checkpoint) or a
crash / SIGKILL (only the last periodic checkpoint survives). First through the Python API
with very small models (every quantizer with a codebook, restarts on, and the prior), then
through the real command line in a subprocess.
"""
import glob
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from tinytok.training.checkpoint import load_checkpoint
from tinytok.data.datasets import CAPTION_WORDS, make_shapes
from tinytok.prior.gpt import GPTConfig
from tinytok.training import (PriorData, TokenizerRecipe, TrainSettings, TrainingStopped,
                              train_prior, train_tokenizer)
from tinytok.prior.vocab import Vocab
from tinytok.tokenizer.vqvae import TokenizerConfig


def assert_same(a, b, where="checkpoint"):
    """Equal nesting and values; arrays equal bit for bit with equal dtypes and shapes."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), \
            f"{where} differs (max abs diff {np.max(np.abs(a.astype(float) - b)):.3g})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), f"{where}: keys differ"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def assert_same_checkpoint(path_a, path_b):
    a, b = load_checkpoint(path_a), load_checkpoint(path_b)
    assert (a.kind, a.step) == (b.kind, b.step)
    assert_same(a.params, b.params, "params")
    assert_same(a.optimizer_state, b.optimizer_state, "optimizer_state")
    assert_same(a.extra, b.extra, "extra")
    assert_same(a.config, b.config, "config")


def no_temp_files(folder):
    return [p for p in glob.glob(os.path.join(folder, ".*.tmp"))]


# ---------------------------------------------------------------------------------------
# Python API: Ctrl-C and a crash, simulated from the progress stream

class StopAt:
    """A progress stream that acts once step `step` is done: Ctrl-C (a real SIGINT sent to
    this process) or a crash (an exception out of the loop, as a SIGKILL would leave it).

    It is no terminal, so with log_every=1 the progress writes one plain line per step,
    "tokenizer 3/6 [00:01<00:01, 2.10 img/s, loss=...]", right after the step."""

    class Crash(Exception):
        pass

    def __init__(self, step, how):
        self.step, self.how, self.fired = step, how, False

    def isatty(self):
        return False

    def write(self, text):
        m = re.search(STEP, text)
        if m and int(m.group(1)) == self.step and not self.fired:
            self.fired = True
            if self.how == "sigint":
                signal.raise_signal(signal.SIGINT)
            else:
                raise StopAt.Crash(f"simulated crash after step {self.step}")

    def flush(self):
        pass


STEP = r" (\d+)/\d+ \["           # the step count in a progress line
N, CKPT_EVERY, RESTART_EVERY = 6, 2, 2
MICRO_TOK = TokenizerConfig("micro", image_size=16, hidden=8, res_hidden=4, n_res=1,
                            code_dim=4, num_codes=16)


@pytest.fixture(scope="module")
def micro_images():
    return np.ascontiguousarray(make_shapes(24, seed=1).images[:, ::2, ::2])   # (24, 16, 16, 3)


def _tok_run(images, quantizer, out, stream=None, resume=False):
    config = replace(MICRO_TOK, quantizer=quantizer)
    settings = TrainSettings(steps=N, batch_size=3, lr=3e-3, warmup=2, seed=7,
                             checkpoint_every=CKPT_EVERY, log_every=1)
    recipe = TokenizerRecipe(kmeans_images=16, restart_every=RESTART_EVERY)
    return train_tokenizer(images, config, settings, str(out), recipe, resume=resume,
                           log=lambda *a: None, progress_stream=stream)


@pytest.mark.parametrize("quantizer", ["vq", "ema", "gumbel", "cosine", "factorized"])
def test_tokenizer_resume_after_ctrl_c_and_after_crash_is_exact(quantizer, micro_images,
                                                                tmp_path, monkeypatch):
    from tinytok.training import tokenizer_trainer    # calls restart_dead_codes from here
    restarts = []
    original = tokenizer_trainer.restart_dead_codes

    def counting(*args, **kwargs):
        n = original(*args, **kwargs)
        restarts.append(int(n))
        return n
    monkeypatch.setattr(tokenizer_trainer, "restart_dead_codes", counting)

    ref = tmp_path / "ref.npz"
    ref_history = _tok_run(micro_images, quantizer, ref, StopAt(-1, "none"))
    if quantizer != "gumbel":
        assert sum(restarts) > 0, "no dead code was restarted: the test would not cover it"
    assert len(ref_history) == N // RESTART_EVERY

    # Ctrl-C after step 3: a checkpoint of step 3 is written, then TrainingStopped
    out = tmp_path / "int.npz"
    with pytest.raises(TrainingStopped, match="--resume"):
        _tok_run(micro_images, quantizer, out, StopAt(3, "sigint"))
    assert load_checkpoint(out).step == 3
    history = _tok_run(micro_images, quantizer, out, resume=True)
    assert history == ref_history
    assert_same_checkpoint(ref, out)

    # a crash after step 5: the periodic checkpoint of step 4 is intact, resuming it works
    out = tmp_path / "crash.npz"
    with pytest.raises(StopAt.Crash):
        _tok_run(micro_images, quantizer, out, StopAt(5, "crash"))
    assert load_checkpoint(out).step == 4
    assert no_temp_files(tmp_path) == []
    history = _tok_run(micro_images, quantizer, out, resume=True)
    assert history == ref_history
    assert_same_checkpoint(ref, out)


MICRO_SCALES = (1, 2, 4)                  # a next-scale prior's maps on the 4x4 grid


def _micro_prior_data(kind="raster"):
    """Captions and random codes: 4x4 grids, or for a next-scale prior maps 1, 2, 4 (21
    ids) and a random quantizer of those maps for it to carry."""
    shapes = make_shapes(24, seed=2)
    vocab = Vocab(list(CAPTION_WORDS), 16, 4)
    rng = np.random.default_rng(0)
    captions = [vocab.encode_text(c) for c in shapes.captions]
    if kind != "scales":
        return PriorData(rng.integers(0, 16, size=(24, 4, 4)), captions, vocab)
    quantizer = {"quant.codebook": rng.normal(size=(3, 16, 3)).astype(np.float32),
                 "quant.phi.w": rng.normal(0, 0.2, size=(3, 3, 3, 3)).astype(np.float32),
                 "quant.phi.b": np.zeros(3, dtype=np.float32)}
    return PriorData(rng.integers(0, 16, size=(24, 21)), captions, vocab,
                     quantizer=quantizer)


def _prior_run(data, out, stream=None, resume=False, kind="raster"):
    extra = 1 if kind == "masked" else 0          # the masked prior's <mask> token
    scales = MICRO_SCALES if kind == "scales" else ()
    config = GPTConfig("micro", vocab_size=data.vocab.size + extra, context=32, n_layer=1,
                       n_head=2, n_embd=16, scales=scales)
    settings = TrainSettings(steps=8, batch_size=4, lr=3e-3, warmup=2, seed=5,
                             weight_decay=0.1, checkpoint_every=3, log_every=1)
    # a high caption-drop rate so that the dropout draws really matter
    return train_prior(data, config, settings, str(out), resume=resume, p_drop_caption=0.5,
                       log=lambda *a: None, progress_stream=stream, kind=kind)


@pytest.mark.parametrize("kind", ["raster", "masked", "scales"])
def test_prior_resume_after_ctrl_c_and_after_crash_is_exact(tmp_path, kind):
    """Every kind of prior; the masked one also draws its masks from (seed, step), the
    next-scale one carries its quantizer (kept, never trained)."""
    data = _micro_prior_data(kind)
    ref = tmp_path / "ref.npz"
    ref_history = _prior_run(data, ref, StopAt(-1, "none"), kind=kind)
    assert len(ref_history) == 8
    assert load_checkpoint(ref).config["kind"] == kind

    out = tmp_path / "int.npz"
    with pytest.raises(TrainingStopped, match="--resume"):
        _prior_run(data, out, StopAt(4, "sigint"), kind=kind)
    assert load_checkpoint(out).step == 4
    assert _prior_run(data, out, resume=True, kind=kind) == ref_history
    assert_same_checkpoint(ref, out)

    out = tmp_path / "crash.npz"
    with pytest.raises(StopAt.Crash):
        _prior_run(data, out, StopAt(7, "crash"), kind=kind)
    assert load_checkpoint(out).step == 6
    assert _prior_run(data, out, resume=True, kind=kind) == ref_history
    assert_same_checkpoint(ref, out)


def _prior_run_with(data, out, resume=False, **changes):
    """A micro prior run like _prior_run, some settings changed; returns its log lines."""
    config = GPTConfig("micro", vocab_size=data.vocab.size, context=32, n_layer=1, n_head=2,
                       n_embd=16)
    settings = replace(TrainSettings(steps=8, batch_size=4, lr=3e-3, warmup=2, seed=5,
                                     weight_decay=0.1, checkpoint_every=3, log_every=1),
                       **changes)
    lines = []
    train_prior(data, config, settings, str(out), resume=resume, p_drop_caption=0.5,
                log=lines.append, progress_stream=StopAt(-1, "none"))
    return lines


def test_resume_with_the_same_settings_is_silent_and_exact(tmp_path):
    data = _micro_prior_data()
    _prior_run(data, tmp_path / "ref.npz", StopAt(-1, "none"))
    out = tmp_path / "int.npz"
    with pytest.raises(TrainingStopped):
        _prior_run(data, out, StopAt(4, "sigint"))
    lines = _prior_run_with(data, out, resume=True)
    assert lines == [f"resuming {out} at step 4 of 8"]
    assert_same_checkpoint(tmp_path / "ref.npz", out)

    # how often it saves changes nothing computed: silent too, the same parameters
    out = tmp_path / "int2.npz"
    with pytest.raises(TrainingStopped):
        _prior_run(data, out, StopAt(4, "sigint"))
    lines = _prior_run_with(data, out, resume=True, checkpoint_every=5)
    assert lines == [f"resuming {out} at step 4 of 8"]
    assert_same(load_checkpoint(tmp_path / "ref.npz").params, load_checkpoint(out).params)


def test_resume_with_more_steps_says_the_schedule_is_replanned(tmp_path):
    """Train 3 steps, then resume to 8: the warm-up and cosine were planned over 3 steps
    and are now planned over 8, so the run is not the one planned for 8 from the start;
    the log says so in one line."""
    data = _micro_prior_data()
    _prior_run_with(data, tmp_path / "ref.npz")                  # 8 steps from the start
    out = tmp_path / "more.npz"
    _prior_run_with(data, out, steps=3)
    lines = _prior_run_with(data, out, resume=True)
    assert lines[0] == f"resuming {out} at step 3 of 8"
    assert lines[1:] == ["resuming a run planned for 3 steps with --steps 8: the "
                         "learning-rate schedule is re-planned over 8 steps from step 3, so "
                         "this will not match a run planned for 8 from the start"]
    ref, got = load_checkpoint(tmp_path / "ref.npz"), load_checkpoint(out)
    assert got.step == 8
    assert any(not np.array_equal(ref.params[k], got.params[k]) for k in ref.params)


def test_resume_with_other_settings_names_each_change(tmp_path):
    data = _micro_prior_data()
    out = tmp_path / "other.npz"
    with pytest.raises(TrainingStopped):
        _prior_run(data, out, StopAt(4, "sigint"))
    lines = _prior_run_with(data, out, resume=True, lr=1e-3, batch_size=2, seed=6, warmup=3)
    assert len(lines) == 2, lines
    assert lines[1].startswith("resuming with settings other than the checkpoint's (")
    for change in ("batch_size 4 -> 2", "lr 0.003 -> 0.001", "warmup 2 -> 3", "seed 5 -> 6"):
        assert change in lines[1], (change, lines[1])
    assert "apply from step 4 on" in lines[1]


@pytest.mark.parametrize("model", ["vq", "gumbel", "prior", "masked prior", "scales prior"])
def test_training_on_batch_parts_matches_one_thread(model, micro_images, tmp_path,
                                                   monkeypatch):
    """Three threads, each running a part of the batch (tinytok.parallel.for_batch_parts),
    train what one thread trains up to float32 rounding (the parts' gradients are added in
    another order), and give the same bits when run again. (A masked prior's rows score
    very different numbers of targets: each part is weighted by its share of them.)"""
    from tinytok import parallel
    runs = {}
    for name, threads in (("one", 1), ("three", 3), ("three_again", 3)):
        monkeypatch.setattr(parallel, "_threads", threads)
        out = tmp_path / f"{name}.npz"
        if model.endswith("prior"):
            kind = model.split()[0] if " " in model else "raster"
            runs[name] = (_prior_run(_micro_prior_data(kind), out, kind=kind),
                          load_checkpoint(out))
        else:
            runs[name] = (_tok_run(micro_images, model, out), load_checkpoint(out))
    history, ckpt = runs["three"]
    assert_same(ckpt.params, runs["three_again"][1].params, "params")
    assert history == runs["three_again"][0]
    one_history, one_ckpt = runs["one"]
    assert [h["step"] for h in history] == [h["step"] for h in one_history]
    np.testing.assert_allclose([h["loss"] for h in history],
                               [h["loss"] for h in one_history], rtol=1e-4)
    for k in one_ckpt.params:
        np.testing.assert_allclose(ckpt.params[k], one_ckpt.params[k], rtol=1e-3, atol=1e-4,
                                   err_msg=k)


def test_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(micro_images, tmp_path):
    """Two SIGINTs in one step: KeyboardInterrupt at once, the periodic checkpoint intact."""
    class Twice(StopAt):
        def write(self, text):
            m = re.search(STEP, text)
            if m and int(m.group(1)) == 3 and not self.fired:
                self.fired = True
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)

    out = tmp_path / "twice.npz"
    before = signal.getsignal(signal.SIGINT)   # Python's own, or SIG_IGN under nohup
    with pytest.raises(KeyboardInterrupt):
        _tok_run(micro_images, "vq", out, Twice(3, "sigint"))
    assert load_checkpoint(out).step == 2
    assert no_temp_files(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is before     # the handler in force, given back


# ---------------------------------------------------------------------------------------
# The real command line, in a subprocess: SIGINT and SIGKILL

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1", "TINYTOK_BACKEND": "numpy", "PYTHONUNBUFFERED": "1"}
CLI = [sys.executable, "-m", "tinytok.cli"]


def run_cli(args, cwd, timeout=120):
    return subprocess.run(CLI + list(args), cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def start_cli(args, cwd):
    return subprocess.Popen(CLI + list(args), cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_file(path, proc, timeout=90):
    t0 = time.monotonic()
    while not os.path.exists(path):
        assert proc.poll() is None, f"the run ended before writing {path}: " \
                                    f"{proc.communicate()[1][-2000:]}"
        assert time.monotonic() - t0 < timeout, f"{path} was not written in {timeout} s"
        time.sleep(0.02)


def tokenizer_args(out, steps):
    return ["train-tokenizer", "--config", "vqvae-tiny", "--quantizer", "ema",
            "--n-images", "24", "--batch-size", "3", "--steps", str(steps), "--warmup", "2",
            "--seed", "3", "--checkpoint-every", "2", "--log-every", "1",
            "--restart-every", "2", "--lr", "3e-3", "--out", out]


# Steps of the CLI runs: enough that the run is still going when the signal arrives, even
# on a busy machine (a tokenizer step takes ~0.3 s here, a prior step ~0.05 s).
CLI_N = {"tokenizer": 12, "prior": 30}


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    """A tiny tokenizer (for the prior) and the uninterrupted reference runs."""
    d = tmp_path_factory.mktemp("cli_resume")
    r = run_cli(tokenizer_args("ref_tok.npz", CLI_N["tokenizer"]), d)
    assert r.returncode == 0, r.stderr
    r = run_cli(prior_args("ref_prior.npz", CLI_N["prior"]), d)
    assert r.returncode == 0, r.stderr
    return d


def prior_args(out, steps, tokenizer="ref_tok.npz"):
    return ["train-prior", "--tokenizer", tokenizer, "--config", "gpt-tiny", "--n-images",
            "24", "--batch-size", "4", "--steps", str(steps), "--warmup", "2", "--seed", "3",
            "--checkpoint-every", "2", "--log-every", "1", "--lr", "3e-3", "--out", out]


ARGS = {"tokenizer": tokenizer_args, "prior": prior_args}
REF = {"tokenizer": "ref_tok.npz", "prior": "ref_prior.npz"}


@pytest.mark.parametrize("what", ["tokenizer", "prior"])
def test_cli_ctrl_c_writes_a_checkpoint_and_resume_is_exact(what, cli_dir):
    out = f"int_{what}.npz"
    proc = start_cli(ARGS[what](out, CLI_N[what]), cli_dir)
    try:
        wait_for_file(os.path.join(cli_dir, out), proc)   # a periodic checkpoint exists
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tinytok: stopped:") and "--resume" in last, err
    assert "Traceback" not in err
    step = load_checkpoint(os.path.join(cli_dir, out)).step
    assert 2 <= step < CLI_N[what]
    assert f"stopped at step {step} of {CLI_N[what]}" in last
    assert no_temp_files(cli_dir) == []

    r = run_cli(ARGS[what](out, CLI_N[what]) + ["--resume"], cli_dir)
    assert r.returncode == 0, r.stderr
    assert f"resuming {out} at step {step} of {CLI_N[what]}" in r.stderr
    assert_same_checkpoint(os.path.join(cli_dir, REF[what]),
                           os.path.join(cli_dir, out))


@pytest.mark.parametrize("what", ["tokenizer", "prior"])
def test_cli_sigkill_keeps_the_last_periodic_checkpoint_and_resume_is_exact(what, cli_dir):
    out = f"kill_{what}.npz"
    path = os.path.join(cli_dir, out)
    proc = start_cli(ARGS[what](out, CLI_N[what]), cli_dir)
    try:
        wait_for_file(path, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    ckpt = load_checkpoint(path)                     # intact, whatever the moment of the kill
    assert ckpt.step % 2 == 0 and 2 <= ckpt.step < CLI_N[what]
    # a stale temp file, as a kill in the middle of a save leaves it, must not matter
    with open(os.path.join(cli_dir, f".{out}.stale123.tmp"), "wb") as f:
        f.write(b"PK\x03\x04 half a checkpoint")

    r = run_cli(ARGS[what](out, CLI_N[what]) + ["--resume"], cli_dir)
    assert r.returncode == 0, r.stderr
    assert f"resuming {out} at step {ckpt.step} of {CLI_N[what]}" in r.stderr
    assert_same_checkpoint(os.path.join(cli_dir, REF[what]), path)
