"""Vector quantization: forward against a naive loop, both gradient terms pinned by formula
and by finite differences with the code assignment held fixed, PyTorch parity, EMA, k-means,
dead-code restarts, usage statistics and errors.

The nearest-code lookup has no useful derivative, so the straight-through gradient is
checked by its definition: z_q = z + sg(e - z), so dz gets dz_q unchanged and the
codebook gets nothing from it; each loss term is finite-differenced on its own with the ids
fixed.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_models as ref
from tinytok.backend import to_numpy
from tinytok.errors import DTypeError, ShapeError
from tinytok.gradcheck import numerical_gradient, relative_error
from tinytok.tokenizer.quantize import (ema_init, ema_update, vector_quantize_backward,
                                        vector_quantize_forward)
from tinytok.tokenizer.codebook import code_counts, kmeans_init, restart_dead_codes, usage_stats

FEW = settings(max_examples=25, deadline=None)


def draw(seed, N=2, D=3, H=3, W=4, K=5, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, D, H, W)).astype(dtype),
            rng.standard_normal((K, D)).astype(dtype))


# --- forward --------------------------------------------------------------------------------

@FEW
@given(N=st.integers(1, 3), D=st.integers(1, 5), H=st.integers(1, 4), W=st.integers(1, 4),
       K=st.integers(1, 8), beta=st.floats(0, 2), seed=st.integers(0, 2 ** 16))
def test_forward_matches_naive_loop(N, D, H, W, K, beta, seed):
    z, codebook = draw(seed, N, D, H, W, K)
    z_q, ids, loss, _ = vector_quantize_forward(z, codebook, beta)
    want_zq, want_ids, want_loss = ref.vector_quantize(z, codebook, beta)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(z_q, want_zq, rtol=0, atol=0)  # rows copied, not computed
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-12)
    assert ids.shape == (N, H, W) and z_q.shape == z.shape and np.ndim(loss) == 0


def test_forward_on_backend(xp):
    z, codebook = draw(1)
    z_q, ids, loss, _ = vector_quantize_forward(xp.asarray(z), xp.asarray(codebook), 0.25)
    want_zq, want_ids, want_loss = ref.vector_quantize(z, codebook, 0.25)
    np.testing.assert_array_equal(to_numpy(ids), want_ids)
    np.testing.assert_allclose(to_numpy(z_q), want_zq)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.25, 1.7])
def test_loss_is_one_plus_beta_times_mse(beta):
    z, codebook = draw(2)
    z_q, ids, loss, _ = vector_quantize_forward(z, codebook, beta)
    e = codebook[ids].transpose(0, 3, 1, 2)  # (N, H, W, D) -> (N, D, H, W)
    np.testing.assert_allclose(float(loss), (1 + beta) * np.mean((z - e) ** 2), rtol=1e-12)


def test_vectors_equal_to_a_code_quantize_to_it_with_zero_loss():
    _, codebook = draw(3, K=6)
    ids = np.array([[[0, 5], [3, 3]], [[1, 2], [4, 0]]])
    z = ref.gather_codes(codebook, ids)
    z_q, got, loss, _ = vector_quantize_forward(z, codebook)
    np.testing.assert_array_equal(got, ids)
    np.testing.assert_allclose(z_q, z)
    assert float(loss) == pytest.approx(0.0, abs=1e-24)


# --- backward: explicit formulas and finite differences of each term ------------------------

def vq_gradient_errors(backward, z, codebook, beta, dz_q, dloss):
    """How far backward(dz_q, cache, dloss, ids) is from the straight-through definition.

    Returns relative errors of (dz, dcodebook) against the explicit formulas and against
    finite differences of the surrogate with the ids held fixed,

        S(z, C) = sum(dz_q * (z + e0 - z0)) + dloss * (mean((z0 - C[ids])^2)
                                                       + beta * mean((z - e0)^2)),

    e0, z0 constants from the unperturbed forward (so dz_q reaches z only, the codebook term
    reaches C only and the commitment term reaches z only), and of each term separately.
    """
    z_q, ids, loss, cache = vector_quantize_forward(z, codebook, beta)
    dz_q_before = dz_q.copy()
    dz, dcodebook = backward(dz_q, cache, dloss, ids)
    np.testing.assert_array_equal(dz_q, dz_q_before)  # backward must not write into dz_q
    n = z.size
    e0, z0 = z_q.copy(), z.copy()
    errors = {}

    # Explicit formulas: straight through plus commitment; codebook term scattered onto rows.
    errors["dz formula"] = relative_error(dz, dz_q + dloss * beta * 2 * (z - e0) / n)
    errors["commitment formula"] = relative_error(dz - dz_q, dloss * beta * 2 * (z - e0) / n)
    errors["dcodebook formula"] = relative_error(
        dcodebook, ref.codebook_gradient(z, codebook, ids, dloss))

    def codebook_term(C):
        return dloss * np.mean((z0 - ref.gather_codes(C, ids)) ** 2)

    def commitment_term(zz):
        return dloss * beta * np.mean((zz - e0) ** 2)

    def surrogate(zz, C):
        return float(np.sum(dz_q * (zz + e0 - z0)) + codebook_term(C) + commitment_term(zz))

    one = np.ones(())
    all_z, all_c = np.arange(z.size), np.arange(codebook.size)
    # Each term on its own, with the ids fixed.
    num = numerical_gradient(lambda C: np.asarray(codebook_term(C)), codebook.copy(), one, all_c)
    errors["codebook term, fd"] = relative_error(dcodebook.reshape(-1), num)
    num = numerical_gradient(lambda zz: np.asarray(commitment_term(zz)), z.copy(), one, all_z)
    errors["commitment term, fd"] = relative_error((dz - dz_q).reshape(-1), num)
    # The whole surrogate, with respect to each argument.
    num = numerical_gradient(lambda zz: np.asarray(surrogate(zz, codebook)), z.copy(), one, all_z)
    errors["dz, fd"] = relative_error(dz.reshape(-1), num)
    num = numerical_gradient(lambda C: np.asarray(surrogate(z0, C)), codebook.copy(), one, all_c)
    errors["dcodebook, fd"] = relative_error(dcodebook.reshape(-1), num)
    # The ids really stayed fixed: no probe was near a tie.
    assert relative_error(vector_quantize_forward(z, codebook, beta)[1], ids) == 0
    return errors


def the_backward(dz_q, cache, dloss, ids):
    return vector_quantize_backward(dz_q, cache, dloss)


def scatter_rows(dz_q, ids, K):
    D = dz_q.shape[1]
    rows = dz_q.transpose(0, 2, 3, 1).reshape(-1, D)
    out = np.zeros((K, D))
    np.add.at(out, ids.reshape(-1), rows)
    return out


def swapped_beta(dz_q, cache, dloss, ids):
    """beta on the codebook term instead of the commitment term."""
    beta = 0.25
    dz, dcodebook = vector_quantize_backward(dz_q, cache, dloss)
    return dz_q + (dz - dz_q) / beta, dcodebook * beta


def no_codebook_gradient(dz_q, cache, dloss, ids):
    dz, dcodebook = vector_quantize_backward(dz_q, cache, dloss)
    return dz, np.zeros_like(dcodebook)


def dz_q_leaks_into_codebook(dz_q, cache, dloss, ids):
    """As if z_q = e (no stop-gradient): the decoder's gradient also reaches the codes."""
    dz, dcodebook = vector_quantize_backward(dz_q, cache, dloss)
    return dz, dcodebook + scatter_rows(dz_q, ids, dcodebook.shape[0])


