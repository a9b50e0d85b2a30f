"""The same benchmark parts in PyTorch (CPU, 2 threads), timed side by side with tinytok.

    python tests/peers/torch_peer.py [--json] [--only NAME] [--quick] [--no-rss]

NAME: sgemm, vqvae-ref, vqvae-scales, vqvae-gan, gpt-ref, gpt-masked, gpt-scales (the
bench's parts that have a peer; comma-separated or repeated).

Not a test (pytest does not collect this file): it is how the ratios tinytok / torch are
measured honestly. Both run in this one process, on the same machine, with the same models,
the same initial weights (copied from tinytok's init) and the same inputs. Repeats alternate
between the two (and the order rotates each round), so machine noise hits both alike.

Peak resident memory cannot be split inside one process, so (unless --no-rss) each section is
run once more, alone, in a fresh process for each library, with its import baseline.

The torch models are written functionally on the same flat param dict: vqvae-ref layer
for layer as tinytok.tokenizer.vqvae builds it, with a straight-through VQ; vqvae-scales the
same with VAR's multi-scale quantizer (tinytok.tokenizer.multiscale: area down, nearest
code, bilinear up, phi mixed in half and half, straight-through, the running sums' loss;
F.interpolate with mode="area" and mode="bilinear", align_corners=False); vqvae-gan the
same against the patch discriminator (tinytok.tokenizer.discriminator), VQGAN's step as
taming-transformers writes it (the adaptive weight by torch.autograd.grad at the decoder's
last weight, calculate_adaptive_weight; two optimizers), with tinytok's feature-matching
and ring-amplitude terms at the bench's weights (the shipped photos_gan_tokenizer's); gpt-ref
nanoGPT-style with the head tied to the token embedding, attention explicit (masked softmax) or
F.scaled_dot_product_attention ("sdpa"); gpt-masked the same model with full attention (no
mask) over the masked prior's batch (tinytok.bench.masked_example_batch: the same ids and
targets), cross-entropy on the masked image tokens only (every other target -1, ignored),
as MaskGIT trains; gpt-scales the next-scale prior (tinytok.prior.scales: the caption's
embeddings, then each map's inputs made without gradient from the running sums of the
coarser maps by the carried quantizer, projected, plus level and position embeddings;
the block-causal mask as a boolean attn_mask) on its batch
(tinytok.bench.scales_example_batch), the carried quantizer not trained. Optimizer:
torch.optim.AdamW with its defaults (lr 3e-4; weight decay 0.1 on matrices for gpt, none
for vqvae, as tinytok's bench).
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from tinytok import backend, bench, parallel
from tinytok.errors import ConfigError
from tinytok.prior.gpt import gpt_config, gpt_loss_forward, init_gpt_params
from tinytok.prior.kinds import PRIOR_KINDS
from tinytok.prior.scales import scales_loss_forward
from tinytok.tokenizer.discriminator import (DiscriminatorConfig, init_discriminator_params,
                                             is_discriminator_param)
from tinytok.tokenizer.multiscale import PHI_MIX
from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_config, tokenizer_forward
from tinytok.training.adversarial import adversarial_grads

torch.set_num_threads(2)
PARTS = ("sgemm", "vqvae-ref", "vqvae-scales", "vqvae-gan", "gpt-ref", "gpt-masked",
         "gpt-scales")                                                   # those with a peer


def as_torch(params):
    return {k: torch.from_numpy(np.array(v)).requires_grad_(True) for k, v in params.items()}


# ---------------------------------------------------------------- vqvae-ref in torch

def conv(x, P, name, stride=1, padding=0):
    return F.conv2d(x, P[name + ".w"], P[name + ".b"], stride, padding)


def residual(x, P, name):
    return x + conv(F.relu(conv(F.relu(x), P, name + ".conv1", padding=1)), P, name + ".conv2")


def encoder(x, P, c):
    h = F.relu(conv(x, P, "enc.conv1", 2, 1))
    h = conv(F.relu(conv(h, P, "enc.conv2", 2, 1)), P, "enc.conv3", padding=1)
    for i in range(c.n_res):
        h = residual(h, P, f"enc.res{i}")
    return conv(F.relu(h), P, "enc.out")


def decoder(z, P, c):
    h = conv(z, P, "dec.conv1", padding=1)
    for i in range(c.n_res):
        h = residual(h, P, f"dec.res{i}")
    h = F.relu(F.conv_transpose2d(F.relu(h), P["dec.up1.w"], P["dec.up1.b"], 2, 1))
    return F.conv_transpose2d(h, P["dec.up2.w"], P["dec.up2.b"], 2, 1)


def nearest(z, codebook):
    """z (N, D, H, W) -> ids (N*H*W,) of the nearest codes (no gradient)."""
    with torch.no_grad():
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        return ((codebook * codebook).sum(1) - 2 * flat @ codebook.t()).argmin(1)


def vq(z, codebook, beta):
    N, D, H, W = z.shape
    e = codebook[nearest(z, codebook)].view(N, H, W, D).permute(0, 3, 1, 2)
    loss = F.mse_loss(e, z.detach()) + beta * F.mse_loss(z, e.detach())
    return z + (e - z).detach(), loss                                # straight-through


def quantize(z, P, c):
    """(z_q, loss): the config's quantizer, VQ or the multi-scale one."""
    if c.quantizer == "scales":
        return multiscale(z, P, c.scales, c.beta)[:2]
    return vq(z, P["quant.codebook"], c.beta)


