"""Finite scalar quantization (FSQ, Mentzer et al. 2023): a codebook nobody has to learn.

Instead of snapping a D-vector to the nearest of K learned codes, FSQ squashes each of its
C channels into a small interval and rounds it to one of L levels. The codes are the grid
of all level combinations, prod(levels) of them, fixed in advance: there is no codebook to
start, restart or keep in use, and no codebook or commitment loss. Per channel with L levels:

    half    = (L - 1) * (1 - 1e-3) / 2         the squashed range, a little inside L levels
    offset  = 0.5 if L is even else 0           even L: levels sit at half-integers ...
    shift   = tan(offset / half)                ... so the rounding grid is moved by 0.5
    bounded = tanh(z + shift) * half - offset   in (-half - offset, half - offset)
    z_q     = round(bounded) / (L // 2)         in [-1, 1]

and the token is the mixed-radix number of the digits round(bounded) + L // 2 (each in
0..L-1), the first channel the least significant. The shift is the paper's reference code
(tan, not atanh): atanh(offset / half) would centre bounded(0) exactly on 0, but for L = 2
offset / half = 0.5 / 0.4995 > 1 has no atanh, and any shift keeps the digits in 0..L-1.

round has no useful derivative; as in VQ it is passed straight through, so only the
smooth squashing reaches the encoder:

    dz = dz_q / (L // 2) * half * (1 - tanh(z + shift)^2)
"""
import math
from typing import NamedTuple

from tinytok.backend import get_array_module
from tinytok.errors import ConfigError, ShapeError
from tinytok.ops.checks import require_float, require_int, require_ndim, require_positive_int


def check_levels(levels):
    """levels must be a non-empty sequence of integers >= 2; returns them as a tuple of ints."""
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__len__") or not len(levels):
        raise ConfigError(f"FSQ levels must be a non-empty sequence of integers >= 2, such "
                          f"as (8, 5, 5, 5), got {levels!r}")
    for i, L in enumerate(levels):
        require_positive_int(f"FSQ levels[{i}]", L, minimum=2)
    return tuple(int(L) for L in levels)


def fsq_num_codes(levels):
    """The size of FSQ's implicit codebook: every combination of levels, prod(levels)."""
    return math.prod(check_levels(levels))


def _per_channel(xp, values, dtype):
    """A list of per-channel numbers as an array shaped (1, C, 1, 1), to broadcast over z."""
    return xp.asarray(values, dtype=dtype).reshape(1, len(values), 1, 1)


class FSQCache(NamedTuple):
    tanh_z: object   # tanh(z + shift), (N, C, H, W): the squashing's derivative is 1 - tanh^2
    half: object     # (1, C, 1, 1): half of each channel's squashed range
    half_width: object  # (1, C, 1, 1): L // 2, the divisor that puts z_q in [-1, 1]


def fsq_forward(z, levels):
    """z (N, C, H, W) with C == len(levels) -> z_q (N, C, H, W), ids (N, H, W) int64, cache."""
    levels = check_levels(levels)
    require_float("z", z)
    require_ndim("z", z, 4, "(N, C, H, W)")
    if z.shape[1] != len(levels):
        raise ShapeError(f"z (N, C, H, W) = {tuple(z.shape)} has C = {z.shape[1]} channels "
                         f"but FSQ has {len(levels)} levels {levels}: one channel per level")
    xp = get_array_module(z)
    halves = [(L - 1) * (1 - 1e-3) / 2 for L in levels]                # host numbers, per channel
    shifts = [math.tan((0.5 if L % 2 == 0 else 0.0) / h) for L, h in zip(levels, halves)]
    offset = _per_channel(xp, [0.5 if L % 2 == 0 else 0.0 for L in levels], z.dtype)
    half = _per_channel(xp, halves, z.dtype)
    half_width = _per_channel(xp, [L // 2 for L in levels], z.dtype)
    tanh_z = xp.tanh(z + _per_channel(xp, shifts, z.dtype))
    rounded = xp.round(tanh_z * half - offset)                          # round(bounded)
    z_q = rounded / half_width
    digits = (rounded + half_width).astype(xp.int64)                    # each in 0..L-1
    return z_q, fsq_ids(digits, levels), FSQCache(tanh_z, half, half_width)


def fsq_backward(dz_q, cache):
    """dz_q (N, C, H, W) -> dz: round passed straight through, then the squashing's slope."""
    return dz_q / cache.half_width * cache.half * (1 - cache.tanh_z * cache.tanh_z)


def _radix_basis(levels):
    """Place values of the mixed-radix digits, first channel least significant:
    (1, L0, L0*L1, ...)."""
    return [math.prod(levels[:c]) for c in range(len(levels))]


def fsq_ids(digits, levels):
    """digits (N, C, H, W) int, digit c in 0..levels[c]-1 -> ids (N, H, W), the number
    sum_c digit_c * basis_c."""
    xp = get_array_module(digits)
    basis = _per_channel(xp, _radix_basis(levels), xp.int64)
    return (digits * basis).sum(axis=1)


def fsq_codes(ids, levels, dtype="float32"):
    """ids (N, H, W) int in [0, prod(levels)) -> z_q (N, C, H, W): the codes, with no table.

    digit_c = (id // basis_c) % L_c, and z_q_c = (digit_c - L_c // 2) / (L_c // 2), the
    forward's z_q for that id.
    """
    levels = check_levels(levels)
    require_int("ids", ids)
    require_ndim("ids", ids, 3, "(N, H, W)")
    K = math.prod(levels)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= K):
        raise ShapeError(f"FSQ ids must lie in [0, {K}) for levels {levels}, got values from "
                         f"{int(ids.min())} to {int(ids.max())}")
    xp = get_array_module(ids)
    channels = [(ids // b) % L for b, L in zip(_radix_basis(levels), levels)]
    digits = xp.stack(channels, axis=1).astype(dtype)                   # (N, C, H, W)
    half_width = _per_channel(xp, [L // 2 for L in levels], dtype)
    return (digits - half_width) / half_width
