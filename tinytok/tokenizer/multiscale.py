"""VAR's multi-scale residual quantizer: a picture as token maps of growing size.

The encoder gives a map f (N, D, g, g). Instead of one code per cell of the g x g grid, the
map is described coarse to fine, by K maps of sizes s_1 < ... < s_K = g (default 1, 2, 3,
4, 5, 6, 8 for an 8x8 grid), each coding what the maps before it left over:

    f_hat = 0
    for k = 1..K:
        r_k   = area_resize(f - f_hat, s_k)          what is left, averaged down to s_k x s_k
        ids_k = nearest code of each cell of r_k     (s_k x s_k tokens, codebook C_k)
        u_k   = bilinear_resize(C_k[ids_k], g)       the chosen codes, back up to g x g
        h_k   = (1 - a) u_k + a phi(u_k)             phi: a 3x3 convolution D -> D, a = 0.5
        f_hat = f_hat + h_k

and the decoder reads f_hat. The first map says what the whole picture is like (one code),
each next one corrects the sum so far on a finer grid; decoding from the first k maps alone
gives a preview. phi smooths the blocky or blurry upsampled codes; mixed half and half with
its input (VAR's "quant_resi" 0.5), it starts out close to the identity, which keeps early
training stable. One phi serves every scale here (VAR shares four among ten scales; one
kernel keeps the table short, and more were not tried). The scale s_K = g is not resized
at all (both resizes would be the identity there). VAR upsamples bicubically; bilinear is
the resize tinytok has.

Training (VAR's quant.py, written out as a pair):

* straight-through: the forward hands on f_hat, the backward hands the decoder's gradient
  to f unchanged (the output is f + sg(f_hat - f));
* loss = (1/K) sum_k [ mean((f_hat_k - sg f)^2) + beta mean((sg f_hat_k - f)^2) ], f_hat_k the
  sum after k scales. The first term trains the codebook and phi: through every h_j, j <= k,
  each scale's codes learn to make the running sum match f. It is VQ's codebook loss taken
  on the sum, not on each code against its residual r_k: the code enters f_hat only through
  the resize and phi, so that is where it must be right. The second term, the commitment,
  pulls the encoder towards what each prefix of scales can say, at weight beta.
  With pure straight-through nothing else reaches phi: the decoder's gradient goes to f.

The ids of a picture are one flat row of L = sum s_k^2 integers: the maps one after the
other, coarse to fine, each row-major (split_scale_ids and join_scale_ids go between the two
forms). A prefix of whole maps (L_k = s_1^2 + ... + s_k^2 ids) decodes to a preview.

Each scale has a codebook of its own (the pair takes one (V, D) for all as well, as VAR
has it): a shared one serves residuals of very different sizes, the 1x1 map's (a picture's
mean) and the 8x8 map's (fine corrections), and most codes end up on one scale only. On the
shipped shapes tokenizer's encoder outputs (phi the identity, 2000 pictures, 256 codes), a
shared codebook from k-means of every scale's residuals pooled (two rounds) gave the 1x1
map 15 distinct codes (6%) and the 8x8 map 38% of them, at an error ||f_hat - f||^2 /
||f||^2 of 5.9%; one codebook per scale, each started on its scale's residual targets r_k
in turn (scale k's targets are what the codebooks before it leave), had every scale use
every code, at an error of 0.8%. The ids stay in [0, V): which codebook an id reads is its
position. Codebook care (the k-means start, dead-code restarts) goes codebook by
codebook, each on its scale's targets (the table's multiscale_groups).
"""
from typing import Any, NamedTuple

from tinytok.backend import get_array_module
from tinytok.errors import ConfigError, ShapeError
from tinytok.ops.checks import is_whole_number, require_float, require_ndim, require_same_dtype
from tinytok.ops.conv import conv2d_backward, conv2d_forward
from tinytok.ops.embedding import scatter_add
from tinytok.ops.resample import (area_resize_forward, bilinear_resize_backward,
                                  bilinear_resize_forward)
from tinytok.tokenizer.quantize import columns_as_ids, latents_as_columns, nearest_codes

PHI_MIX = 0.5           # a in h = (1 - a) u + a phi(u): VAR's quant_resi
LADDER = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)   # VAR's sizes (16x16 tokens for 256x256 pictures)


# ---------------------------------------------------------------- the scales and the ids