def vqvae_loss(x, P, c):
    z_q, vq_loss = quantize(encoder(x, P, c), P, c)
    return F.mse_loss(decoder(z_q, P, c), x) + vq_loss


def encode_ids(x, P, c):
    """Pictures (N, 3, S, S) -> ids: (N*g*g,) nearest codes, or (N, L) the maps in a row."""
    z = encoder(x, P, c)
    if c.quantizer == "scales":
        return torch.cat(climb(P, c.scales, len(z), z.shape[-1], f=z)[1], 1)
    return nearest(z, P["quant.codebook"])


# ---------------------------------------------------------------- the multi-scale quantizer

def area(x, size):
    """x (N, D, h, h) averaged down to size x size (the identity at its own size)."""
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area")


def up_and_mix(e, P, g, mix=PHI_MIX):
    """A map's codes e (N, D, s, s) -> h (N, D, g, g): bilinearly up to g, then
    (1 - mix) u + mix phi(u), phi the 3x3 convolution quant.phi."""
    u = e if e.shape[-1] == g else F.interpolate(e, size=(g, g), mode="bilinear",
                                                 align_corners=False)
    return (1 - mix) * u + mix * F.conv2d(u, P["quant.phi.w"], P["quant.phi.b"], padding=1)


def climb(P, scales, N, g, f=None, maps=None):
    """The maps coarse to fine -> (the running sums f_hat_k (N, D, g, g), the ids (N, s_k^2)
    per map). Encoding (f given): each map's codes are the nearest to what is left of f,
    averaged down (no gradient in the lookup). Decoding (maps given, (N, s_k^2) each, the
    first k): those codes."""
    book = P["quant.codebook"]
    f_hat = torch.zeros(N, book.shape[-1], g, g, dtype=book.dtype)
    sums, ids = [], []
    for k, s in enumerate(scales if maps is None else scales[:len(maps)]):
        codes = book[k] if book.dim() == 3 else book
        idx = (nearest(area(f.detach() - f_hat.detach(), s), codes) if maps is None
               else maps[k].reshape(-1))
        f_hat = f_hat + up_and_mix(codes[idx].view(N, s, s, -1).permute(0, 3, 1, 2), P, g)
        sums.append(f_hat)
        ids.append(idx.view(N, -1))
    return sums, ids


def multiscale(z, P, scales, beta):
    """VAR's quantizer on z (N, D, g, g) -> (z + sg(f_hat - z): f_hat forward, the
    decoder's gradient straight to z; the loss (1/K) sum_k [mse(f_hat_k, sg z) + beta
    mse(sg f_hat_k, z)]; the ids (N, L))."""
    sums, ids = climb(P, scales, len(z), z.shape[-1], f=z)
    f = z.detach()
    loss = sum(F.mse_loss(s, f) + beta * F.mse_loss(s.detach(), z) for s in sums) / len(sums)
    return z + (sums[-1] - z).detach(), loss, torch.cat(ids, 1)


# ---------------------------------------------------------------- vqvae-gan in torch

def discriminator(x, P, slope=0.2):
    """The patch discriminator: two 4x4/2 convolutions with leaky ReLU, a 3x3 to one score."""
    return discriminator_features(x, P, slope)[0]


def discriminator_features(x, P, slope=0.2):
    """(scores, (h1, h2)): the same, with its two hidden activations (its features)."""
    h1 = F.leaky_relu(conv(x, P, "disc.conv1", 2, 1), slope)
    h2 = F.leaky_relu(conv(h1, P, "disc.conv2", 2, 1), slope)
    return conv(h2, P, "disc.out", padding=1), (h1, h2)


def adaptive_weight(rec_loss, g_loss, last_layer, gan_weight):
    """taming-transformers' calculate_adaptive_weight, times the discriminator weight."""
    rec_grads = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    ratio = torch.norm(rec_grads) / (torch.norm(g_grads) + 1e-4)
    return gan_weight * torch.clamp(ratio, 0.0, 1e4).detach()


def ring_amplitudes(x):
    """(N, C, R): the square root of the power of each ring of x's orthonormal 2-D DFT, a
    ring being the coefficients at one distance from 0, to the nearest 1/S cycle a pixel."""
    S = x.shape[-1]
    f = np.fft.fftfreq(S)
    ring = torch.from_numpy(np.rint(S * np.hypot(f[:, None], f[None, :])).astype(np.int64))
    power = torch.fft.fft2(x, norm="ortho").abs().pow(2).flatten(-2)
    rings = torch.zeros(*power.shape[:-1], int(ring.max()) + 1, dtype=power.dtype)
    return rings.index_add_(-1, ring.ravel(), power).sqrt()


