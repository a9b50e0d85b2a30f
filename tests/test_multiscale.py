"""VAR's multi-scale residual quantizer (tinytok.tokenizer.multiscale) and the tokenizer,
the command line and the evaluation built on it.

The forward against a reference written with loops over scales and cells (tests/reference's
resizes and convolution, a nearest-code search one cell at a time); the gradients by central
differences in float64. The lookups have no useful derivative, so, as for VQ, the
straight-through gradient is checked by its definition: the surrogate

    S(f, C, w, b) = sum(G * (f + f_hat0 - f0))
                  + dloss (1/K) sum_k [mean((f_hat_k(C, w, b) - f0)^2)
                                       + beta mean((f_hat_k0 - f)^2)]

with the maps held at the unperturbed forward's (f_hat_k(C, w, b) the sum of the first k maps'
h, recomputed from the parameters), f0 and f_hat_k0 constants.
"""
import io
import math
import os
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from test_fake_cupy import (_train_tokenizer, assert_device_matches_numpy,  # noqa: F401
                            assert_same, fake)  # noqa: F401 (a fixture)
from tinytok.cli import main
from tinytok.errors import ConfigError, ShapeError
from tinytok.evaluate.metrics import eval_tokenizer
from tinytok.gradcheck import numerical_gradient, relative_error
from tinytok.pipeline import Pipeline, Tokenizer
from tinytok.prior.kinds import check_tokenizer
from tinytok.tokenizer.multiscale import (PHI_MIX, check_scales, climb, default_scales,
                                          join_scale_ids, multiscale_codes, multiscale_ids,
                                          multiscale_quantize_backward,
                                          multiscale_quantize_forward, prefix_lengths,
                                          scale_residuals, split_scale_ids, token_count)
from tinytok.tokenizer.quantizers import QUANTIZERS
from tinytok.tokenizer.vqvae import (config_dict, decode_ids, decoder_forward, encode_ids,
                                     encoder_forward, init_tokenizer_params, tokenizer_backward,
                                     tokenizer_config, tokenizer_forward, with_grid,
                                     with_quantizer)
from tinytok.training import TokenizerRecipe, TrainSettings, train_tokenizer

FEW = settings(max_examples=20, deadline=None)
BETA = 0.25


