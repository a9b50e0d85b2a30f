"""Unit-length codes: the l2_normalize pair, the cosine and factorized quantizers, and the
tokenizer built on each.

Forwards against references written with loops (sharing no code with tinytok); gradients by
central differences in float64. The lookup has no useful derivative, so, as for VQ, the
straight-through gradient is checked by its definition: the surrogate in which the chosen
code enters as u + (e0 - u0) (u the unit vector, e0 and u0 constants of the unperturbed
forward) and the two losses, finite-differenced with the ids held fixed. Everything that
has a true gradient (the losses with respect to z and the codebook, the projections, the
decoder) is differenced as it is.
"""
import math
import os
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinytok.errors import ConfigError, DTypeError, ShapeError
from tinytok.gradcheck import assert_gradients_close, numerical_gradient, relative_error
from tinytok.ops import PAIRS
from tinytok.ops.norm import l2_normalize_backward, l2_normalize_forward
from tinytok.tokenizer.cosine import (cosine_quantize_backward, cosine_quantize_forward,
                                      factorized_quantize_backward, factorized_quantize_forward)
from tinytok.tokenizer.quantizers import QUANTIZERS
from tinytok.tokenizer.vqvae import (config_dict, decoder_forward, encoder_forward,
                                     init_tokenizer_params, tokenizer_backward, tokenizer_config,
                                     tokenizer_forward, with_quantizer)

FEW = settings(max_examples=25, deadline=None)


# --- references: loops over vectors and cells, straight from the definitions ---------------

def ref_l2_normalize(x, axis=-1, eps=1e-12):
    """Each vector along axis divided by max(its length, eps), one vector at a time."""
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    out = np.zeros_like(rows)
    for r, v in enumerate(rows):
        length = math.sqrt(sum(float(a) * float(a) for a in v))
        out[r] = [a / max(length, eps) for a in v]
    return np.moveaxis(out.reshape(moved.shape), -1, axis)


def ref_cosine_quantize(z, codebook, beta):
    """Per cell: the code with the largest cosine similarity; z_q the unit code; the loss
    (1 + beta) * mean of the squared differences of the unit vectors."""
    N, D, H, W = z.shape
    codes = ref_l2_normalize(codebook, axis=1)
    z_q, ids, total = np.zeros(z.shape), np.zeros((N, H, W), dtype=np.int64), 0.0
    for n in range(N):
        for i in range(H):
            for j in range(W):
                u = ref_l2_normalize(z[n, :, i, j])
                sims = [sum(u[d] * codes[k, d] for d in range(D)) for k in range(len(codes))]
                best = int(np.argmax(sims))
                ids[n, i, j], z_q[n, :, i, j] = best, codes[best]
                total += sum((u[d] - codes[best, d]) ** 2 for d in range(D))
    return z_q, ids, (1 + beta) * total / z.size


def ref_factorized_quantize(z, w_down, b_down, codebook, w_up, b_up, beta):
    """Down by einsum, the cosine reference in d dims, up by einsum."""
    p = np.einsum("ndhw,dk->nkhw", z, w_down) + b_down[None, :, None, None]
    c, ids, loss = ref_cosine_quantize(p, codebook, beta)
    return np.einsum("nkhw,kD->nDhw", c, w_up) + b_up[None, :, None, None], ids, loss


def unit(x, axis):
    """The reference normalization, vectorized (for surrogates that are differenced often)."""
    return x / np.sqrt((x * x).sum(axis=axis, keepdims=True))


def top2_gap(vectors, codes):
    """The smallest gap between the best and second-best cosine similarity over all cells:
    a finite-difference probe (1e-5) must not change any lookup."""
    u = unit(vectors.transpose(0, 2, 3, 1).reshape(-1, vectors.shape[1]), 1)
    sims = np.sort(u @ unit(codes, 1).T, axis=1)
    return float((sims[:, -1] - sims[:, -2]).min()) if codes.shape[0] > 1 else np.inf


def draw(seed, N=2, D=3, H=2, W=3, K=5, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, D, H, W)).astype(dtype),
            rng.standard_normal((K, D)).astype(dtype))


def draw_factorized(seed, N=2, D=4, d=3, H=2, W=3, K=5, dtype=np.float64):
    rng = np.random.default_rng(seed)
    shapes = [(N, D, H, W), (D, d), (d,), (K, d), (d, D), (D,)]
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


# --- l2_normalize ---------------------------------------------------------------------------

