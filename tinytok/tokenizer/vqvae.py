"""The image tokenizer: encoder, quantizer and decoder (VQ-VAE), as forward/backward pairs.

    image (N, 3, 32, 32) --encoder--> z (N, D, 8, 8) --nearest code--> ids (N, 8, 8)
    ids --codebook--> z_q (N, D, 8, 8) --decoder--> image (N, 3, 32, 32)

The grid is S / 2**downsamplings cells per side: two stride-2 stages (the default, 8x8
tokens for 32x32 pictures) or one (16x16), the other stage then keeping the size.

Blocks and models follow the op pairs' contract, with parameters in a flat dict:
``thing_forward(x, params, ...) -> (y, cache)`` and ``thing_backward(dy, cache, grads) -> dx``,
where the backward adds (+=) each parameter's gradient into ``grads`` (same keys as params).
"""
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import numpy as np

from tinytok.backend import rng as host_rng, to_device
from tinytok.errors import ConfigError
from tinytok.ops import (conv2d_as_transposed_backward, conv2d_as_transposed_forward,
                         conv2d_backward, conv2d_forward, conv_transpose2d_backward,
                         conv_transpose2d_forward, mse_backward, mse_forward,
                         narrowing_conv_is_faster, relu_backward, relu_forward)
from tinytok.ops.checks import require_positive_int
from tinytok.tokenizer.fsq import check_levels, fsq_num_codes
from tinytok.tokenizer.multiscale import check_scales, default_scales
from tinytok.tokenizer.quantizers import QUANTIZERS, quantizer_named, quantizers_reading

DOWNSAMPLINGS = (1, 2)  # stride-2 stages; a third would need a new layer (and its name)


@dataclass
class TokenizerConfig:
    """Sizes of a tokenizer. The defaults are vqvae-ref, the benchmarked tokenizer: 32x32
    pictures in, 8x8 tokens out."""
    name: str = "vqvae-ref"
    image_size: int = 32
    hidden: int = 128       # channels of the trunk (at grid size); the first conv has hidden // 2
    res_hidden: int = 32    # bottleneck channels inside a residual block
    n_res: int = 2          # residual blocks in the encoder, and again in the decoder
    code_dim: int = 64      # D: length of a code vector (fsq: len(levels))
    num_codes: int = 512    # K: size of the visual vocabulary (fsq: prod(levels))
    beta: float = 0.25      # weight of the commitment loss
    quantizer: str = "vq"   # a name in tinytok.tokenizer.quantizers.QUANTIZERS: "vq"
                            # (codebook loss), "ema" (EMA codebook), "gumbel" (dVAE), "fsq"
                            # (finite scalar quantization, no codebook), "cosine" (unit
                            # codes), "factorized" (unit codes in factor_dim dims) or
                            # "scales" (VAR's maps of growing size on residuals)
    kl_weight: float = 5e-4  # gumbel only: weight of the KL term to the uniform prior
    levels: tuple = (8, 5, 5, 5)  # fsq only: levels per channel, prod(levels) codes
    downsamplings: int = 2  # stride-2 stages, 1 or 2: grid_size = image_size // 2**downsamplings
    factor_dim: int = 8     # factorized only: d, the dims the codes are searched in (D -> d)
    scales: tuple = (1, 2, 3, 4, 5, 6, 8)  # scales only: the maps' sizes, the last the grid

    def __post_init__(self):
        # each a Python int (NumPy's are taken too), as the checkpoint's JSON holds it
        for name in ("image_size", "hidden", "res_hidden", "code_dim", "num_codes", "n_res",
                     "factor_dim"):
            minimum = 0 if name == "n_res" else 1
            setattr(self, name, require_positive_int(f"tokenizer config: {name}",
                                                     getattr(self, name), minimum))
        if type(self.downsamplings) is not int or self.downsamplings not in DOWNSAMPLINGS:
            raise ConfigError(f"tokenizer config: downsamplings must be 1 (16x16 tokens for "
                              f"32x32 pictures) or 2 (8x8), got {self.downsamplings!r}")
        shrink = 2 ** self.downsamplings
        if self.image_size % shrink or self.hidden % 2:
            raise ConfigError(f"tokenizer config: image_size must be a multiple of {shrink} "
                              f"(2**downsamplings, {self.downsamplings} stride-2 stages) and "
                              f"hidden even, got {self.image_size} and {self.hidden}")
        quantizer = quantizer_named(self.quantizer, "tokenizer config: ")
        for name in ("beta", "kl_weight"):
            if not isinstance(getattr(self, name), (int, float)) or not getattr(self, name) >= 0:
                raise ConfigError(f"tokenizer config: {name} must be a number >= 0")
        self.levels = check_levels(self.levels)  # a tuple also when read back from JSON
        self.scales = check_scales(self.scales,  # and the last the grid, where it matters
                                   self.grid_size if quantizer.reads("scales") else None)
        if quantizer.reads("levels") and (self.code_dim, self.num_codes) != (
                len(self.levels), fsq_num_codes(self.levels)):
            raise ConfigError(
                f"tokenizer config: {self.quantizer} levels {self.levels} fix code_dim = "
                f"{len(self.levels)} (one channel per level) and num_codes = "
                f"{fsq_num_codes(self.levels)} (their product), got code_dim = "
                f"{self.code_dim} and num_codes = {self.num_codes}; "
                f"with_quantizer(config, {self.quantizer!r}, levels) sets both")

    @property
    def grid_size(self):
        """Tokens per side: each stride-2 stage halves the picture (two: 32 -> 8)."""
        return self.image_size // 2 ** self.downsamplings