def draw(seed, N=2, D=3, g=4, V=6, dtype=np.float64, books=None):
    """f, codebook, phi_w, phi_b: phi small enough that its start is near the identity;
    books: that many codebooks (one per scale), else one (V, D) for all."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, D, g, g)).astype(dtype),
            rng.standard_normal((V, D) if books is None else (books, V, D)).astype(dtype),
            (rng.standard_normal((D, D, 3, 3)) * 0.3).astype(dtype),
            (rng.standard_normal(D) * 0.1).astype(dtype))


# --- the reference: loops over scales and cells ---------------------------------------------

def ref_multiscale(f, codebook, w, b, scales, beta, mix=PHI_MIX):
    """Scale by scale: the residual averaged down (reference.area_resize), each cell's
    nearest code by a loop over the codes, the codes up (reference.bilinear_resize), phi by
    reference.conv2d; the loss (1 + beta)/K sum_k mean((f_hat_k - f)^2)."""
    N, D, g, _ = f.shape
    f_hat, maps, total = np.zeros(f.shape), [], 0.0
    for k, s in enumerate(scales):
        book = codebook[k] if codebook.ndim == 3 else codebook
        rest = f - f_hat
        r = rest if s == g else ref.area_resize(rest, (s, s))
        ids = np.zeros((N, s, s), dtype=np.int64)
        e = np.zeros((N, D, s, s))
        for n in range(N):
            for i in range(s):
                for j in range(s):
                    dists = [sum((r[n, d, i, j] - book[c, d]) ** 2 for d in range(D))
                             for c in range(len(book))]
                    ids[n, i, j] = int(np.argmin(dists))
                    e[n, :, i, j] = book[ids[n, i, j]]
        u = e if s == g else ref.bilinear_resize(e, (g, g))
        f_hat = f_hat + (1 - mix) * u + mix * ref.conv2d(u, w, b, padding=1)
        maps.append(ids)
        total += np.mean((f_hat - f) ** 2)
    return f_hat, np.concatenate([m.reshape(N, -1) for m in maps], axis=1), \
        (1 + beta) * total / len(scales)


def lookup_margin(f, codebook, w, b, scales):
    """The smallest gap between the nearest and second-nearest code over every scale's
    cells: a finite-difference probe (1e-5) must not change any lookup."""
    targets = climb(f.shape, codebook, w, b, scales, f=f).targets
    gaps = []
    for k, r in enumerate(targets):
        rows = r.transpose(0, 2, 3, 1).reshape(-1, r.shape[1])
        book = codebook[k] if codebook.ndim == 3 else codebook
        d = np.sort(((rows[:, None] - book[None]) ** 2).sum(-1), axis=1)
        gaps.append((d[:, 1] - d[:, 0]).min())
    return min(gaps)


@FEW
@given(N=st.integers(1, 2), D=st.integers(1, 3), V=st.integers(1, 5),
       scales=st.sampled_from([(1,), (1, 2), (2, 3), (1, 3, 4), (1, 2, 3, 5)]),
       beta=st.floats(0, 2), per_scale=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_forward_matches_a_loop_over_scales_and_cells(N, D, V, scales, beta, per_scale, seed):
    f, C, w, b = draw(seed, N, D, scales[-1], V, books=len(scales) if per_scale else None)
    if V > 1 and lookup_margin(f, C, w, b, scales) < 1e-9:
        return  # an exact tie: either code is right
    f_hat, ids, loss, _ = multiscale_quantize_forward(f, C, w, b, scales, beta)
    want_hat, want_ids, want_loss = ref_multiscale(f, C, w, b, scales, beta)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(f_hat, want_hat, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-10, atol=1e-14)
    assert ids.shape == (N, token_count(scales)) and ids.dtype.kind in "iu"


def test_one_scale_without_phi_is_plain_vq():
    """One map at the grid's size and phi switched off (mix 0) is VQ: nearest codes, and
    the loss (1 + beta) mean((e - f)^2)."""
    from tinytok.tokenizer.quantize import vector_quantize_forward
    f, C, w, b = draw(3, g=3)
    f_hat, ids, loss, _ = multiscale_quantize_forward(f, C, w, b, (3,), BETA, mix=0.0)
    z_q, vq_ids, vq_loss, _ = vector_quantize_forward(f, C, BETA)
    np.testing.assert_array_equal(ids, vq_ids.reshape(len(f), -1))
    np.testing.assert_allclose(f_hat, z_q, rtol=1e-14)
    np.testing.assert_allclose(float(loss), float(vq_loss), rtol=1e-12)


def test_each_scale_codes_what_the_coarser_ones_left():
    """With phi the identity (mix 0) and a codebook holding the exact answers, the 1x1 map
    takes the mean and the 2x2 map the rest: f is reconstructed exactly."""
    f = np.zeros((1, 1, 2, 2))
    f[0, 0] = [[3.0, 1.0], [1.0, 3.0]]                # mean 2, residual +-1
    C = np.array([[2.0], [1.0], [-1.0], [0.0]])
    f_hat, ids, loss, _ = multiscale_quantize_forward(f, C, np.zeros((1, 1, 3, 3)),
                                                      np.zeros(1), (1, 2), BETA, mix=0.0)
    np.testing.assert_array_equal(ids, [[0, 1, 2, 2, 1]])
    np.testing.assert_allclose(f_hat, f)
    np.testing.assert_allclose(float(loss), (1 + BETA) * np.mean(1.0) / 2)  # scale 1: mse 1


# --- gradients -------------------------------------------------------------------------------

def pair_gradient_errors(backward, args, scales, dloss, seed=0):
    """Relative errors of backward against central differences of the surrogate S."""
    f0 = args[0]
    f_hat0, ids0, _, cache = multiscale_quantize_forward(*args, scales, BETA)
    G = np.random.default_rng(seed + 100).standard_normal(f0.shape)
    grads = backward(G, cache, dloss)
    maps = split_scale_ids(ids0, scales)
    sums0 = climb(f0.shape, *args[1:], scales, maps=maps).sums

    def S(f, C, w, b):
        sums = climb(f0.shape, C, w, b, scales, maps=maps).sums
        terms = sum(np.mean((s - f0) ** 2) + BETA * np.mean((s0 - f) ** 2)
                    for s, s0 in zip(sums, sums0))
        return np.asarray(np.sum(G * (f + f_hat0 - f0)) + dloss * terms / len(scales))

    errors = {}
    for i, name in enumerate(["df", "dcodebook", "dphi_w", "dphi_b"]):
        def probe(a, i=i):
            moved = list(args)
            moved[i] = a
            return S(*moved)
        num = numerical_gradient(probe, args[i].copy(), np.ones(()), np.arange(args[i].size))
        errors[name] = relative_error(grads[i].reshape(-1), num)
    np.testing.assert_array_equal(multiscale_quantize_forward(*args, scales, BETA)[1], ids0)
    return errors


@pytest.mark.parametrize("per_scale", [True, False])
@pytest.mark.parametrize("scales", [(1, 2, 4), (2, 3, 4), (1, 4)])
@pytest.mark.parametrize("dloss", [1.0, 0.37])
def test_the_pair_is_straight_through_with_the_losses_on_the_running_sums(scales, dloss,
                                                                          per_scale):
    args = draw(1, g=scales[-1], books=len(scales) if per_scale else None)
    assert lookup_margin(*args, scales) > 1e-4
    errors = pair_gradient_errors(multiscale_quantize_backward, args, scales, dloss)
    assert max(errors.values()) < 1e-7, errors


def codes_against_their_own_residuals(df_hat, cache, dloss):
    """A plausible slip: the codebook term per scale on h_k alone (as if each map were
    coded on its own), not on the running sum f_hat_k: later scales no longer reach the
    earlier maps' codes and phi."""
    from tinytok.tokenizer.multiscale import scale_step_backward
    xp_zeros = np.zeros
    scale = 2 * dloss / (len(cache.diffs) * cache.diffs[0].size)
    dC, dw, db = xp_zeros(cache.codebook_shape), xp_zeros(cache.phi_shape), \
        xp_zeros(cache.phi_shape[0])
    for k, (diff, step) in enumerate(zip(cache.diffs, cache.steps)):
        w_k, b_k = scale_step_backward(scale * diff, step, cache.mix, dC[k])
        dw, db = dw + w_k, db + b_k
    df = df_hat - (cache.beta * scale) * sum(cache.diffs)
    return df, dC, dw, db


