"""The speed layer across processes: one model trained by K processes that add their gradients.

    mpiexec -n 2 tinytok train-tokenizer ...            # two processes, one model

tinytok.parallel gives each core of one machine a part of the batch and adds the parts'
gradients. This module does the same across processes, and so across machines and GPUs:
each process takes its share of every global batch (the same (seed, step) batch one process
would draw), runs the forward and backward on it, and one **all-reduce** adds the shares'
gradients, so that every process holds the gradient of the whole batch and applies the same
update. That is all data parallelism is: the loss is a mean over examples, so its gradient
is a sum over examples, and a sum can be cut into shares and added back in any grouping.

A world is what the trainers talk to:

    world.rank, world.size, world.is_root       which process this is, of how many
    world.allreduce_sum(buffer)                 every process's buffer, added, on every process
    world.broadcast(buffer)                     process 0's buffer, on every process
    world.anyone(flag)                          True on every process if any one says so
    world.end_all(code)                         end every process now (an error on one of them)

``SINGLE`` (one process) does nothing: the buffer it is given is the answer. ``MPIWorld``
adds host (NumPy) buffers with MPI (mpi4py), ``NCCLWorld`` adds GPU (CuPy) buffers with
NCCL, one GPU per process, and asks MPI only to start the processes and introduce them.
``start()`` picks one from how the command was launched.

What travels. The gradients go as one flat buffer (``flat_buffer``): one call per step,
not one per parameter, because each call pays a fixed latency and a big one uses the
link at full speed. Anything else that is a *sum over examples* travels in the same buffer:
the loss, the EMA codebook's counts and sums, the code-usage counts. They must be summed,
not averaged: a code chosen 10 times on one process and 0 times on another was chosen 10
times in the batch, and the mean of two EMA means is not the EMA mean when the processes'
shares chose codes in different numbers. Anything *discrete* (the k-means start of the
codebook, which codes to restart) would come out differently on different processes, whose
sums differ in their last bits; it is decided once, on process 0, and broadcast.

Errors. Every process runs the same command on the same files, so bad input raises the same
error on each, and each ends with it (process 0 prints it). A failure on one process alone
(its checkpoint write, a bug, a second Ctrl-C) would leave the others waiting for ever in
their next all-reduce; ``end_all`` ends them. A killed process ends the job (mpiexec's rule).
"""
import os
import sys

import numpy as np

from tinytok import backend
from tinytok.errors import BackendError, ConfigError, TinytokError

# What MPI launchers tell the processes they start (Open MPI; MPICH and Intel MPI).
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK")
LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")
LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")


def _launcher_value(names, default):
    for name in names:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return default


def launched_size():
    """How many processes mpiexec started (1 when it did not start this one)."""
    return _launcher_value(SIZE_VARIABLES, 1)


def launched_rank():
    """This process's number among them (0 when not started by mpiexec): known before MPI
    starts, so that a usage error is printed once, by process 0."""
    return _launcher_value(RANK_VARIABLES, 0)


def processes_on_this_machine():
    return _launcher_value(LOCAL_SIZE_VARIABLES, launched_size())


# ---------------------------------------------------------------- one flat buffer

def flat_buffer(arrays, dtype=None):
    """The arrays of a dict, raveled one after another into one new 1-D buffer.

    dtype: the buffer's (default: the first array's). Integers go through float32 exactly
    while they stay below 2**24, which a step's code counts do. The order is the dict's,
    the same on every process because every process builds the dict with the same code.
    """
    xp = backend.get_array_module(*arrays.values())
    dtype = dtype or next(iter(arrays.values())).dtype
    return xp.concatenate([xp.ravel(a).astype(dtype, copy=False) for a in arrays.values()])


def unflatten_into(buffer, arrays):
    """Undo flat_buffer: write consecutive pieces of buffer into the dict's arrays, in place
    (each piece cast back to its array's dtype). Returns arrays."""
    offset = 0
    for a in arrays.values():
        a[...] = buffer[offset:offset + a.size].reshape(a.shape)
        offset += a.size
    if offset != buffer.size:
        raise ValueError(f"the buffer holds {buffer.size} numbers, the arrays {offset}")
    return arrays