@FEW
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data(),
       scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2 ** 16))
def test_l2_normalize_matches_a_loop_over_vectors(shape, data, scale, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = np.random.default_rng(seed).standard_normal(shape) * scale
    y, _ = l2_normalize_forward(x, axis=axis)
    np.testing.assert_allclose(y, ref_l2_normalize(x, axis), rtol=1e-12, atol=1e-15)
    lengths = np.sqrt((y * y).sum(axis=axis))
    np.testing.assert_allclose(lengths, 1.0, rtol=1e-12)


def test_l2_normalize_keeps_a_zero_vector_zero():
    x = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]])
    y, cache = l2_normalize_forward(x)
    np.testing.assert_array_equal(y, [[0, 0, 0], [0.6, 0, 0.8]])
    dx = l2_normalize_backward(np.ones_like(x), cache)
    np.testing.assert_array_equal(dx[0], [1e12, 1e12, 1e12])  # y = x / eps there: dy / eps
    assert np.isfinite(dx).all()


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_l2_normalize_gradients(axis):
    x = np.random.default_rng(axis + 5).standard_normal((3, 4, 5))
    assert_gradients_close(l2_normalize_forward, l2_normalize_backward, [x], {"axis": axis})


def test_l2_normalize_gradient_where_clamped():
    """Vectors shorter than eps are divided by eps, a linear map, and differenced as one."""
    x = np.random.default_rng(1).standard_normal((4, 3)) * 0.1
    x[0] *= 100  # one vector longer than eps = 1: normalized; the others only scaled
    errors = assert_gradients_close(l2_normalize_forward, l2_normalize_backward, [x],
                                    {"eps": 1.0})
    y, cache = l2_normalize_forward(x, eps=1.0)
    np.testing.assert_allclose(y[1:], x[1:])
    dy = np.random.default_rng(2).standard_normal(x.shape)
    np.testing.assert_allclose(l2_normalize_backward(dy, cache)[1:], dy[1:])
    assert errors["arg0"] < 1e-8


def test_l2_normalize_gradient_is_orthogonal_to_the_vector():
    """Lengthening x changes nothing, so dx . x = 0 for every vector."""
    x = np.random.default_rng(3).standard_normal((5, 6))
    _, cache = l2_normalize_forward(x)
    dx = l2_normalize_backward(np.random.default_rng(4).standard_normal(x.shape), cache)
    np.testing.assert_allclose((dx * x).sum(axis=1), 0, atol=1e-13)


def test_l2_normalize_is_a_registered_pair_and_refuses_bad_input():
    assert PAIRS["l2_normalize"] == (l2_normalize_forward, l2_normalize_backward)
    with pytest.raises(ShapeError, match=r"axis 2 does not exist for x of shape \(3, 4\); "
                                         r"choose one in \[-2, 2\)"):
        l2_normalize_forward(np.ones((3, 4)), axis=2)
    with pytest.raises(DTypeError, match="x must be float32 or float64"):
        l2_normalize_forward(np.ones((3, 4), dtype=np.int64))


def test_l2_normalize_keeps_float32():
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    y, cache = l2_normalize_forward(x)
    assert y.dtype == l2_normalize_backward(y, cache).dtype == np.float32


# --- the cosine quantizer -------------------------------------------------------------------

@FEW
@given(N=st.integers(1, 2), D=st.integers(2, 4), H=st.integers(1, 3), W=st.integers(1, 3),
       K=st.integers(1, 6), beta=st.floats(0, 2), seed=st.integers(0, 2 ** 16))
def test_cosine_forward_matches_a_loop(N, D, H, W, K, beta, seed):
    z, codebook = draw(seed, N, D, H, W, K)
    codebook *= np.random.default_rng(seed).uniform(0.1, 10, (K, 1))  # lengths must not count
    if top2_gap(z, codebook) < 1e-9:
        return  # an exact tie: either code is right
    z_q, ids, loss, _ = cosine_quantize_forward(z, codebook, beta)
    want_q, want_ids, want_loss = ref_cosine_quantize(z, codebook, beta)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(z_q, want_q, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-10, atol=1e-15)