def no_commitment(dz_q, cache, dloss, ids):
    return dz_q.copy(), vector_quantize_backward(dz_q, cache, dloss)[1]


@pytest.mark.parametrize("dloss", [1.0, 0.37])
@pytest.mark.parametrize("seed", [0, 1])
def test_backward_is_straight_through_plus_both_terms(seed, dloss):
    z, codebook = draw(seed)
    dz_q = np.random.default_rng(seed + 100).standard_normal(z.shape)
    errors = vq_gradient_errors(the_backward, z, codebook, 0.25, dz_q, dloss)
    bad = {k: v for k, v in errors.items() if not v < 1e-7}
    assert not bad, errors


@pytest.mark.parametrize("mutant", [swapped_beta, no_codebook_gradient,
                                    dz_q_leaks_into_codebook, no_commitment])
def test_gradient_check_catches_broken_backwards(mutant):
    """The check above is strong enough: each classic mistake fails it by a wide margin."""
    z, codebook = draw(0)
    dz_q = np.random.default_rng(7).standard_normal(z.shape)
    errors = vq_gradient_errors(mutant, z, codebook, 0.25, dz_q, 1.0)
    assert max(errors.values()) > 1e-2, errors
    # and both the formula check and the finite differences see it
    assert max(v for k, v in errors.items() if "formula" in k) > 1e-2
    assert max(v for k, v in errors.items() if "fd" in k) > 1e-2