def decoder_reaches_phi(df_hat, cache, dloss):
    """As if f_hat had no stop-gradient on the decoder's side: the decoder's gradient also
    trains phi and the codes (and still reaches f)."""
    from tinytok.tokenizer.multiscale import scale_step_backward
    df, dC, dw, db = multiscale_quantize_backward(df_hat, cache, dloss)
    for k, step in enumerate(cache.steps):
        w_k, b_k = scale_step_backward(df_hat, step, cache.mix, dC[k])
        dw, db = dw + w_k, db + b_k
    return df, dC, dw, db


@pytest.mark.parametrize("mutant", [codes_against_their_own_residuals, decoder_reaches_phi])
def test_the_check_catches_broken_backwards(mutant):
    args = draw(1, g=4, books=3)
    errors = pair_gradient_errors(mutant, args, (1, 2, 4), 1.0)
    assert errors["dcodebook"] > 1e-2 and errors["dphi_w"] > 1e-2, errors


def test_the_decoder_gradient_reaches_only_f():
    """dloss = 0: the decoder's gradient goes to f unchanged and nowhere else."""
    args = draw(2)
    _, _, _, cache = multiscale_quantize_forward(*args, (1, 2, 4), BETA)
    G = np.random.default_rng(0).standard_normal(args[0].shape)
    df, dC, dw, db = multiscale_quantize_backward(G, cache, 0.0)
    np.testing.assert_array_equal(df, G)
    assert not dC.any() and not dw.any() and not db.any()


# --- ids: the maps in a row ------------------------------------------------------------------

