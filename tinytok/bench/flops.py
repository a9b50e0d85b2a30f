"""Counting the floating-point work of the reference models, for `tinytok bench`.

A multiply-add counts as 2 FLOPs. Only the matrix products are counted (convolutions,
transposed convolutions, linear layers, the two attention products, the tied head, the VQ
distance product); element-wise work, norms, softmax and the optimizer are not. A training
step is 3x the forward (the forward product and the two backward products, dx and dw),
except for the first convolution, whose input is the data: it has no dx product.
The multi-scale quantizer (VAR) counts its lookups and its phi convolutions; its resizes
(two small products per map, tinytok.ops.resample) are not counted.
"""
from tinytok.ops.conv import conv_output_size
from tinytok.tokenizer.multiscale import token_count
from tinytok.tokenizer.quantizers import QUANTIZERS
from tinytok.tokenizer.vqvae import tokenizer_config


def conv2d_flops(N, C, H, W, F, kh, kw, stride=1, padding=0):
    """Forward FLOPs of conv2d: 2 * N*Ho*Wo outputs per filter * F * (C*kh*kw) MACs."""
    Ho = conv_output_size(H, kh, stride, padding)
    Wo = conv_output_size(W, kw, stride, padding)
    return 2 * N * Ho * Wo * F * C * kh * kw


def conv_transpose2d_flops(N, C, H, W, F, kh, kw):
    """Forward FLOPs of conv_transpose2d: every input pixel paints C*F*kh*kw products."""
    return 2 * N * H * W * C * F * kh * kw


def linear_flops(M, n_in, n_out):
    """Forward FLOPs of (M, in) @ (in, out)."""
    return 2 * M * n_in * n_out


def attention_flops(B, T, C):
    """QK^T and att@V over all heads: 2 * B*T*T*C each (the full square, masked or not)."""
    return 2 * (2 * B * T * T * C)