def sum_over_processes(world, arrays):
    """Each array replaced, in place, by its sum over the processes: one all-reduce of one
    buffer. With one process nothing is copied or changed (the same bits as ever)."""
    if world.size > 1:
        unflatten_into(world.allreduce_sum(flat_buffer(arrays)), arrays)
    return arrays


def share_from_root(world, arrays):
    """Each array replaced, in place, by process 0's: what process 0 alone decided."""
    if world.size > 1:
        unflatten_into(world.broadcast(flat_buffer(arrays)), arrays)
    return arrays


def root_first(world, fn):
    """fn() on process 0, then, once it has worked, on the others: for work that leaves a
    file the others can then read instead of redoing (the prior's encoded data set).
    If it fails on process 0 (a TinytokError), every process raises."""
    failure = result = None
    if world.is_root:
        try:
            result = fn()
        except TinytokError as e:
            failure = e
    if world.anyone(failure is not None):  # the others wait here for process 0
        raise failure or ConfigError("process 0 failed to prepare the data (its error "
                                     "is above)")
    return result if world.is_root else fn()


def batch_share(batch_size, world):
    """(lo, hi): the rows of every global batch this process takes; contiguous, in rank
    order, as even as whole examples allow (sizes differ by at most one)."""
    if batch_size < world.size:
        raise ConfigError(f"--batch-size {batch_size} is smaller than the {world.size} "
                          f"processes: each needs at least one example (use --batch-size "
                          f"{world.size} or more, or fewer processes)")
    return (batch_size * world.rank // world.size, batch_size * (world.rank + 1) // world.size)


# ---------------------------------------------------------------- the worlds

class SingleProcess:
    """One process: every collective is the identity, and nothing is sent."""
    rank, size, is_root = 0, 1, True
    bytes_reduced = 0

    def allreduce_sum(self, buffer):
        return buffer

    def broadcast(self, buffer):
        return buffer

    def anyone(self, flag):
        return bool(flag)

    def end_all(self, code):
        """Nothing to end but this process, which its caller ends by returning."""


SINGLE = SingleProcess()


class MPIWorld:
    """Processes started by mpiexec, adding host (NumPy) buffers with MPI."""

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_root = self.rank == 0
        self.bytes_reduced = 0   # what allreduce_sum has sent (for the benchmark)

    def allreduce_sum(self, buffer):
        from mpi4py import MPI
        _require_host(buffer, "MPI")
        self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        self.bytes_reduced += buffer.nbytes
        return buffer

    def broadcast(self, buffer):
        _require_host(buffer, "MPI")
        self.comm.Bcast(buffer, root=0)
        return buffer

    def anyone(self, flag):
        from mpi4py import MPI
        said = np.array([1 if flag else 0], dtype=np.int32)
        self.comm.Allreduce(MPI.IN_PLACE, said, op=MPI.MAX)
        return bool(said[0])

    def end_all(self, code):
        sys.stderr.flush()
        self.comm.Abort(code)


def _require_host(buffer, what):
    if not isinstance(buffer, np.ndarray) or not buffer.flags.c_contiguous:
        raise BackendError(f"{what} adds contiguous host (NumPy) buffers, got a "
                           f"{type(buffer).__name__}; on GPUs use the NCCL world "
                           "(--backend cupy)")


class NCCLWorld:
    """One GPU per process, adding device (CuPy) buffers with NCCL (``cupy.cuda.nccl``).

    For the active CuPy backend. unique_id: NCCL's rendezvous, made by process 0
    (nccl.get_unique_id) and handed to the others (start() sends it with MPI); host: the
    MPIWorld of the same processes, for end_all. The collectives are queued on the current
    CUDA stream, so the kernels queued after them (the optimizer's) see their result
    without the host waiting in between.
    """

    def __init__(self, rank, size, unique_id, host=None):
        self.nccl, self.host = backend.nccl(), host
        self.rank, self.size, self.is_root = rank, size, rank == 0
        self.bytes_reduced = 0
        self.comm = self.nccl.NcclCommunicator(size, tuple(unique_id), rank)
        self.dtypes = {np.dtype(np.float32): self.nccl.NCCL_FLOAT32,
                       np.dtype(np.float64): self.nccl.NCCL_FLOAT64}

    def _checked(self, buffer):
        """NCCL's dtype code and the stream, for a buffer NCCL can take."""
        if not backend.is_cupy_array(buffer) or not buffer.flags.c_contiguous:
            raise BackendError(f"NCCL adds contiguous device (CuPy) buffers, got a "
                               f"{type(buffer).__name__}")
        if buffer.dtype not in self.dtypes:
            raise BackendError(f"NCCL here adds float32 or float64 buffers, got {buffer.dtype}")
        return self.dtypes[buffer.dtype], backend.xp().cuda.get_current_stream().ptr

    def allreduce_sum(self, buffer):
        dtype, stream = self._checked(buffer)
        self.comm.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, dtype,
                            self.nccl.NCCL_SUM, stream)
        self.bytes_reduced += buffer.nbytes
        return buffer

    def broadcast(self, buffer):
        dtype, stream = self._checked(buffer)
        self.comm.bcast(buffer.data.ptr, buffer.size, dtype, 0, stream)
        return buffer

    def anyone(self, flag):
        said = backend.xp().asarray([1.0 if flag else 0.0], dtype=np.float32)
        return float(self.allreduce_sum(said)[0]) > 0   # one number back to the host

    def end_all(self, code):
        if self.host is not None:
            self.host.end_all(code)