def vqgan_losses(x, P, c, gan_weight, slope=0.2, feature_weight=0.0,
                 amplitude_weight=0.0):
    """(the tokenizer's loss nll + vq + lambda * L_G, D's hinge loss L_D, lambda, ids, L_F,
    L_A).

    nll = mse + feature_weight * L_F + amplitude_weight * L_A, the reconstruction term
    VQGAN's adaptive weight balances (its nll_loss), with L_F the mean squared distance
    between D's features of x_hat and of x (x's detached) and L_A that between the
    amplitudes of their spectra's rings (torch.fft, orthonormal); a term of weight 0 is not
    computed (0.0) and the step costs what it did before it existed."""
    z = encoder(x, P, c)
    ids = nearest(z, P["quant.codebook"])
    z_q, vq_loss = vq(z, P["quant.codebook"], c.beta)
    x_hat = decoder(z_q, P, c)
    nll = F.mse_loss(x_hat, x)
    fake, fake_features = discriminator_features(x_hat, P, slope)
    g_loss = -fake.mean()
    real, real_features = discriminator_features(x, P, slope)
    feature_loss = 0.0
    if feature_weight:
        feature_loss = sum(F.mse_loss(f, r.detach())
                           for f, r in zip(fake_features, real_features))
        nll = nll + feature_weight * feature_loss
    amplitude_loss = 0.0
    if amplitude_weight:
        amplitude_loss = ((ring_amplitudes(x_hat) - ring_amplitudes(x)).pow(2).sum()
                          / x.numel())
        nll = nll + amplitude_weight * amplitude_loss
    lam = adaptive_weight(nll, g_loss, P["dec.up2.w"], gan_weight)
    d_loss = (F.relu(1 - real).mean()
              + F.relu(1 + discriminator(x_hat.detach(), P, slope)).mean())
    return nll + vq_loss + lam * g_loss, d_loss, lam, ids, feature_loss, amplitude_loss


def gan_params(sizes, seed=0):
    """vqvae's and D's initial weights, as tinytok's bench workload draws them."""
    c = tokenizer_config(sizes["vqvae"])
    params = init_tokenizer_params(c, seed=seed)
    params.update(init_discriminator_params(DiscriminatorConfig(sizes["disc_channels"]),
                                            seed=seed + 1))
    return c, params


def gan_terms(sizes):
    """L_rec's extra terms' weights in the bench's adversarial step (vqgan_losses' keywords)."""
    return {key: sizes[key] for key in ("feature_weight", "amplitude_weight")}


def torch_vqvae_gan_train(sizes):
    """One adversarial step: both losses, each model's gradients (backward(inputs=...)),
    each clipped to norm 1 and stepped by its own torch.optim.AdamW (lr 3e-4, no decay)."""
    c, params = gan_params(sizes)
    terms = gan_terms(sizes)
    P = as_torch(params)
    tok = [p for k, p in P.items() if not is_discriminator_param(k)]
    disc = [p for k, p in P.items() if is_discriminator_param(k)]
    opts = [(torch.optim.AdamW(ps, lr=3e-4, weight_decay=0.0), ps) for ps in (tok, disc)]
    x = torch.from_numpy(backend.rng(0).uniform(-0.5, 0.5, (sizes["vq_batch"], 3, c.image_size,
                                                           c.image_size)).astype(np.float32))

    def step():
        for opt, _ in opts:
            opt.zero_grad(set_to_none=True)
        loss, d_loss, *_ = vqgan_losses(x, P, c, sizes["gan_weight"], **terms)
        loss.backward(inputs=tok)
        d_loss.backward(inputs=disc)
        for opt, ps in opts:
            torch.nn.utils.clip_grad_norm_(ps, 1.0)
            opt.step()
        return loss

    return step


# ---------------------------------------------------------------- gpt-ref in torch

def attention(x, P, name, n_head, sdpa, kv=None, layer=0, mask="causal"):
    """Self-attention: mask "causal", "full" (every position sees every other) or a boolean
    (T, T) tensor, True where a position may attend (sdpa's attn_mask)."""
    B, T, C = x.shape
    q, k, v = F.linear(x, P[name + ".w_qkv"].t(), P[name + ".b_qkv"]).split(C, dim=-1)
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
    given = None if isinstance(mask, str) else mask
    causal = isinstance(mask, str) and mask == "causal"
    if kv is not None:                                               # append, read the prefix
        L = kv["length"]
        kv["k"][layer][:, :, L:L + T] = k
        kv["v"][layer][:, :, L:L + T] = v
        k, v = kv["k"][layer][:, :, :L + T], kv["v"][layer][:, :, :L + T]
        causal = causal and T > 1                                    # one new token sees all
        assert (T == 1 or L == 0) and given is None
    if sdpa:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=given, is_causal=causal)
    else:
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // n_head))
        hidden = ~given if given is not None else (
            torch.ones(T, T, dtype=torch.bool).triu(1) if causal else None)
        if hidden is not None:
            att = att.masked_fill(hidden, float("-inf"))
        y = F.softmax(att, dim=-1) @ v
    return F.linear(y.transpose(1, 2).reshape(B, T, C), P[name + ".w_proj"].t(),
                    P[name + ".b_proj"])


