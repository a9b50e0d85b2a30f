"""Work on every CPU core: a training step's batch in parts, an op's arrays in blocks.

NumPy's matrix products already use every core (BLAS threads), but each element-wise ufunc
(``tanh``, ``*=``, ``exp``, a row ``sum``) runs on one core. In the prior's training step
those passes are about two thirds of the time, so on a 2-core machine half of the machine
sits idle for most of the step; PyTorch spreads the same loops over its threads.

NumPy releases the GIL inside its loops, so plain Python threads do run them side by side.
``for_row_blocks(fn, a, b, ...)`` cuts the arrays into one block of rows (first axis) per
thread and calls ``fn(a_block, b_block, ...)`` on each block at once; ``fn`` writes its
results into blocks it was given (``out=`` and in-place operators), so nothing is gathered.

What stays exact. The same thread count gives the same bits on every run, so training is
reproducible and resuming is exact. Element-wise work and work along a row give the same
bits on any number of threads; ``fn`` must therefore treat every row on its own, and sums
*across* rows (bias gradients) are done on whole columns, never added up from blocks. A
matrix product cut into blocks can differ from the uncut one in the last bit (BLAS treats
the edges of its tiles with other code), exactly as BLAS's own threads do.

Small arrays (under ``MIN_PARALLEL_SIZE`` elements) and CuPy arrays are not split: ``fn`` is
called once on the whole arrays. The GPU is already parallel, and handing work to a thread
costs more than a small loop (the KV-cache sampler works on a few rows at a time).

Threads and BLAS. OpenBLAS runs its own threads, which keep spinning for a while after each
product; Python threads started next to them fight them for the cores and everything gets
slower. So the two are switched together: ``use_cores()`` (what the command line and the
benchmark call) runs tinytok's blocks on every core *and* sets BLAS to one thread per call.
The matrix products are then cut into blocks too (``matmul_blocks``, and tinytok.ops.linear),
each thread calling single-threaded BLAS on its own block, which is about as fast as BLAS's
own threads.
Until ``use_cores()`` is called (or ``TINYTOK_THREADS`` is set), nothing here starts a
thread: a library should not take a machine's cores behind its user's back.

Training: parts of the batch. Handing a block to a sleeping thread costs tens of
microseconds (waking it, then the GIL), and a training step has about a hundred such
blocks. So training steps go one level up: ``for_batch_parts`` gives each thread a part of
the batch for the *whole* forward and backward (data parallelism, as PyTorch's
DistributedDataParallel does across machines, here across the cores of one), and adds the
parts' weight gradients at the end. Inside a part nothing is split again. One hand-off per
step instead of a hundred made the vqvae-ref step about 18% faster and the gpt-ref step
about 11% (same process, interleaved). The added gradients differ from one thread's in the
last bits (a sum in another order); the same thread count still gives the same bits every
run. Sampling goes the other way (``blas_threads_for_small_products``): its products are a
few rows each, and BLAS's spinning threads take them up faster than ours.
"""
import os
import threading
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

from tinytok import backend
from tinytok.backend import get_array_module
from tinytok.errors import ConfigError

MIN_PARALLEL_SIZE = 1 << 16  # elements in the first array below which one call is faster

_threads = None     # how many threads to use; None: not decided yet (see threads())
_pool, _pool_size = None, 0  # the worker threads, started on first use
_this_thread = threading.local()  # .in_part: this thread runs a part of a batch (no splitting)