def nccl_unique_id(host, nccl):
    """NCCL's rendezvous id: made on process 0, sent to the others over MPI."""
    unique_id = np.array(nccl.get_unique_id() if host.is_root else [0] * 128, np.int64)
    host.broadcast(unique_id)
    return tuple(int(c) for c in unique_id)


# ---------------------------------------------------------------- starting

def start(backend_name="numpy"):
    """The world this process belongs to: SINGLE unless mpiexec started several processes.

    Under mpiexec, MPI starts here (mpi4py); with backend_name "cupy" each process first
    takes its own GPU (see_only_own_gpu), starts the CuPy backend and adds with NCCL. Call
    it before anything starts CUDA. Raises ConfigError or BackendError, one line, naming
    what to install.
    """
    size = launched_size()
    if size == 1:
        return SINGLE
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ConfigError(f"mpiexec started {size} processes but mpi4py is missing ({e}); "
                          "install it with: pip install 'tinytok[mpi]'") from None
    host = MPIWorld(MPI.COMM_WORLD)
    if backend_name != "cupy":
        return host
    see_only_own_gpu(host.rank)
    backend.use("cupy")                    # CUDA starts here, on this process's GPU
    nccl = backend.nccl()
    return NCCLWorld(host.rank, host.size, nccl_unique_id(host, nccl), host)


def see_only_own_gpu(rank):
    """Let this process see one GPU, its rank on this machine, before CUDA starts:
    CUDA_VISIBLE_DEVICES, then, is one number (an entry of the list a scheduler gave, or
    the rank itself), and CuPy's device 0 is that GPU, different for every process here."""
    local = _launcher_value(LOCAL_RANK_VARIABLES, rank)
    given = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if len(given) == 1:                    # the scheduler gave each process its own already
        return
    if given and local >= len(given):
        raise BackendError(f"process {local} on this machine, but CUDA_VISIBLE_DEVICES lists "
                           f"{len(given)} GPU(s): NCCL needs one GPU per process (start "
                           "fewer processes)")
    os.environ["CUDA_VISIBLE_DEVICES"] = given[local] if given else str(local)


def cores_per_process(cores):
    """This process's share of the machine's cores for batch parts: all of them alone, a
    K-th under mpiexec with K processes here (each would otherwise start a thread per core,
    K times too many), and at least one."""
    return max(1, cores // processes_on_this_machine())


def use_this_process_cores():
    """tinytok.parallel.use_cores with this process's share of the cores ($TINYTOK_THREADS
    wins if set). With one core each, BLAS is held to one thread too: use_cores(1) leaves
    BLAS alone, and K processes each running BLAS's thread per core would fight for them."""
    from tinytok import parallel
    if os.environ.get("TINYTOK_THREADS"):
        return parallel.use_cores()
    n = cores_per_process(parallel.available_cores())
    previous = parallel.use_cores(n)
    if n == 1:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=1, user_api="blas")
    return previous
