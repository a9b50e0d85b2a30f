"""Vector quantization: the step that turns continuous features into discrete tokens.

The encoder gives one D-dimensional vector per cell of a grid. Each vector is replaced by the
nearest row of a learned codebook (K, D); the row's index is the token. The lookup (argmin)
has no useful derivative, so training uses three tricks from the VQ-VAE paper:

* straight-through: the decoder's gradient with respect to the quantized vectors is handed
  to the encoder's vectors unchanged, as if quantization were the identity;
* the codebook loss  mean((sg[z] - e)^2)  pulls each chosen code towards the vectors that
  chose it (sg = stop gradient: z is a constant here);
* the commitment loss  beta * mean((z - sg[e])^2)  keeps the encoder near its codes.

Alternatives that train the codebook without a loss (EMA), start it well (k-means) and keep
it in use (dead-code restarts) live here too, with the usage statistics that show whether
they work.
"""
from functools import partial

import numpy as np

from tinytok.backend import get_array_module, rng as host_rng, scatter_add, to_numpy
from tinytok.errors import ShapeError
from tinytok.ops.checks import require_float, require_ndim, require_same_dtype
from tinytok.parallel import for_row_blocks


def latents_as_columns(z):
    """z (N, D, H, W) -> (D, M) with one column per grid cell, M = H*W*N (cells, then images).

    This order is free for the convolutions' batch-last memory (see tinytok.ops.conv).
    """
    return z.transpose(1, 2, 3, 0).reshape(z.shape[1], -1)


def columns_as_latents(cols, z_shape):
    """(D, M) -> (N, D, H, W), the inverse of latents_as_columns."""
    N, D, H, W = z_shape
    return cols.reshape(D, H, W, N).transpose(3, 0, 1, 2)


def nearest_codes(z_cols, codebook):
    """Index of the nearest code (squared L2) for each column: (D, M), (K, D) -> (M,) int.

    |z - e|^2 = |z|^2 - 2 z.e + |e|^2; |z|^2 is the same for every code, so only the last two
    terms decide, and z.e for all pairs is one matrix product. The scores are laid out
    (M, K) so that the argmin runs along contiguous memory.
    """
    xp = get_array_module(z_cols)
    ids = xp.empty(z_cols.shape[1], dtype=xp.int64)                     # (M,)
    # every column finds its code alone: blocks of columns run in parallel (tinytok.parallel)
    for_row_blocks(partial(_nearest_rows, codes_t=-2 * codebook.T,
                           code_norms=(codebook * codebook).sum(axis=1)), z_cols.T, ids)
    return ids


def _nearest_rows(z_rows, ids, codes_t, code_norms):
    """Writes ids (m,) for a block of rows z_rows (m, D): argmin of -2 z.e + |e|^2."""
    xp = get_array_module(z_rows)
    scores = z_rows @ codes_t                                           # (m, K)
    scores += code_norms
    xp.argmin(scores, axis=1, out=ids)


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
    N, D, H, W = z.shape
    z_cols = latents_as_columns(z)                                      # (D, M)
    flat_ids = nearest_codes(z_cols, codebook)                          # (M,)
    e_cols = codebook[flat_ids].T                                       # (D, M)
    diff = z_cols - e_cols                                              # (D, M)
    mse = (diff * diff).mean()
    loss = mse + beta * mse  # the two terms are equal in value; they differ in gradient
    z_q = columns_as_latents(e_cols, z.shape)                           # (N, D, H, W)
    ids = flat_ids.reshape(H, W, N).transpose(2, 0, 1)                  # (N, H, W)
    return z_q, ids, loss, (diff, flat_ids, codebook.shape, beta, z.shape)


def vector_quantize_backward(dz_q, cache, dloss=1.0):
    """dz_q (N, D, H, W) -> dz (N, D, H, W), dcodebook (K, D).

    dz        = dz_q                      straight through: the decoder's gradient, unchanged
              + dloss * beta * 2 (z - e) / n      the commitment term
    dcodebook = scatter of dloss * 2 (e - z) / n onto the chosen rows   the codebook term
    dz_q itself never reaches the codebook: the forward's output is z + sg(e - z).
    """
    diff, flat_ids, codebook_shape, beta, z_shape = cache
    xp = get_array_module(diff)
    scale = 2 * dloss / diff.size
    dz = dz_q + columns_as_latents(diff * (beta * scale), z_shape)
    dcodebook = xp.zeros(codebook_shape, dtype=diff.dtype)
    scatter_add(dcodebook, flat_ids, (diff.T * -scale).astype(diff.dtype))
    return dz, dcodebook


# ---------------------------------------------------------------- usage statistics

def code_counts(ids, num_codes):
    """How often each code was chosen: ids (any shape) -> (K,) int counts."""
    xp = get_array_module(ids)
    return xp.bincount(ids.reshape(-1), minlength=num_codes)


