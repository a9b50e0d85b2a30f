"""Every op pair against torch.nn.functional, in float32: outputs and gradients.

Torch's gradients come from torch.autograd with the same random upstream gradient that is
fed to our backward. Agreement is to float32 rounding (rtol 1e-4, atol 1e-5).
"""
import numpy as np
import pytest

from tinytok.ops import PAIRS, causal_self_attention_forward, self_attention_forward
from tinytok.ops.attention import KVCache

torch = pytest.importorskip("torch")
F = torch.nn.functional
torch.set_num_threads(1)

RTOL, ATOL = 1e-4, 1e-5


def torch_attention(x, w_qkv, b_qkv, w_proj, b_proj, n_head, mask="causal"):
    """nanoGPT's layout: [q | k | v] columns, heads as consecutive chunks of C // n_head.
    mask: "causal" (is_causal), "full" (no mask) or a boolean array, True = may attend
    (torch's attn_mask has the same sense)."""
    B, T, C = x.shape
    q, k, v = (x @ w_qkv + b_qkv).split(C, dim=-1)

    def heads(t):
        return t.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, nh, T, hs)

    given = {"causal": {"is_causal": True}, "full": {}} if isinstance(mask, str) else None
    y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), **(
        given[mask] if given else {"attn_mask": torch.from_numpy(np.asarray(mask))}))
    return y.transpose(1, 2).reshape(B, T, C) @ w_proj + b_proj


def torch_cross_entropy(logits, targets, ignore_index=-1):
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=ignore_index)


def torch_hinge_d_loss(real, fake):
    """The discriminator's hinge loss in torch ops; autograd differentiates it."""
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def torch_amplitude_loss(pred, target, bands=None):
    """The distance between amplitude spectra, by torch.fft (orthonormal) and autograd; with
    bands, each band's power summed by torch's index_add_ before its square root."""
    def amplitude(x):
        spectrum = torch.fft.fft2(x, norm="ortho")
        if bands is None:
            return spectrum.abs()
        flat = (spectrum.abs() ** 2).flatten(-2)
        index = torch.from_numpy(np.asarray(bands).ravel())
        return torch.zeros(*flat.shape[:-1], int(bands.max()) + 1).index_add_(
            -1, index, flat).sqrt()
    return (amplitude(pred) - amplitude(target)).pow(2).sum() / pred.numel()


def torch_hinge_g_loss(fake):
    return -fake.mean()


TORCH = {
    "linear": lambda x, w, b: F.linear(x, w.T, b),  # torch stores w as (out, in)
    "conv2d": F.conv2d,
    "conv_transpose2d": F.conv_transpose2d,
    "relu": F.relu,
    "leaky_relu": lambda x, slope=0.2: F.leaky_relu(x, slope),
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "layer_norm": lambda x, gamma, beta: F.layer_norm(x, gamma.shape, gamma, beta, eps=1e-5),
    "l2_normalize": lambda x, axis=-1: F.normalize(x, dim=axis),
    "embedding": F.embedding,
    "causal_self_attention": torch_attention,
    "self_attention": torch_attention,
    "cross_entropy": torch_cross_entropy,
    "mse": F.mse_loss,
    "amplitude_loss": torch_amplitude_loss,
    "hinge_d_loss": torch_hinge_d_loss,
    "hinge_g_loss": torch_hinge_g_loss,
}


def assert_matches_torch(name, args, kwargs, wrt, seed=0):
    """Run our pair and torch's function on the same float32 arrays and compare."""
    forward, backward = PAIRS[name]
    out, cache = forward(*args, **kwargs)
    dout = np.random.default_rng(seed).standard_normal(np.shape(out)).astype(np.float32)
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)

    tensors = [torch.from_numpy(np.array(a)) for a in args]
    for i in wrt:
        tensors[i].requires_grad_(True)
    t_out = TORCH[name](*tensors, **kwargs)
    t_grads = torch.autograd.grad(t_out, [tensors[i] for i in wrt], torch.from_numpy(dout))

    assert out.dtype == np.float32
    np.testing.assert_allclose(np.asarray(out), t_out.detach().numpy(), rtol=RTOL, atol=ATOL,
                               err_msg=f"{name} output")
    for i, g, tg in zip(wrt, grads, t_grads):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, tg.numpy(), rtol=RTOL, atol=ATOL,
                                   err_msg=f"{name} gradient of argument {i}")