@FEW
@given(scales=st.lists(st.integers(1, 6), min_size=1, max_size=4, unique=True).map(sorted),
       N=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_ids_split_and_join_round_trip(scales, N, seed):
    scales = tuple(scales)
    ids = np.random.default_rng(seed).integers(0, 50, (N, token_count(scales)))
    maps = split_scale_ids(ids, scales)
    assert [m.shape for m in maps] == [(N, s, s) for s in scales]
    np.testing.assert_array_equal(join_scale_ids(maps), ids)
    for k, length in enumerate(prefix_lengths(scales)):   # every prefix of whole maps
        assert len(split_scale_ids(ids[:, :length], scales)) == k + 1
    # row-major within each map, the maps in order
    start = token_count(scales[:-1])
    np.testing.assert_array_equal(maps[-1][:, 0, :], ids[:, start:start + scales[-1]])


def test_split_refuses_what_is_not_whole_maps():
    assert prefix_lengths((1, 2, 3)) == (1, 5, 14)
    with pytest.raises(ShapeError, match=r"4 ids per picture are not whole maps of the scales "
                                         r"\(1, 2, 3\): give one of \(1, 5, 14\)"):
        split_scale_ids(np.zeros((2, 4), dtype=np.int64), (1, 2, 3))


def test_decoding_the_ids_gives_the_forward_and_a_prefix_gives_a_preview():
    args = draw(4, g=4)
    scales = (1, 2, 4)
    f_hat, ids, _, _ = multiscale_quantize_forward(*args, scales, BETA)
    np.testing.assert_array_equal(multiscale_ids(*args, scales), ids)
    np.testing.assert_array_equal(multiscale_codes(ids, *args[1:], scales, 4), f_hat)
    first = multiscale_codes(ids[:, :1], *args[1:], scales, 4)            # the 1x1 map alone
    C, w, b = args[1:]
    u = np.broadcast_to(C[ids[:, 0]][:, :, None, None], first.shape)     # one code, spread
    np.testing.assert_allclose(first, (1 - PHI_MIX) * u + PHI_MIX * ref.conv2d(u, w, b, 1, 1),
                               rtol=1e-12)
    two = multiscale_codes(ids[:, :5], *args[1:], scales, 4)
    assert first.shape == two.shape == f_hat.shape
    # each further map brings the sum nearer f (these codes are drawn, not trained: in
    # mean over the pictures and channels, the preview is the rougher one)
    assert not np.array_equal(first, two)


def test_climbing_without_caches_gives_the_same_ladder_and_keeps_none():
    """Encoding and decoding (no backward) keep no scale's caches; what they give is the
    same to the bit as the climb that keeps them for the pair's backward."""
    args = draw(3, g=4)
    scales = (1, 2, 4)
    kept = climb(args[0].shape, *args[1:], scales, f=args[0], keep_caches=True)
    lean = climb(args[0].shape, *args[1:], scales, f=args[0])
    assert len(kept.steps) == len(scales) and lean.steps == []
    for a, b in zip(kept[:4], lean[:4]):
        for x, y in (zip(a, b) if isinstance(a, list) else [(a, b)]):
            np.testing.assert_array_equal(x, y)


def test_scale_residuals_pool_one_cell_of_each_map_per_picture():
    args = draw(5, N=3, g=4)
    scales = (1, 2, 4)
    pooled = scale_residuals(*args, scales)
    targets = climb(args[0].shape, *args[1:], scales, f=args[0]).targets
    assert pooled.shape == (3, 3, 1, 3)
    for n in range(3):
        for k, (r, s) in enumerate(zip(targets, scales)):
            i, j = divmod(n % (s * s), s)
            np.testing.assert_array_equal(pooled[n, :, 0, k], r[n, :, i, j])


# --- the config ------------------------------------------------------------------------------

def test_scales_are_checked_in_one_line():
    assert check_scales([1, 2, 4], 4) == (1, 2, 4)
    assert check_scales(np.array([1, 3]), 3) == (1, 3)
    assert default_scales(8) == (1, 2, 3, 4, 5, 6, 8)
    assert default_scales(16) == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    assert default_scales(2) == (1, 2) and default_scales(1) == (1,)
    for bad in [(1, 3, 2, 8), (1, 1, 8), (0, 8), (), (1.5, 8), ("1", 8), 8, (True, 8)]:
        with pytest.raises(ConfigError, match="scales must be whole numbers >= 1, strictly "
                                              "increasing, such as 1,2,3,4,5,6,8; got"):
            replace(tokenizer_config("vqvae-ref"), quantizer="scales", scales=bad)
    with pytest.raises(ConfigError, match=r"the last of the scales 1,2,4 must be the grid's "
                                          r"size 8 \(the finest map is the grid\)"):
        replace(tokenizer_config("vqvae-ref"), quantizer="scales", scales=(1, 2, 4))


def test_scales_follow_the_grid_and_are_saved_only_for_their_quantizer():
    cfg = with_quantizer("vqvae-ref", "scales")
    assert cfg.scales == (1, 2, 3, 4, 5, 6, 8)
    assert with_grid(cfg, grid_size=16).scales == default_scales(16)
    assert with_grid(cfg, image_size=64).scales == default_scales(16)
    assert with_quantizer(replace(tokenizer_config("vqvae-tiny"), image_size=8),
                          "scales").scales == (1, 2)
    mine = replace(cfg, scales=(2, 4, 8))
    assert with_grid(mine, grid_size=8).scales == (2, 4, 8)     # ending at the grid: kept
    assert config_dict(mine)["scales"] == [2, 4, 8]
    assert tokenizer_config(config_dict(mine)) == mine
    assert "scales" not in config_dict(tokenizer_config("vqvae-ref"))
    # another quantizer ignores them, so a grid that does not end them is no error there
    assert with_grid(tokenizer_config("vqvae-ref"), grid_size=16).grid_size == 16


def test_the_command_line_takes_scales_for_their_quantizer_only(capsys):
    def refusal(*flags):
        assert main(["train-tokenizer", "--out", "x.npz", *flags]) != 0
        return capsys.readouterr().err.strip()
    assert "--scales is for --quantizer scales only" in refusal("--scales", "1,2,8")
    line = refusal("--quantizer", "scales", "--scales", "1,2,4")
    assert "the last of the scales 1,2,4 must be the grid's size 8" in line
    assert len(line.splitlines()) == 1
    line = refusal("--quantizer", "scales", "--scales", "1,4,2,8")
    assert "strictly increasing" in line and len(line.splitlines()) == 1
    with pytest.raises(SystemExit):                       # argparse's own refusal
        main(["train-tokenizer", "--out", "x.npz", "--quantizer", "scales", "--scales", "1,a"])
    assert "expected whole numbers joined by commas" in capsys.readouterr().err


# --- the tokenizer, end to end ---------------------------------------------------------------

def tiny(**changes):
    """An 8x8-picture tokenizer with a 4x4 grid (one downsampling), maps 1, 2, 4."""
    cfg = replace(tokenizer_config("vqvae-tiny"), image_size=8, hidden=8, res_hidden=4,
                  code_dim=3, num_codes=5, downsamplings=1, **changes)
    return replace(with_quantizer(cfg, "scales"), scales=(1, 2, 4))


def images(seed, n=2, size=8):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (n, 3, size, size))


