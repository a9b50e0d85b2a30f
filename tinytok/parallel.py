"""The speed layer: a batch in parts on every CPU core, BLAS threads, the allocator.

Nothing below this layer knows about it: the op pairs and the models are plain formulas,
and run on one thread unless BLAS itself uses more. What is here wraps them from above.

Batch parts (data parallelism on one machine). NumPy's matrix products can use every core
(BLAS threads), but each element-wise pass (``tanh``, ``*=``, ``exp``, a row ``sum``) runs on
one core, and in a training step those passes are a large share of the time. NumPy releases
the GIL inside its loops, so plain Python threads do run them side by side. Handing work to
a sleeping thread costs tens of microseconds (waking it, then the GIL), so the work is handed
over once per step, in big pieces: ``for_batch_parts(fn, batch_size, grads)`` gives each
thread a contiguous part of the batch for the *whole* forward and backward, and adds the
parts' gradients at the end, as PyTorch's DistributedDataParallel does across machines.
Training steps, encoding, decoding and scoring use it. A part never splits again.

What stays exact. The same thread count gives the same bits on every run, so training is
reproducible and resuming is exact. Across thread counts the added gradients differ in the
last bits (a sum in another order, and BLAS may round a product of 16 rows differently from
one of 32).

Threads and BLAS. OpenBLAS runs its own threads, which keep spinning for a while after each
product; our threads started next to them fight them for the cores. So the two are switched
together: ``use_cores()`` (what the command line and the benchmark call) runs batch parts on
every core *and* sets BLAS to one thread per call. Sampling goes the other way
(``blas_threads_for_small_products``): its products are a few rows each, one token at a time,
and BLAS's spinning threads take them up faster than a hand-off to ours could.

Until ``use_cores()`` is called (or ``TINYTOK_THREADS`` is set), nothing here starts a thread
or touches BLAS: a library should not take a machine's cores behind its user's back.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from tinytok import backend
from tinytok.errors import ConfigError
from tinytok.ops.checks import require_positive_int

_threads = None     # how many threads to use; None: not decided yet (see threads())
_pool, _pool_size = None, 0  # the worker threads, started on first use
_this_thread = threading.local()  # .in_part: this thread runs a part of a batch


# ---------------------------------------------------------------- how many threads

def available_cores():
    """The number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads():
    """How many batch parts to run at once (1 until use_cores or TINYTOK_THREADS)."""
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
    """Run batch parts on n threads, and BLAS on one thread per call when n > 1 (see the
    module docstring). Returns the previous count.

    n=None: TINYTOK_THREADS if set, else every core this process may use. use_cores(1) goes
    back to one thread here and leaves BLAS as it was set.
    """
    global _threads
    if n is None:
        n = _threads_from_env(default=available_cores())
    n = require_positive_int("the thread count", n)
    previous, _threads = _threads or 1, n
    if n > 1:
        _limit_blas_threads(1)
    return previous


@contextmanager
def blas_threads_for_small_products():
    """Within the block: BLAS on every core with its own threads, batch parts off; the
    previous setting comes back after. Does nothing unless use_cores() is on.

    For sampling token by token: every product is a few rows times a weight matrix, far too
    small to hand to a thread, and BLAS's threads, which spin between calls, take each one up
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


# ---------------------------------------------------------------- batch parts

def row_blocks(n_rows, n_blocks):
    """Split range(n_rows) into at most n_blocks contiguous (start, stop) pairs."""
    n_blocks = max(1, min(n_blocks, n_rows))
    edges = [n_rows * i // n_blocks for i in range(n_blocks + 1)]
    return list(zip(edges[:-1], edges[1:]))


def for_batch_parts(fn, batch_size, grads=None):
    """Data parallelism for a step: fn(lo, hi, part_grads) on one contiguous part [lo, hi)
    of the batch per thread, then the parts' gradients added into grads. Returns fn's
    results, in batch order. Without grads (inference: encoding, decoding, scoring)
    fn(lo, hi) is called and only the results are gathered.

    fn runs the forward and backward of examples lo..hi-1 and adds their gradients into
    part_grads (grads itself for the first part, zeroed dicts of the same arrays for the
    others). It must weight its part's loss by its share of the batch (for a mean over
    examples, dloss = (hi - lo) / batch_size) so that the parts add up to the gradient of
    the whole batch's loss. On one thread, inside a part, and on CuPy (the GPU is parallel
    already) there is a single part: fn(0, batch_size, grads).
    """
    parts = _batch_parts(batch_size)
    if grads is None:
        return _run_parts(fn, parts, [()] * len(parts))
    part_grads = [grads] + [{name: backend.get_array_module(g).zeros_like(g)
                             for name, g in grads.items()} for _ in parts[1:]]
    results = _run_parts(fn, parts, [(g,) for g in part_grads])
    for extra in part_grads[1:]:  # always in the same order: the same bits on every run
        for name, g in extra.items():
            grads[name] += g
    return results


def _batch_parts(batch_size):
    """[(lo, hi), ...]: one part per thread, or a single part inside a part (a worker
    waiting for workers could wait for ever) and on CuPy."""
    if backend.name() != "numpy" or getattr(_this_thread, "in_part", False):
        return [(0, batch_size)]
    return row_blocks(batch_size, threads())


def _run_parts(fn, parts, args):
    """fn(lo, hi, *args[i]) for every part i at once: the first part on this thread, the
    others on the pool. Returns the results in order; a worker's exception is raised here."""
    jobs = [_worker_pool().submit(_run_part, fn, lo, hi, *more)
            for (lo, hi), more in zip(parts[1:], args[1:])]
    try:
        first = _run_part(fn, *parts[0], *args[0])
    finally:
        others = [job.result() for job in jobs]  # waits for every worker
    return [first] + others


def _run_part(fn, lo, hi, *args):
    """fn on one part, marked as a part in this thread while it runs."""
    outer, _this_thread.in_part = getattr(_this_thread, "in_part", False), True
    try:
        return fn(lo, hi, *args)
    finally:
        _this_thread.in_part = outer


def _worker_pool():
    """The threads() - 1 worker threads (the calling thread runs one part itself)."""
    global _pool, _pool_size
    if _pool_size < threads() - 1:
        _pool = ThreadPoolExecutor(threads() - 1, thread_name_prefix="tinytok")
        _pool_size = threads() - 1
    return _pool


# ---------------------------------------------------------------- the allocator

def reuse_freed_host_memory():
    """Ask the C allocator (glibc) to keep freed big buffers for reuse. Returns True if done.

    A training step allocates and frees the same few-megabyte arrays every step. By default
    glibc hands each such buffer back to the operating system when it is freed, so the next
    step's allocation page-faults its way through fresh memory: in the reference encoder
    that is about a fifth of the step time. Raising the mmap and trim thresholds keeps the
    memory in the process for the next step (the resident size then stays at its peak).
    PyTorch avoids the same cost with its own caching allocator. Called by the command line
    and the benchmark; a no-op returning False where glibc is not the allocator.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    big = 1 << 30  # 1 GiB: buffers below this come from the heap and stay there
    return bool(mallopt(M_MMAP_THRESHOLD, big)) and bool(mallopt(M_TRIM_THRESHOLD, 2 * big))