@pytest.mark.parametrize("name", list(PAIRS))
def test_pair_matches_torch_in_float32(make_case, name):
    case = make_case(name, dtype=np.float32)
    assert_matches_torch(name, case.args, case.kwargs, case.wrt)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_l2_normalize_matches_torch_along_every_axis_and_at_zero(axis):
    """F.normalize(x, dim=axis): lengths over one axis, a zero vector left at zero (its
    gradient dy / eps, where torch's clamp_min passes it on the same way)."""
    x = np.random.default_rng(axis + 3).standard_normal((3, 4, 5)).astype(np.float32)
    np.moveaxis(x, axis, -1)[0, 0] = 0.0                    # one vector along axis is zero
    assert_matches_torch("l2_normalize", [x], {"axis": axis}, [0])


CONV_SHAPES = [  # C, F, H, W, kh, kw, stride, padding
    (3, 4, 8, 8, 3, 3, 1, 1),
    (3, 4, 9, 7, 4, 4, 2, 1),
    (2, 3, 7, 8, 5, 2, 3, 2),
    (4, 2, 5, 5, 1, 1, 2, 0),
    (2, 2, 6, 5, 2, 3, 1, 2),
]


@pytest.mark.parametrize("shape", CONV_SHAPES)
@pytest.mark.parametrize("name", ["conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("bias", [True, False])
def test_convolutions_match_torch_across_kernels_strides_paddings(name, shape, bias):
    C, F_, H, W, kh, kw, stride, padding = shape
    rng = np.random.default_rng(sum(shape))
    w_shape = (F_, C, kh, kw) if name == "conv2d" else (C, F_, kh, kw)
    x = rng.standard_normal((2, C, H, W)).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(F_).astype(np.float32) if bias else None
    wrt = [0, 1, 2] if bias else [0, 1]

    forward, backward = PAIRS[name]
    out, cache = forward(x, w, b, stride=stride, padding=padding)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    grads = [g for g in backward(dout, cache) if g is not None]
    tensors = [torch.from_numpy(a).requires_grad_(True) for a in (x, w, b) if a is not None]
    t_out = TORCH[name](tensors[0], tensors[1], tensors[2] if bias else None,
                        stride=stride, padding=padding)
    t_grads = torch.autograd.grad(t_out, tensors, torch.from_numpy(dout))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=RTOL, atol=ATOL)
    assert len(grads) == len(wrt)
    for g, tg in zip(grads, t_grads):
        np.testing.assert_allclose(g, tg.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("B, T, n_head, hs", [(1, 1, 1, 4), (2, 8, 4, 4), (3, 5, 2, 8)])
def test_attention_matches_torch_sdpa(B, T, n_head, hs):
    C = n_head * hs
    rng = np.random.default_rng(T)
    args = [rng.standard_normal(s).astype(np.float32) * scale for s, scale in
            [((B, T, C), 1.0), ((C, 3 * C), C ** -0.5), ((3 * C,), 0.1), ((C, C), C ** -0.5),
             ((C,), 0.1)]]
    assert_matches_torch("causal_self_attention", args, {"n_head": n_head}, [0, 1, 2, 3, 4])


@pytest.mark.parametrize("B, T, n_head, hs, cuts", [(2, 8, 4, 4, [5, 6, 7, 8]),
                                                     (1, 3, 1, 4, [1, 2, 3]),
                                                     (3, 6, 2, 8, [2, 6])])
def test_attention_through_a_kv_cache_matches_torch_sdpa_on_the_whole(B, T, n_head, hs, cuts):
    """Fed in pieces (a prompt, then a token at a time) through a KV cache, the outputs are
    torch's causal attention over the whole sequence."""
    C = n_head * hs
    rng = np.random.default_rng(T)
    x, *params = [rng.standard_normal(s).astype(np.float32) * scale for s, scale in
                  [((B, T, C), 1.0), ((C, 3 * C), C ** -0.5), ((3 * C,), 0.1),
                   ((C, C), C ** -0.5), ((C,), 0.1)]]
    kv = KVCache.empty((B, n_head, T, hs), like=x)
    outs, start = [], 0
    for end in cuts:
        out, _ = causal_self_attention_forward(x[:, start:end], *params, n_head, kv=kv)
        outs.append(out)
        start = end
    want = torch_attention(*(torch.from_numpy(a) for a in [x, *params]), n_head=n_head)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), want.numpy(), rtol=RTOL,
                               atol=ATOL)