def test_decoder_gradient_never_reaches_codebook():
    z, codebook = draw(4)
    _, _, _, cache = vector_quantize_forward(z, codebook, 0.25)
    dz_q = np.random.default_rng(0).standard_normal(z.shape)
    dz, dcodebook = vector_quantize_backward(dz_q, cache, dloss=0.0)
    np.testing.assert_array_equal(dcodebook, 0)
    np.testing.assert_array_equal(dz, dz_q)  # straight through, unchanged


@FEW
@given(N=st.integers(1, 2), D=st.integers(1, 4), H=st.integers(1, 3), W=st.integers(1, 3),
       K=st.integers(1, 6), beta=st.floats(0.01, 2), dloss=st.floats(0.1, 3),
       seed=st.integers(0, 2 ** 16))
def test_backward_formulas_for_any_shape(N, D, H, W, K, beta, dloss, seed):
    z, codebook = draw(seed, N, D, H, W, K)
    z_q, ids, _, cache = vector_quantize_forward(z, codebook, beta)
    dz_q = np.random.default_rng(seed + 1).standard_normal(z.shape)
    dz, dcodebook = vector_quantize_backward(dz_q, cache, dloss)
    np.testing.assert_allclose(dz, dz_q + dloss * beta * 2 * (z - z_q) / z.size,
                               rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(dcodebook, ref.codebook_gradient(z, codebook, ids, dloss),
                               rtol=1e-10, atol=1e-14)
    assert dcodebook.shape == codebook.shape


def test_unused_codes_get_zero_gradient():
    z, codebook = draw(5, K=8)
    _, ids, _, cache = vector_quantize_forward(z, codebook)
    _, dcodebook = vector_quantize_backward(np.zeros_like(z), cache)
    unused = np.setdiff1d(np.arange(8), ids)
    assert unused.size > 0
    np.testing.assert_array_equal(dcodebook[unused], 0)


def test_float32_stays_float32(xp):
    z, codebook = draw(6, dtype=np.float32)
    z_q, ids, loss, cache = vector_quantize_forward(xp.asarray(z), xp.asarray(codebook))
    dz, dcodebook = vector_quantize_backward(xp.ones_like(z_q), cache)
    assert z_q.dtype == loss.dtype == dz.dtype == dcodebook.dtype == np.float32
    assert ids.dtype.kind == "i"


# --- parity with a PyTorch straight-through reference ---------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_matches_torch_straight_through_in_float32(seed):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    beta = 0.25
    z, codebook = draw(seed, N=2, D=4, H=3, W=3, K=7, dtype=np.float32)
    dz_q = np.random.default_rng(seed + 9).standard_normal(z.shape).astype(np.float32)
    z_q, ids, loss, cache = vector_quantize_forward(z, codebook, beta)
    dz, dcodebook = vector_quantize_backward(dz_q, cache, 1.0)

    tz = torch.tensor(z, requires_grad=True)
    tc = torch.tensor(codebook, requires_grad=True)
    flat = tz.permute(0, 2, 3, 1).reshape(-1, 4)                     # (M, D)
    t_ids = torch.cdist(flat, tc).argmin(dim=1)
    e = tc[t_ids].reshape(2, 3, 3, 4).permute(0, 3, 1, 2)            # (N, D, H, W)
    t_zq = tz + (e - tz).detach()
    t_loss = F.mse_loss(tz.detach(), e) + beta * F.mse_loss(tz, e.detach())
    total = (t_zq * torch.from_numpy(dz_q)).sum() + t_loss
    total.backward()

    np.testing.assert_array_equal(ids, t_ids.reshape(2, 3, 3).numpy())
    np.testing.assert_allclose(z_q, t_zq.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=1e-5)
    np.testing.assert_allclose(dz, tz.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dcodebook, tc.grad.numpy(), rtol=1e-5, atol=1e-6)


# --- usage statistics -----------------------------------------------------------------------

def test_code_counts_has_one_entry_per_code():
    ids = np.array([[[0, 2], [2, 2]], [[0, 1], [2, 0]]])
    counts = code_counts(ids, 6)
    np.testing.assert_array_equal(to_numpy(counts), [3, 1, 4, 0, 0, 0])


@pytest.mark.parametrize("K", [1, 2, 7, 512])
def test_perplexity_is_K_for_uniform_usage(K):
    stats = usage_stats(np.full(K, 10))
    assert stats["perplexity"] == pytest.approx(K, rel=1e-12)
    assert stats["usage"] == 1.0 and stats["dead"] == 0


def test_perplexity_is_one_for_a_single_code():
    counts = np.zeros(16, dtype=np.int64)
    counts[5] = 100
    stats = usage_stats(counts)
    assert stats["perplexity"] == pytest.approx(1.0)
    assert stats["usage"] == pytest.approx(1 / 16)
    assert stats["dead"] == 15


def test_usage_stats_of_a_mixed_count():
    counts = np.array([1, 3, 0, 0])
    p = np.array([0.25, 0.75])
    stats = usage_stats(counts)
    assert stats["perplexity"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert stats["usage"] == 0.5 and stats["dead"] == 2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=20))
