"""Exercise · Vector quantization: the forward is given, the backward is yours.

Each vector z[n, :, i, j] (D numbers) is replaced by its nearest codebook row e (lesson 5):

    ids[n, i, j] = argmin over k of |z[n, :, i, j] - codebook[k]|^2
    z_q = e = codebook[ids]                    laid out like z: (N, D, H, W)
    loss = mean((sg[z] - e)^2) + beta * mean((z - sg[e])^2)     (sg: stop gradient)

z (N, D, H, W), codebook (K, D) -> z_q (N, D, H, W), ids (N, H, W), loss (0-d).
The argmin has no useful derivative, so the backward uses the straight-through estimator:
z_q acts as z + sg(e - z). vector_quantize_backward(dz_q, cache, dloss) returns
dz (z's shape) and dcodebook (K, D). Three things reach them: dz_q (to which?), the codebook
term (to which?) and the commitment term (to which?). The stop gradients change no value:
both means are the same number, mean((z - e)^2), so the loss is (1 + beta) times it, but
each term's gradient goes to one side only. n = N*D*H*W in both means; a code chosen by
several vectors collects all their gradients. Lesson 5 derives the codebook's gradient.

Check:     tinytok check vector_quantize lessons/exercises/vector_quantize.py
Solution:  tinytok/tokenizer/quantize.py
"""
import numpy as np


def vector_quantize_forward(z, codebook, beta=0.25):
    """z (N, D, H, W), codebook (K, D) -> (z_q, ids, loss, cache (z, e, ids, beta, K))."""
    rows = z.transpose(0, 2, 3, 1)                                  # (N, H, W, D)
    distances = ((rows[..., None, :] - codebook) ** 2).sum(axis=-1)  # (N, H, W, K)
    ids = distances.argmin(axis=-1)                                 # (N, H, W)
    e = codebook[ids].transpose(0, 3, 1, 2)                         # (N, D, H, W)
    mse = ((z - e) ** 2).mean()
    loss = mse + beta * mse      # each mean is mse; the commitment term is beta * mse
    return e, ids, loss, (z, e, ids, beta, codebook.shape[0])


def vector_quantize_backward(dz_q, cache, dloss=1.0):
    """dz_q (N, D, H, W), cache, dloss (a number) -> (dz (N, D, H, W), dcodebook (K, D))."""
    z, e, ids, beta, K = cache
    # TODO
    return None
