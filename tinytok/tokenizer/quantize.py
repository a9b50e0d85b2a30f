"""Vector quantization: the step that turns continuous features into discrete tokens.

The encoder gives one D-dimensional vector per cell of a grid. Each vector is replaced by the
nearest row of a learned codebook (K, D); the row's index is the token. The lookup (argmin)
has no useful derivative, so training uses three tricks from the VQ-VAE paper:

* straight-through: the decoder's gradient with respect to the quantized vectors is handed
  to the encoder's vectors unchanged, as if quantization were the identity;
* the codebook loss  mean((sg[z] - e)^2)  pulls each chosen code towards the vectors that
  chose it (sg = stop gradient: z is a constant here);
* the commitment loss  beta * mean((z - sg[e])^2)  keeps the encoder near its codes.

The EMA codebook, which trains the codes without a loss, lives here too; starting the
codebook well (k-means) and keeping it in use (dead-code restarts) is codebook care, in
tinytok.tokenizer.codebook, with the usage statistics that show whether it works.
"""

from typing import NamedTuple

from tinytok.backend import get_array_module
from tinytok.errors import ShapeError
from tinytok.ops.checks import require_float, require_ndim, require_same_dtype
from tinytok.ops.embedding import scatter_add


def latents_as_columns(z):
    """z (N, D, H, W) -> (D, M) with one column per grid cell, M = H*W*N (cells, then images).

    This order is free for the convolutions' batch-last memory (see tinytok.ops.conv).
    """
    return z.transpose(1, 2, 3, 0).reshape(z.shape[1], -1)


def columns_as_latents(cols, z_shape):
    """(D, M) -> (N, D, H, W), the inverse of latents_as_columns."""
    N, D, H, W = z_shape
    return cols.reshape(D, H, W, N).transpose(3, 0, 1, 2)


def columns_as_ids(flat_ids, z_shape):
    """(M,) ids, one per column of latents_as_columns(z), -> the grid (N, H, W)."""
    N, _, H, W = z_shape
    return flat_ids.reshape(H, W, N).transpose(2, 0, 1)


def nearest_codes(z_cols, codebook):
    """Index of the nearest code (squared L2) for each column: (D, M), (K, D) -> (M,) int.

    |z - e|^2 = |z|^2 - 2 z.e + |e|^2; |z|^2 is the same for every code, so only the last two
    terms decide, and z.e for all pairs is one matrix product. The scores are laid out
    (M, K) so that the argmin runs along contiguous memory.
    """
    xp = get_array_module(z_cols)
    scores = z_cols.T @ (-2 * codebook.T)                               # (M, K): -2 z.e
    scores += (codebook * codebook).sum(axis=1)                         # + |e|^2
    return xp.argmin(scores, axis=1)                                    # (M,)


class VectorQuantizeCache(NamedTuple):
    diff: object            # z - e, (D, M): both losses' gradients are multiples of it
    flat_ids: object        # (M,) the chosen codes, where the codebook's gradient goes
    codebook_shape: tuple   # (K, D)
    beta: float             # the commitment weight
    z_shape: tuple          # (N, D, H, W), to lay dz out like z


def vector_quantize_forward(z, codebook, beta=0.25):
    """z (N, D, H, W), codebook (K, D) -> z_q (N, D, H, W), ids (N, H, W), loss (0-d), cache.

    loss = mean((sg[z] - e)^2) + beta * mean((z - sg[e])^2), both means over N*D*H*W numbers.
    """
    require_float("z", z)
    require_same_dtype("z", z, ("codebook", codebook))
    require_ndim("z", z, 4, "(N, D, H, W)")
    require_ndim("codebook", codebook, 2, "(K, D)")
    if codebook.shape[1] != z.shape[1]:
        raise ShapeError(f"codebook (K, D) = {tuple(codebook.shape)} has D = "
                         f"{codebook.shape[1]} but z (N, D, H, W) = {tuple(z.shape)} has "
                         f"D = {z.shape[1]}")
    z_cols = latents_as_columns(z)                                      # (D, M)
    flat_ids = nearest_codes(z_cols, codebook)                          # (M,)
    e_cols = codebook[flat_ids].T                                       # (D, M)
    diff = z_cols - e_cols                                              # (D, M)
    mse = (diff * diff).mean()
    loss = mse + beta * mse  # both terms' means are this mse; they differ in gradient
    z_q = columns_as_latents(e_cols, z.shape)                           # (N, D, H, W)
    ids = columns_as_ids(flat_ids, z.shape)                             # (N, H, W)
    return z_q, ids, loss, VectorQuantizeCache(diff, flat_ids, codebook.shape, beta, z.shape)