def vqvae_flops(config, batch):
    """{"encoder", "vq", "decoder"}: forward FLOPs of a TokenizerConfig at a batch size;
    "vq" the quantizer's (quantizer_flops: the lookups, and the multi-scale one's phi)."""
    c = tokenizer_config(config)
    S, h, r, N = c.image_size, c.hidden, c.res_hidden, batch
    g = c.grid_size
    res = c.n_res * (conv2d_flops(N, h, g, g, r, 3, 3, 1, 1) + conv2d_flops(N, r, g, g, h, 1, 1))
    halves = c.downsamplings == 2  # the second stage halves (4x4/2) or keeps the size (3x3)
    second = (conv2d_flops(N, h // 2, S // 2, S // 2, h, 4, 4, 2, 1) if halves
              else conv2d_flops(N, h // 2, g, g, h, 3, 3, 1, 1))
    mirror = (conv_transpose2d_flops(N, h, g, g, h // 2, 4, 4) if halves
              else conv2d_flops(N, h, g, g, h // 2, 3, 3, 1, 1))
    enc = (conv2d_flops(N, 3, S, S, h // 2, 4, 4, 2, 1) + second
           + conv2d_flops(N, h, g, g, h, 3, 3, 1, 1) + res
           + conv2d_flops(N, h, g, g, c.code_dim, 1, 1))
    dec = (conv2d_flops(N, c.code_dim, g, g, h, 3, 3, 1, 1) + res + mirror
           + conv_transpose2d_flops(N, h // 2, S // 2, S // 2, 3, 4, 4))
    return {"encoder": enc, "vq": sum(quantizer_flops(c, N).values()), "decoder": dec}


def quantizer_flops(config, batch):
    """{"lookup", "phi"}: forward FLOPs of the quantizer. lookup: the distance products,
    2*M*D*K for the M vectors looked up (the grid's N*g*g, or every map's N*s^2 of the
    multi-scale quantizer, each against its scale's K codes); phi: the multi-scale
    quantizer's 3x3 convolution D -> D on the g x g map, once per scale (0 for the others)."""
    c = tokenizer_config(config)
    g, D, K, N = c.grid_size, c.code_dim, c.num_codes, batch
    if not QUANTIZERS[c.quantizer].reads("scales"):
        return {"lookup": linear_flops(N * g * g, D, K), "phi": 0}
    return {"lookup": linear_flops(N * token_count(c.scales), D, K),
            "phi": len(c.scales) * conv2d_flops(N, D, g, g, D, 3, 3, 1, 1)}


def vqvae_train_flops(config, batch):
    """FLOPs of a training step: 3x encoder, decoder and phi (multi-scale) forward, less the
    first layer's dx (training asks for no gradient of the images), and the lookups once
    (they have no backward product)."""
    c = tokenizer_config(config)
    f, q = vqvae_flops(c, batch), quantizer_flops(c, batch)
    first_layer = conv2d_flops(batch, 3, c.image_size, c.image_size, c.hidden // 2, 4, 4, 2, 1)
    return 3 * (f["encoder"] + f["decoder"] + q["phi"]) - first_layer + q["lookup"]


def discriminator_flops(channels, image_size, batch):
    """{"conv1", "conv2", "out"}: forward FLOPs of the patch discriminator
    (tinytok.tokenizer.discriminator) of that many channels on (batch, 3, S, S) pictures."""
    S, C, N = image_size, channels, batch
    return {"conv1": conv2d_flops(N, 3, S, S, C, 4, 4, 2, 1),
            "conv2": conv2d_flops(N, C, S // 2, S // 2, 2 * C, 4, 4, 2, 1),
            "out": conv2d_flops(N, 2 * C, S // 4, S // 4, 1, 3, 3, 1, 1)}


def vqvae_gan_train_flops(config, disc_channels, batch, feature_matching=False):
    """FLOPs of an adversarial step (tinytok.training.adversarial), the products it computes:
    the tokenizer's step; the decoder's last weight's gradient twice more (the adaptive
    weight's two); and D eight times its forward less its first layer's dx twice: on the
    reconstructions forward, dx and dw (for L_G's gradient at the picture), on the real
    pictures forward, dw and dx but the first layer's, on the reconstructions again dw and
    dx but the first layer's (for L_D, the forward reused). feature_matching: L_F's own
    backward through D's two hidden layers, dx and dw of each, on the reconstructions.
    L_A's FFTs and band sums are not counted (at batch 32 of 32 x 32, about 15 MFLOPs)."""
    c = tokenizer_config(config)
    half = c.image_size // 2                     # the last layer paints S x S from S/2 x S/2
    last_weight = conv_transpose2d_flops(batch, c.hidden // 2, half, half, 3, 4, 4)
    d = discriminator_flops(disc_channels, c.image_size, batch)
    features = 2 * (d["conv1"] + d["conv2"]) if feature_matching else 0
    return (vqvae_train_flops(c, batch) + 2 * last_weight + 8 * sum(d.values())
            - 2 * d["conv1"] + features)


def gpt_flops(config, B, T):
    """Forward FLOPs of a GPTConfig on (B, T) ids: per layer qkv, attention, proj, MLP; head."""
    C, M = config.n_embd, B * T
    layer = (linear_flops(M, C, 3 * C) + attention_flops(B, T, C) + linear_flops(M, C, C)
             + linear_flops(M, C, 4 * C) + linear_flops(M, 4 * C, C))
    return config.n_layer * layer + linear_flops(M, C, config.vocab_size)


def gpt_train_flops(config, B, T):
    """FLOPs of a training step: 3x the forward (the embedding lookup has no product)."""
    return 3 * gpt_flops(config, B, T)


def scales_train_flops(config, code_dim, B):
    """FLOPs of a next-scale prior's training step (prior/scales.py) on B whole sequences:
    the transformer's step (gpt_train_flops at T = context), the maps' input projection
    D -> C on the L image positions twice (forward and dw: its inputs are constants, no
    dx), and the teacher-forced inputs' phi convolutions (D -> D, 3x3, g x g), once for
    each map but the last (forward only: the carried quantizer is not trained)."""
    scales = config.scales
    g, L = scales[-1], token_count(scales)
    return (gpt_train_flops(config, B, config.context)
            + 2 * linear_flops(B * L, code_dim, config.n_embd)
            + (len(scales) - 1) * conv2d_flops(B, code_dim, g, g, code_dim, 3, 3, 1, 1))