def default_scales(grid_size):
    """VAR's ladder of sizes below grid_size, then grid_size: (1, 2, 3, 4, 5, 6, 8) for 8."""
    return tuple(s for s in LADDER if s < grid_size) + (grid_size,)


def check_scales(scales, grid_size=None, context="tokenizer config: "):
    """scales as a tuple of ints, or a one-line ConfigError: whole numbers >= 1, strictly
    increasing, and (grid_size given) the last one the grid's size."""
    example = default_scales(grid_size or 8)
    values = tuple(scales) if isinstance(scales, (tuple, list)) or hasattr(scales, "ndim") \
        else ()
    if (not values or not all(is_whole_number(s, 1) for s in values)
            or any(b <= a for a, b in zip(values, values[1:]))):
        raise ConfigError(f"{context}scales must be whole numbers >= 1, strictly increasing, "
                          f"such as {','.join(map(str, example))}; got {scales!r}")
    values = tuple(int(s) for s in values)
    if grid_size is not None and values[-1] != grid_size:
        raise ConfigError(f"{context}the last of the scales {','.join(map(str, values))} must "
                          f"be the grid's size {grid_size} (the finest map is the grid), "
                          f"such as {','.join(map(str, example))}")
    return values


def token_count(scales):
    """L = sum of s_k^2: how many ids a picture takes."""
    return sum(s * s for s in scales)


def prefix_lengths(scales):
    """The lengths of the prefixes of whole maps: (1, 5, 14, ...) for (1, 2, 3, ...)."""
    lengths, total = [], 0
    for s in scales:
        total += s * s
        lengths.append(total)
    return tuple(lengths)


def split_scale_ids(ids, scales):
    """(N, L_k) ids, the first k maps (k = 1..K), -> [(N, s_1, s_1), ..., (N, s_k, s_k)]."""
    lengths = prefix_lengths(scales)
    if ids.ndim != 2 or ids.shape[1] not in lengths:
        raise ShapeError(f"{ids.shape[-1]} ids per picture are not whole maps of the scales "
                         f"{tuple(scales)}: give one of {lengths}")
    starts = (0,) + lengths
    return [ids[:, starts[k]:starts[k + 1]].reshape(len(ids), s, s)
            for k, s in enumerate(scales[:lengths.index(ids.shape[1]) + 1])]


def join_scale_ids(maps):
    """[(N, s_1, s_1), ...] -> (N, L): the maps one after the other, each row-major."""
    xp = get_array_module(maps[0])
    return xp.concatenate([m.reshape(len(m), -1) for m in maps], axis=1)


def scale_book(codebook, k):
    """Scale k's codes (V, D): codebook[k] of one codebook per scale (K, V, D), or the one
    codebook (V, D) every scale shares."""
    return codebook[k] if codebook.ndim == 3 else codebook


# ---------------------------------------------------------------- one scale

class ScaleCache(NamedTuple):
    flat_ids: Any     # (N s s,) the chosen codes, in the (N, s, s) order of the map
    up: Any           # the bilinear resize's cache (None at s = g: no resize)
    phi: Any          # phi's convolution cache


def scale_step(rest, codebook, phi_w, phi_b, size, grid_size, mix, ids=None):
    """One scale: rest (N, D, g, g) = f - f_hat so far -> h (N, D, g, g), ids (N, s, s),
    r (N, D, s, s) the target the codes were looked up for, cache.

    ids given (decoding): those codes, no lookup (rest and r are then None)."""
    r = None
    if ids is None:
        r = rest if size == grid_size else area_resize_forward(rest, size)[0]  # (N, D, s, s)
        ids = columns_as_ids(nearest_codes(latents_as_columns(r), codebook), r.shape)
    e = codebook[ids].transpose(0, 3, 1, 2)                                # (N, D, s, s)
    u, up = (e, None) if size == grid_size else bilinear_resize_forward(e, grid_size)
    p, phi = conv2d_forward(u, phi_w, phi_b, 1, 1)                          # (N, D, g, g)
    h = (1 - mix) * u + mix * p
    return h, ids, r, ScaleCache(ids.reshape(-1), up, phi)