def test_cosine_lookup_ignores_lengths_where_vq_would_not():
    """A long code far from z's direction wins plain VQ's lookup's distance contest only
    through length; the cosine lookup takes the code at the smallest angle."""
    z = np.array([3.0, 0.1]).reshape(1, 2, 1, 1)
    codebook = np.array([[0.2, 0.0],      # same direction as z, short
                         [2.0, 1.5]])     # 37 degrees away, but nearer in distance
    _, ids, _, _ = cosine_quantize_forward(z, codebook)
    assert int(ids[0, 0, 0]) == 0
    assert int(np.argmin(((z[0, :, 0, 0] - codebook) ** 2).sum(1))) == 1


def cosine_gradient_errors(backward, z, codebook, beta, dz_q, dloss):
    """Relative errors of backward against central differences of the surrogate

        S(z, C) = sum(dz_q * (u(z) + e0 - u0)) + dloss * (mean((u0 - unit(C)[ids])^2)
                                                          + beta * mean((u(z) - e0)^2))

    u = z / |z| per cell, e0 and u0 constants of the unperturbed forward, ids fixed."""
    z_q, ids, _, cache = cosine_quantize_forward(z, codebook, beta)
    dz, dcodebook = backward(dz_q, cache, dloss)
    e0, u0 = z_q.copy(), unit(z, 1)
    flat_ids = ids.reshape(-1)

    def surrogate(zz, C):
        u = unit(zz, 1)
        chosen = unit(C, 1)[flat_ids]                           # (N*H*W, D), cells in order
        codebook_term = np.mean((u0.transpose(0, 2, 3, 1).reshape(-1, z.shape[1]) - chosen) ** 2)
        return np.asarray(np.sum(dz_q * (u + e0 - u0))
                          + dloss * (codebook_term + beta * np.mean((u - e0) ** 2)))

    one = np.ones(())
    num_z = numerical_gradient(lambda zz: surrogate(zz, codebook), z.copy(), one,
                               np.arange(z.size))
    num_c = numerical_gradient(lambda C: surrogate(z, C), codebook.copy(), one,
                               np.arange(codebook.size))
    np.testing.assert_array_equal(cosine_quantize_forward(z, codebook, beta)[1], ids)
    return {"dz": relative_error(dz.reshape(-1), num_z),
            "dcodebook": relative_error(dcodebook.reshape(-1), num_c)}


@pytest.mark.parametrize("dloss", [1.0, 0.37])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cosine_backward_is_straight_through_on_unit_vectors(seed, dloss):
    z, codebook = draw(seed)
    assert top2_gap(z, codebook) > 1e-4
    dz_q = np.random.default_rng(seed + 100).standard_normal(z.shape)
    errors = cosine_gradient_errors(cosine_quantize_backward, z, codebook, 0.25, dz_q, dloss)
    assert max(errors.values()) < 1e-7, errors


def forgets_the_normalization(dz_q, cache, dloss):
    """Straight through to z itself, as if z had not been normalized."""
    from tinytok.tokenizer.quantize import vector_quantize_backward
    return vector_quantize_backward(dz_q, cache.vq, dloss)


def decoder_reaches_the_codebook(dz_q, cache, dloss):
    """As if z_q = e^ (no stop-gradient): the decoder's gradient also moves the codes."""
    dz, dcodebook = cosine_quantize_backward(dz_q, cache, dloss)
    rows = dz_q.transpose(0, 2, 3, 1).reshape(-1, dz_q.shape[1])
    extra = np.zeros(cache.codes_unit.y.shape)
    np.add.at(extra, cache.vq.flat_ids, rows)
    return dz, dcodebook + l2_normalize_backward(extra, cache.codes_unit)


@pytest.mark.parametrize("mutant", [forgets_the_normalization, decoder_reaches_the_codebook])
def test_the_cosine_check_catches_broken_backwards(mutant):
    z, codebook = draw(0)
    dz_q = np.random.default_rng(7).standard_normal(z.shape)
    errors = cosine_gradient_errors(mutant, z, codebook, 0.25, dz_q, 1.0)
    assert max(errors.values()) > 1e-2, errors