def available_cores():
    """The number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads():
    """How many threads for_row_blocks uses (1 until use_cores or TINYTOK_THREADS)."""
    if _threads is None:
        use_cores(_threads_from_env(default=1))
    return _threads


def _threads_from_env(default):
    """TINYTOK_THREADS as a positive integer, or `default` when it is not set."""
    value = os.environ.get("TINYTOK_THREADS", "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"TINYTOK_THREADS must be a positive integer, got {value!r}")
    return int(value)


def use_cores(n=None):
    """Run tinytok's row blocks on n threads, and BLAS on one thread per call when n > 1
    (see the module docstring). Returns the previous count.

    n=None: TINYTOK_THREADS if set, else every core this process may use. use_cores(1) goes
    back to one thread here and leaves BLAS as it was set.
    """
    global _threads
    if n is None:
        n = _threads_from_env(default=available_cores())
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"the thread count must be a positive integer, got {n!r}")
    previous, _threads = _threads or 1, int(n)
    if n > 1:
        _limit_blas_threads(1)
    return previous


@contextmanager
def blas_threads_for_small_products():
    """Within the block: BLAS on every core with its own threads, tinytok's blocks off; the
    previous setting comes back after. Does nothing unless use_cores() is on.

    For sampling token by token: every product is a few rows times a weight matrix, far too
    small to cut into blocks, and BLAS's threads, which spin between calls, take each one up
    at once. Sampling the gpt-ref prior (16 sequences, 64 tokens) was 3-4% faster this way
    than with use_cores()'s setting (same process, interleaved).
    """
    if threads() == 1:
        yield
        return
    previous = threads()
    blas_alone()
    try:
        yield
    finally:
        use_cores(previous)


def blas_alone():
    """One thread here and BLAS on its own threads, every core: how the sgemm ceiling is
    measured (tinytok bench, tests/peers/torch_peer.py)."""
    use_cores(1)
    _limit_blas_threads(available_cores())


def _limit_blas_threads(n):
    """Set the BLAS libraries loaded in this process (NumPy's OpenBLAS, ...) to n threads."""
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=n, user_api="blas")