def gpt_logits(ids, P, c, sdpa=True, kv=None, mask="causal"):
    """ids (B, T) -> logits (B, T, V): token and position embeddings, then trunk_logits."""
    L = kv["length"] if kv is not None else 0
    x = F.embedding(ids, P["gpt.wte"]) + P["gpt.wpe"][L:L + ids.shape[1]]
    return trunk_logits(x, P, c, sdpa, kv, mask)


def trunk_logits(x, P, c, sdpa=True, kv=None, mask="causal"):
    """Embedded inputs x (B, T, C) -> logits (B, T, V): the blocks, ln_f, the tied head."""
    T, C = x.shape[1], c.n_embd
    L = kv["length"] if kv is not None else 0
    for i in range(c.n_layer):
        h = f"gpt.h{i}"
        a = F.layer_norm(x, (C,), P[h + ".ln1.g"], P[h + ".ln1.b"])
        x = x + attention(a, P, h + ".attn", c.n_head, sdpa, kv, i, mask)
        m = F.layer_norm(x, (C,), P[h + ".ln2.g"], P[h + ".ln2.b"])
        m = F.gelu(F.linear(m, P[h + ".mlp.fc.w"].t(), P[h + ".mlp.fc.b"]), approximate="tanh")
        x = x + F.linear(m, P[h + ".mlp.proj.w"].t(), P[h + ".mlp.proj.b"])
    if kv is not None:
        kv["length"] = L + T
    x = F.layer_norm(x, (C,), P["gpt.ln_f.g"], P["gpt.ln_f.b"])
    return F.linear(x, P["gpt.wte"])                                 # tied head


# ---------------------------------------------------------------- the next-scale prior

def map_sizes(scales):
    return torch.tensor([s * s for s in scales])


def map_levels(scales):
    """(L,): the map (0 .. K - 1) of each image position."""
    return torch.repeat_interleave(torch.arange(len(scales)), map_sizes(scales))


def map_inputs(codes, P, scales):
    """codes (N, L), the maps in a row -> (N, L, D), no gradient: zeros for the first map,
    then for map k + 1 the running sum after maps 1 .. k averaged down to its size, a row
    per cell (row-major)."""
    N, g = len(codes), scales[-1]
    maps = codes.split(map_sizes(scales).tolist(), dim=1)[:-1]      # the last is read by none
    with torch.no_grad():
        sums, _ = climb(P, scales, N, g, maps=maps)
        first = torch.zeros(N, scales[0] ** 2, P["quant.codebook"].shape[-1],
                            dtype=P["quant.codebook"].dtype)
        return torch.cat([first] + [area(s, size).flatten(2).transpose(1, 2)
                                    for s, size in zip(sums, scales[1:])], 1)


def block_causal_mask(c, n_caption):
    """(T, T) boolean, True = may attend: a position sees its own map and every coarser one;
    the caption (map -1) sees itself."""
    groups = torch.cat([torch.full((n_caption,), -1), map_levels(c.scales)])
    return groups[None, :] <= groups[:, None]


def scales_logits(ids, P, c, sdpa=True):
    """ids (B, context): the caption part, then the maps' codes as ids -> logits (B, T, V).
    The caption is embedded as tokens; each map position reads its map_inputs row projected
    (scales.proj) plus its map's level embedding; then the positions' and the trunk with
    the block-causal mask."""
    n_caption = c.context - int(map_sizes(c.scales).sum())
    offset = c.vocab_size - P["quant.codebook"].shape[-2]            # the id of code 0
    inputs = map_inputs(ids[:, n_caption:] - offset, P, c.scales)
    maps = (F.linear(inputs, P["scales.proj.w"].t(), P["scales.proj.b"])
            + P["scales.level"][map_levels(c.scales)])
    x = torch.cat([F.embedding(ids[:, :n_caption], P["gpt.wte"]), maps], 1) + P["gpt.wpe"]
    return trunk_logits(x, P, c, sdpa, mask=block_causal_mask(c, n_caption))


def scales_loss(ids, targets, P, c, sdpa=True):
    """The next-scale prior's loss: each map's mean cross-entropy over its codes, averaged
    over the maps (every map weighs the same)."""
    n_caption = c.context - int(map_sizes(c.scales).sum())
    logits = scales_logits(ids, P, c, sdpa)
    ends = (n_caption + torch.cumsum(map_sizes(c.scales), 0)).tolist()
    starts = [n_caption] + ends[:-1]
    V = logits.shape[-1]
    return sum(F.cross_entropy(logits[:, lo:hi].reshape(-1, V), targets[:, lo:hi].reshape(-1),
                               ignore_index=-1) for lo, hi in zip(starts, ends)) / len(ends)


# ---------------------------------------------------------------- the torch closures

def train_step_fn(P, loss_fn, decay):
    params = list(P.values())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=3e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    return step


