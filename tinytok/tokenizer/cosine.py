"""Codes on the unit sphere: the cosine quantizer, and ViT-VQGAN's factorized codes.

Plain VQ compares lengths as well as directions, so a few long codes can win most of the
lookups while the rest go unused. ViT-VQGAN (Yu et al., 2022) makes two changes:

* cosine: the encoder's vectors and the codes are scaled to length 1 before the lookup.
  On unit vectors |z - e|^2 = 2 - 2 z.e, so the nearest code is the one at the smallest
  angle (the largest dot product), and only directions compete.
* factorized: the lookup happens in a few dimensions (d = 8, say) instead of D: a learned
  linear map takes each vector down D -> d, the cosine lookup runs there, and a second
  learned map takes the chosen code back up d -> D for the decoder. A small sphere is easy
  to cover with codes, so nearly all of them get used.

Both are built from pairs that already exist: the cosine quantizer is vector_quantize
between two l2 normalizations, the factorized one the cosine quantizer between two linear
layers. The straight-through step is VQ's and sits where the lookup is, on the unit vectors
(in the factorized quantizer: in the low-dimensional space); the up-projection after it is
an ordinary layer, whose input has the code's value and passes its gradient straight on.
"""
from typing import NamedTuple

from tinytok.errors import ShapeError
from tinytok.ops.checks import require_float, require_ndim, require_same_dtype, require_shape
from tinytok.ops.linear import LinearCache, linear_backward, linear_forward
from tinytok.ops.norm import L2NormalizeCache, l2_normalize_backward, l2_normalize_forward
from tinytok.tokenizer.quantize import (VectorQuantizeCache, vector_quantize_backward,
                                        vector_quantize_forward)


class CosineQuantizeCache(NamedTuple):
    z_unit: L2NormalizeCache          # each grid cell's vector, over D, scaled to length 1
    codes_unit: L2NormalizeCache      # each codebook row scaled to length 1
    vq: VectorQuantizeCache           # nearest code, straight through, the two losses


def cosine_quantize_forward(z, codebook, beta=0.25):
    """z (N, D, H, W), codebook (K, D) -> z_q (N, D, H, W), ids (N, H, W), loss (0-d), cache.

    VQ between unit vectors, z^ = z / |z| (each cell, over D) and e^_k = e_k / |e_k|:

        ids  = argmax_k z^ . e^_k          (= argmin_k |z^ - e^_k|^2 = 2 - 2 z^ . e^_k)
        z_q  = z^ + sg(e^_ids - z^)        the decoder gets the unit code
        loss = mean((sg[z^] - e^)^2) + beta * mean((z^ - sg[e^])^2)
    """
    require_float("z", z)
    require_same_dtype("z", z, ("codebook", codebook))
    require_ndim("z", z, 4, "(N, D, H, W)")
    require_ndim("codebook", codebook, 2, "(K, D)")
    z_unit, z_cache = l2_normalize_forward(z, axis=1)                       # (N, D, H, W)
    codes_unit, codes_cache = l2_normalize_forward(codebook, axis=1)        # (K, D)
    z_q, ids, loss, vq_cache = vector_quantize_forward(z_unit, codes_unit, beta)
    return z_q, ids, loss, CosineQuantizeCache(z_cache, codes_cache, vq_cache)


def cosine_quantize_backward(dz_q, cache, dloss=1.0):
    """dz_q (N, D, H, W) -> dz (N, D, H, W), dcodebook (K, D).

    VQ's backward gives the gradients on the unit vectors (dz_q straight through to z^ plus
    the commitment term; the codebook term onto the chosen e^), and each normalization's
    backward carries them to z and to the codebook's rows.
    """
    dz_unit, dcodes_unit = vector_quantize_backward(dz_q, cache.vq, dloss)
    return (l2_normalize_backward(dz_unit, cache.z_unit),
            l2_normalize_backward(dcodes_unit, cache.codes_unit))


# ---------------------------------------------------------------- factorized codes

class FactorizedQuantizeCache(NamedTuple):
    down: LinearCache                 # z (N, H, W, D) -> p (N, H, W, d)
    cosine: CosineQuantizeCache       # the lookup among unit vectors in d dimensions
    up: LinearCache                   # the code (N, H, W, d) -> z_q (N, H, W, D)


def factorized_quantize_forward(z, w_down, b_down, codebook, w_up, b_up, beta=0.25):
    """z (N, D, H, W), w_down (D, d), b_down (d,), codebook (K, d), w_up (d, D), b_up (D,)
    -> z_q (N, D, H, W), ids (N, H, W), loss (0-d), cache.

        p         = z W_down + b_down                  each cell's vector, D -> d
        c, ids, loss = cosine_quantize(p, codebook)    lookup and straight-through, in d dims
        z_q       = c W_up + b_up                      the unit code e^_ids, d -> D

    The linear layers work on the last axis, so the cells are laid out (N, H, W, channels)
    around them (transposed views; each product gathers its rows).
    """
    require_float("z", z)
    require_ndim("z", z, 4, "(N, D, H, W)")
    require_ndim("codebook", codebook, 2, "(K, d)")
    D, d = z.shape[1], codebook.shape[1]
    for name, a, shape, layout in (("w_down", w_down, (D, d), "(D, d)"),
                                   ("b_down", b_down, (d,), "(d,)"),
                                   ("w_up", w_up, (d, D), "(d, D)"),
                                   ("b_up", b_up, (D,), "(D,)")):
        if a is None:
            raise ShapeError(f"factorized quantize: {name} {layout} is missing")
        require_shape(name, a, shape, layout)
    p, down = linear_forward(z.transpose(0, 2, 3, 1), w_down, b_down)      # (N, H, W, d)
    c, ids, loss, cosine = cosine_quantize_forward(p.transpose(0, 3, 1, 2), codebook, beta)
    z_q, up = linear_forward(c.transpose(0, 2, 3, 1), w_up, b_up)          # (N, H, W, D)
    return z_q.transpose(0, 3, 1, 2), ids, loss, FactorizedQuantizeCache(down, cosine, up)


def factorized_quantize_backward(dz_q, cache, dloss=1.0):
    """dz_q (N, D, H, W) -> dz, dw_down, db_down, dcodebook, dw_up, db_up.

    The mirror of the forward: the up-projection's backward (its input had the code's
    value, so dw_up = e^^T dz_q), the cosine quantizer's (straight through to p^, the two
    losses), the down-projection's. The codebook learns from the codebook loss alone.
    """
    dc, dw_up, db_up = linear_backward(dz_q.transpose(0, 2, 3, 1), cache.up)   # (N, H, W, d)
    dp, dcodebook = cosine_quantize_backward(dc.transpose(0, 3, 1, 2), cache.cosine, dloss)
    dz, dw_down, db_down = linear_backward(dp.transpose(0, 2, 3, 1), cache.down)
    return dz.transpose(0, 3, 1, 2), dw_down, db_down, dcodebook, dw_up, db_up