def test_cosine_decoder_gradient_never_reaches_the_codebook():
    z, codebook = draw(4)
    _, _, _, cache = cosine_quantize_forward(z, codebook)
    dz_q = np.random.default_rng(0).standard_normal(z.shape)
    dz, dcodebook = cosine_quantize_backward(dz_q, cache, dloss=0.0)
    np.testing.assert_array_equal(dcodebook, 0)
    # straight through to the unit vector, then the normalization's Jacobian (I - u u^T)/|z|
    u, length = unit(z, 1), np.sqrt((z * z).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(dz, (dz_q - u * (dz_q * u).sum(axis=1, keepdims=True)) / length,
                               rtol=1e-12, atol=1e-15)


# --- the factorized quantizer ---------------------------------------------------------------

@FEW
@given(D=st.integers(2, 5), d=st.integers(2, 4), K=st.integers(1, 6), beta=st.floats(0, 2),
       seed=st.integers(0, 2 ** 16))
def test_factorized_forward_matches_a_loop(D, d, K, beta, seed):
    args = draw_factorized(seed, D=D, d=d, K=K)
    z, w_down, b_down, codebook = args[:4]
    p = np.einsum("ndhw,dk->nkhw", z, w_down) + b_down[None, :, None, None]
    if top2_gap(p, codebook) < 1e-9:
        return
    z_q, ids, loss, _ = factorized_quantize_forward(*args, beta=beta)
    want_q, want_ids, want_loss = ref_factorized_quantize(*args, beta)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(z_q, want_q, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-10, atol=1e-15)
    assert z_q.shape == z.shape and ids.shape == (2, 2, 3)


def factorized_surrogate(args0, dz_q, beta, dloss):
    """S(z, w_down, b_down, C, w_up, b_up): the decoder's part through
    up(p^ + e0 - p^0), plus the codebook and commitment terms, e0, p^0 and the ids fixed at
    the unperturbed forward's."""
    z0, wd0, bd0, C0 = args0[:4]
    p0 = unit(np.einsum("ndhw,dk->nkhw", z0, wd0) + bd0[None, :, None, None], 1)
    ids = factorized_quantize_forward(*args0, beta=beta)[1]
    e0 = unit(C0, 1)[ids].transpose(0, 3, 1, 2)                          # (N, d, H, W)

    def S(z, wd, bd, C, wu, bu):
        p = unit(np.einsum("ndhw,dk->nkhw", z, wd) + bd[None, :, None, None], 1)
        z_q = np.einsum("nkhw,kD->nDhw", p + e0 - p0, wu) + bu[None, :, None, None]
        codebook_term = np.mean((p0 - unit(C, 1)[ids].transpose(0, 3, 1, 2)) ** 2)
        return np.asarray(np.sum(dz_q * z_q)
                          + dloss * (codebook_term + beta * np.mean((p - e0) ** 2)))
    return S, ids


def factorized_gradient_errors(backward, args, beta, dz_q, dloss):
    _, ids, _, cache = factorized_quantize_forward(*args, beta=beta)
    grads = backward(dz_q, cache, dloss)
    S, ids0 = factorized_surrogate(args, dz_q, beta, dloss)
    errors = {}
    for i, name in enumerate(["dz", "dw_down", "db_down", "dcodebook", "dw_up", "db_up"]):
        def f(a, i=i):
            probe = list(args)
            probe[i] = a
            return S(*probe)
        num = numerical_gradient(f, args[i].copy(), np.ones(()), np.arange(args[i].size))
        errors[name] = relative_error(grads[i].reshape(-1), num)
    np.testing.assert_array_equal(factorized_quantize_forward(*args, beta=beta)[1], ids)
    return errors


@pytest.mark.parametrize("dloss", [1.0, 0.37])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_factorized_backward_is_straight_through_in_the_small_space(seed, dloss):
    args = draw_factorized(seed)
    p = np.einsum("ndhw,dk->nkhw", args[0], args[1]) + args[2][None, :, None, None]
    assert top2_gap(p, args[3]) > 1e-4
    dz_q = np.random.default_rng(seed + 100).standard_normal(args[0].shape)
    errors = factorized_gradient_errors(factorized_quantize_backward, args, 0.25, dz_q, dloss)
    assert max(errors.values()) < 1e-7, errors


def straight_through_after_the_up_projection(dz_q, cache, dloss):
    """The classic slip: straight through from z_q to z (skipping both projections), the up
    projection then trained as if its input were p^."""
    dz, dwd, dbd, dcodebook, dwu, dbu = factorized_quantize_backward(dz_q, cache, dloss)
    extra = factorized_quantize_backward(dz_q, cache, 0.0)
    return dz - extra[0] + dz_q, dwd - extra[1], dbd - extra[2], dcodebook, dwu, dbu


def test_the_factorized_check_catches_a_misplaced_straight_through():
    args = draw_factorized(0, D=3, d=3)
    dz_q = np.random.default_rng(7).standard_normal(args[0].shape)
    errors = factorized_gradient_errors(straight_through_after_the_up_projection, args, 0.25,
                                        dz_q, 1.0)
    assert errors["dz"] > 1e-2 and errors["dw_down"] > 1e-2, errors


def test_factorized_decoder_gradient_never_reaches_the_codebook():
    args = draw_factorized(3)
    _, _, _, cache = factorized_quantize_forward(*args)
    dz_q = np.random.default_rng(0).standard_normal(args[0].shape)
    grads = factorized_quantize_backward(dz_q, cache, dloss=0.0)
    np.testing.assert_array_equal(grads[3], 0)
    assert np.abs(grads[4]).max() > 1e-3 and np.abs(grads[1]).max() > 1e-3


def test_factorized_refuses_mismatched_projections():
    z, w_down, b_down, codebook, w_up, b_up = draw_factorized(0, D=4, d=3)
    with pytest.raises(ShapeError, match=r"w_down must have shape \(D, d\) = \(4, 3\), got "
                                         r"\(3, 4\)"):
        factorized_quantize_forward(z, w_down.T, b_down, codebook, w_up, b_up)
    with pytest.raises(ShapeError, match=r"w_up must have shape \(d, D\) = \(3, 4\)"):
        factorized_quantize_forward(z, w_down, b_down, codebook, w_up.T, b_up)
    with pytest.raises(ShapeError, match=r"b_up \(D,\) is missing"):
        factorized_quantize_forward(z, w_down, b_down, codebook, w_up, None)
    with pytest.raises(ShapeError, match=r"z must have shape \(N, D, H, W\)"):
        factorized_quantize_forward(z[0], w_down, b_down, codebook, w_up, b_up)


# --- PyTorch parity of both quantizers ------------------------------------------------------

def torch_cosine(torch, z, codebook, beta):
    """ViT-VQGAN's lookup as PyTorch code writes it: F.normalize, argmax of similarity,
    straight-through by detach, the two mse losses."""
    F = torch.nn.functional
    u, codes = F.normalize(z, dim=1), F.normalize(codebook, dim=1)
    N, D, H, W = z.shape
    flat = u.permute(0, 2, 3, 1).reshape(-1, D)
    ids = (flat @ codes.T).argmax(dim=1)
    e = codes[ids].reshape(N, H, W, D).permute(0, 3, 1, 2)
    loss = F.mse_loss(u.detach(), e) + beta * F.mse_loss(u, e.detach())
    return u + (e - u).detach(), ids.reshape(N, H, W), loss


@pytest.mark.parametrize("which", ["cosine", "factorized"])
def test_quantizers_match_torch_in_float32(which):
    torch = pytest.importorskip("torch")
    beta = 0.25
    if which == "cosine":
        args = list(draw(5, D=4, K=7, dtype=np.float32))
        ours = cosine_quantize_forward, cosine_quantize_backward
    else:
        args = draw_factorized(5, D=6, d=3, K=7, dtype=np.float32)
        ours = factorized_quantize_forward, factorized_quantize_backward
    z_q, ids, loss, cache = ours[0](*args, beta=beta)
    dz_q = np.random.default_rng(9).standard_normal(z_q.shape).astype(np.float32)
    grads = ours[1](dz_q, cache, 1.0)

    t = [torch.tensor(a, requires_grad=True) for a in args]
    if which == "cosine":
        t_zq, t_ids, t_loss = torch_cosine(torch, t[0], t[1], beta)
    else:
        z, wd, bd, C, wu, bu = t
        p = (z.permute(0, 2, 3, 1) @ wd + bd).permute(0, 3, 1, 2)
        c, t_ids, t_loss = torch_cosine(torch, p, C, beta)
        t_zq = (c.permute(0, 2, 3, 1) @ wu + bu).permute(0, 3, 1, 2)
    ((t_zq * torch.from_numpy(dz_q)).sum() + t_loss).backward()

    np.testing.assert_array_equal(ids, t_ids.numpy())
    np.testing.assert_allclose(z_q, t_zq.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=1e-5)
    for g, tensor in zip(grads, t):
        np.testing.assert_allclose(g, tensor.grad.numpy(), rtol=1e-4, atol=1e-5)


# --- the tokenizer on each ------------------------------------------------------------------

def tiny(quantizer, **changes):
    cfg = replace(tokenizer_config("vqvae-tiny"), image_size=8, hidden=8, res_hidden=4,
                  code_dim=3, num_codes=5, **changes)
    return with_quantizer(cfg, quantizer)


def images(seed, n=2, size=8):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (n, 3, size, size))