def attention_args(B, T, n_head, hs, seed):
    C = n_head * hs
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) * scale for s, scale in
            [((B, T, C), 1.0), ((C, 3 * C), C ** -0.5), ((3 * C,), 0.1), ((C, C), C ** -0.5),
             ((C,), 0.1)]]


def block_causal(sizes):
    """(T, T) boolean: each position sees its own block and every block before it."""
    block = np.repeat(np.arange(len(sizes)), sizes)
    return block[None, :] <= block[:, None]


def random_mask(T, seed):
    """(T, T) boolean, about half True, and one True at least in every row."""
    rng = np.random.default_rng(seed)
    mask = rng.random((T, T)) < 0.5
    mask[np.arange(T), rng.integers(0, T, size=T)] = True
    return mask


@pytest.mark.parametrize("mask", ["causal", "full", "random", "block-causal"])
@pytest.mark.parametrize("B, T, n_head, hs", [(1, 1, 1, 4), (2, 8, 4, 4), (3, 5, 2, 8)])
def test_self_attention_with_each_mask_matches_torch_sdpa(B, T, n_head, hs, mask):
    """is_causal, no mask, or attn_mask given as a boolean array (True = may attend)."""
    given = {"random": lambda: random_mask(T, seed=T),
             "block-causal": lambda: block_causal([T // 2, T - T // 2])}
    mask = given[mask]() if mask in given else mask
    assert_matches_torch("self_attention", attention_args(B, T, n_head, hs, seed=T),
                         {"n_head": n_head, "mask": mask}, [0, 1, 2, 3, 4])


@pytest.mark.parametrize("B, n_head, hs, sizes", [(2, 4, 4, [1, 4, 3]), (1, 1, 4, [2, 2, 2]),
                                                  (3, 2, 8, [6])])
def test_full_attention_in_blocks_through_a_kv_cache_matches_torch_block_causal(
        B, n_head, hs, sizes):
    """Fed a block at a time through a KV cache with mask="full", each block sees the past
    and itself: torch's attention over the whole sequence with the block-causal mask."""
    T = sum(sizes)
    x, *params = attention_args(B, T, n_head, hs, seed=T)
    kv = KVCache.empty((B, n_head, T, hs), like=x)
    outs, start = [], 0
    for end in np.cumsum(sizes):
        out, _ = self_attention_forward(x[:, start:end], *params, n_head, mask="full", kv=kv)
        outs.append(out)
        start = end
    want = torch_attention(*(torch.from_numpy(a) for a in [x, *params]), n_head=n_head,
                           mask=block_causal(sizes))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), want.numpy(), rtol=RTOL,
                               atol=ATOL)


@pytest.mark.parametrize("B, n_head, hs, sizes", [(2, 4, 4, [1, 4, 3]), (1, 1, 4, [3, 1, 2]),
                                                  (3, 2, 8, [6])])
def test_a_boolean_mask_through_a_kv_cache_matches_torch_on_the_whole(B, n_head, hs, sizes):
    """A boolean mask fed a block at a time through a KV cache: each call gets its rows of
    the whole mask, (block, keys so far), and the outputs are torch's attention over the
    whole sequence with the whole mask (block-causal, some keys of the past hidden)."""
    T = sum(sizes)
    x, *params = attention_args(B, T, n_head, hs, seed=T + 1)
    mask = block_causal(sizes) & random_mask(T, seed=T)
    mask[np.arange(T), np.arange(T)] = True                    # every row sees its own key
    kv = KVCache.empty((B, n_head, T, hs), like=x)
    outs, start = [], 0
    for end in np.cumsum(sizes):
        out, _ = self_attention_forward(x[:, start:end], *params, n_head,
                                        mask=mask[start:end, :end], kv=kv)
        outs.append(out)
        start = end
    want = torch_attention(*(torch.from_numpy(a) for a in [x, *params]), n_head=n_head,
                           mask=mask)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), want.numpy(), rtol=RTOL,
                               atol=ATOL)