CONFIGS = {
    "vqvae-ref": TokenizerConfig(),
    "vqvae-small": TokenizerConfig("vqvae-small", hidden=64, res_hidden=32, code_dim=32,
                                   num_codes=256),
    "vqvae-tiny": TokenizerConfig("vqvae-tiny", hidden=32, res_hidden=16, n_res=1,
                                  code_dim=16, num_codes=64),
}


def tokenizer_config(name_or_dict):
    """A TokenizerConfig from a name in CONFIGS or a dict of its fields (from a checkpoint)."""
    if isinstance(name_or_dict, TokenizerConfig):
        return name_or_dict
    if isinstance(name_or_dict, dict):
        unknown = set(name_or_dict) - set(TokenizerConfig.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown tokenizer config fields: {', '.join(sorted(unknown))}")
        return TokenizerConfig(**name_or_dict)
    if name_or_dict not in CONFIGS:
        raise ConfigError(f"unknown tokenizer config {name_or_dict!r}; choose one of "
                          f"{', '.join(CONFIGS)}")
    return CONFIGS[name_or_dict]



def with_quantizer(config, quantizer, levels=None):
    """A copy of config using another quantizer (a name in QUANTIZERS, such as "vq",
    "ema", "gumbel", "fsq", "cosine" or "factorized").

    For a quantizer that reads levels (fsq) the levels (default: the config's) also set
    code_dim = len(levels) and num_codes = prod(levels); they mean nothing to the others.
    For one that reads scales, scales that do not end at the grid become default_scales of
    the grid (VAR's ladder: 1, 2 for a 2x2 grid; 1, 2, 3, 4, 5, 6, 8 for 8x8).
    """
    config = tokenizer_config(config)
    if quantizer_named(quantizer).reads("scales"):
        config = replace(config, scales=fitted_scales(config))
    if not quantizer_named(quantizer).reads("levels"):
        if levels is not None:
            raise ConfigError(f"levels are for the {' or '.join(quantizers_reading('levels'))} "
                              f"quantizer only, not {quantizer!r}")
        return replace(config, quantizer=quantizer)
    levels = check_levels(config.levels if levels is None else levels)
    return replace(config, quantizer=quantizer, levels=levels, code_dim=len(levels),
                   num_codes=fsq_num_codes(levels))


def fitted_scales(config, grid_size=None):
    """The config's scales if they end at the grid (default: the config's), else
    default_scales of it: a multi-scale quantizer's scales follow the grid."""
    g = config.grid_size if grid_size is None else grid_size
    return config.scales if config.scales[-1] == g else default_scales(g)


def with_grid(config, image_size=None, grid_size=None):
    """A copy of config for image_size x image_size pictures in grid_size x grid_size tokens.

    image_size=None keeps the config's; grid_size=None keeps its stride-2 stages (so the
    grid follows the picture: 64x64 pictures give 16x16 tokens with the default two).
    A grid is the picture's size / 4 (two stages) or / 2 (one); anything else is refused.
    A multi-scale quantizer's scales follow the grid (fitted_scales).
    """
    config = tokenizer_config(config)
    image_size = config.image_size if image_size is None else image_size
    if grid_size is None:
        return replace(config, image_size=image_size,
                       **scales_for(config, image_size // 2 ** config.downsamplings))
    require_positive_int("grid_size", grid_size)
    stages = {2 * grid_size: 1, 4 * grid_size: 2}.get(image_size)
    if stages is None:
        raise ConfigError(f"a {grid_size}x{grid_size} grid does not fit {image_size}x"
                          f"{image_size} pictures: the tokenizer shrinks them 2 or 4 times "
                          f"(one or two stride-2 stages), so choose a grid of "
                          f"{image_size / 2:g} or {image_size / 4:g}")
    return replace(config, image_size=image_size, downsamplings=stages,
                   **scales_for(config, grid_size))


def scales_for(config, grid_size):
    """{"scales": fitted} for a multi-scale config on a new grid; {} otherwise."""
    if not QUANTIZERS[config.quantizer].reads("scales"):
        return {}
    return {"scales": fitted_scales(config, grid_size)}


# ---------------------------------------------------------------- parameters

def conv_params(rng, prefix, c_in, c_out, k, transposed=False):
    """PyTorch's default init: uniform in +-1/sqrt(fan_in) for weights and bias."""
    bound = 1 / np.sqrt((c_out if transposed else c_in) * k * k)
    shape = (c_in, c_out, k, k) if transposed else (c_out, c_in, k, k)
    return {prefix + ".w": rng.uniform(-bound, bound, shape),
            prefix + ".b": rng.uniform(-bound, bound, (c_out,))}


def init_tokenizer_params(config, seed=0, dtype="float32"):
    """A fresh parameter dict for a TokenizerConfig, on the active backend."""
    c = tokenizer_config(config)
    quantizer = QUANTIZERS[c.quantizer]
    rng = host_rng(seed)
    p = {}
    p.update(conv_params(rng, "enc.conv1", 3, c.hidden // 2, 4))
    # The second stage halves the picture again (4x4, stride 2) or keeps its size (3x3).
    p.update(conv_params(rng, "enc.conv2", c.hidden // 2, c.hidden,
                          4 if c.downsamplings == 2 else 3))
    p.update(conv_params(rng, "enc.conv3", c.hidden, c.hidden, 3))
    for i in range(c.n_res):
        p.update(conv_params(rng, f"enc.res{i}.conv1", c.hidden, c.res_hidden, 3))
        p.update(conv_params(rng, f"enc.res{i}.conv2", c.res_hidden, c.hidden, 1))
    # The encoder's last layer gives a D-vector per cell (VQ), or K code scores (Gumbel).
    out_channels = c.num_codes if quantizer.scores_codes else c.code_dim
    p.update(conv_params(rng, "enc.out", c.hidden, out_channels, 1))
    p.update(quantizer.init_params(rng, c))  # "quant.*": a codebook, projections, or none
    p.update(conv_params(rng, "dec.conv1", c.code_dim, c.hidden, 3))
    for i in range(c.n_res):
        p.update(conv_params(rng, f"dec.res{i}.conv1", c.hidden, c.res_hidden, 3))
        p.update(conv_params(rng, f"dec.res{i}.conv2", c.res_hidden, c.hidden, 1))
    if c.downsamplings == 2:
        p.update(conv_params(rng, "dec.up1", c.hidden, c.hidden // 2, 4, transposed=True))
    else:  # the mirror of the encoder's size-keeping stage: no upsampling here
        p.update(conv_params(rng, "dec.conv2", c.hidden, c.hidden // 2, 3))
    p.update(conv_params(rng, "dec.up2", c.hidden // 2, 3, 4, transposed=True))
    return {k: to_device(v, dtype=dtype) for k, v in p.items()}


def add_grad(grads, name, g):
    """grads[name] += g: accumulating is what lets a weight be used twice with no extra code."""
    grads[name] += g


# ---------------------------------------------------------------- layers that name their params

def conv_pair(w_shape, stride, padding):
    """The op pair that computes a convolution layer: (forward, backward), chosen here only.

    Both pairs give the same numbers. A stride-1 convolution that narrows the channels (a
    residual block's 3x3 128 -> 32, the encoder's last 1x1) runs about twice as fast when
    computed as the transposed convolution of its flipped kernel, which moves only F/C as
    much memory as im2col (tinytok.ops.conv.narrowing_conv_is_faster); every other one is
    im2col and a product.
    """
    if narrowing_conv_is_faster(w_shape, stride, padding):
        return conv2d_as_transposed_forward, conv2d_as_transposed_backward
    return conv2d_forward, conv2d_backward


class ConvLayerCache(NamedTuple):
    backward: object   # the chosen pair's backward: the backward pass needs no choosing
    op: tuple          # that pair's cache


def conv_forward(x, params, name, stride=1, padding=0):
    """A convolution layer with its named parameters, by the pair conv_pair chooses."""
    w = params[name + ".w"]
    forward, backward = conv_pair(w.shape, stride, padding)
    out, cache = forward(x, w, params[name + ".b"], stride, padding)
    return out, ConvLayerCache(backward, cache)


def conv_backward(dy, cache, grads, name, need_dx=True):
    dx, dw, db = cache.backward(dy, cache.op, need_dx)
    add_grad(grads, name + ".w", dw)
    add_grad(grads, name + ".b", db)
    return dx


def up_forward(x, params, name):
    """Transposed conv 4x4, stride 2, padding 1: doubles the height and width."""
    return conv_transpose2d_forward(x, params[name + ".w"], params[name + ".b"], 2, 1)


def up_backward(dy, cache, grads, name):
    dx, dw, db = conv_transpose2d_backward(dy, cache)
    add_grad(grads, name + ".w", dw)
    add_grad(grads, name + ".b", db)
    return dx


# ---------------------------------------------------------------- residual block

class ResidualBlockCache(NamedTuple):
    relu1: tuple     # ReLU before the 3x3 convolution
    conv1: tuple     # the 3x3 convolution, C -> C_res
    relu2: tuple     # ReLU between the two convolutions
    conv2: tuple     # the 1x1 convolution, C_res -> C


def residual_block_forward(x, params, name):
    """y = x + conv1x1(relu(conv3x3(relu(x)))). x (N, C, H, W) -> y (N, C, H, W)."""
    h1, c_relu1 = relu_forward(x)
    h2, c_conv1 = conv_forward(h1, params, name + ".conv1", padding=1)
    h3, c_relu2 = relu_forward(h2)
    h4, c_conv2 = conv_forward(h3, params, name + ".conv2")
    return x + h4, ResidualBlockCache(c_relu1, c_conv1, c_relu2, c_conv2)


def residual_block_backward(dy, cache, grads, name):
    """The mirror: the skip connection passes dy straight through and adds the branch's dx."""
    dh3 = conv_backward(dy, cache.conv2, grads, name + ".conv2")
    dh2 = relu_backward(dh3, cache.relu2)
    dh1 = conv_backward(dh2, cache.conv1, grads, name + ".conv1")
    return dy + relu_backward(dh1, cache.relu1)


# ---------------------------------------------------------------- encoder and decoder

def encoder_forward(x, params, config, keep_cache=True):
    """x (N, 3, S, S) in [-0.5, 0.5] -> z (N, D, g, g), g = S / 2**downsamplings.

    keep_cache=False (encoding only) lets each layer's im2col columns go as soon as the
    layer is done, instead of holding them all for a backward pass that never comes.
    """
    caches = []
    keep = caches.append if keep_cache else (lambda cache: None)
    h, c = conv_forward(x, params, "enc.conv1", stride=2, padding=1); keep(c)
    h, c = relu_forward(h); keep(c)
    second_stride = 2 if config.downsamplings == 2 else 1  # 4x4/2 halves, 3x3/1 keeps
    h, c = conv_forward(h, params, "enc.conv2", stride=second_stride, padding=1); keep(c)
    h, c = relu_forward(h); keep(c)
    h, c = conv_forward(h, params, "enc.conv3", padding=1); keep(c)
    for i in range(config.n_res):
        h, c = residual_block_forward(h, params, f"enc.res{i}"); keep(c)
    h, c = relu_forward(h); keep(c)
    z, c = conv_forward(h, params, "enc.out"); keep(c)
    return z, caches


def encoder_backward(dz, caches, grads, config, image_grad=True):
    """dz (N, D, g, g) -> dx (N, 3, S, S); parameter gradients added into grads.

    image_grad=False skips the gradient to the images (returns None), which training never
    uses: it saves the first layer's input-gradient product.
    """
    caches = list(caches)
    dh = conv_backward(dz, caches.pop(), grads, "enc.out")
    dh = relu_backward(dh, caches.pop())
    for i in reversed(range(config.n_res)):
        dh = residual_block_backward(dh, caches.pop(), grads, f"enc.res{i}")
    dh = conv_backward(dh, caches.pop(), grads, "enc.conv3")
    dh = relu_backward(dh, caches.pop())
    dh = conv_backward(dh, caches.pop(), grads, "enc.conv2")
    dh = relu_backward(dh, caches.pop())
    return conv_backward(dh, caches.pop(), grads, "enc.conv1", need_dx=image_grad)


def decoder_forward(z_q, params, config, keep_cache=True):
    """z_q (N, D, g, g) -> image (N, 3, S, S), roughly in [-0.5, 0.5]."""
    caches = []
    keep = caches.append if keep_cache else (lambda cache: None)
    h, c = conv_forward(z_q, params, "dec.conv1", padding=1); keep(c)
    for i in range(config.n_res):
        h, c = residual_block_forward(h, params, f"dec.res{i}"); keep(c)
    h, c = relu_forward(h); keep(c)
    if config.downsamplings == 2:
        h, c = up_forward(h, params, "dec.up1"); keep(c)
    else:  # one stride-2 stage only: this one keeps the size, as the encoder's conv2
        h, c = conv_forward(h, params, "dec.conv2", padding=1); keep(c)
    h, c = relu_forward(h); keep(c)
    x_hat, c = up_forward(h, params, "dec.up2"); keep(c)
    return x_hat, caches


def decoder_backward(dx_hat, caches, grads, config):
    """dx_hat (N, 3, S, S) -> dz_q (N, D, g, g); parameter gradients added into grads."""
    caches = list(caches)
    dh = up_backward(dx_hat, caches.pop(), grads, "dec.up2")
    dh = relu_backward(dh, caches.pop())
    if config.downsamplings == 2:
        dh = up_backward(dh, caches.pop(), grads, "dec.up1")
    else:
        dh = conv_backward(dh, caches.pop(), grads, "dec.conv2")
    dh = relu_backward(dh, caches.pop())
    for i in reversed(range(config.n_res)):
        dh = residual_block_backward(dh, caches.pop(), grads, f"dec.res{i}")
    return conv_backward(dh, caches.pop(), grads, "dec.conv1")


def decoder_last_weight_grad(dx_hat, caches):
    """The gradient at the decoder's last weight (dec.up2.w) of a loss whose gradient at
    the picture is dx_hat, alone (no dx, nothing added anywhere): what VQGAN's adaptive
    weight compares between the reconstruction loss and the adversarial one."""
    return conv_transpose2d_backward(dx_hat, caches[-1], need_dx=False)[1]


# ---------------------------------------------------------------- the whole tokenizer

def quantize_forward(z, params, config, tau=1.0, noise=None):
    """The configured quantizer (its record in QUANTIZERS): z (N, D or K, h, w) ->
    z_q (N, D, h, w), ids, loss, cache."""
    return QUANTIZERS[config.quantizer].forward_in_model(z, params, config, tau, noise)


def quantize_backward(dz_q, cache, grads, config, dloss=1.0):
    dz, dparams = QUANTIZERS[config.quantizer].backward_in_model(dz_q, cache, config, dloss)
    for name, g in dparams.items():  # the codebook, projections, or nothing (FSQ)
        add_grad(grads, name, g)
    return dz


class TokenizerCache(NamedTuple):
    encoder: list      # the encoder's layer caches, in forward order
    quantizer: tuple   # the quantizer's (VQ, Gumbel or FSQ)
    decoder: list      # the decoder's layer caches, in forward order
    mse: tuple         # the reconstruction loss's


def tokenizer_forward(x, params, config, tau=1.0, noise=None):
    """x (N, 3, S, S) -> dict of losses and outputs, and a cache.

    loss = mse(x_hat, x) + quantizer loss (VQ: codebook + beta * commitment, cosine and
    factorized the same on unit vectors; Gumbel: kl_weight * KL to the uniform prior; FSQ:
    none, 0). The dict holds "loss", "recon_loss",
    "vq_loss" (0-d arrays), "x_hat" (N, 3, S, S), "ids" (N, g, g) and the encoder output
    "z".
    tau and noise are the Gumbel temperature and noise (ignored by VQ).
    """
    z, enc_cache = encoder_forward(x, params, config)
    z_q, ids, vq_loss, vq_cache = quantize_forward(z, params, config, tau, noise)
    x_hat, dec_cache = decoder_forward(z_q, params, config)
    recon_loss, mse_cache = mse_forward(x_hat, x)
    out = {"loss": recon_loss + vq_loss, "recon_loss": recon_loss, "vq_loss": vq_loss,
           "x_hat": x_hat, "ids": ids, "z": z}
    return out, TokenizerCache(enc_cache, vq_cache, dec_cache, mse_cache)


def tokenizer_backward(cache, grads, config, dloss=1.0, image_grad=True, dx_hat_extra=None,
                       decoder_only=False):
    """Gradients of the total loss, added into grads.

    Returns dx (N, 3, S, S) through the encoder only: the input is also the reconstruction
    target, but nothing upstream of an image needs that gradient. Training passes
    image_grad=False and gets None: nothing needs the images' gradient at all.
    dx_hat_extra: the gradient of a further loss at the reconstruction x_hat (an
    adversarial one), added to the mean squared error's before the decoder's backward.
    decoder_only: stop after the decoder (its gradients alone; returns None), for a run that
    trains the decoder and keeps the tokens as they are.
    """
    dx_hat = mse_backward(dloss, cache.mse)
    if dx_hat_extra is not None:
        dx_hat += dx_hat_extra
    dz_q = decoder_backward(dx_hat, cache.decoder, grads, config)
    if decoder_only:
        return None
    dz = quantize_backward(dz_q, cache.quantizer, grads, config, dloss)
    return encoder_backward(dz, cache.encoder, grads, config, image_grad)


# ---------------------------------------------------------------- using a trained tokenizer

def encode_ids(x, params, config):
    """x (N, 3, S, S) -> ids (N, g, g) (multi-scale: (N, L)): the encoder, then the codes.

    The encoder keeps no caches (no backward follows). The quantizer's ids_of reads the
    ids: VQ and EMA pick the nearest code, cosine and factorized the nearest unit code;
    Gumbel, whose encoder writes one logit per code, the likeliest; FSQ rounds each channel;
    the multi-scale quantizer looks up its maps coarse to fine.
    """
    z, _ = encoder_forward(x, params, config, keep_cache=False)             # (N, D, h, w)
    return QUANTIZERS[config.quantizer].ids_of(z, params, config)  # (N, h, w) or (N, L)


def decode_ids(ids, params, config):
    """ids (N, h, w) int (multi-scale: (N, L_k), the first k maps) -> x_hat (N, 3, S, S):
    each id's code vector, then the decoder.

    The quantizer's codes_of gives the vector: a codebook row, or for FSQ the id's digits
    read back (fsq_codes); for the multi-scale quantizer the sum of the maps given.
    """
    z_q = QUANTIZERS[config.quantizer].codes_of(ids, params, config)        # (N, D, h, w)
    x_hat, _ = decoder_forward(z_q, params, config, keep_cache=False)
    return x_hat


def config_dict(config):
    """A JSON-able dict of a config, for checkpoints.

    levels (a list, as JSON reads it back), factor_dim and scales (a list) only for a
    quantizer that reads them (fsq; factorized; scales): the others ignore them, and so
    their checkpoints from before the fields existed still resume (the saved config must
    be equal). downsamplings likewise only when not the default 2, which checkpoints from
    before the choice existed all used.
    """
    d = asdict(config)
    d["levels"], d["scales"] = list(config.levels), list(config.scales)
    for name in ("levels", "factor_dim", "scales"):
        if not QUANTIZERS[config.quantizer].reads(name):
            del d[name]
    if config.downsamplings == 2:
        del d["downsamplings"]
    return d
