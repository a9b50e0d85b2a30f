"""Exercise · The discriminator's hinge loss, forward and backward (both yours to write).

    loss = mean(max(0, 1 - real)) + mean(max(0, 1 + fake))

real, fake: the discriminator's scores (logits, any shapes, not necessarily the same) on
real pictures and on the tokenizer's reconstructions -> a 0-d loss. Each mean is over its
own scores. D wants real scores at least +1 and fake ones at most -1; a score beyond its
margin costs nothing, and so gets no gradient. The backward takes dloss (a number) first
and returns (dreal, dfake), shaped like real and fake. The checker's scores lie on both
sides of their margins, never exactly on one.

Check:     tinytok check hinge_d_loss lessons/exercises/hinge_d_loss.py
Solution:  tinytok/ops/losses.py

The cache is yours. Until a body is written it returns None ("not written yet").
"""
import numpy as np


def hinge_d_loss_forward(real, fake):
    """real, fake (any shapes) -> (loss, cache)."""
    # TODO
    return None


def hinge_d_loss_backward(dloss, cache):
    """dloss (a number), your cache -> (dreal, dfake)."""
    # TODO
    return None