def vector_quantize_backward(dz_q, cache, dloss=1.0):
    """dz_q (N, D, H, W) -> dz (N, D, H, W), dcodebook (K, D).

    dz        = dz_q                      straight through: the decoder's gradient, unchanged
              + dloss * beta * 2 (z - e) / n      the commitment term
    dcodebook = scatter of dloss * 2 (e - z) / n onto the chosen rows   the codebook term
    dz_q itself never reaches the codebook: the forward's output is z + sg(e - z).
    """
    diff = cache.diff
    xp = get_array_module(diff)
    scale = 2 * dloss / diff.size
    dz = dz_q + columns_as_latents(diff * (cache.beta * scale), cache.z_shape)
    dcodebook = xp.zeros(cache.codebook_shape, dtype=diff.dtype)
    scatter_add(dcodebook, cache.flat_ids, (diff.T * -scale).astype(diff.dtype))
    return dz, dcodebook


# ---------------------------------------------------------------- EMA codebook

def ema_init(codebook):
    """State for EMA codebook updates: running cluster sizes and sums, seeded from codebook."""
    xp = get_array_module(codebook)
    return {"cluster_size": xp.ones(codebook.shape[0], dtype=codebook.dtype),
            "embed_sum": codebook.copy()}


def ema_update(codebook, state, z, ids, decay=0.99, eps=1e-5):
    """Move each code to the running mean of the vectors assigned to it (in place).

    The alternative to the codebook loss (VQ-VAE paper, appendix): counts and sums decay
    exponentially, and Laplace smoothing (eps) keeps unused codes from dividing by zero.
    z (N, D, H, W), ids (N, H, W) from the forward. Returns the codebook.
    """
    counts, sums = ema_statistics(z, ids, codebook.shape[0], codebook.dtype)
    return ema_apply(codebook, state, counts, sums, decay, eps)


def ema_statistics(z, ids, num_codes, dtype):
    """A batch's uses of each code (K,) and the sum of the vectors that chose it (K, D).

    Both are sums over the batch's vectors, so the statistics of a batch's shares add up
    to the batch's (training on several processes adds them before ema_apply)."""
    xp = get_array_module(z)
    z_rows = latents_as_columns(z).T                                    # (M, D)
    flat_ids = ids.transpose(1, 2, 0).reshape(-1)                       # same (H, W, N) order
    counts = xp.bincount(flat_ids, minlength=num_codes).astype(dtype)   # (K,) uses per code
    sums = scatter_add(xp.zeros((num_codes, z.shape[1]), dtype=dtype), flat_ids, z_rows)
    return counts, sums                                                 # (K,), (K, D)


def ema_apply(codebook, state, counts, sums, decay=0.99, eps=1e-5):
    """The EMA step from a batch's statistics (ema_statistics): decay, add, re-divide."""
    K = codebook.shape[0]
    state["cluster_size"] *= decay
    state["cluster_size"] += (1 - decay) * counts
    state["embed_sum"] *= decay
    state["embed_sum"] += (1 - decay) * sums
    n = state["cluster_size"].sum()
    smoothed = (state["cluster_size"] + eps) / (n + K * eps) * n
    codebook[...] = state["embed_sum"] / smoothed[:, None]
    return codebook