def scale_step_backward(dh, cache, mix, dcodebook):
    """dh (N, D, g, g) -> dphi_w, dphi_b; the codes' gradient added into dcodebook."""
    dp = mix * dh
    du, dw, db = conv2d_backward(dp, cache.phi)
    du += (1 - mix) * dh
    de = du if cache.up is None else bilinear_resize_backward(du, cache.up)  # (N, D, s, s)
    rows = de.transpose(0, 2, 3, 1).reshape(-1, de.shape[1])               # (N s s, D)
    scatter_add(dcodebook, cache.flat_ids, rows)
    return dw, db


# ---------------------------------------------------------------- all scales

class Ladder(NamedTuple):
    f_hat: Any        # (N, D, g, g) the sum of every scale's h
    maps: list        # ids (N, s_k, s_k) per scale
    targets: list     # r_k (N, D, s_k, s_k) per scale (None when decoding given ids)
    sums: list        # f_hat_k, the sum after k scales, per scale
    steps: list       # ScaleCache per scale


def climb(shape, codebook, phi_w, phi_b, scales, mix=PHI_MIX, f=None, maps=None,
          keep_caches=False):
    """The scales in order, on maps of shape (N, D, g, g). Encoding (f given): each scale
    looks up its codes for what is left of f. Decoding (maps given, the first k): each scale
    takes its codes. The same operations in the same order either way, so that decoding a
    picture's ids gives the forward's f_hat to the bit. keep_caches: each scale's caches for
    a backward (phi's unfolded inputs, 9 numbers for each of f's); without, a scale's go as
    soon as the next scale starts, and the steps list stays empty."""
    xp = get_array_module(codebook)
    grid_size = shape[-1]
    f_hat = xp.zeros(shape, dtype=codebook.dtype)
    out = Ladder(None, [], [], [], [])
    for k, size in enumerate(scales if maps is None else scales[:len(maps)]):
        book = scale_book(codebook, k)
        if maps is None:
            h, ids, r, step = scale_step(f - f_hat, book, phi_w, phi_b, size, grid_size, mix)
        else:
            h, ids, r, step = scale_step(None, book, phi_w, phi_b, size, grid_size, mix, maps[k])
        f_hat = f_hat + h
        for store, item in zip(out[1:4], (ids, r, f_hat)):
            store.append(item)
        if keep_caches:
            out.steps.append(step)
    return out._replace(f_hat=f_hat)


class MultiscaleCache(NamedTuple):
    diffs: list           # f_hat_k - f per scale (N, D, g, g): every loss gradient's part
    steps: list           # ScaleCache per scale
    codebook_shape: tuple
    phi_shape: tuple      # (D, D, 3, 3)
    beta: float
    mix: float


def multiscale_quantize_forward(f, codebook, phi_w, phi_b, scales, beta=0.25, mix=PHI_MIX):
    """f (N, D, g, g), codebook (K, V, D) one per scale (or (V, D), one for all), phi_w
    (D, D, 3, 3), phi_b (D,), scales (s_1 < ... < s_K = g) -> f_hat (N, D, g, g), ids (N, L)
    in [0, V), loss (0-d), cache.

    loss = (1/K) sum_k [mean((f_hat_k - sg f)^2) + beta mean((sg f_hat_k - f)^2)], means over
    the N D g g numbers; its value is (1 + beta)/K sum_k mean((f_hat_k - f)^2).
    """
    check_multiscale_args(f, codebook, phi_w, phi_b, scales)
    ladder = climb(f.shape, codebook, phi_w, phi_b, scales, mix, f=f, keep_caches=True)
    diffs = [s - f for s in ladder.sums]
    mse = sum((d * d).mean() for d in diffs) / len(scales)
    loss = mse + beta * mse    # both terms' value is this mse; they differ in gradient
    cache = MultiscaleCache(diffs, ladder.steps, codebook.shape, phi_w.shape, beta, mix)
    return ladder.f_hat, join_scale_ids(ladder.maps), loss, cache