@pytest.mark.parametrize("ignore_index", [-1, -100])
def test_cross_entropy_matches_torch_with_ignore_index(ignore_index):
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((4, 6, 11))).astype(np.float32)
    targets = rng.integers(0, 11, size=(4, 6))
    targets[rng.random((4, 6)) < 0.25] = ignore_index
    assert_matches_torch("cross_entropy", [logits, targets], {"ignore_index": ignore_index},
                         [0])


def test_embedding_with_repeated_ids_matches_torch():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 4, size=(3, 9))  # 27 lookups into 4 rows: many repeats
    table = rng.standard_normal((4, 5)).astype(np.float32)
    assert_matches_torch("embedding", [ids, table], {}, [1])


@pytest.mark.parametrize("slope", [0.2, 0.01, 0.0, 1.0])
def test_leaky_relu_matches_torch_across_slopes_and_at_zero(slope):
    """x exactly 0 included: both take the slope side there (y = 0, dx = slope * dout)."""
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    x.reshape(-1)[::7] = 0.0
    assert_matches_torch("leaky_relu", [x], {"slope": slope}, [0])


def test_amplitude_loss_matches_torch_on_pictures_and_where_a_coefficient_is_zero():
    """32 x 32 pictures, as the tokenizers train on, one channel of pred all zeros: every
    coefficient there is exactly 0, has no phase, and gets gradient 0 in both."""
    rng = np.random.default_rng(2)
    pred = rng.random((3, 3, 32, 32)).astype(np.float32)
    pred[1, 2] = 0.0
    target = rng.random((3, 3, 32, 32)).astype(np.float32)
    assert_matches_torch("amplitude_loss", [pred, target], {}, [0])


def test_amplitude_loss_with_rings_matches_torch():
    from tinytok.ops import frequency_rings
    rng = np.random.default_rng(3)
    pred, target = (rng.random((3, 3, 32, 32)).astype(np.float32) for _ in range(2))
    assert_matches_torch("amplitude_loss", [pred, target], {"bands": frequency_rings(32, 32)},
                         [0])


@pytest.mark.parametrize("dloss", [1.0, 0.3, -2.0])
def test_hinge_losses_match_torch_with_scores_on_their_margins(dloss):
    """Scores exactly at +1 (real) and -1 (fake) are ties: relu's gradient at 0 is 0 in
    torch, and here too. The other scores are spread across both sides of the margins."""
    rng = np.random.default_rng(1)
    real = (1 + 2 * rng.standard_normal((4, 1, 5, 5))).astype(np.float32)
    fake = (-1 + 2 * rng.standard_normal((4, 1, 5, 5))).astype(np.float32)
    real.reshape(-1)[::5], fake.reshape(-1)[::4] = 1.0, -1.0
    for name, args in (("hinge_d_loss", [real, fake]), ("hinge_g_loss", [fake])):
        forward, backward = PAIRS[name]
        loss, cache = forward(*args)
        grads = backward(dloss, cache)
        grads = grads if isinstance(grads, tuple) else (grads,)
        tensors = [torch.from_numpy(a).requires_grad_(True) for a in args]
        t_loss = TORCH[name](*tensors)
        t_grads = torch.autograd.grad(t_loss * dloss, tensors)
        np.testing.assert_allclose(float(loss), t_loss.item(), rtol=RTOL, atol=ATOL)
        for g, tg in zip(grads, t_grads):
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, tg.numpy(), rtol=RTOL, atol=ATOL, err_msg=name)


# ---------------------------------------------------------------- the adversarial tokenizer

@pytest.fixture(scope="module")
def peer():
    """tests/peers/torch_peer.py: the torch models the benchmark's ratios are measured
    against. Checking them here is what makes those ratios compare the same work."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent / "peers"))
    import torch_peer
    torch.set_num_threads(1)          # the peer asks for 2 when imported
    return torch_peer


def close_to(ours, theirs, what, rel=1e-4):
    """Equal to float32 rounding, relative to the array's largest value (a deep chain of
    products rounds its small entries by the large ones')."""
    theirs = theirs.detach().numpy()
    scale = float(np.abs(theirs).max())
    assert scale > 0, f"{what}: zero in torch too checks nothing"
    np.testing.assert_allclose(ours, theirs, rtol=rel, atol=rel * scale, err_msg=what)


