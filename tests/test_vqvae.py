"""The tokenizer: blocks, encoder and decoder checked as pairs, the whole model checked end to
end (Gumbel: the full loss; VQ: the straight-through surrogate with the ids held fixed),
shapes, parameter counts, determinism and dtypes."""
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_models as ref
from reference import away_from_zero
from tinytok.errors import ConfigError
from tinytok.gradcheck import assert_gradients_close, numerical_gradient, relative_error
from tinytok.tokenizer.gumbel import gumbel_noise
from tinytok.tokenizer.quantize import vector_quantize_forward
from tinytok.tokenizer.vqvae import (config_dict, decode_ids, decoder_backward, decoder_forward,
                                     encode_ids, encoder_backward, encoder_forward,
                                     init_tokenizer_params, residual_block_backward,
                                     residual_block_forward, tokenizer_backward, tokenizer_config,
                                     tokenizer_forward, with_grid, with_quantizer)

TOL = 1e-6


def tiny(quantizer="vq", **changes):
    cfg = replace(tokenizer_config("vqvae-tiny"), image_size=8, hidden=8, res_hidden=4,
                  code_dim=3, num_codes=5, **changes)
    return with_quantizer(cfg, quantizer)


def tiny_params(cfg, seed=0, scale=1.0):
    params = init_tokenizer_params(cfg, seed=seed, dtype="float64")
    return {k: v * scale for k, v in params.items()}


def images(seed, n=2, size=8):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (n, 3, size, size))


def zero_grads(params):
    return {k: np.zeros_like(v) for k, v in params.items()}


def named_pair(forward, backward, keys, *extra):
    """Turn a model pair (x, params, ...) into an op pair (x, *param arrays) for check_pair."""
    def f(x, *arrays):
        params = dict(zip(keys, arrays))
        y, cache = forward(x, params, *extra)
        return y, (cache, params)

    def b(dy, cache):
        cache, params = cache
        grads = zero_grads(params)
        dy_before = dy.copy()
        dx = backward(dy, cache, grads, *extra)
        np.testing.assert_array_equal(dy, dy_before)  # backward must not write into dy
        return (dx,) + tuple(grads[k] for k in keys)
    return f, b


def assert_param_grads(loss_fn, params, grads, keys, tol=TOL, max_elements=40, seed=0):
    """Finite differences of loss_fn(params) at up to max_elements positions of each key."""
    rng = np.random.default_rng(seed)
    errors = {}
    for key in keys:
        idx = ref.sample_indices(params[key].size, max_elements, rng)
        num = ref.numerical_param_gradient(loss_fn, params, key, idx)
        errors[key] = relative_error(grads[key].reshape(-1)[idx], num)
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"gradient check failed: {bad}; all: {errors}"
    return errors


# --- blocks, encoder and decoder as pairs ---------------------------------------------------

def test_residual_block_pair():
    cfg = tiny()
    params = tiny_params(cfg, scale=3.0)
    keys = [k for k in params if k.startswith("enc.res0.")]
    x = away_from_zero(np.random.default_rng(1).standard_normal((2, 8, 3, 4)))
    f, b = named_pair(residual_block_forward, residual_block_backward, keys, "enc.res0")
    assert_gradients_close(f, b, [x] + [params[k] for k in keys], tol=TOL)


def test_residual_block_is_identity_plus_branch():
    cfg = tiny()
    params = tiny_params(cfg)
    x = np.random.default_rng(2).standard_normal((1, 8, 2, 2))
    zeroed = dict(params, **{"enc.res0.conv2.w": np.zeros((8, 4, 1, 1)),
                             "enc.res0.conv2.b": np.zeros(8)})
    y, _ = residual_block_forward(x, zeroed, "enc.res0")
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("downsamplings", [2, 1])  # 8x8 pictures: 2x2 or 4x4 grids
@pytest.mark.parametrize("which", ["encoder", "decoder"])
def test_encoder_and_decoder_pairs(which, downsamplings):
    cfg = tiny(downsamplings=downsamplings)
    params = tiny_params(cfg, scale=3.0)
    prefix = "enc." if which == "encoder" else "dec."
    keys = [k for k in params if k.startswith(prefix)]
    g = cfg.grid_size
    if which == "encoder":
        x = images(3)
        f, b = named_pair(encoder_forward, encoder_backward, keys, cfg)
    else:
        x = np.random.default_rng(3).standard_normal((2, 3, g, g))
        f, b = named_pair(decoder_forward, decoder_backward, keys, cfg)
    assert_gradients_close(f, b, [x] + [params[k] for k in keys], tol=TOL, max_elements=40)