def torch_vqvae_train(sizes, config=None):
    """One tokenizer step: config (default sizes["vqvae"]) as tinytok's bench has it."""
    c = tokenizer_config(config or sizes["vqvae"])
    P = as_torch(init_tokenizer_params(c))
    x = torch.from_numpy(backend.rng(0).uniform(-0.5, 0.5, (sizes["vq_batch"], 3, c.image_size,
                                                           c.image_size)).astype(np.float32))
    return train_step_fn(P, lambda: vqvae_loss(x, P, c), 0.0)


def torch_vqvae_encode(sizes, config=None):
    c = tokenizer_config(config or sizes["vqvae"])
    P = {k: v.detach() for k, v in as_torch(init_tokenizer_params(c)).items()}
    x = torch.from_numpy(backend.rng(0).uniform(
        -0.5, 0.5, (sizes["encode_batch"], 3, c.image_size, c.image_size)).astype(np.float32))

    def encode():
        with torch.inference_mode():
            return encode_ids(x, P, c)

    return encode


def _gpt_setup(sizes):
    c = gpt_config(sizes["gpt"], vocab_size=sizes["vocab"])
    return c, as_torch(init_gpt_params(c))


def torch_gpt_train(sizes, sdpa):
    c, P = _gpt_setup(sizes)
    rng = backend.rng(0)
    B, T = sizes["gpt_batch"], sizes["gpt_T"]
    ids = torch.from_numpy(rng.integers(0, c.vocab_size, (B, T)))
    targets = torch.from_numpy(rng.integers(0, c.vocab_size, (B, T)))
    loss_fn = lambda: F.cross_entropy(gpt_logits(ids, P, c, sdpa).view(B * T, -1),
                                      targets.view(-1), ignore_index=-1)
    return train_step_fn(P, loss_fn, 0.1)


def masked_loss(ids, targets, P, c, sdpa=True):
    """The masked prior's loss: full attention, the mean cross-entropy over targets != -1
    (the masked image tokens)."""
    B, T = ids.shape
    return F.cross_entropy(gpt_logits(ids, P, c, sdpa, mask="full").view(B * T, -1),
                           targets.view(-1), ignore_index=-1)


def torch_masked_train(sizes, sdpa):
    """One masked prior's training step on the batch tinytok's bench step trains on."""
    params, c, _ = bench.shapes_prior(sizes, "masked")
    P = as_torch(params)
    ids, targets = (torch.from_numpy(a) for a in bench.masked_example_batch(sizes))
    return train_step_fn(P, lambda: masked_loss(ids, targets, P, c, sdpa), 0.1)


def torch_scales_train(sizes, sdpa):
    """One next-scale prior's training step on the batch tinytok's bench step trains on;
    AdamW on all but the carried quantizer (a constant here too)."""
    params, c, _ = bench.shapes_prior(sizes, "scales")
    P = as_torch(params)
    carried = PRIOR_KINDS["scales"].carried
    for k in carried:
        P[k].requires_grad_(False)
    ids, targets = (torch.from_numpy(a) for a in bench.scales_example_batch(sizes, c))
    return train_step_fn({k: p for k, p in P.items() if k not in carried},
                         lambda: scales_loss(ids, targets, P, c, sdpa), 0.1)


def torch_gpt_sample(sizes, use_cache):
    c, P = _gpt_setup(sizes)
    P = {k: v.detach() for k, v in P.items()}
    B, n_new = sizes["sample_batch"], sizes["sample_new"]
    prompt = torch.from_numpy(backend.rng(0).integers(0, c.vocab_size, (B, 1)))
    hs = c.n_embd // c.n_head

    def sample():
        g = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            kv = None
            if use_cache:
                kv = {"k": [torch.zeros(B, c.n_head, c.context, hs) for _ in range(c.n_layer)],
                      "v": [torch.zeros(B, c.n_head, c.context, hs) for _ in range(c.n_layer)],
                      "length": 0}
            seq, new = prompt, prompt
            for _ in range(n_new):
                logits = gpt_logits(new if use_cache else seq, P, c, True, kv)[:, -1]
                new = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=g)
                seq = torch.cat([seq, new], 1)
            return seq

    return sample


def torch_sgemm(n):
    g = torch.Generator().manual_seed(n)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    c = torch.empty(n, n)
    return lambda: torch.mm(a, b, out=c)


def numpy_sgemm(n):
    rng = np.random.default_rng(n)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in "ab")
    c = np.empty((n, n), np.float32)
    return lambda: np.matmul(a, b, out=c)


# ---------------------------------------------------------------- what is compared