@pytest.mark.parametrize("channels, size, slope", [(4, 16, 0.2), (3, 8, 0.0), (2, 12, 0.5)])
def test_discriminator_matches_torch(peer, channels, size, slope):
    from tinytok.tokenizer.discriminator import (DiscriminatorConfig, discriminator_backward,
                                                 discriminator_forward,
                                                 init_discriminator_params)
    config = DiscriminatorConfig(channels, slope)
    params = init_discriminator_params(config, seed=channels)
    rng = np.random.default_rng(size)
    x = rng.standard_normal((3, 3, size, size)).astype(np.float32)
    scores, cache = discriminator_forward(x, params, config)
    dscores = rng.standard_normal(scores.shape).astype(np.float32)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    dx = discriminator_backward(dscores, cache, grads)

    P = peer.as_torch(params)
    tx = torch.from_numpy(x).requires_grad_(True)
    t_scores = peer.discriminator(tx, P, slope)
    t_grads = torch.autograd.grad(t_scores, [tx, *P.values()], torch.from_numpy(dscores))
    assert scores.dtype == dx.dtype == np.float32
    close_to(scores, t_scores, "scores")
    close_to(dx, t_grads[0], "dx")
    for (k, g), tg in zip(P.items(), t_grads[1:]):
        close_to(grads[k], tg, k)


@pytest.mark.parametrize("feature_weight, amplitude_weight", [(0.0, 0.0), (0.5, 0.0),
                                                               (0.5, 3.0)])
def test_one_adversarial_step_matches_torch_autograd(peer, feature_weight, amplitude_weight):
    """adversarial_grads against VQGAN's step in torch on the same weights and pictures:
    lambda by torch.autograd.grad at dec.up2.w (taming-transformers'
    calculate_adaptive_weight) of nll = mse + feature_weight * L_F + amplitude_weight * L_A
    and of L_G, the tokenizer's gradients of nll + vq + lambda * L_G, D's of its hinge loss
    with x_hat detached (L_F, D's features of x_hat against those of x detached, and L_A,
    by torch.fft, by autograd)."""
    from dataclasses import replace
    from tinytok.tokenizer.discriminator import DiscriminatorConfig, is_discriminator_param
    from tinytok.training.adversarial import adversarial_grads
    sizes = dict(vqvae="vqvae-tiny", disc_channels=8, gan_weight=0.1)
    config, params = peer.gan_params(sizes, seed=3)
    config = replace(config, image_size=16)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (4, 3, 16, 16)).astype(np.float32)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    out = adversarial_grads(x, params, config, DiscriminatorConfig(8), grads, 0.1,
                            lambda arrays: arrays, feature_weight=feature_weight,
                            amplitude_weight=amplitude_weight)

    P = peer.as_torch(params)
    loss, d_loss, lam, ids, feature_loss, amplitude_loss = peer.vqgan_losses(
        torch.from_numpy(x), P, config, 0.1, feature_weight=feature_weight,
        amplitude_weight=amplitude_weight)
    np.testing.assert_array_equal(out["ids"].reshape(-1), ids.numpy())   # the same codes
    assert out["gan_lambda"] == pytest.approx(float(lam), rel=1e-4)
    assert 0 < out["gan_lambda"] < 0.1 * 1e4                               # not clipped
    assert float(out["d_loss"]) == pytest.approx(float(d_loss.detach()), rel=1e-5)
    assert float(out["feature_loss"]) == pytest.approx(float(torch.as_tensor(feature_loss)
                                                             .detach()), rel=1e-5)
    assert (float(out["feature_loss"]) > 0) == (feature_weight > 0)
    assert float(out["amplitude_loss"]) == pytest.approx(
        float(torch.as_tensor(amplitude_loss).detach()), rel=1e-5)
    assert (float(out["amplitude_loss"]) > 0) == (amplitude_weight > 0)
    tok = [k for k in P if not is_discriminator_param(k)]
    disc = [k for k in P if is_discriminator_param(k)]
    for keys, of in ((tok, loss), (disc, d_loss)):
        for k, tg in zip(keys, torch.autograd.grad(of, [P[k] for k in keys],
                                                   retain_graph=True)):
            if k == "disc.out.b" and not tg.abs().max():
                assert not np.abs(grads[k]).max()      # every score inside its margin: 0
                continue
            close_to(grads[k], tg, k)