# --- the whole tokenizer --------------------------------------------------------------------

@pytest.mark.parametrize("downsamplings", [2, 1])
def test_gumbel_tokenizer_full_loss_gradients(downsamplings):
    """Gumbel-softmax makes the whole loss differentiable: every parameter, and the input."""
    cfg = tiny("gumbel", kl_weight=0.5, downsamplings=downsamplings)
    params = tiny_params(cfg, seed=1, scale=3.0)
    x = images(4)
    g = cfg.grid_size
    noise = gumbel_noise((2, cfg.num_codes, g, g), np.random.default_rng(5), "float64")
    tau = 0.7
    out, cache = tokenizer_forward(x, params, cfg, tau, noise)
    grads = zero_grads(params)
    dx = tokenizer_backward(cache, grads, cfg)
    assert float(out["vq_loss"]) > 0.01  # the KL term really contributes
    np.testing.assert_allclose(float(out["loss"]),
                               float(out["recon_loss"]) + float(out["vq_loss"]))

    def loss(p):
        return float(tokenizer_forward(x, p, cfg, tau, noise)[0]["loss"])
    assert_param_grads(loss, params, grads, list(params))

    # dx: the gradient through the encoder, with x as the reconstruction target held fixed
    def through_encoder(xx):
        o, _ = tokenizer_forward(xx, params, cfg, tau, noise)
        return np.asarray(float(o["loss"]) - float(
            np.mean((o["x_hat"] - xx) ** 2)) + float(np.mean((o["x_hat"] - x) ** 2)))
    idx = np.arange(0, x.size, 7)
    num = numerical_gradient(through_encoder, x.copy(), np.ones(()), idx)
    assert relative_error(dx.reshape(-1)[idx], num) < TOL


VQ_SEED = {2: 0, 1: 1}  # seeds whose first forward uses several codes, with no near-ties


def vq_setup(seed=None, downsamplings=2):
    seed = VQ_SEED[downsamplings] if seed is None else seed
    cfg = tiny("vq", downsamplings=downsamplings)
    params = tiny_params(cfg, seed=seed, scale=3.0)
    x = images(seed + 10)
    out, cache = tokenizer_forward(x, params, cfg)
    grads = zero_grads(params)
    tokenizer_backward(cache, grads, cfg)
    z0 = out["z"].copy()
    e0, ids0, _, _ = vector_quantize_forward(z0, params["quant.codebook"], cfg.beta)
    np.testing.assert_array_equal(ids0, out["ids"])
    # keep away from ties in the argmin: the best code wins by a clear margin everywhere
    rows = z0.transpose(0, 2, 3, 1).reshape(-1, cfg.code_dim)
    d = ((rows[:, None] - params["quant.codebook"][None]) ** 2).sum(-1)
    top2 = np.sort(d, axis=1)[:, :2]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-4
    assert len(np.unique(ids0)) > 1  # more than one code in play
    return cfg, params, x, out, grads, z0, e0, ids0


@pytest.mark.parametrize("downsamplings", [2, 1])
def test_vq_tokenizer_encoder_gradients_are_straight_through(downsamplings):
    """Encoder grads = finite differences of the surrogate
        mse(decoder(z + (e0 - z0)), x) + beta * mean((z - e0)^2),
    e0 and z0 constants from the unperturbed forward, with the ids checked unchanged."""
    cfg, params, x, out, grads, z0, e0, ids0 = vq_setup(downsamplings=downsamplings)

    def surrogate(p):
        z, _ = encoder_forward(x, p, cfg)
        _, ids, _, _ = vector_quantize_forward(z, p["quant.codebook"], cfg.beta)
        np.testing.assert_array_equal(ids, ids0)  # the probe did not change the assignment
        x_hat, _ = decoder_forward(z + (e0 - z0), p, cfg)
        return float(np.mean((x_hat - x) ** 2) + cfg.beta * np.mean((z - e0) ** 2))

    assert_param_grads(surrogate, params, grads, [k for k in params if k.startswith("enc.")])


@pytest.mark.parametrize("downsamplings", [2, 1])
def test_vq_tokenizer_decoder_gradients_are_exact(downsamplings):
    cfg, params, x, out, grads, z0, e0, ids0 = vq_setup(downsamplings=downsamplings)

    def loss(p):
        o, _ = tokenizer_forward(x, p, cfg)
        np.testing.assert_array_equal(o["ids"], ids0)
        return float(o["loss"])

    assert_param_grads(loss, params, grads, [k for k in params if k.startswith("dec.")])