def test_the_tokenizer_gradients_end_to_end():
    """Every parameter's gradient against central differences: the encoder's on the
    straight-through surrogate, the decoder's on the loss itself, the quantizer's (codebook
    and phi) on its codebook terms, the maps held fixed (and checked unchanged)."""
    cfg = tiny()
    params = init_tokenizer_params(cfg, seed=3, dtype="float64")
    x = images(0)
    out, cache = tokenizer_forward(x, params, cfg)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    tokenizer_backward(cache, grads, cfg)
    z0, ids0 = out["z"], out["ids"]
    quant = [params[k] for k in ("quant.codebook", "quant.phi.w", "quant.phi.b")]
    assert lookup_margin(z0, *quant, cfg.scales) > 1e-6
    maps = split_scale_ids(ids0, cfg.scales)
    sums0 = climb(z0.shape, *quant, cfg.scales, maps=maps).sums

    def surrogate(p):
        """mse(decoder(z + f_hat0 - z0), x) + the codebook terms (the sums from p's
        codebook and phi, against z0) + beta * the commitment terms (z against the sums0)."""
        z, _ = encoder_forward(x, p, cfg)
        np.testing.assert_array_equal(encode_ids(x, p, cfg), ids0)   # the probe moved no map
        sums = climb(z.shape, p["quant.codebook"], p["quant.phi.w"], p["quant.phi.b"],
                     cfg.scales, maps=maps).sums
        x_hat, _ = decoder_forward(z + (sums0[-1] - z0), p, cfg)
        terms = sum(np.mean((s - z0) ** 2) + cfg.beta * np.mean((s0 - z) ** 2)
                    for s, s0 in zip(sums, sums0)) / len(cfg.scales)
        return float(np.mean((x_hat - x) ** 2) + terms)

    rng = np.random.default_rng(1)
    for name, value in params.items():
        picks = rng.choice(value.size, min(value.size, 12), replace=False)

        def probe(a, name=name):
            moved = dict(params, **{name: a})
            return np.asarray(surrogate(moved))
        num = numerical_gradient(probe, value.copy(), np.ones(()), picks)
        assert relative_error(grads[name].reshape(-1)[picks], num) < 1e-6, name