def measurements(part, sizes):
    """[(label, reps key, {runner: zero-argument builder}, unit count, unit)] of a part."""
    tk, tt = "tinytok", "torch"
    n_tok = sizes["sample_batch"] * sizes["sample_new"]
    if part == "sgemm":
        return [(f"sgemm {n}", "sgemm", {"numpy": lambda n=n: numpy_sgemm(n),
                                         tt: lambda n=n: torch_sgemm(n)}, 2 * n ** 3 / 1e9,
                 "GFLOP") for n in sizes["sgemm_sizes"]]
    if part == "vqvae-ref":
        return [("vqvae train step", "vqvae_train",
                 {tk: lambda: bench.vqvae_train_step(sizes)[0],
                  tt: lambda: torch_vqvae_train(sizes)}, sizes["vq_batch"], "images"),
                (f"vqvae encode {sizes['encode_batch']}", "vqvae_encode",
                 {tk: lambda: bench.vqvae_encode(sizes)[0],
                  tt: lambda: torch_vqvae_encode(sizes)}, sizes["encode_batch"], "images")]
    if part == "vqvae-scales":
        c = bench.multiscale_tokenizer_config(sizes)
        return [("multi-scale train step", "vqvae_scales_train",
                 {tk: lambda: bench.vqvae_train_step(sizes, config=c)[0],
                  tt: lambda: torch_vqvae_train(sizes, c)}, sizes["vq_batch"], "images"),
                (f"multi-scale encode {sizes['encode_batch']}", "vqvae_scales_encode",
                 {tk: lambda: bench.vqvae_encode(sizes, config=c)[0],
                  tt: lambda: torch_vqvae_encode(sizes, c)}, sizes["encode_batch"], "images")]
    if part == "gpt-scales":
        context = bench.shapes_prior(sizes, "scales")[1].context
        return [("next-scale train step", "scales_train",
                 {tk: lambda: bench.scales_train_step(sizes)[0],
                  "torch-sdpa": lambda: torch_scales_train(sizes, True),
                  "torch-explicit": lambda: torch_scales_train(sizes, False)},
                 sizes["gpt_batch"] * context, "tokens")]
    if part == "vqvae-gan":
        return [("vqvae train step with D", "vqvae_gan",
                 {tk: lambda: bench.vqvae_gan_train_step(sizes)[0],
                  tt: lambda: torch_vqvae_gan_train(sizes)}, sizes["vq_batch"], "images")]
    if part == "gpt-masked":
        return [("masked train step", "masked_train",
                 {tk: lambda: bench.masked_train_step(sizes)[0],
                  "torch-sdpa": lambda: torch_masked_train(sizes, True),
                  "torch-explicit": lambda: torch_masked_train(sizes, False)},
                 sizes["gpt_batch"] * sizes["gpt_T"], "tokens")]
    assert part == "gpt-ref", part
    return [("gpt train step", "gpt_train",
             {tk: lambda: bench.gpt_train_step(sizes)[0],
              "torch-sdpa": lambda: torch_gpt_train(sizes, True),
              "torch-explicit": lambda: torch_gpt_train(sizes, False)},
             sizes["gpt_batch"] * sizes["gpt_T"], "tokens"),
            ("gpt sample kv-cache", "sample_kv",
             {tk: lambda: bench.gpt_sample(sizes, True), tt: lambda: torch_gpt_sample(sizes, True)},
             n_tok, "tokens"),
            ("gpt sample no cache", "sample_nocache",
             {tk: lambda: bench.gpt_sample(sizes, False),
              tt: lambda: torch_gpt_sample(sizes, False)}, n_tok, "tokens")]


# the pause before each timed run, by measurement (see interleaved): 0.3 s where tinytok
# runs BLAS on its own threads (sgemm, and sampling: blas_threads_for_small_products)
SETTLE_S = {"sgemm": 0.3, "vqvae_train": 0.05, "vqvae_encode": 0.05, "vqvae_gan": 0.05,
            "vqvae_scales_train": 0.05, "vqvae_scales_encode": 0.05,
            "gpt_train": 0.05, "masked_train": 0.05, "scales_train": 0.05,
            "sample_kv": 0.3, "sample_nocache": 0.3}