def tokenizer_surrogate(cfg, x, params0):
    """The whole tokenizer's loss with the lookup replaced by its straight-through
    definition: the search vectors v(params) (unit z, or unit down(z)) enter as
    v + (e0 - v0), and the codebook term reads the codebook; ids, e0, v0 fixed at params0."""
    q = QUANTIZERS[cfg.quantizer]
    z0, _ = encoder_forward(x, params0, cfg)
    v0, codes0 = (np.array(a) for a in q.search_space(z0, params0, cfg))
    ids = q.ids_of(z0, params0, cfg)
    e0 = codes0[ids].transpose(0, 3, 1, 2)

    def loss(p):
        z, _ = encoder_forward(x, p, cfg)
        if cfg.quantizer == "factorized":
            down = np.einsum("ndhw,dk->nkhw", z, p["quant.down.w"])
            v = unit(down + p["quant.down.b"][None, :, None, None], 1)
            z_q = np.einsum("nkhw,kD->nDhw", v + e0 - v0, p["quant.up.w"])
            z_q = z_q + p["quant.up.b"][None, :, None, None]
        else:
            v = unit(z, 1)
            z_q = v + e0 - v0
        np.testing.assert_array_equal(q.ids_of(z, p, cfg), ids)  # no probe changed a lookup
        x_hat, _ = decoder_forward(z_q, p, cfg)
        codebook_term = np.mean((v0 - unit(p["quant.codebook"], 1)[ids].transpose(0, 3, 1, 2))
                                ** 2)
        return float(np.mean((x_hat - x) ** 2) + codebook_term + cfg.beta * np.mean((v - e0) ** 2))
    return loss, ids