# ---------------------------------------------------------------- the masked prior

MASKED_SIZES = dict(gpt="gpt-tiny", shapes_codes=16, shapes_grid=4, gpt_T=28, gpt_batch=5)


def test_the_masked_prior_loss_and_gradients_match_torch(peer):
    """gpt_loss_forward / gpt_loss_backward with mask="full" on a masked_batch (targets -1
    but at the masked image tokens) against the peer's torch model (full attention,
    cross-entropy ignoring -1) by autograd: the logits, the loss and every gradient. The
    same batch read causally gives other logits: the mask is part of what is compared."""
    from tinytok import bench
    from tinytok.prior.gpt import gpt_loss_backward, gpt_loss_forward
    from tinytok.prior.masked import mask_id
    params, config, vocab = bench.shapes_prior(MASKED_SIZES, "masked", seed=2)
    ids, targets = bench.masked_example_batch(MASKED_SIZES, seed=3)
    assert ((targets != -1) == (ids == mask_id(vocab))).all() and (targets != -1).any()
    loss, cache = gpt_loss_forward(ids, targets, params, config, mask="full")
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    gpt_loss_backward(cache, grads, config)

    P = peer.as_torch(params)
    t_ids, t_targets = torch.from_numpy(ids), torch.from_numpy(targets)
    t_logits = peer.gpt_logits(t_ids, P, config, sdpa=False, mask="full")
    t_loss = peer.masked_loss(t_ids, t_targets, P, config, sdpa=True)
    t_grads = torch.autograd.grad(t_loss, list(P.values()))
    assert loss.dtype == cache.logits.dtype == np.float32
    close_to(cache.logits, t_logits, "logits")
    assert float(loss) == pytest.approx(t_loss.item(), rel=1e-5)
    for (k, _), tg in zip(P.items(), t_grads):
        close_to(grads[k], tg, k)
    causal = gpt_loss_forward(ids, targets, params, config)[1].logits   # far beyond rounding
    assert np.abs(causal - cache.logits).max() > 100 * 1e-4 * np.abs(cache.logits).max()


# ---------------------------------------------------------------- the next-scale prior (VAR)

# gpt-tiny over the shapes vocabulary of 16 codes, maps 1, 2, 3, 4 of a 4 x 4 grid (30
# positions) after the masked prior's 12 caption positions: context 42; vqvae-tiny's
# quantizer (D = 16) carried.
SCALES_SIZES = dict(MASKED_SIZES, vqvae="vqvae-tiny")


def as_float64(params):
    return {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}


def test_the_next_scale_prior_loss_and_gradients_match_torch(peer):
    """scales_loss_forward / scales_loss_backward against the peer's torch model by
    autograd, in float64: the maps' inputs from the running sums of the carried quantizer
    (area down, bilinear up, phi; no gradient), projected, plus level and position
    embeddings, the block-causal mask as sdpa's boolean attn_mask (and the explicit
    softmax's), cross-entropy on every map's codes. The logits, the loss and every
    trained parameter's gradient; none for the carried quantizer. The same batch read with
    a causal mask gives other logits: the mask is part of what is compared."""
    from tinytok import bench
    from tinytok.prior.scales import (CARRIED, caption_positions, scales_forward,
                                      scales_loss_backward, scales_loss_forward)
    params, config, _ = bench.shapes_prior(SCALES_SIZES, "scales", seed=2)
    params = as_float64(params)
    ids, targets = bench.scales_example_batch(SCALES_SIZES, config, seed=3)
    P_ = caption_positions(config)
    assert (config.context, P_, config.scales) == (42, 12, (1, 2, 3, 4))
    assert (targets[:, :P_] == -1).all() and (targets[:, P_:] == ids[:, P_:]).all()
    loss, cache = scales_loss_forward(ids, targets, params, config)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    scales_loss_backward(cache, grads, config)

    P = peer.as_torch(params)
    for k in CARRIED:
        P[k].requires_grad_(False)
    trained = [k for k in P if k not in CARRIED]
    t_ids, t_targets = torch.from_numpy(ids), torch.from_numpy(targets)
    t_logits = peer.scales_logits(t_ids, P, config, sdpa=False)
    t_loss = peer.scales_loss(t_ids, t_targets, P, config, sdpa=True)
    t_grads = torch.autograd.grad(t_loss, [P[k] for k in trained])
    assert loss.dtype == cache.logits.dtype == np.float64
    close_to(cache.logits, t_logits, "logits", rel=1e-10)
    assert float(loss) == pytest.approx(t_loss.item(), rel=1e-12)
    for k, tg in zip(trained, t_grads):
        close_to(grads[k], tg, k, rel=1e-10)
    assert all(not grads[k].any() for k in CARRIED)
    causal = scales_forward(ids, params, config, mask="causal")[0]
    assert np.abs(causal - cache.logits).max() > 1e-3 * np.abs(cache.logits).max()


