"""Run by tests/test_mpi.py under ``mpiexec -n 2``: the MPI world's collectives, and a short
training run with codebook care on, whose state every process writes for the test to compare.

    mpiexec -n 2 python tests/mpi_check.py OUT_FOLDER

Each process writes OUT_FOLDER/rank<r>.json (what its collectives gave) and, through the
checkpoint format, OUT_FOLDER/rank<r>.npz (its own parameters, EMA state and usage window
after training: process 0 alone writes the run's checkpoint, so the others' state would
otherwise never be seen).
"""
import json
import os
import sys

import numpy as np

from tinytok import distributed
from tinytok.errors import BackendError
from tinytok.tokenizer.vqvae import TokenizerConfig
from tinytok.training import TokenizerRecipe, TrainSettings, train_tokenizer
from tinytok.data.datasets import make_shapes
from tinytok.training.checkpoint import save_checkpoint

MICRO = TokenizerConfig("micro", image_size=16, hidden=8, res_hidden=4, n_res=1, code_dim=4,
                        num_codes=16, quantizer="ema")


def collectives(world):
    """What each collective gives on this process."""
    mine = np.arange(5, dtype=np.float32) * (world.rank + 1)          # 1x and 2x
    summed = world.allreduce_sum(mine.copy())
    root = world.broadcast(np.full(3, world.rank + 10.0))
    try:
        world.allreduce_sum(np.arange(6.0)[::2])                       # not contiguous
        refused = False
    except BackendError:
        refused = True
    return {"summed": summed.tolist(), "root": root.tolist(), "refused_strided": refused,
            "anyone_rank1": world.anyone(world.rank == 1), "anyone_none": world.anyone(False),
            "bytes_reduced": world.bytes_reduced}


def train_with_care(world, out):
    """Six steps with the k-means start and restarts every 2 steps; every process writes
    the state it ends with (run_loop's own snapshot of it) to rank<r>.npz."""
    from tinytok.training import tokenizer_trainer
    real_run_loop = tokenizer_trainer.run_loop

    def run_loop_then_keep_state(settings, start, step_fn, snapshot_fn, *args):
        done = real_run_loop(settings, start, step_fn, snapshot_fn, *args)
        save_checkpoint(os.path.join(out, f"rank{world.rank}.npz"), **snapshot_fn(done))
        return done

    tokenizer_trainer.run_loop = run_loop_then_keep_state   # observes; changes nothing
    images = np.ascontiguousarray(make_shapes(24, seed=1).images[:, ::2, ::2])
    settings = TrainSettings(steps=6, batch_size=6, lr=3e-3, warmup=2, seed=7,
                             checkpoint_every=2, log_every=1)
    recipe = TokenizerRecipe(kmeans_images=16, restart_every=2)
    return train_tokenizer(images, MICRO, settings, os.path.join(out, "run.npz"), recipe,
                           log=lambda *a: None, world=world)


def main(out):
    world = distributed.start("numpy")
    report = collectives(world)
    report["history"] = train_with_care(world, out)
    with open(os.path.join(out, f"rank{world.rank}.json"), "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