# seeds whose first forward uses several codes with no near-ties (checked in the test)
TOKENIZER_SEEDS = {"cosine": 1, "factorized": 1}


@pytest.mark.parametrize("quantizer", ["cosine", "factorized"])
def test_tokenizer_gradients_are_those_of_the_straight_through_surrogate(quantizer):
    """Every parameter: encoder (straight through plus commitment), the quantizer's own
    (codebook term; projections), decoder (exact)."""
    cfg = tiny(quantizer, factor_dim=2)
    seed = TOKENIZER_SEEDS[quantizer]
    params = {k: v * 3.0 for k, v in init_tokenizer_params(cfg, seed, dtype="float64").items()}
    x = images(seed + 10)
    out, cache = tokenizer_forward(x, params, cfg)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    tokenizer_backward(cache, grads, cfg)
    loss, ids = tokenizer_surrogate(cfg, x, {k: v.copy() for k, v in params.items()})
    v0, codes0 = QUANTIZERS[quantizer].search_space(out["z"], params, cfg)
    assert top2_gap(np.array(v0), np.array(codes0)) > 1e-4 and len(np.unique(ids)) > 1
    np.testing.assert_allclose(loss(params), float(out["loss"]), rtol=1e-12)

    rng = np.random.default_rng(0)
    errors = {}
    for key in params:
        flat = params[key].reshape(-1)
        idx = np.sort(rng.choice(flat.size, min(flat.size, 30), replace=False))
        num = np.empty(len(idx))
        for n, i in enumerate(idx):
            old = flat[i]
            flat[i] = old + 1e-5
            plus = loss(params)
            flat[i] = old - 1e-5
            minus = loss(params)
            flat[i] = old
            num[n] = (plus - minus) / 2e-5
        errors[key] = relative_error(grads[key].reshape(-1)[idx], num)
    bad = {k: v for k, v in errors.items() if not v < 1e-6}
    assert not bad, f"{bad}; all: {errors}"
    assert {"quant.down.w", "quant.up.b"} <= set(errors) or quantizer == "cosine"


def test_factorized_parameters_and_their_start():
    cfg = with_quantizer(tokenizer_config("vqvae-ref"), "factorized")
    params = init_tokenizer_params(cfg, dtype="float64")
    shapes = {k: v.shape for k, v in params.items() if k.startswith("quant.")}
    assert shapes == {"quant.down.w": (64, 8), "quant.down.b": (8,), "quant.codebook": (512, 8),
                      "quant.up.w": (8, 64), "quant.up.b": (64,)}
    np.testing.assert_allclose(np.linalg.norm(params["quant.codebook"], axis=1), 1.0)
    assert np.abs(params["quant.down.w"]).max() <= 1 / 8         # +-1/sqrt(64)
    cosine = init_tokenizer_params(with_quantizer(cfg, "cosine"), dtype="float64")
    assert cosine["quant.codebook"].shape == (512, 64)
    np.testing.assert_allclose(np.linalg.norm(cosine["quant.codebook"], axis=1), 1.0)
    # the other quantizers' parameters (and so their seeded runs) are what they were
    vq = init_tokenizer_params(with_quantizer(cfg, "vq"), dtype="float64")
    assert np.abs(vq["quant.codebook"]).max() <= 1 / 512