def test_the_multiscale_tokenizer_step_matches_torch(peer):
    """One training step's loss and gradients of the multi-scale tokenizer (the bench's
    vqvae-scales: encoder, VAR's quantizer, decoder) against the peer's by autograd, in
    float64: the same maps chosen, the loss (reconstruction and the running sums' terms)
    and every parameter's gradient (phi's and the codebooks' through the straight-through
    estimator and the sums' loss)."""
    from tinytok import bench
    from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_backward, \
        tokenizer_forward
    config = bench.multiscale_tokenizer_config(SCALES_SIZES)
    assert (config.image_size, config.scales, config.num_codes) == (16, (1, 2, 3, 4), 16)
    params = as_float64(init_tokenizer_params(config, seed=4))
    x = np.random.default_rng(5).uniform(-0.5, 0.5, (3, 3, 16, 16))
    out, cache = tokenizer_forward(x, params, config)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    tokenizer_backward(cache, grads, config, image_grad=False)

    P = peer.as_torch(params)
    tx = torch.from_numpy(x)
    t_loss = peer.vqvae_loss(tx, P, config)
    t_grads = torch.autograd.grad(t_loss, list(P.values()))
    np.testing.assert_array_equal(out["ids"], peer.encode_ids(tx, P, config).numpy())
    assert out["loss"].dtype == np.float64
    assert float(out["loss"]) == pytest.approx(t_loss.item(), rel=1e-12)
    for (k, _), tg in zip(P.items(), t_grads):
        close_to(grads[k], tg, k, rel=1e-10)


# ---------------------------------------------------------------- resizing

TORCH["area_resize"] = lambda x, size: F.interpolate(x, size=size, mode="area")
TORCH["bilinear_resize"] = lambda x, size: F.interpolate(x, size=size, mode="bilinear",
                                                          align_corners=False)

RESIZES = [  # (H, W) -> (H_out, W_out): whole and uneven ratios, both ways, 1 at either end
    ((3, 3), (8, 8)), ((8, 8), (3, 3)), ((5, 5), (7, 7)), ((1, 1), (8, 8)), ((8, 8), (1, 1)),
    ((7, 5), (5, 7)), ((8, 6), (4, 3)), ((4, 3), (8, 6)), ((3, 8), (8, 3)), ((6, 6), (6, 6)),
    ((9, 2), (4, 11))]


@pytest.mark.parametrize("dtype, rtol, atol", [(np.float32, RTOL, ATOL),
                                               (np.float64, 1e-12, 1e-13)])
@pytest.mark.parametrize("shape, size", RESIZES)
@pytest.mark.parametrize("name", ["area_resize", "bilinear_resize"])
def test_resizing_matches_torch_interpolate(name, shape, size, dtype, rtol, atol):
    """F.interpolate(mode="area") and (mode="bilinear", align_corners=False): the output,
    and the input's gradient from autograd for the same random upstream gradient."""
    rng = np.random.default_rng(sum(shape) * 13 + sum(size))
    x = rng.standard_normal((2, 3, *shape)).astype(dtype)
    forward, backward = PAIRS[name]
    y, cache = forward(x, size)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = backward(dy, cache)

    tx = torch.from_numpy(x).requires_grad_(True)
    t_y = TORCH[name](tx, size)
    (t_dx,) = torch.autograd.grad(t_y, [tx], torch.from_numpy(dy))
    assert y.dtype == dx.dtype == dtype and y.shape == tuple(t_y.shape)
    np.testing.assert_allclose(y, t_y.detach().numpy(), rtol=rtol, atol=atol, err_msg="y")
    np.testing.assert_allclose(dx, t_dx.numpy(), rtol=rtol, atol=atol, err_msg="dx")
