"""Codebook care: how often each code is used, a k-means start, and dead-code restarts.

A VQ codebook collapses easily: codes that no encoder output picks get no gradient (and no
EMA update) and stay where they are, unused, forever. Three remedies, measured in lesson 6:

* usage statistics (counts, perplexity, dead codes) show whether it is happening;
* a k-means start puts every code on a real encoder output, so all are used from step one;
* dead-code restarts move codes unused over a window onto badly covered encoder outputs.
"""
import numpy as np

from tinytok.backend import get_array_module, rng as host_rng, to_numpy
from tinytok.errors import ShapeError
from tinytok.tokenizer.quantize import latents_as_columns, nearest_codes


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


def restart_dead_codes(codebook, counts, z, seed=0, min_count=1, ema_state=None,
                       searched=None):
    """Move codes chosen fewer than min_count times (over a window) onto encoder outputs.

    codebook (K, D) is changed in place; counts (K,) are the window's code counts; z
    (N, D, H, W) recent encoder outputs, as the nearest-code search sees them (a
    quantizer's search_space: unit vectors for the cosine quantizer). A dead code gets no
    gradient and would stay dead forever. Its replacement is drawn with probability
    proportional to each vector's squared distance from its nearest code (as in k-means++):
    vectors the codebook already covers well (on plain backgrounds, most of them) are
    rarely picked, badly covered ones often. searched (K, D): the codes as the search sees
    them (default: the codebook itself; the cosine quantizer's unit rows).
    Returns the number of codes restarted.
    """
    xp = get_array_module(codebook)
    dead = np.flatnonzero(to_numpy(counts) < min_count)
    if dead.size == 0:
        return 0
    searched = codebook if searched is None else searched
    z_cols = latents_as_columns(z)                                      # (D, M)
    nearest = searched[nearest_codes(z_cols, searched)].T               # (D, M)
    error = to_numpy(((z_cols - nearest) ** 2).sum(axis=0)).astype(np.float64)  # (M,)
    p = error / error.sum() if error.sum() > 0 else None
    picks = host_rng(seed).choice(z_cols.shape[1], size=dead.size, p=p)
    dead_dev = xp.asarray(dead)
    codebook[dead_dev] = z_cols[:, xp.asarray(picks)].T
    if ema_state is not None:  # keep the EMA statistics consistent with the new codes
        ema_state["cluster_size"][dead_dev] = 1
        ema_state["embed_sum"][dead_dev] = codebook[dead_dev]
    return int(dead.size)