# --- config, checkpoints, command line ------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -2, 2.5, "8", None, True])
def test_a_bad_factor_dim_is_one_line(bad):
    with pytest.raises(ConfigError, match=r"^tokenizer config: factor_dim must be a whole "
                                          r"number >= 1, got"):
        replace(tiny("factorized"), factor_dim=bad)


def test_factor_dim_is_saved_only_for_the_quantizer_that_reads_it():
    assert QUANTIZERS["factorized"].reads("factor_dim")
    assert config_dict(tiny("factorized", factor_dim=4))["factor_dim"] == 4
    for name in ("vq", "ema", "gumbel", "cosine", "fsq"):
        assert "factor_dim" not in config_dict(tiny(name)), name
    # so a checkpoint's config from before the field existed reads back as the same config
    old = config_dict(tiny("vq"))
    assert config_dict(tokenizer_config(dict(old))) == old


@pytest.mark.parametrize("quantizer", ["cosine", "factorized"])
def test_tokenizer_checkpoint_round_trip(quantizer, tmp_path):
    from tinytok.data.datasets import make_shapes
    from tinytok.pipeline import Tokenizer
    cfg = replace(with_quantizer(tokenizer_config("vqvae-tiny"), quantizer), factor_dim=4)
    tok = Tokenizer(init_tokenizer_params(cfg, seed=3), cfg)
    path = str(tmp_path / "tok.npz")
    tok.save(path)
    back = Tokenizer.load(path)
    assert back.config == cfg and back.config.factor_dim == 4
    for k in tok.params:
        np.testing.assert_array_equal(back.params[k], tok.params[k])
    pictures = make_shapes(5, seed=2).images
    ids = back.encode(pictures)
    np.testing.assert_array_equal(ids, tok.encode(pictures))
    np.testing.assert_array_equal(back.decode(ids), tok.decode(ids))
    assert ids.shape == (5, 8, 8) and back.decode(ids).shape == (5, 32, 32, 3)


def test_a_pipeline_generates_through_a_factorized_tokenizer():
    from tinytok.pipeline import Pipeline, Prior, Tokenizer
    from tinytok.prior.gpt import gpt_config, init_gpt_params
    from tinytok.training.prior_data import shapes_vocab
    cfg = with_quantizer(tokenizer_config("vqvae-tiny"), "factorized")
    tokenizer = Tokenizer(init_tokenizer_params(cfg, seed=1), cfg)
    vocab = shapes_vocab(cfg.num_codes)
    config = gpt_config("gpt-tiny", vocab_size=vocab.size)
    pipe = Pipeline(tokenizer, Prior(init_gpt_params(config, seed=0), config, vocab))
    pictures = pipe.generate(["a small blue triangle"], n=2, seed=1)
    assert pictures.shape == (2, 32, 32, 3) and pictures.dtype == np.uint8


def test_the_command_line_takes_factor_dim(tmp_path, capsys):
    from tinytok.cli import main
    from tinytok.pipeline import Tokenizer
    out = str(tmp_path / "f.npz")
    assert main(["train-tokenizer", "--config", "vqvae-tiny", "--quantizer", "factorized",
                 "--factor-dim", "4", "--codes", "32", "--n-images", "64", "--steps", "2",
                 "--batch-size", "4", "--restart-every", "1", "--out", out]) == 0
    tok = Tokenizer.load(out)
    assert (tok.config.quantizer, tok.config.factor_dim, tok.config.num_codes) == (
        "factorized", 4, 32)
    assert tok.params["quant.codebook"].shape == (32, 4)
    capsys.readouterr()
    assert main(["train-tokenizer", "--quantizer", "vq", "--factor-dim", "4", "--out", out]) == 2
    assert capsys.readouterr().err == ("tinytok: error: --factor-dim is for --quantizer "
                                       "factorized only\n")


# --- training: codebook care in the search space, and an exact resume -----------------------

