"""Exercise · Embedding lookup, forward and backward (both yours to write).

    out[...] = table[ids[...]]       ids (...) int in [0, V),  table (V, C)  ->  out (..., C)

The backward gets dout (..., C) and returns dtable (V, C): each row of the table collects
the gradients of every position that looked it up. ids are integers: no gradient.
The checker's ids use some rows twice and some not at all.

Check:     tinytok check embedding lessons/exercises/embedding.py
Solution:  tinytok/ops/embedding.py

The cache is yours. Until a body is written it returns None ("not written yet").
"""
import numpy as np


def embedding_forward(ids, table):
    """ids (...) int, table (V, C) -> (out (..., C), cache)."""
    # TODO
    return None


def embedding_backward(dout, cache):
    """dout (..., C), your cache -> dtable (V, C)."""
    # TODO
    return None
