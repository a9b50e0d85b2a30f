"""Run by tests/test_mpi.py under ``mpiexec -n 2``: one adversarial step (the tokenizer
against its patch discriminator) with the batch shared between the processes.

    mpiexec -n 2 python tests/mpi_gan_check.py OUT_FOLDER

Each process takes its rows of one fixed batch (batch_share), runs adversarial_grads with
the real all-reduce as sum_everywhere (the adaptive weight's sums at the decoder's last
weight) and the whole batch's size as of_batch, then sums the gradients and its share of
the losses as the trainer does. Process r writes OUT_FOLDER/gan_rank<r>.npz: the summed
gradients, the losses and lambda, for the test to compare with one process. The
feature-matching and amplitude terms are on (FEATURE_WEIGHT, AMPLITUDE_WEIGHT): their
shares of the reconstruction gradient at the decoder's last weight go into the same
all-reduce as the rest of lambda's sums.
"""
import os
import sys

import numpy as np

from tinytok import distributed
from tinytok.distributed import batch_share, sum_over_processes
from tinytok.training.adversarial import LOSSES, adversarial_grads
from tinytok.training.optim import zeros_like_params

FEATURE_WEIGHT = 0.5
AMPLITUDE_WEIGHT = 2.0


def setup(batch=6):
    """The step's models and batch, the same on every process (and in the test)."""
    from dataclasses import replace
    from tinytok.tokenizer.discriminator import DiscriminatorConfig, init_discriminator_params
    from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_config
    config = replace(tokenizer_config("vqvae-tiny"), image_size=16)
    disc = DiscriminatorConfig(8)
    params = init_tokenizer_params(config, seed=2)
    params.update(init_discriminator_params(disc, seed=3))
    x = np.random.default_rng(4).uniform(-0.5, 0.5, (batch, 3, 16, 16)).astype(np.float32)
    return config, disc, params, x


def one_step(world):
    """This process's share of the step; every sum over the processes done. Returns
    {"grad.<name>": ..., "loss", each of the step's LOSSES, "gan_lambda"}."""
    config, disc, params, x = setup()
    lo, hi = batch_share(len(x), world)
    grads = zeros_like_params(params)
    out = adversarial_grads(x[lo:hi], params, config, disc, grads, 0.1,
                            lambda arrays: sum_over_processes(world, arrays), of_batch=len(x),
                            feature_weight=FEATURE_WEIGHT, amplitude_weight=AMPLITUDE_WEIGHT)
    share = (hi - lo) / len(x)
    summed = {f"grad.{k}": g for k, g in grads.items()}
    summed.update({k: np.asarray(out[k] * share) for k in ("loss",) + LOSSES})
    sum_over_processes(world, summed)
    summed["gan_lambda"] = np.asarray(out["gan_lambda"])
    return summed


def main(out):
    world = distributed.start("numpy")
    np.savez(os.path.join(out, f"gan_rank{world.rank}.npz"), **one_step(world))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
