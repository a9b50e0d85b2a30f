"""Embedding lookup: each integer id picks one row of a table."""
from tinytok.backend import get_array_module, scatter_add
from tinytok.errors import ShapeError
from tinytok.ops.checks import require_float, require_int


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
    return table[ids], (ids, table.shape)


def embedding_backward(dout, cache):
    """dout (..., C) -> dtable (V, C): each row's gradient is the sum over where it was used.

    An id used twice gets both gradients, so the scatter must accumulate (a plain
    ``dtable[ids] = dout`` would keep only the last one).
    """
    ids, table_shape = cache
    xp = get_array_module(dout)
    dtable = xp.zeros(table_shape, dtype=dout.dtype)
    scatter_add(dtable, ids.reshape(-1), dout.reshape(-1, table_shape[1]))
    return dtable