def interleaved(fns, warmup, repeats, settle):
    """{name: [ms, ...]}: warm each up, then time them in turn, rotating the order per round.

    Before each timed run we sleep `settle` seconds. Idle OpenBLAS threads (numpy) and
    OpenMP threads (torch) busy-wait for a while after their last job; on two cores, the
    other library's spinning threads would steal the CPU from whichever runs next and both
    would look slow. The pause lets them go to sleep. OpenBLAS's own threads (sgemm, and
    tinytok's sampling) spin ~2^28 cycles, about 0.1 s: 0.3 s there. In the training and
    encoding parts tinytok calls BLAS on one thread and torch's OpenMP threads spin for well
    under a millisecond, so 0.05 s is enough there; a longer pause is not neutral on this VM:
    after ~0.1 s idle, every thread
    hand-off (tinytok's parts, the GIL) wakes a halted virtual CPU, and a tinytok step
    measured 59 ms after no pause, 63 ms after 0.05 s, 75 ms after 0.1 s and 91 ms after
    0.3 s, while torch's step, whose threads spin instead of sleeping, stayed at 53 ms. A
    training loop never pauses between steps. Measured in separate processes without pauses,
    both libraries give the medians they give here with 0.05 s.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names, times = list(fns), {name: [] for name in fns}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(settle)
            t0 = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def same_model_check(sizes):
    """The first losses of both libraries on the same weights and data (they should agree)."""
    c = tokenizer_config(sizes["vqvae"])
    params = init_tokenizer_params(c)
    x = backend.rng(0).uniform(-0.5, 0.5, (4, 3, c.image_size, c.image_size)).astype(np.float32)
    ours = float(tokenizer_forward(x, params, c)[0]["loss"])
    with torch.no_grad():
        theirs = float(vqvae_loss(torch.from_numpy(x), as_torch(params), c))
    g = gpt_config(sizes["gpt"], vocab_size=sizes["vocab"])
    gp = init_gpt_params(g)
    ids = backend.rng(1).integers(0, g.vocab_size, (2, 16))
    tgt = backend.rng(2).integers(0, g.vocab_size, (2, 16))
    ours_g = float(gpt_loss_forward(ids, tgt, gp, g)[0])
    with torch.no_grad():
        theirs_g = float(F.cross_entropy(gpt_logits(torch.from_numpy(ids), as_torch(gp), g)
                                         .view(32, -1), torch.from_numpy(tgt).view(-1)))
    gc, gp = gan_params(sizes)
    terms = gan_terms(sizes)
    ours_lam = adversarial_grads(x, gp, gc, DiscriminatorConfig(sizes["disc_channels"]),
                                 {k: np.zeros_like(v) for k, v in gp.items()},
                                 sizes["gan_weight"], lambda arrays: arrays,
                                 **terms)["gan_lambda"]
    theirs_lam = float(vqgan_losses(torch.from_numpy(x), as_torch(gp), gc,
                                    sizes["gan_weight"], **terms)[2])
    mp, mc, _ = bench.shapes_prior(sizes, "masked")
    m_ids, m_targets = bench.masked_example_batch(sizes)
    ours_m = float(gpt_loss_forward(m_ids, m_targets, mp, mc, mask="full")[0])
    with torch.no_grad():
        theirs_m = float(masked_loss(torch.from_numpy(m_ids), torch.from_numpy(m_targets),
                                     as_torch(mp), mc))
    sc = bench.multiscale_tokenizer_config(sizes)
    sp = init_tokenizer_params(sc)
    xs = backend.rng(0).uniform(-0.5, 0.5, (4, 3, sc.image_size, sc.image_size)).astype(
        np.float32)
    ours_s = float(tokenizer_forward(xs, sp, sc)[0]["loss"])
    with torch.no_grad():
        theirs_s = float(vqvae_loss(torch.from_numpy(xs), as_torch(sp), sc))
    pp, pc, _ = bench.shapes_prior(sizes, "scales")
    p_ids, p_targets = bench.scales_example_batch(sizes, pc)
    ours_p = float(scales_loss_forward(p_ids, p_targets, pp, pc)[0])
    with torch.no_grad():
        theirs_p = float(scales_loss(torch.from_numpy(p_ids), torch.from_numpy(p_targets),
                                     as_torch(pp), pc))
    return {"vqvae_loss": [ours, theirs], "gpt_loss": [ours_g, theirs_g],
            "gan_lambda": [ours_lam, theirs_lam], "masked_loss": [ours_m, theirs_m],
            "multiscale_vqvae_loss": [ours_s, theirs_s], "scales_loss": [ours_p, theirs_p]}


# ---------------------------------------------------------------- peak RSS, one process each

RSS_SECTIONS = {"vqvae-ref": ("vqvae_train", "vqvae_encode"),
                "vqvae-scales": ("vqvae_scales_train", "vqvae_scales_encode"),
                "vqvae-gan": ("vqvae_gan",), "gpt-ref": ("gpt_train", "gpt_sample"),
                "gpt-masked": ("masked_train",), "gpt-scales": ("scales_train",)}


def torch_rss_child(section, quick):
    """Run one torch section alone (1 warm-up, 3 runs); print import and peak RSS as JSON."""
    import_rss, _ = bench.rss_mb()
    sizes = bench.QUICK if quick else bench.FULL
    fns = {"vqvae_train": lambda: [torch_vqvae_train(sizes)],
           "vqvae_encode": lambda: [torch_vqvae_encode(sizes)],
           "vqvae_scales_train": lambda: [torch_vqvae_train(
               sizes, bench.multiscale_tokenizer_config(sizes))],
           "vqvae_scales_encode": lambda: [torch_vqvae_encode(
               sizes, bench.multiscale_tokenizer_config(sizes))],
           "vqvae_gan": lambda: [torch_vqvae_gan_train(sizes)],
           "gpt_train": lambda: [torch_gpt_train(sizes, True)],
           "masked_train": lambda: [torch_masked_train(sizes, True)],
           "scales_train": lambda: [torch_scales_train(sizes, True)],
           "gpt_sample": lambda: [torch_gpt_sample(sizes, True),
                                  torch_gpt_sample(sizes, False)]}[section]()
    for fn in fns:
        for _ in range(4):
            fn()
    print(json.dumps({"import_rss_mb": import_rss, "peak_rss_mb": bench.peak_rss_mb()}))


def rss_table(parts, quick):
    rows = {}
    tk_sections = {"vqvae_train": ("vqvae-ref", "train_step"),
                   "vqvae_encode": ("vqvae-ref", "encode"),
                   "vqvae_scales_train": ("vqvae-scales", "train_step"),
                   "vqvae_scales_encode": ("vqvae-scales", "encode"),
                   "vqvae_gan": ("vqvae-gan", "train_step"),
                   "gpt_train": ("gpt-ref", "train_step"), "gpt_sample": ("gpt-ref", "sample"),
                   "masked_train": ("gpt-masked", "train_step"),
                   "scales_train": ("gpt-scales", "train_step")}
    for part in parts:
        for section in RSS_SECTIONS.get(part, ()):
            p, s = tk_sections[section]
            ours = bench.run_isolated(dict(part=p, section=s, quick=quick, repeats=3, warmup=1))
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--rss-child",
                                   section] + (["--quick"] if quick else []),
                                  capture_output=True, text=True, check=True)
            theirs = json.loads(proc.stdout.strip().splitlines()[-1])
            rows[section] = {"tinytok": {k: ours[k] for k in ("import_rss_mb", "peak_rss_mb")},
                             "torch": theirs}
    return rows


# ---------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help=f"compare only these parts ({', '.join(PARTS)}); comma-separated or "
                         "repeated")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--settle", type=float, default=None,
                    help="seconds of pause before each timed run (default: SETTLE_S, "
                         "0.05 or 0.3 by measurement; see interleaved)")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        return torch_rss_child(args.rss_child, args.quick)
    parts = peer_parts(args.only)
    sizes = bench.QUICK if args.quick else bench.FULL
    backend.use("numpy")
    parallel.reuse_freed_host_memory()
    out = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "numpy": np.__version__, "quick": args.quick, "same_model_losses":
           same_model_check(sizes), "timings": {},
           "settle_s": args.settle if args.settle is not None else SETTLE_S}
    for part in parts:
        if part == "sgemm":  # as `tinytok bench`: the ceiling with BLAS on all its threads,
            parallel.blas_alone()
        else:                # the models on every core through tinytok.parallel
            parallel.use_cores()
        for label, key, builders, units, unit in measurements(part, sizes):
            warmup, repeats = bench.QUICK_REPEATS if args.quick else bench.REPEATS[key]
            fns = {name: build() for name, build in builders.items()}
            settle = args.settle if args.settle is not None else SETTLE_S[key]
            times = interleaved(fns, warmup, repeats, settle)
            med = {n: statistics.median(t) for n, t in times.items()}
            first = next(iter(med))
            out["timings"][label] = {
                n: {"median_ms": med[n], "min_ms": min(t), "max_ms": max(t),
                    f"{unit}_per_s": units / (med[n] * 1e-3),
                    f"ratio_{first}_over_this": med[first] / med[n]}
                for n, t in times.items()}
            del fns
    if not args.no_rss:
        out["peak_rss_mb"] = rss_table(parts, args.quick)
    print(json.dumps(out, indent=2) if args.json else table(out))
    return 0


def peer_parts(only):
    """The parts to compare (all that have a peer by default); a one-line SystemExit for a
    benchmark part without one (drawing) or an unknown name."""
    try:
        parts = bench.parse_only(list(PARTS) if only is None else only)
    except ConfigError as e:
        raise SystemExit(f"torch_peer: {e}") from None
    without = [p for p in parts if p not in PARTS]
    if without:
        raise SystemExit(f"torch_peer: no torch peer for {', '.join(without)}; choose from "
                         f"{', '.join(PARTS)}")
    return parts


def table(out):
    lines = [f"torch {out['torch']} ({out['torch_threads']} threads) vs tinytok (numpy "
             f"{out['numpy']}), same process, interleaved; medians (min-max)",
             "same weights, first loss tinytok / torch: "
             + ", ".join(f"{k} {a:.6f} / {b:.6f}" for k, (a, b) in out["same_model_losses"].items()),
             f"{'measurement':<24}{'runner':<16}{'median ms':>10}{'min-max':>18}{'rate':>16}"
             f"{'ratio':>10}"]
    for label, runs in out["timings"].items():
        first = next(iter(runs))
        for name, r in runs.items():
            rate_key = next(k for k in r if k.endswith("_per_s"))
            ratio = "" if name == first else f"{first}/this {r[f'ratio_{first}_over_this']:.2f}x"
            lines.append(f"{label:<24}{name:<16}{r['median_ms']:>10.1f}"
                         f"{r['min_ms']:>9.1f}-{r['max_ms']:<8.1f}"
                         f"{r[rate_key]:>12.0f} {rate_key.split('_')[0][:6]:<6}  {ratio}")
    if "peak_rss_mb" in out:
        lines.append("peak RSS MB, one fresh process per section (import baseline in brackets):")
        for section, r in out["peak_rss_mb"].items():
            lines.append(f"  {section:<20} tinytok {r['tinytok']['peak_rss_mb']:6.0f} "
                         f"({r['tinytok']['import_rss_mb']:.0f})   torch "
                         f"{r['torch']['peak_rss_mb']:6.0f} ({r['torch']['import_rss_mb']:.0f})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
