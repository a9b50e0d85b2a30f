"""Embedding lookup: each integer id picks one row of a table; and its mirror, scatter_add."""
from typing import Any, NamedTuple

from tinytok.backend import get_array_module
from tinytok.errors import ShapeError
from tinytok.ops.checks import require_float, require_int


class EmbeddingCache(NamedTuple):
    ids: Any            # (...) int
    table_shape: tuple  # (V, C)


def embedding_forward(ids, table):
    """out[...] = table[ids[...]]. ids (...) int in [0, V), table (V, C) -> out (..., C)."""
    require_int("ids", ids)
    require_float("table", table)
    if table.ndim != 2:
        raise ShapeError(f"table must have shape (V, C), got {tuple(table.shape)}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= table.shape[0]):
        raise ShapeError(f"ids must lie in [0, {table.shape[0]}) for a table of "
                         f"{table.shape[0]} rows, got values from {int(ids.min())} "
                         f"to {int(ids.max())}")
    return table[ids], EmbeddingCache(ids, table.shape)


def embedding_backward(dout, cache):
    """dout (..., C) -> dtable (V, C):  dtable[v] = sum of dout[...] where ids[...] == v.

    An id used twice gets both gradients, so the scatter must accumulate (a plain
    ``dtable[ids] = dout`` would keep only the last one).
    """
    ids, table_shape = cache
    dtable = get_array_module(dout).zeros(table_shape, dtype=dout.dtype)
    return scatter_add(dtable, ids.reshape(-1), dout.reshape(-1, table_shape[1]))


def scatter_add(target, index, values):
    """target[index[i]] += values[i] along the first axis, repeated indices accumulating.

    index (M,) int, values (M, ...) -> target (K, ...), changed in place and returned. The
    gradient of a lookup (embedding rows, codebook rows). ``add.at`` would do this one
    element at a time; sorting the indices and summing each run of equal ones with
    ``add.reduceat`` does the same in a few vectorised passes, on NumPy and CuPy (12+)
    alike, and always in the same order (the same ids give the same bits).
    """
    xp = get_array_module(target)
    if len(index) == 0:
        return target
    order = xp.argsort(index)     # deterministic: the same ids give the same summation order
    sorted_index = index[order]
    is_start = xp.ones(len(index), dtype=bool)
    is_start[1:] = sorted_index[1:] != sorted_index[:-1]     # first of each run of equal ids
    starts = xp.flatnonzero(is_start)
    target[sorted_index[starts]] += xp.add.reduceat(values[order], starts, axis=0)
    return target
