"""Exercise · The generator's loss against a hinge discriminator, forward and backward.

    loss = -mean(fake)

fake: the discriminator's scores (any shape) on the tokenizer's reconstructions -> a 0-d
loss. The generator (the tokenizer) wants them high. No hinge, no margin here: every score
counts, however high already. The backward takes dloss (a number) first and returns dfake
(fake's shape).

Check:     tinytok check hinge_g_loss lessons/exercises/hinge_g_loss.py
Solution:  tinytok/ops/losses.py

The cache is yours. Until a body is written it returns None ("not written yet").
"""
import numpy as np


def hinge_g_loss_forward(fake):
    """fake (any shape) -> (loss, cache)."""
    # TODO
    return None


def hinge_g_loss_backward(dloss, cache):
    """dloss (a number), your cache -> dfake (fake's shape)."""
    # TODO
    return None