def row_blocks(n_rows, n_blocks):
    """Split range(n_rows) into at most n_blocks contiguous (start, stop) pairs."""
    n_blocks = max(1, min(n_blocks, n_rows))
    edges = [n_rows * i // n_blocks for i in range(n_blocks + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _worth_splitting(arrays):
    """Split only NumPy arrays, when the first one is large enough and has rows (two or
    more axes: a 1-D first array is one row). The others may be 1-D, one value per row
    (the nearest-code search writes one id per row).

    The cheap tests come first: the KV-cache sampler calls this thousands of times a second
    on small arrays."""
    return (arrays[0].size >= MIN_PARALLEL_SIZE and threads() > 1 and arrays[0].ndim >= 2
            and arrays[0].shape[0] > 1 and all(isinstance(a, np.ndarray) for a in arrays)
            and not _inside_part())


def _inside_part():
    """Whether this thread is running a part of a batch (then nothing is split again)."""
    return getattr(_this_thread, "in_part", False)


def for_row_blocks(fn, *arrays):
    """fn(*blocks) for blocks of rows (first axis) of the arrays, one block per thread.

    arrays: NumPy or CuPy arrays with the same first-axis length. fn writes its results
    into the blocks (they are views) and returns nothing. The first array's size decides
    whether splitting is worth it. See the module docstring for what fn may do.
    """
    if _worth_splitting(arrays):
        _run_in_row_blocks(fn, arrays)
    else:
        fn(*arrays)


def _run_in_row_blocks(fn, arrays):
    """The splitting itself: this thread takes the first block, the pool the others."""
    n_rows = arrays[0].shape[0]
    if any(a.shape[0] != n_rows for a in arrays):
        raise ValueError("for_row_blocks: arrays must share their first axis, got "
                         f"{[a.shape for a in arrays]}")
    _on_threads([partial(fn, *(a[lo:hi] for a in arrays))
                 for lo, hi in row_blocks(n_rows, threads())])


def _on_threads(calls):
    """Run the zero-argument calls at once: the first on this thread, the others on the
    pool. Returns their results, in order; a worker's exception is raised here."""
    jobs = [_worker_pool().submit(call) for call in calls[1:]]
    try:
        first = calls[0]()
    finally:
        others = [job.result() for job in jobs]  # waits for every worker
    return [first] + others


def _worker_pool():
    """The threads() - 1 worker threads (the calling thread does one block itself)."""
    global _pool, _pool_size
    if _pool_size < threads() - 1:
        _pool = ThreadPoolExecutor(threads() - 1, thread_name_prefix="tinytok")
        _pool_size = threads() - 1
    return _pool


def for_column_blocks(fn, *arrays):
    """fn(*blocks) for blocks of columns (last axis) of 2-D arrays, one block per thread.

    The same as for_row_blocks on the transposed arrays; fn sees untransposed blocks. Used
    where each column is one independent result (a column of a weight gradient).
    """
    for_row_blocks(lambda *rows: fn(*(r.T for r in rows)), *(a.T for a in arrays))


def matmul_blocks(a, b, row_bias=None):
    """a (m, k) @ b (k, n) (+ row_bias (m,) on every column) -> (m, n), cut into independent
    blocks for the threads: blocks of b's columns when n is the larger side (the pixels of
    a convolution), else blocks of a's rows. The bias is added inside each block, which
    saves a separate pass over the result."""
    out = get_array_module(a).empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    if b.shape[1] >= a.shape[0]:
        for_column_blocks(partial(_matmul_columns, a=a, row_bias=row_bias), b, out)
    else:
        rows = (a, out) if row_bias is None else (a, out, row_bias[:, None])
        for_row_blocks(partial(_matmul_rows, b=b), *rows)
    return out


def _matmul_columns(b, out, a, row_bias):
    get_array_module(a).matmul(a, b, out=out)
    if row_bias is not None:
        out += row_bias[:, None]


def _matmul_rows(a, out, row_bias=None, *, b):
    get_array_module(a).matmul(a, b, out=out)
    if row_bias is not None:
        out += row_bias                                  # (m, 1) block: one per row


def for_elementwise_blocks(fn, *arrays):
    """fn(*blocks) for arrays of one shape whose elements are treated one by one.

    Like for_row_blocks, but cut along the axis that is outermost *in memory* (the first
    array's largest stride): for the convolutions' NCHW views of CHWN memory that is the
    channel axis, so each thread gets one contiguous stretch instead of every N-th float.
    """
    if _worth_splitting(arrays):
        order = sorted(range(arrays[0].ndim), key=lambda axis: -abs(arrays[0].strides[axis]))
        _run_in_row_blocks(fn, [a.transpose(order) for a in arrays])
    else:
        fn(*arrays)                      # element by element: any axis order will do


def for_batch_parts(fn, batch_size, grads=None):
    """Data parallelism for a training step: fn(lo, hi, part_grads) on one contiguous part
    [lo, hi) of the batch per thread, then the parts' gradients added into grads.
    Returns fn's results, in batch order. Without grads (inference, e.g. encoding images)
    fn(lo, hi) is called and only the results are gathered.

    fn runs the forward and backward of examples lo..hi-1 and adds their gradients into
    part_grads (grads itself for the first part, zeroed dicts of the same arrays for the
    others). It must weight its part's loss by its share of the batch (for a mean over
    examples, dloss = (hi - lo) / batch_size) so that the parts add up to the gradient of
    the whole batch's loss. Nothing inside a part is split again (see the module
    docstring). On one thread, for a batch of one, and on CuPy (the GPU is parallel
    already) there is a single part: fn(0, batch_size, grads).
    """
    parts = _batch_parts(batch_size)
    if grads is None:
        return _run_parts(fn, parts, [()] * len(parts))
    part_grads = [grads] + [{name: np.zeros_like(g) for name, g in grads.items()}
                            for _ in parts[1:]]
    results = _run_parts(fn, parts, [(g,) for g in part_grads])
    for extra in part_grads[1:]:  # always in the same order: the same bits on every run
        for name, g in extra.items():
            grads[name] += g
    return results


def _batch_parts(batch_size):
    """[(lo, hi), ...]: one part per thread, or a single part inside a part and on CuPy
    (the GPU is parallel already)."""
    if backend.name() != "numpy" or _inside_part():
        return [(0, batch_size)]
    return row_blocks(batch_size, threads())


def _run_parts(fn, parts, args):
    """fn(lo, hi, *args[i]) for every part i, each with splitting switched off in its
    thread; the results in order."""
    return _on_threads([partial(_run_part, fn, lo, hi, *more)
                        for (lo, hi), more in zip(parts, args)])


def _run_part(fn, lo, hi, *args):
    """fn on one part, with splitting switched off in this thread while it runs."""
    outer, _this_thread.in_part = _inside_part(), True
    try:
        return fn(lo, hi, *args)
    finally:
        _this_thread.in_part = outer