def test_tokenizer_encodes_and_decodes_maps_in_a_row(tmp_path):
    cfg = tiny()
    tok = Tokenizer(init_tokenizer_params(cfg, seed=0), cfg)
    pictures = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    ids = tok.encode(pictures)
    assert ids.shape == (3, 21) and tok.ids_shape == (21,) and not tok.writes_grids
    assert tok.bits_per_picture == 21 * math.log2(5)
    assert tok.prefix_lengths == (1, 5, 21)
    whole = tok.decode(ids)
    assert whole.shape == (3, 8, 8, 3) and whole.dtype == np.uint8
    np.testing.assert_array_equal(tok.decode(ids[0]), whole[:1])
    for length in (1, 5):                                    # previews from the first maps
        assert tok.decode(ids[:, :length]).shape == (3, 8, 8, 3)
    assert tok.code_tiles().shape == (5, 8, 8, 3)
    with pytest.raises(ShapeError, match=r"token ids must have shape \(N, 21\) or \(21,\), or "
                                         r"the first maps alone \(N, L_k\), L_k one of 1, 5"):
        tok.decode(ids[:, :4])
    for kind in ("raster", "masked"):
        with pytest.raises(ConfigError, match=f"a {kind} prior reads grids of tokens, but "
                                              "this scales tokenizer writes 21 ids per picture"):
            check_tokenizer(kind, tok)
    path = str(tmp_path / "tok.npz")
    tok.save(path)
    back = Tokenizer.load(path)
    assert back.config == cfg and back.config.scales == (1, 2, 4)
    np.testing.assert_array_equal(back.encode(pictures), ids)


def test_the_table_entry_describes_the_model():
    q, cfg = QUANTIZERS["scales"], tiny()
    params = init_tokenizer_params(cfg, dtype="float64")
    assert {k for k in params if k.startswith("quant.")} == {
        "quant.codebook", "quant.phi.w", "quant.phi.b"}
    assert params["quant.phi.w"].shape == (3, 3, 3, 3)
    assert q.reads("scales") and q.ids_shape(cfg) == (21,)
    assert QUANTIZERS["vq"].ids_shape(cfg) == (4, 4)
    x = images(1)
    out, _ = tokenizer_forward(x, params, cfg)
    np.testing.assert_array_equal(decode_ids(out["ids"], params, cfg),
                                  decoder_forward(q.codes_of(out["ids"], params, cfg),
                                                  params, cfg)[0])
    assert params["quant.codebook"].shape == (3, 5, 3)       # one codebook per scale
    vectors, codes = q.search_space(out["z"], params, cfg)
    assert vectors.shape == (2, 3, 1, 3) and codes.shape == (15, 3)
    groups = q.groups(out["z"], params, cfg)
    # every cell, the 1x1 map repeated up to K = 5 vectors for a k-means start
    assert [g[1].shape for g in groups] == [(6, 3, 1, 1), (2, 3, 2, 2), (2, 3, 4, 4)]
    for k, (codes, _, searched) in enumerate(groups):     # views: care moves the codes
        np.testing.assert_array_equal(codes, searched)
        assert np.shares_memory(codes, params["quant.codebook"][k])
    assert q.code_rows(cfg) == 15
    rows = q.rows_of(out["ids"], cfg)
    np.testing.assert_array_equal(rows[:, 0], out["ids"][:, 0])
    np.testing.assert_array_equal(rows[:, 1:5], out["ids"][:, 1:5] + 5)
    np.testing.assert_array_equal(rows[:, 5:], out["ids"][:, 5:] + 10)