def multiscale_quantize_backward(df_hat, cache, dloss=1.0):
    """df_hat (N, D, g, g) -> df (N, D, g, g), dcodebook (shaped as the codebook), dphi_w,
    dphi_b.

    df     = df_hat                                     straight through from f_hat to f
           + dloss beta 2/(K n) sum_k (f - f_hat_k)     the commitment terms
    each f_hat_k = h_1 + ... + h_k gets dloss 2/(K n) (f_hat_k - f) from its codebook term,
    so h_j gets the sum of those of k >= j (summed from the finest scale back); through
    phi, the upsampling and the lookup it reaches phi and the chosen codes.
    """
    diffs, mix = cache.diffs, cache.mix
    xp = get_array_module(df_hat)
    scale = 2 * dloss / (len(diffs) * diffs[0].size)
    dcodebook = xp.zeros(cache.codebook_shape, dtype=df_hat.dtype)
    dphi_w = xp.zeros(cache.phi_shape, dtype=df_hat.dtype)
    dphi_b = xp.zeros(cache.phi_shape[0], dtype=df_hat.dtype)
    dh = xp.zeros_like(df_hat)
    for k in reversed(range(len(diffs))):
        dh = dh + scale * diffs[k]
        dw, db = scale_step_backward(dh, cache.steps[k], mix, scale_book(dcodebook, k))
        dphi_w += dw
        dphi_b += db
    df = df_hat - (cache.beta * scale) * sum(diffs)
    return df, dcodebook, dphi_w, dphi_b


def check_multiscale_args(f, codebook, phi_w, phi_b, scales):
    """One-line errors for arguments the pair cannot take."""
    require_float("f", f)
    require_same_dtype("f", f, ("codebook", codebook), ("phi_w", phi_w), ("phi_b", phi_b))
    require_ndim("f", f, 4, "(N, D, g, g)")
    N, D, H, W = f.shape
    if codebook.ndim not in (2, 3) or codebook.ndim == 3 and len(codebook) != len(scales):
        raise ShapeError(f"codebook must have shape ({len(scales)}, V, D), one per scale, or "
                         f"(V, D), one for all, got {tuple(codebook.shape)}")
    if H != W:
        raise ShapeError(f"f must be square (N, D, g, g) for the multi-scale quantizer, got "
                         f"{tuple(f.shape)}")
    if codebook.shape[-1] != D:
        raise ShapeError(f"codebook {tuple(codebook.shape)} has D = {codebook.shape[-1]} but "
                         f"f (N, D, g, g) = {tuple(f.shape)} has D = {D}")
    if tuple(phi_w.shape) != (D, D, 3, 3) or tuple(phi_b.shape) != (D,):
        raise ShapeError(f"phi must be a 3x3 convolution D -> D: phi_w (D, D, 3, 3) = "
                         f"{(D, D, 3, 3)} and phi_b (D,) = ({D},), got "
                         f"{tuple(phi_w.shape)} and {tuple(phi_b.shape)}")
    check_scales(scales, H, context="multiscale_quantize: ")


# ---------------------------------------------------------------- inference and codebook care

def multiscale_ids(f, codebook, phi_w, phi_b, scales, mix=PHI_MIX):
    """f (N, D, g, g) -> ids (N, L): the forward's lookups, nothing kept for a backward."""
    return join_scale_ids(climb(f.shape, codebook, phi_w, phi_b, scales, mix, f=f).maps)


def multiscale_codes(ids, codebook, phi_w, phi_b, scales, grid_size, mix=PHI_MIX):
    """ids (N, L_k), the first k maps -> f_hat (N, D, g, g) from those k maps alone (a
    preview for k < K; the forward's f_hat for k = K)."""
    maps = split_scale_ids(ids, scales)
    shape = (len(ids), codebook.shape[-1], grid_size, grid_size)
    return climb(shape, codebook, phi_w, phi_b, scales, mix, maps=maps).f_hat


def scale_residuals(f, codebook, phi_w, phi_b, scales, mix=PHI_MIX):
    """What the lookups compare with the codes, every scale's targets r_k pooled, one cell
    of each map per picture: f (N, D, g, g) -> (N, D, 1, K).

    One cell each, not all: pooled whole, the 8x8 map would hold 64 of every 155 targets
    and the 1x1 map one, and a k-means start would spend almost every code on the finest
    residuals. Picture n gives its map's cell n mod s^2 (row-major), so a batch spreads
    over the positions."""
    xp = get_array_module(f)
    targets = climb(f.shape, codebook, phi_w, phi_b, scales, mix, f=f).targets
    N, D = f.shape[:2]
    n = xp.arange(N)
    cells = [r.reshape(N, D, -1)[n, :, n % (s * s)] for r, s in zip(targets, scales)]
    return xp.stack(cells, axis=2)[:, :, None, :]                         # (N, D, 1, K)