def test_vq_tokenizer_codebook_gradient_is_the_codebook_term():
    cfg, params, x, out, grads, z0, e0, ids0 = vq_setup()
    want = ref.codebook_gradient(z0, params["quant.codebook"], ids0)
    assert relative_error(grads["quant.codebook"], want) < 1e-12
    assert np.abs(want).max() > 1e-6  # not trivially zero

    def codebook_term(p):
        return float(np.mean((z0 - ref.gather_codes(p["quant.codebook"], ids0)) ** 2))
    assert_param_grads(codebook_term, params, grads, ["quant.codebook"])


def tiny_forward(quantizer):
    """A tiny tokenizer's config, params and forward cache on images(0)."""
    cfg = tiny(quantizer, kl_weight=0.5)
    params = tiny_params(cfg)
    return cfg, params, tokenizer_forward(images(0), params, cfg)[1]


@pytest.mark.parametrize("quantizer", ["vq", "gumbel"])
def test_tokenizer_gradients_accumulate_into_grads(quantizer):
    """Backward adds (+=): two backward passes give twice the gradient."""
    cfg, params, cache = tiny_forward(quantizer)
    once, twice = zero_grads(params), zero_grads(params)
    tokenizer_backward(cache, once, cfg)
    tokenizer_backward(cache, twice, cfg)
    tokenizer_backward(cache, twice, cfg)
    for k in params:
        np.testing.assert_allclose(twice[k], 2 * once[k], rtol=1e-12, atol=1e-300)
    # and dloss scales every gradient, the quantizer's included
    half = zero_grads(params)
    tokenizer_backward(cache, half, cfg, dloss=0.5)
    for k in params:
        np.testing.assert_allclose(half[k], 0.5 * once[k], rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("quantizer", ["vq", "gumbel"])
def test_training_without_the_image_gradient_gives_the_same_weight_gradients(quantizer):
    """image_grad=False (what training uses) skips only dx: every weight gradient is equal."""
    cfg, params, cache = tiny_forward(quantizer)
    with_dx, without = zero_grads(params), zero_grads(params)
    assert tokenizer_backward(cache, with_dx, cfg).shape == images(0).shape
    assert tokenizer_backward(cache, without, cfg, image_grad=False) is None
    for k in params:
        np.testing.assert_array_equal(without[k], with_dx[k], err_msg=k)


# --- shapes, sizes, determinism, dtypes -----------------------------------------------------

REF_SHAPES = {
    "enc.conv1.w": (64, 3, 4, 4), "enc.conv1.b": (64,),
    "enc.conv2.w": (128, 64, 4, 4), "enc.conv2.b": (128,),
    "enc.conv3.w": (128, 128, 3, 3), "enc.conv3.b": (128,),
    "enc.res0.conv1.w": (32, 128, 3, 3), "enc.res0.conv1.b": (32,),
    "enc.res0.conv2.w": (128, 32, 1, 1), "enc.res0.conv2.b": (128,),
    "enc.res1.conv1.w": (32, 128, 3, 3), "enc.res1.conv1.b": (32,),
    "enc.res1.conv2.w": (128, 32, 1, 1), "enc.res1.conv2.b": (128,),
    "enc.out.w": (64, 128, 1, 1), "enc.out.b": (64,),
    "quant.codebook": (512, 64),
    "dec.conv1.w": (128, 64, 3, 3), "dec.conv1.b": (128,),
    "dec.res0.conv1.w": (32, 128, 3, 3), "dec.res0.conv1.b": (32,),
    "dec.res0.conv2.w": (128, 32, 1, 1), "dec.res0.conv2.b": (128,),
    "dec.res1.conv1.w": (32, 128, 3, 3), "dec.res1.conv1.b": (32,),
    "dec.res1.conv2.w": (128, 32, 1, 1), "dec.res1.conv2.b": (128,),
    "dec.up1.w": (128, 64, 4, 4), "dec.up1.b": (64,),      # transposed: (in, out, kh, kw)
    "dec.up2.w": (64, 3, 4, 4), "dec.up2.b": (3,),
}


def test_vqvae_ref_parameter_shapes_and_count():
    params = init_tokenizer_params("vqvae-ref", seed=0)
    assert {k: tuple(v.shape) for k, v in params.items()} == REF_SHAPES
    # conv 3->64 4x4, 64->128 4x4, 128->128 3x3, 2 x (128->32 3x3, 32->128 1x1), 128->64 1x1,
    # codebook 512x64, conv 64->128 3x3, 2 residual blocks, up 128->64 4x4, up 64->3 4x4
    res = (128 * 32 * 9 + 32) + (32 * 128 + 128)
    total = ((3 * 64 * 16 + 64) + (64 * 128 * 16 + 128) + (128 * 128 * 9 + 128) + 2 * res
             + (128 * 64 + 64) + 512 * 64 + (64 * 128 * 9 + 128) + 2 * res
             + (128 * 64 * 16 + 64) + (64 * 3 * 16 + 3))
    assert sum(v.size for v in params.values()) == total == 695_491


@pytest.mark.parametrize("quantizer", ["vq", "gumbel"])
def test_vqvae_ref_maps_images_to_an_8x8_grid(quantizer):
    cfg = with_quantizer("vqvae-ref", quantizer)
    params = init_tokenizer_params(cfg, seed=0)
    x = images(0, n=2, size=32).astype(np.float32)
    out, _ = tokenizer_forward(x, params, cfg)
    assert out["ids"].shape == (2, 8, 8)
    assert out["ids"].dtype.kind == "i"
    assert out["ids"].min() >= 0 and out["ids"].max() < 512
    assert out["x_hat"].shape == (2, 3, 32, 32)
    assert out["z"].shape == ((2, 64, 8, 8) if quantizer == "vq" else (2, 512, 8, 8))
    assert np.ndim(out["loss"]) == 0 and np.isfinite(float(out["loss"]))


def test_one_downsampling_gives_16x16_tokens_with_size_keeping_stages():
    """downsamplings=1: the encoder's second stage is a 3x3 stride-1 conv, the decoder's
    first a 3x3 conv (dec.conv2) instead of the transposed conv dec.up1; nothing else moves."""
    cfg = with_grid("vqvae-ref", 32, 16)
    assert (cfg.downsamplings, cfg.grid_size) == (1, 16)
    params = init_tokenizer_params(cfg, seed=0)
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    changed = {"enc.conv2.w": (128, 64, 3, 3), "dec.conv2.w": (64, 128, 3, 3),
               "dec.conv2.b": (64,)}
    want = {k: v for k, v in REF_SHAPES.items() if not k.startswith("dec.up1.")}
    want.update(changed)
    assert shapes == want
    x = images(0, n=2, size=32).astype(np.float32)
    out, _ = tokenizer_forward(x, params, cfg)
    assert out["ids"].shape == (2, 16, 16) and out["z"].shape == (2, 64, 16, 16)
    assert out["x_hat"].shape == (2, 3, 32, 32)


@settings(max_examples=20, deadline=None)
@given(downsamplings=st.sampled_from([1, 2]), grid=st.integers(1, 5), n=st.integers(1, 3),
       quantizer=st.sampled_from(["vq", "ema", "gumbel", "fsq"]), seed=st.integers(0, 99))
def test_grid_follows_picture_size_and_downsamplings(downsamplings, grid, n, quantizer, seed):
    """S x S pictures give (S / 2**d)-sided grids for every quantizer; ids decode to S x S."""
    size = grid * 2 ** downsamplings
    cfg = with_grid(tiny(quantizer), size, grid)
    assert cfg.downsamplings == downsamplings and cfg.grid_size == grid
    params = tiny_params(cfg, seed=seed)
    x = images(seed, n=n, size=size)
    out, cache = tokenizer_forward(x, params, cfg)
    assert out["ids"].shape == (n, grid, grid) and out["x_hat"].shape == x.shape
    assert tokenizer_backward(cache, zero_grads(params), cfg).shape == x.shape
    ids = encode_ids(x, params, cfg)
    np.testing.assert_array_equal(ids, out["ids"])
    assert decode_ids(ids, params, cfg).shape == x.shape


def test_grid_choices_and_their_errors():
    assert with_grid("vqvae-ref", 64).grid_size == 16  # two stages: the grid follows
    assert with_grid("vqvae-ref", 64, 32).downsamplings == 1
    assert with_grid("vqvae-ref", 32, 8) == tokenizer_config("vqvae-ref")
    with pytest.raises(ConfigError, match="choose a grid of 32 or 16"):
        with_grid("vqvae-ref", 64, 8)  # three stages: not a configuration tinytok has
    with pytest.raises(ConfigError, match="multiple of 4"):
        replace(tokenizer_config("vqvae-ref"), image_size=30)
    with pytest.raises(ConfigError, match="downsamplings must be 1"):
        replace(tokenizer_config("vqvae-ref"), downsamplings=3)
    with pytest.raises(ConfigError, match="downsamplings must be 1"):
        replace(tokenizer_config("vqvae-ref"), downsamplings=2.0)
    assert replace(tokenizer_config("vqvae-ref"), image_size=30, downsamplings=1).grid_size == 15


def test_checkpoint_config_names_downsamplings_only_when_not_the_default():
    """Checkpoints from before the choice (no such field) must still resume: equal dicts."""
    ref = tokenizer_config("vqvae-ref")
    assert "downsamplings" not in config_dict(ref)
    fine = with_grid(ref, 32, 16)
    assert config_dict(fine)["downsamplings"] == 1
    assert tokenizer_config(config_dict(fine)) == fine
    assert tokenizer_config(config_dict(ref)) == ref


SHIPPED_PSNR = {"shapes-tokenizer": 34.5656, "photos-tokenizer": 25.6224}


@pytest.mark.parametrize("name", sorted(SHIPPED_PSNR))
def test_shipped_tokenizers_load_and_reproduce(name):
    """The shipped checkpoints (made before the grid was a choice) load as 8x8 tokenizers
    and reconstruct 64 held-out pictures to the PSNR they gave before the change."""
    from tinytok.data.datasets import make_shapes, photo_crops
    from tinytok.evaluate import psnr
    from tinytok.pipeline import SHIPPED, Tokenizer
    tok = Tokenizer.load(SHIPPED[name])
    assert tok.config.downsamplings == 2 and tok.grid_size == 8
    pictures = (make_shapes(64, seed=7).images if name == "shapes-tokenizer"
                else photo_crops(64, seed=12345, split="val", scales=(2, 4)))
    assert tok.encode(pictures).shape == (64, 8, 8)
    assert abs(psnr(pictures, tok.reconstruct(pictures)).mean() - SHIPPED_PSNR[name]) < 0.01


def test_init_is_deterministic_for_a_seed():
    a = init_tokenizer_params("vqvae-tiny", seed=3)
    b = init_tokenizer_params("vqvae-tiny", seed=3)
    c = init_tokenizer_params("vqvae-tiny", seed=4)
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_init_bounds_follow_pytorch_defaults():
    params = init_tokenizer_params("vqvae-ref", seed=0, dtype="float64")
    assert np.abs(params["enc.conv2.w"]).max() <= 1 / np.sqrt(64 * 16)
    assert np.abs(params["dec.up1.w"]).max() <= 1 / np.sqrt(64 * 16)  # fan_in of a transposed
    assert np.abs(params["quant.codebook"]).max() <= 1 / 512              # conv: out * k * k


@pytest.mark.parametrize("quantizer", ["vq", "gumbel"])
def test_float32_stays_float32(quantizer):
    cfg = tiny(quantizer)
    params = init_tokenizer_params(cfg, seed=0)
    assert all(v.dtype == np.float32 for v in params.values())
    out, cache = tokenizer_forward(images(1).astype(np.float32), params, cfg)
    for key in ("loss", "recon_loss", "vq_loss", "x_hat", "z"):
        assert out[key].dtype == np.float32, key
    grads = zero_grads(params)
    dx = tokenizer_backward(cache, grads, cfg)
    assert dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())


def test_config_errors():
    with pytest.raises(ConfigError):
        tokenizer_config("vqvae-huge")
    with pytest.raises(ConfigError):
        with_quantizer("vqvae-tiny", "lfq")
    assert tokenizer_config("vqvae-ref").grid_size == 8


def test_config_sizes_are_whole_numbers_kept_as_python_ints():
    """NumPy integers are taken and kept as Python ints (the checkpoint's JSON holds them);
    bools, floats and numbers too small get the one whole-number message."""
    import json
    cfg = replace(tokenizer_config("vqvae-tiny"), hidden=np.int64(16), n_res=np.int32(0))
    assert type(cfg.hidden) is int and type(cfg.n_res) is int
    json.dumps(config_dict(cfg))
    for field, bad in (("hidden", True), ("code_dim", 4.0), ("num_codes", 0), ("n_res", -1)):
        with pytest.raises(ConfigError, match=f"^tokenizer config: {field} must be a whole "
                                              f"number >= {int(field != 'n_res')}, got "):
            replace(tokenizer_config("vqvae-tiny"), **{field: bad})