def test_training_starts_the_codebook_on_residuals_and_runs(tmp_path):
    """A few steps with the k-means start (scale by scale) and restarts: finite, and the
    codebook starts on residual targets, not where init put it."""
    cfg = tiny()
    pictures = np.random.default_rng(2).integers(0, 256, (24, 8, 8, 3)).astype(np.uint8)
    path = str(tmp_path / "t.npz")
    history = train_tokenizer(pictures, cfg, TrainSettings(steps=4, batch_size=4, warmup=1),
                              path, TokenizerRecipe(kmeans_images=8, restart_every=2),
                              log=lambda text: None, progress_stream=io.StringIO())
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    tok = Tokenizer.load(path)
    assert tok.config.scales == (1, 2, 4)
    start = init_tokenizer_params(cfg, seed=0)["quant.codebook"]
    assert not np.allclose(tok.params["quant.codebook"], start)


def test_evaluation_reports_usage_per_scale():
    cfg = replace(tiny(), image_size=16, downsamplings=2)   # SSIM needs 11x11 pictures
    tok = Tokenizer(init_tokenizer_params(cfg, seed=0), cfg)
    pictures = np.random.default_rng(4).integers(0, 256, (6, 16, 16, 3)).astype(np.uint8)
    figures, _, ids = eval_tokenizer(tok, pictures)
    maps = split_scale_ids(ids, cfg.scales)
    for s, m in zip(cfg.scales, maps):
        used = len(np.unique(m))
        assert figures["scale_codes_used"][f"{s}x{s}"] == used
        # reach: min(K, cells of the map over the pictures): 6 for the 1x1 map, then 5
        assert figures["scale_usage"][f"{s}x{s}"] == round(used / min(5, 6 * s * s), 4)
    assert figures["min_scale_usage"] == min(figures["scale_usage"].values())
    assert figures["bits_per_picture"] == 21 * math.log2(5)
    assert "scale_usage" not in eval_tokenizer(
        Tokenizer(init_tokenizer_params(replace(cfg, quantizer="vq"), seed=0),
                  replace(cfg, quantizer="vq")), pictures)[0]


def test_the_command_line_prints_each_map(tmp_path, capsys):
    from PIL import Image
    cfg = tiny()
    tok = Tokenizer(init_tokenizer_params(cfg, seed=0), cfg)
    path = str(tmp_path / "tok.npz")
    tok.save(path)
    picture = str(tmp_path / "a.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)).save(
        picture)
    assert main(["encode", "--tokenizer", path, picture]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines[1:] if line.strip()]
    assert [len(r.split()) for r in rows] == [1, 2, 2, 4, 4, 4, 4]   # 1x1, 2x2, 4x4


# --- the fake CuPy ---------------------------------------------------------------------------

def _multiscale_run(xp):
    from tinytok.training.optim import zeros_like_params
    cfg = replace(with_quantizer(replace(tokenizer_config("vqvae-tiny"), image_size=16,
                                         hidden=8, res_hidden=4, code_dim=4, num_codes=8),
                                 "scales"), scales=(1, 2, 4))
    params = init_tokenizer_params(cfg, seed=0)
    x = xp.asarray(np.random.default_rng(1).uniform(-0.5, 0.5, (2, 3, 16, 16)),
                   dtype="float32")
    out, cache = tokenizer_forward(x, params, cfg)
    grads = zeros_like_params(params)
    tokenizer_backward(cache, grads, cfg)
    quant = [params[k] for k in ("quant.codebook", "quant.phi.w", "quant.phi.b")]
    return {"out": out, "grads": grads, "ids": encode_ids(x, params, cfg),
            "preview": decode_ids(out["ids"][:, :5], params, cfg),
            "residuals": scale_residuals(out["z"], *quant, cfg.scales)}


def test_the_quantizer_on_device_equals_numpy(fake):
    assert_device_matches_numpy(_multiscale_run, fake, what="multi-scale tokenizer")