@pytest.mark.parametrize("quantizer", ["cosine", "factorized"])
def test_codebook_care_works_where_the_codes_are_searched(quantizer, monkeypatch, tmp_path):
    """The k-means start and the restarts get the search's vectors (unit, d dims) and the
    codes as searched (unit rows), never the raw encoder outputs."""
    from tinytok.data.datasets import make_shapes
    from tinytok.training import TokenizerRecipe, TrainSettings, tokenizer_trainer
    seen = []
    for name in ("kmeans_init", "restart_dead_codes"):
        original = getattr(tokenizer_trainer, name)

        def spy(*args, original=original, name=name, **kwargs):
            seen.append((name, np.array(args[0 if name == "kmeans_init" else 2]),
                         kwargs.get("searched")))
            return original(*args, **kwargs)
        monkeypatch.setattr(tokenizer_trainer, name, spy)
    cfg = replace(with_quantizer(tokenizer_config("vqvae-tiny"), quantizer), factor_dim=4)
    tokenizer_trainer.train_tokenizer(
        make_shapes(64, seed=1).images, cfg, TrainSettings(steps=4, batch_size=8, warmup=1),
        str(tmp_path / "t.npz"), TokenizerRecipe(kmeans_images=64, restart_every=2),
        log=lambda text: None, progress_stream=open(os.devnull, "w"))
    d = 4 if quantizer == "factorized" else cfg.code_dim
    assert [name for name, _, _ in seen] == ["kmeans_init", "restart_dead_codes",
                                             "restart_dead_codes"]
    for name, vectors, searched in seen:
        assert vectors.shape[1] == d
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
        if searched is not None:
            assert searched.shape == (cfg.num_codes, d)
            np.testing.assert_allclose(np.linalg.norm(np.array(searched), axis=1), 1.0,
                                       rtol=1e-5)


def test_restarts_measure_coverage_against_the_codes_as_searched():
    """Codes that point the right way but are short cover their unit vectors perfectly for
    a cosine search: only the one uncovered vector may be picked for the dead code."""
    from tinytok.tokenizer.codebook import restart_dead_codes
    directions = np.eye(3)
    codebook = np.vstack([0.01 * directions[:2], [[5.0, 5.0, 5.0]]])   # code 2 is dead
    z = np.stack([directions[0], directions[1], directions[1], directions[2]], axis=1)
    z = z.reshape(1, 3, 2, 2)              # four unit vectors; only (0, 0, 1) is uncovered
    searched = unit(codebook, 1)
    searched[2] = directions[0]            # the dead code (as searched) sits on vector 0
    cb = codebook.copy()
    assert restart_dead_codes(cb, np.array([1, 2, 0]), z, seed=0, searched=searched) == 1
    np.testing.assert_array_equal(cb[2], directions[2])
    np.testing.assert_array_equal(cb[:2], codebook[:2])


@pytest.mark.parametrize("quantizer", ["cosine", "factorized"])
def test_a_short_training_run_resumes_bit_exactly(quantizer, tmp_path):
    """vqvae-tiny, 30 steps, restarts every 10; a crash after step 25 leaves the checkpoint
    of step 20, and resuming it ends where the uninterrupted run ends, bit for bit."""
    from test_resume import StopAt, assert_same_checkpoint
    from tinytok.data.datasets import make_shapes
    from tinytok.training import TokenizerRecipe, TrainSettings, train_tokenizer
    cfg = with_quantizer(tokenizer_config("vqvae-tiny"), quantizer)
    pictures = make_shapes(96, seed=3).images
    settings = TrainSettings(steps=30, batch_size=8, lr=3e-3, warmup=5, seed=2,
                             checkpoint_every=10, log_every=1)
    recipe = TokenizerRecipe(kmeans_images=64, restart_every=10)

    def run(out, stream, resume=False):
        return train_tokenizer(pictures, cfg, settings, str(out), recipe, resume=resume,
                               log=lambda text: None, progress_stream=stream)
    history = run(tmp_path / "ref.npz", StopAt(-1, "none"))
    assert len(history) == 3 and history[-1]["loss"] < history[0]["loss"] * 1.5
    with pytest.raises(StopAt.Crash):
        run(tmp_path / "crash.npz", StopAt(25, "crash"))
    assert run(tmp_path / "crash.npz", StopAt(-1, "none"), resume=True) == history
    assert_same_checkpoint(tmp_path / "ref.npz", tmp_path / "crash.npz")
