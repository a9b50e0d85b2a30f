"""Naive references for the quantizers, the sampler, the prior's transformer and finite
differences over param dicts.

Written the slow, obvious way (Python loops over cells and codes, straight from the
definitions), sharing no code with tinytok, so that agreeing with them means something.
NumPy in, NumPy out, float64 arithmetic.
"""
import math

import numpy as np


# --- vector quantization ------------------------------------------------------------------

def vector_quantize(z, codebook, beta):
    """Nearest code per cell by computing every distance: -> z_q, ids, loss (a float)."""
    z = np.asarray(z, dtype=np.float64)
    codebook = np.asarray(codebook, dtype=np.float64)
    N, D, H, W = z.shape
    K = codebook.shape[0]
    ids = np.zeros((N, H, W), dtype=np.int64)
    z_q = np.zeros_like(z)
    total = 0.0
    for n in range(N):
        for i in range(H):
            for j in range(W):
                v = z[n, :, i, j]
                dists = [sum((v[d] - codebook[k, d]) ** 2 for d in range(D)) for k in range(K)]
                best = int(np.argmin(dists))
                ids[n, i, j] = best
                z_q[n, :, i, j] = codebook[best]
                total += dists[best]
    mse = total / z.size
    return z_q, ids, mse + beta * mse


def codebook_gradient(z, codebook, ids, dloss=1.0):
    """d/dcodebook of dloss * mean((sg[z] - codebook[ids])^2): each cell adds 2 (e - z) / n
    to the row it chose."""
    z = np.asarray(z, dtype=np.float64)
    N, D, H, W = z.shape
    grad = np.zeros(codebook.shape)
    for n in range(N):
        for i in range(H):
            for j in range(W):
                k = int(ids[n, i, j])
                grad[k] += 2 * (codebook[k] - z[n, :, i, j]) / z.size * dloss
    return grad


def gather_codes(codebook, ids):
    """codebook[ids] laid out as latents (N, D, H, W), one cell at a time."""
    N, H, W = ids.shape
    out = np.zeros((N, codebook.shape[1], H, W), dtype=codebook.dtype)
    for n in range(N):
        for i in range(H):
            for j in range(W):
                out[n, :, i, j] = codebook[int(ids[n, i, j])]
    return out


def per_code_mean(z, ids, num_codes):
    """Mean of the vectors assigned to each code (nan for unused codes), one cell at a time."""
    N, D, H, W = z.shape
    sums = np.zeros((num_codes, D))
    counts = np.zeros(num_codes)
    for n in range(N):
        for i in range(H):
            for j in range(W):
                sums[ids[n, i, j]] += z[n, :, i, j]
                counts[ids[n, i, j]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None], counts


# --- Gumbel-softmax -----------------------------------------------------------------------

def softmax_list(values):
    m = max(values)
    e = [math.exp(v - m) for v in values]
    s = sum(e)
    return [v / s for v in e]


def gumbel_quantize(logits, codebook, tau, noise=None):
    """Soft mixture, argmax ids and KL to the uniform prior, cell by cell."""
    N, K, H, W = logits.shape
    D = codebook.shape[1]
    z_q = np.zeros((N, D, H, W))
    ids = np.zeros((N, H, W), dtype=np.int64)
    kl = 0.0
    for n in range(N):
        for i in range(H):
            for j in range(W):
                l = [float(logits[n, k, i, j]) for k in range(K)]
                g = [0.0] * K if noise is None else [float(noise[n, k, i, j]) for k in range(K)]
                y = softmax_list([(a + b) / tau for a, b in zip(l, g)])
                for k in range(K):
                    z_q[n, :, i, j] += y[k] * codebook[k]
                q = softmax_list(l)
                kl += sum(p * math.log(K * p) for p in q if p > 0)
                ids[n, i, j] = int(np.argmax(l))
    return z_q, ids, kl / (N * H * W)


# --- sampling -----------------------------------------------------------------------------

def top_p_keep(logits_row, p):
    """Which tokens nucleus sampling keeps: the smallest set of the most likely tokens whose
    probability adds up to at least p (the best token always)."""
    probs = softmax_list([float(v) for v in logits_row])
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    keep = np.zeros(len(probs), dtype=bool)
    mass = 0.0
    for i in order:
        keep[i] = True
        mass += probs[i]
        if mass >= p:
            break
    return keep


# --- the prior's transformer ----------------------------------------------------------

def gpt_logits(ids, params, n_layer, n_head, allowed):
    """The prior's forward from its definition (prior/gpt.py's docstring), float64:
    x = wte[ids] + wpe[:T]; per block x += attn(ln1(x)), x += mlp(ln2(x)); logits =
    ln_f(x) @ wte.T. allowed (T, T) bool: what each position's attention sees (all True:
    a masked prior's full attention; np.tril: the raster prior's causal one). Built from
    tests/reference.py's slow ops (one attention query, one LayerNorm row at a time)."""
    from reference import embedding
    P = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    x = embedding(ids, P["gpt.wte"]) + P["gpt.wpe"][:ids.shape[1]]
    return trunk_logits(x, P, n_layer, n_head, allowed)


def trunk_logits(x, params, n_layer, n_head, allowed):
    """The blocks, the final LayerNorm and the tied head on embedded positions x (B, T, C),
    float64, from tests/reference.py's slow ops (gpt_logits's second half; the next-scale
    prior embeds its maps itself)."""
    from reference import gelu, layer_norm, masked_self_attention
    P = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    x = np.asarray(x, dtype=np.float64)
    for i in range(n_layer):
        h = f"gpt.h{i}."
        a = layer_norm(x, P[h + "ln1.g"], P[h + "ln1.b"])
        x = x + masked_self_attention(a, P[h + "attn.w_qkv"], P[h + "attn.b_qkv"],
                                      P[h + "attn.w_proj"], P[h + "attn.b_proj"], n_head,
                                      allowed)
        m = layer_norm(x, P[h + "ln2.g"], P[h + "ln2.b"])
        x = x + gelu(m @ P[h + "mlp.fc.w"] + P[h + "mlp.fc.b"]) @ P[h + "mlp.proj.w"] \
            + P[h + "mlp.proj.b"]
    return layer_norm(x, P["gpt.ln_f.g"], P["gpt.ln_f.b"]) @ P["gpt.wte"].T


# --- finite differences over parameter dicts ----------------------------------------------

def numerical_param_gradient(loss_fn, params, key, indices, h=1e-5):
    """d loss_fn(params) / d params[key] at the given flat indices, by central differences.

    loss_fn(params) returns a float; params[key] is nudged in place and restored.
    """
    flat = params[key].reshape(-1)
    out = np.empty(len(indices))
    for n, i in enumerate(indices):
        old = flat[i].item()
        flat[i] = old + h
        plus = loss_fn(params)
        flat[i] = old - h
        minus = loss_fn(params)
        flat[i] = old
        out[n] = (plus - minus) / (2 * h)
    return out


def sample_indices(size, max_elements, rng):
    if size <= max_elements:
        return np.arange(size)
    return np.sort(rng.choice(size, max_elements, replace=False))