def test_training_on_device_equals_numpy(fake, tmp_path):
    from tinytok.training.checkpoint import load_checkpoint
    want = _train_tokenizer(np, "scales", tmp_path / "numpy.npz")
    got = _train_tokenizer(fake, "scales", tmp_path / "device.npz")
    assert len(got) == 2 and all(math.isfinite(h["loss"]) for h in got)
    assert_same(want, got, "history")
    a, b = load_checkpoint(tmp_path / "numpy.npz"), load_checkpoint(tmp_path / "device.npz")
    assert_same(a.params, b.params, "params")
    assert os.path.exists(tmp_path / "device.npz")


# --- PyTorch: VAR's quant.py as PyTorch code writes it ----------------------------------------

def torch_multiscale(torch, f, codebook, w, b, scales, beta, mix=PHI_MIX):
    """VAR's VectorQuantizer2.forward (bilinear for its bicubic, one phi): f_rest on the
    detached f, area down, argmin, the codes up, phi mixed in, loss on the running sum."""
    F = torch.nn.functional
    N, D, g, _ = f.shape
    f_nograd = f.detach()
    f_rest, f_hat, loss, all_ids = f_nograd.clone(), torch.zeros_like(f), 0.0, []
    for k, s in enumerate(scales):
        C = codebook[k] if codebook.dim() == 3 else codebook
        r = f_rest if s == g else F.interpolate(f_rest, size=(s, s), mode="area")
        rows = r.permute(0, 2, 3, 1).reshape(-1, D)
        ids = torch.argmin((rows ** 2).sum(1, keepdim=True) + (C.data ** 2).sum(1)
                           - 2 * rows @ C.data.T, dim=1)
        e = C[ids].reshape(N, s, s, D).permute(0, 3, 1, 2)
        u = e if s == g else F.interpolate(e, size=(g, g), mode="bilinear",
                                           align_corners=False)
        h = (1 - mix) * u + mix * F.conv2d(u, w, b, padding=1)
        f_hat = f_hat + h
        f_rest = f_rest - h.detach()
        loss = loss + F.mse_loss(f_hat.data, f) * beta + F.mse_loss(f_hat, f_nograd)
        all_ids.append(ids.reshape(N, -1))
    return (f_hat.data - f_nograd) + f, torch.cat(all_ids, 1), loss / len(scales)


@pytest.mark.parametrize("books", [None, 4])
def test_the_pair_matches_var_in_pytorch(books):
    torch = pytest.importorskip("torch")
    scales = (1, 2, 3, 4)
    args = draw(6, N=2, D=4, g=4, V=7, books=books)
    f_hat, ids, loss, cache = multiscale_quantize_forward(*args, scales, BETA)
    G = np.random.default_rng(7).standard_normal(f_hat.shape)
    grads = multiscale_quantize_backward(G, cache, 1.0)
    t = [torch.tensor(a, requires_grad=True) for a in args]
    t_hat, t_ids, t_loss = torch_multiscale(torch, *t, scales, BETA)
    np.testing.assert_array_equal(ids, t_ids.numpy())
    np.testing.assert_allclose(f_hat, t_hat.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(float(loss), float(t_loss.detach()), rtol=1e-12)
    ((t_hat * torch.tensor(G)).sum() + t_loss).backward()
    for ours, theirs in zip(grads, t):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_the_kmeans_start_goes_scale_by_scale():
    """After the start, each scale's codebook is the k-means of the targets the codebooks
    before it leave (those do not change after it): the definition of the start in turn.
    All at once, scale 2's codes would sit on the downsampled map, not on its residual."""
    from tinytok.distributed import SINGLE
    from tinytok.tokenizer.codebook import kmeans_init
    from tinytok.training.tokenizer_trainer import TokenizerRun, encode_latents
    cfg = tiny()
    pictures = np.random.default_rng(5).integers(0, 256, (12, 8, 8, 3)).astype(np.uint8)
    settings = TrainSettings(steps=1, batch_size=4, warmup=1)
    run = TokenizerRun(pictures, cfg, settings, TokenizerRecipe(kmeans_images=12), SINGLE)
    run.start_codebook()
    z = encode_latents(pictures[np.random.default_rng([0, 0, 9]).permutation(12)],
                       run.params, cfg)
    q = QUANTIZERS["scales"]
    for k, (codes, vectors, _) in enumerate(q.groups(z, run.params, cfg)):
        np.testing.assert_array_equal(codes, kmeans_init(vectors, 5, settings.seed))