def test_perplexity_lies_between_one_and_codes_used(counts):
    counts = np.array(counts)
    stats = usage_stats(counts)
    used = int((counts > 0).sum())
    if used:
        assert 1 - 1e-9 <= stats["perplexity"] <= used + 1e-9
    assert stats["dead"] == counts.size - used
    assert stats["usage"] == pytest.approx(used / counts.size)


# --- EMA codebook ---------------------------------------------------------------------------

def test_ema_init_copies_the_codebook():
    _, codebook = draw(0)
    state = ema_init(codebook)
    np.testing.assert_array_equal(state["embed_sum"], codebook)
    np.testing.assert_array_equal(state["cluster_size"], np.ones(codebook.shape[0]))
    state["embed_sum"][0] += 1
    assert not np.array_equal(state["embed_sum"], codebook)  # a copy, not a view


def test_ema_with_decay_zero_moves_used_codes_to_their_mean(xp):
    z, codebook = draw(1, N=3, D=2, H=2, W=5, K=6)  # H != W and N > 1: the cell order matters
    _, ids, _, _ = vector_quantize_forward(z, codebook)
    mean, counts = ref.per_code_mean(z, ids, 6)
    used = counts > 0
    assert 1 < used.sum() < 6 or used.sum() == 6
    cb = xp.asarray(codebook.copy())
    out = ema_update(cb, ema_init(cb), xp.asarray(z), xp.asarray(ids), decay=0.0, eps=1e-12)
    assert out is cb  # updated in place
    np.testing.assert_allclose(to_numpy(cb)[used], mean[used], rtol=1e-9, atol=1e-12)