def usage_stats(counts):
    """Perplexity, share of codes used and dead-code count from (K,) counts (host floats).

    Perplexity exp(entropy) is the "effective number of codes": K when all are used equally,
    1 when everything maps to one code.
    """
    counts = to_numpy(counts).astype(np.float64)
    total = counts.sum()
    p = counts / max(total, 1)
    nonzero = p[p > 0]
    return {
        "perplexity": float(np.exp(-(nonzero * np.log(nonzero)).sum())) if total else 0.0,
        "usage": float((counts > 0).mean()),
        "dead": int((counts == 0).sum()),
    }


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
    xp = get_array_module(codebook)
    K = codebook.shape[0]
    z_rows = latents_as_columns(z).T                                    # (M, D)
    flat_ids = ids.transpose(1, 2, 0).reshape(-1)                       # same (H, W, N) order
    counts = code_counts(flat_ids, K).astype(codebook.dtype)            # (K,)
    sums = scatter_add(xp.zeros_like(codebook), flat_ids, z_rows)       # (K, D)
    state["cluster_size"] *= decay
    state["cluster_size"] += (1 - decay) * counts
    state["embed_sum"] *= decay
    state["embed_sum"] += (1 - decay) * sums
    n = state["cluster_size"].sum()
    smoothed = (state["cluster_size"] + eps) / (n + K * eps) * n
    codebook[...] = state["embed_sum"] / smoothed[:, None]
    return codebook


# ---------------------------------------------------------------- initialisation and restarts

def kmeans_plus_plus(vectors, num_codes, rng):
    """k-means++ seeding on the host: (M, D) float64 -> (K, D) starting centroids.

    Each new centroid is drawn with probability proportional to its squared distance from
    the nearest one chosen so far, so the seeds spread over the data. Keeping that distance
    up to date costs one pass per centroid: O(K M D), where SciPy's own "++" is O(K^2 M D).
    """
    centroids = np.empty((num_codes, vectors.shape[1]))
    centroids[0] = vectors[rng.integers(len(vectors))]
    nearest = ((vectors - centroids[0]) ** 2).sum(axis=1)                # (M,)
    for k in range(1, num_codes):
        total = nearest.sum()
        pick = rng.choice(len(vectors), p=nearest / total) if total > 0 else rng.integers(
            len(vectors))
        centroids[k] = vectors[pick]
        np.minimum(nearest, ((vectors - centroids[k]) ** 2).sum(axis=1), out=nearest)
    return centroids


def kmeans_init(z, num_codes, seed=0, iterations=20):
    """A codebook (K, D) from k-means on encoder outputs z (N, D, H, W), on the host (SciPy).

    Starting from real encoder outputs means every code is in use from step one, which is the
    simplest cure for codebook collapse. Returns an array of the same backend and dtype as z.
    """
    from scipy.cluster.vq import kmeans2
    xp = get_array_module(z)
    vectors = to_numpy(latents_as_columns(z).T).astype(np.float64)   # (M, D)
    if vectors.shape[0] < num_codes:
        raise ShapeError(f"k-means needs at least {num_codes} vectors for {num_codes} codes, "
                         f"got {vectors.shape[0]}; encode more images first")
    rng = host_rng(seed)
    start = kmeans_plus_plus(vectors, num_codes, rng)
    centroids, _ = kmeans2(vectors, start, iter=iterations, minit="matrix", missing="warn",
                           seed=rng)
    return xp.asarray(centroids, dtype=z.dtype)


def restart_dead_codes(codebook, counts, z, seed=0, min_count=1, ema_state=None):
    """Move codes chosen fewer than min_count times (over a window) onto encoder outputs.

    codebook (K, D) is changed in place; counts (K,) are the window's code counts; z
    (N, D, H, W) recent encoder outputs. A dead code gets no gradient and would stay dead
    forever. Its replacement is drawn with probability proportional to each vector's squared
    distance from its nearest code (as in k-means++): vectors the codebook already covers
    well (on plain backgrounds, most of them) are rarely picked, badly covered ones often.
    Returns the number of codes restarted.
    """
    xp = get_array_module(codebook)
    dead = np.flatnonzero(to_numpy(counts) < min_count)
    if dead.size == 0:
        return 0
    z_cols = latents_as_columns(z)                                      # (D, M)
    nearest = codebook[nearest_codes(z_cols, codebook)].T               # (D, M)
    error = to_numpy(((z_cols - nearest) ** 2).sum(axis=0)).astype(np.float64)  # (M,)
    p = error / error.sum() if error.sum() > 0 else None
    picks = host_rng(seed).choice(z_cols.shape[1], size=dead.size, p=p)
    dead_dev = xp.asarray(dead)
    codebook[dead_dev] = z_cols[:, xp.asarray(picks)].T
    if ema_state is not None:  # keep the EMA statistics consistent with the new codes
        ema_state["cluster_size"][dead_dev] = 1
        ema_state["embed_sum"][dead_dev] = codebook[dead_dev]
    return int(dead.size)