def test_ema_step_follows_its_formula():
    z, codebook = draw(2, K=4)
    decay, eps = 0.9, 1e-5
    _, ids, _, _ = vector_quantize_forward(z, codebook)
    mean, counts = ref.per_code_mean(z, ids, 4)
    sums = np.nan_to_num(mean) * counts[:, None]
    size = decay * 1 + (1 - decay) * counts
    embed = decay * codebook + (1 - decay) * sums
    n = size.sum()
    want = embed / ((size + eps) / (n + 4 * eps) * n)[:, None]
    cb = codebook.copy()
    state = ema_init(cb)
    ema_update(cb, state, z, ids, decay=decay, eps=eps)
    np.testing.assert_allclose(state["cluster_size"], size, rtol=1e-12)
    np.testing.assert_allclose(state["embed_sum"], embed, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(cb, want, rtol=1e-12)


def test_ema_converges_to_the_running_mean_of_a_repeated_batch():
    z, codebook = draw(3, K=5)
    _, ids, _, _ = vector_quantize_forward(z, codebook)
    mean, counts = ref.per_code_mean(z, ids, 5)
    used = counts > 0
    cb = codebook.copy()
    state = ema_init(cb)
    for _ in range(80):
        ema_update(cb, state, z, ids, decay=0.7, eps=1e-12)
    np.testing.assert_allclose(cb[used], mean[used], rtol=1e-6, atol=1e-9)


# --- k-means initialisation -----------------------------------------------------------------

def clustered_latents(dtype, seed=0, K=4, D=3, spread=0.05):
    """(N, D, H, W) latents made of K tight, far-apart clusters; returns them and the centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((K, D)) * 5
    N, H, W = 2, 4, 5
    which = np.arange(N * H * W) % K
    rows = centres[which] + spread * rng.standard_normal((N * H * W, D))
    z = rows.reshape(N, H, W, D).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(z).astype(dtype), centres


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeans_init_finds_the_clusters(xp, dtype):
    z, centres = clustered_latents(dtype)
    codebook = kmeans_init(xp.asarray(z), 4, seed=0)
    assert type(codebook) is type(xp.asarray(z))
    assert codebook.shape == (4, 3) and codebook.dtype == dtype
    got = to_numpy(codebook).astype(np.float64)
    # every centre has exactly one code near it (a permutation), well inside the data
    dists = np.linalg.norm(got[:, None] - centres[None], axis=-1)      # (codes, centres)
    assert sorted(dists.argmin(axis=1)) == [0, 1, 2, 3]
    assert dists.min(axis=1).max() < 0.1


def test_kmeans_init_codes_lie_within_the_data():
    z = np.random.default_rng(1).standard_normal((3, 2, 4, 4))
    codebook = kmeans_init(z, 6, seed=3)
    rows = z.transpose(0, 2, 3, 1).reshape(-1, 2)
    assert codebook.shape == (6, 2)
    assert np.all(codebook >= rows.min(axis=0) - 1e-12)
    assert np.all(codebook <= rows.max(axis=0) + 1e-12)
    np.testing.assert_array_equal(codebook, kmeans_init(z, 6, seed=3))  # deterministic


def test_kmeans_init_needs_at_least_K_vectors():
    z = np.zeros((1, 3, 2, 2))  # 4 vectors
    with pytest.raises(ShapeError, match="at least 5"):
        kmeans_init(z, 5)


# --- dead-code restarts ---------------------------------------------------------------------

def test_restart_replaces_dead_codes_with_encoder_vectors(xp):
    z, codebook = draw(0, K=6)
    counts = np.array([3, 0, 5, 0, 1, 0])
    rows = z.transpose(0, 2, 3, 1).reshape(-1, 3)
    cb = xp.asarray(codebook.copy())
    n = restart_dead_codes(cb, xp.asarray(counts), xp.asarray(z), seed=4)
    cb = to_numpy(cb)
    assert n == 3
    np.testing.assert_array_equal(cb[[0, 2, 4]], codebook[[0, 2, 4]])   # live ones untouched
    for k in (1, 3, 5):
        assert np.any(np.all(rows == cb[k], axis=1)), f"code {k} is not an encoder vector"


def test_restart_is_deterministic_for_a_seed_and_respects_min_count():
    z, codebook = draw(1, K=5)
    counts = np.array([0, 1, 2, 5, 1])
    a, b = codebook.copy(), codebook.copy()
    assert restart_dead_codes(a, counts, z, seed=11, min_count=2) == 3
    assert restart_dead_codes(b, counts, z, seed=11, min_count=2) == 3
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[[2, 3]], codebook[[2, 3]])
    assert not np.array_equal(a[[0, 1, 4]], codebook[[0, 1, 4]])


def test_restart_with_no_dead_codes_changes_nothing():
    z, codebook = draw(2, K=4)
    cb = codebook.copy()
    assert restart_dead_codes(cb, np.array([1, 2, 3, 4]), z) == 0
    np.testing.assert_array_equal(cb, codebook)


def test_restart_keeps_ema_state_consistent():
    z, codebook = draw(3, K=4)
    cb = codebook.copy()
    state = ema_init(cb)
    state["cluster_size"][:] = 7.0
    restart_dead_codes(cb, np.array([2, 0, 2, 0]), z, ema_state=state)
    np.testing.assert_array_equal(state["cluster_size"], [7, 1, 7, 1])
    np.testing.assert_array_equal(state["embed_sum"][[1, 3]], cb[[1, 3]])
    np.testing.assert_array_equal(state["embed_sum"][[0, 2]], codebook[[0, 2]])


# --- errors ---------------------------------------------------------------------------------

def test_code_dimension_mismatch_is_a_shape_error():
    z, _ = draw(0, D=3)
    with pytest.raises(ShapeError, match="D = 4"):
        vector_quantize_forward(z, np.zeros((5, 4)))


@pytest.mark.parametrize("z_shape, cb_shape", [((2, 3, 4), (5, 3)), ((1, 2, 3, 4, 5), (5, 2)),
                                               ((2, 3, 4, 4), (15,))])
def test_wrong_ndim_is_a_shape_error(z_shape, cb_shape):
    with pytest.raises(ShapeError):
        vector_quantize_forward(np.zeros(z_shape), np.zeros(cb_shape))


def test_dtype_mismatch_and_int_latents_are_dtype_errors():
    z, codebook = draw(0)
    with pytest.raises(DTypeError):
        vector_quantize_forward(z.astype(np.float32), codebook)
    with pytest.raises(DTypeError):
        vector_quantize_forward(z.astype(np.int64), codebook.astype(np.int64))
