"""The next-scale prior (VAR, prior/scales.py): its layout and block-causal mask, the maps'
inputs and the whole loss against slow references and finite differences, drawing a map a
pass against an independent loop (and with and without the KV cache, and on the fake
CuPy), training it, its checkpoints, and the pipeline and command line with it (pairing,
drawing, the refusals)."""
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fake_cupy
import reference as ref
import reference_models as refm
from device_helpers import active
from tinytok.cli import main
from tinytok.errors import ConfigError, ShapeError
from tinytok.gradcheck import relative_error
from tinytok.pipeline import Pipeline, Prior, Tokenizer
from tinytok.prior.gpt import gpt_config
from tinytok.prior.kinds import PRIOR_KINDS, check_tokenizer, model_overrides
from tinytok.prior.masked import masked_prefix
from tinytok.prior.sample import draw, filter_logits, guided
from tinytok.prior.scales import (CARRIED, SCALES_SAMPLING, block_causal_mask,
                                  caption_positions, image_offset, init_scales_params,
                                  map_guidance, map_inputs, map_levels, map_span,
                                  sample_scale_codes, scales_batch, scales_forward,
                                  scales_loss_backward, scales_loss_forward, write_maps)
from tinytok.prior.settings import PLAIN, Sampling
from tinytok.prior.vocab import BOS, IMAGE, PAD, Vocab
from tinytok.tokenizer.multiscale import PHI_MIX, split_scale_ids
from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_config, with_quantizer
from tinytok.training import PriorData, TrainSettings, train_prior
from tinytok.training.checkpoint import load_checkpoint
from tinytok.training.optim import zeros_like_params

FEW = settings(max_examples=20, deadline=None)
WORDS = ("a", "small", "large", "red", "blue", "circle", "square")
VOCAB = Vocab(WORDS, num_codes=6, grid_size=4)
SCALES = (1, 2, 4)                                   # 1 + 4 + 16 = 21 positions
L = 21
SLOTS = 4
CONTEXT = L + SLOTS + 2                              # <bos> 4 words <image>, then the maps
CFG = gpt_config("gpt-tiny", vocab_size=VOCAB.size, context=CONTEXT, scales=SCALES)
D = 3


def one_line(excinfo):
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


def quantizer(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {"quant.codebook": rng.normal(size=(len(SCALES), VOCAB.num_codes, D)).astype(dtype),
            "quant.phi.w": rng.normal(0, 0.3, size=(D, D, 3, 3)).astype(dtype),
            "quant.phi.b": rng.normal(0, 0.1, size=D).astype(dtype)}


def scaled_params(seed=0, scale=6.0, dtype="float64"):
    """A random next-scale prior whose logits are far from uniform (its matrices scaled
    up), so that the codes drawn depend on the caption and the coarser maps."""
    params = init_scales_params(CFG, seed, "float64", quantizer(seed))
    return {k: (v * scale if v.ndim == 2 and k not in CARRIED else v).astype(dtype)
            for k, v in params.items()}


def batch(seed=0, n=3, p_drop=0.0):
    rng = np.random.default_rng(seed)
    captions = [VOCAB.encode_text(t) for t in ("a red circle", "a large blue square",
                                               "small")][:n]
    maps = rng.integers(0, VOCAB.num_codes, (n, L))
    return scales_batch(VOCAB, captions, maps, rng, CONTEXT, p_drop)


# --- the layout -------------------------------------------------------------------------------

def test_the_layout_places_the_caption_then_every_map():
    assert caption_positions(CFG) == SLOTS + 2
    assert [map_span(CFG, k) for k in range(3)] == [(6, 7), (7, 11), (11, 27)]
    np.testing.assert_array_equal(map_levels(SCALES), [0] + [1] * 4 + [2] * 16)
    inputs, targets = batch()
    assert inputs.shape == targets.shape == (3, CONTEXT)
    assert (inputs[:, 0] == BOS).all() and (inputs[:, SLOTS + 1] == IMAGE).all()
    assert (targets[:, :SLOTS + 2] == -1).all()
    np.testing.assert_array_equal(targets[:, SLOTS + 2:], inputs[:, SLOTS + 2:])
    assert inputs[:, SLOTS + 2:].min() >= VOCAB.image_offset
    np.testing.assert_array_equal(inputs[0, :SLOTS + 2], masked_prefix(
        VOCAB, VOCAB.encode_text("a red circle"), CONTEXT, L))


def test_scales_batch_drops_captions_at_its_rate_and_refuses_bad_maps():
    rng = np.random.default_rng(0)
    captions = [VOCAB.encode_text("a red circle")] * 4000
    inputs, _ = scales_batch(VOCAB, captions, np.zeros((4000, L), dtype=np.int64), rng,
                             CONTEXT, 0.25)
    dropped = (inputs[:, 1] == PAD).mean()
    assert abs(dropped - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 4000)
    with pytest.raises(ShapeError, match=r"image_ids must be \(N, L\) maps for 1 captions"):
        scales_batch(VOCAB, captions[:1], np.zeros((1, 4, 4)), rng, CONTEXT)
    with pytest.raises(ShapeError, match=r"codes must lie in \[0, 6\)"):
        scales_batch(VOCAB, captions[:1], np.full((1, L), 6), rng, CONTEXT)


@FEW
@given(scales=st.lists(st.integers(1, 6), min_size=1, max_size=4, unique=True).map(sorted),
       slots=st.integers(1, 4))
def test_block_causal_mask_lets_a_map_see_the_caption_the_coarser_maps_and_itself(scales,
                                                                                  slots):
    n = sum(s * s for s in scales)
    config = gpt_config("gpt-tiny", vocab_size=30, context=n + slots + 2, scales=tuple(scales))
    mask = block_causal_mask(config)
    P = slots + 2
    group = [-1] * P + [k for k, s in enumerate(scales) for _ in range(s * s)]
    for i in range(config.context):
        for j in range(config.context):
            assert mask[i, j] == (group[j] <= group[i])
    assert mask[:P, :P].all() and not mask[:P, P:].any()       # the caption sees itself


# --- the inputs and the loss against references ------------------------------------------------

def reference_inputs(codes, q):
    """Each map's inputs from the maps before it, by tests/reference.py's slow resizes and
    convolution: f_hat_k = sum of (1 - a) u_j + a phi(u_j), u_j the codes bilinearly up."""
    N, g = len(codes), SCALES[-1]
    maps = split_scale_ids(codes, SCALES)
    f_hat, rows = np.zeros((N, D, g, g)), [np.zeros((N, SCALES[0] ** 2, D))]
    for k, s in enumerate(SCALES[:-1]):
        e = q["quant.codebook"][k][maps[k]].transpose(0, 3, 1, 2)
        u = e if s == g else ref.bilinear_resize(e, (g, g))
        f_hat = f_hat + (1 - PHI_MIX) * u + PHI_MIX * ref.conv2d(
            u, q["quant.phi.w"], q["quant.phi.b"], padding=1)
        nxt = SCALES[k + 1]
        small = f_hat if nxt == g else ref.area_resize(f_hat, (nxt, nxt))
        rows.append(small.reshape(N, D, -1).transpose(0, 2, 1))
    return np.concatenate(rows, axis=1)


def test_map_inputs_equal_the_slow_ladder():
    params = scaled_params()
    codes = np.random.default_rng(1).integers(0, VOCAB.num_codes, (3, L))
    np.testing.assert_allclose(map_inputs(codes, params, CFG),
                               reference_inputs(codes, quantizer()), rtol=1e-10, atol=1e-12)


def reference_logits(ids, params):
    """The model from prior/scales.py's docstring: caption tokens and positions, the maps'
    inputs projected plus their level and position rows, the block-causal trunk."""
    P = caption_positions(CFG)
    x_cap = ref.embedding(ids[:, :P], params["gpt.wte"]) + params["gpt.wpe"][:P]
    inputs = reference_inputs(ids[:, P:] - VOCAB.image_offset, quantizer())
    x_img = (inputs @ params["scales.proj.w"] + params["scales.proj.b"]
             + params["scales.level"][map_levels(SCALES)] + params["gpt.wpe"][P:CONTEXT])
    return refm.trunk_logits(np.concatenate([x_cap, x_img], axis=1), params, CFG.n_layer,
                             CFG.n_head, block_causal_mask(CFG))


def test_the_forward_equals_a_slow_reference():
    params = scaled_params(scale=1.0)
    inputs, _ = batch()
    logits, _ = scales_forward(inputs, params, CFG)
    np.testing.assert_allclose(logits, reference_logits(inputs, params), rtol=1e-9, atol=1e-10)
    assert image_offset(params, CFG) == VOCAB.image_offset


def test_a_map_reads_the_coarser_maps_only():
    """Map 2's codes reach map 3's positions only (through map 3's inputs); the finest
    map's codes are targets only, read by no position."""
    params = scaled_params(scale=1.0)
    inputs, _ = batch()
    a, _ = scales_forward(inputs, params, CFG)
    for lo, hi in ((7, 11), (11, 27)):                  # map 2's positions, map 3's
        changed = inputs.copy()
        changed[:, lo:hi] = VOCAB.image_offset + (changed[:, lo:hi] - VOCAB.image_offset + 1) % 6
        b, _ = scales_forward(changed, params, CFG)
        np.testing.assert_array_equal(a[:, :11], b[:, :11])  # caption and maps 1, 2
        assert np.allclose(a[:, 11:], b[:, 11:]) == (lo == 11)


def test_the_loss_gradients_match_finite_differences_and_spare_the_carried_quantizer():
    params = scaled_params(scale=1.0)
    inputs, targets = batch(p_drop=0.0)
    loss, cache = scales_loss_forward(inputs, targets, params, CFG)
    logits = reference_logits(inputs, params)
    expected = np.mean([ref.cross_entropy(logits[:, lo:hi], targets[:, lo:hi])
                        for lo, hi in (map_span(CFG, k) for k in range(len(SCALES)))])
    assert abs(float(loss) - expected) < 1e-10
    grads = zeros_like_params(params)
    scales_loss_backward(cache, grads, CFG, dloss=0.7)
    rng = np.random.default_rng(0)
    for key in params:
        if key in CARRIED:
            assert not grads[key].any(), key
            continue
        picks = rng.choice(params[key].size, min(params[key].size, 10), replace=False)
        num = refm.numerical_param_gradient(
            lambda p: 0.7 * float(scales_loss_forward(inputs, targets, p, CFG)[0]),
            params, key, picks)
        assert relative_error(grads[key].reshape(-1)[picks], num) < 1e-6, key


# --- drawing ------------------------------------------------------------------------------------

def prefixes(texts):
    return np.stack([masked_prefix(VOCAB, VOCAB.encode_text(t) if t else None, CONTEXT, L)
                     for t in texts])


def reference_drawing(params, cond, uncond, seed, sampling):
    """An independent drawing loop: for each map, the whole teacher-forced sequence through
    scales_forward (the finer maps filled with any code: the mask hides them), the map's
    logits guided, filtered and drawn in the order write_maps draws them."""
    rng = np.random.default_rng(seed)
    n, offset = len(cond), VOCAB.image_offset
    codes = np.zeros((n, L), dtype=np.int64)
    for k, s in enumerate(SCALES):
        lo, hi = (np.array(map_span(CFG, k)) - caption_positions(CFG))
        rows = np.concatenate([cond, uncond])
        seq = np.concatenate([rows, np.tile(codes, (2, 1)) + offset], axis=1)
        logits, _ = scales_forward(seq, params, CFG)
        logits = logits[:, caption_positions(CFG) + lo:caption_positions(CFG) + hi, offset:]
        scale = sampling.cfg_scale          # VAR's ramp: none at the first map, then rising
        if sampling.cfg_ramp:
            scale = 1 + (sampling.cfg_scale - 1) * k / (len(SCALES) - 1)
        logits = guided(logits[:n], logits[n:], scale)
        flat = filter_logits(logits.reshape(n * s * s, -1), sampling.temperature,
                             sampling.top_k, sampling.top_p)
        codes[:, lo:hi] = np.asarray(draw(flat, rng)).reshape(n, s * s)
    return codes


@pytest.mark.parametrize("sampling", [Sampling(cfg_scale=2.5), Sampling(cfg_scale=1.5,
                                                                       temperature=0.8,
                                                                       top_p=0.9),
                                      Sampling(cfg_scale=4.0, cfg_ramp=True, temperature=0.4)])
def test_write_maps_equals_an_independent_loop(sampling):
    params = scaled_params()
    cond, uncond = prefixes(["a red circle", "a large blue square"]), prefixes(["", ""])
    got = write_maps(params, CFG, cond, np.random.default_rng(4), sampling, uncond)
    np.testing.assert_array_equal(got, reference_drawing(params, cond, uncond, 4, sampling))


def test_the_guidance_ramp_rises_from_none_at_the_first_map_to_cfg_scale_at_the_last():
    ramp = Sampling(cfg_scale=2.5, cfg_ramp=True)
    assert [map_guidance(ramp, k, 7) for k in range(7)] == [1.0, 1.25, 1.5, 1.75, 2.0, 2.25,
                                                            2.5]
    assert [map_guidance(ramp.but(cfg_ramp=False), k, 7) for k in range(7)] == [2.5] * 7
    assert map_guidance(ramp, 0, 1) == 2.5                  # one map: it is the last
    params = scaled_params()
    cond, uncond = prefixes(["a red circle"] * 6), prefixes([""] * 6)
    ramped = write_maps(params, CFG, cond, np.random.default_rng(1), ramp, uncond)
    constant = write_maps(params, CFG, cond, np.random.default_rng(1), ramp.but(cfg_ramp=False),
                          uncond)
    assert not np.array_equal(ramped, constant)      # (write_maps against a loop: above)


def test_one_pass_a_map_with_or_without_the_cache():
    params = scaled_params()
    seen = []
    cond, uncond = prefixes(["a red circle"] * 3), prefixes([""] * 3)
    cached = write_maps(params, CFG, cond, np.random.default_rng(2), Sampling(), uncond,
                        on_map=lambda k, codes: seen.append((k, codes.shape)))
    assert seen == [(0, (3, 1)), (1, (3, 5)), (2, (3, 21))]
    again = write_maps(params, CFG, cond, np.random.default_rng(2), Sampling(), uncond,
                       use_cache=False)
    np.testing.assert_array_equal(cached, again)
    other = write_maps(params, CFG, cond, np.random.default_rng(3), Sampling(), uncond)
    assert not np.array_equal(cached, other)


def test_guidance_at_scale_one_is_no_guidance_and_the_caption_matters():
    params = scaled_params()
    cond, uncond = prefixes(["a red circle"] * 4), prefixes([""] * 4)
    plain = write_maps(params, CFG, cond, np.random.default_rng(0), PLAIN)
    np.testing.assert_array_equal(
        plain, write_maps(params, CFG, cond, np.random.default_rng(0), PLAIN, uncond))
    other = write_maps(params, CFG, prefixes(["a large blue square"] * 4),
                       np.random.default_rng(0), PLAIN)
    assert not np.array_equal(plain, other)


def test_drawing_on_the_fake_cupy_draws_what_numpy_draws():
    params = scaled_params(dtype="float32")
    want = sample_scale_codes(params, CFG, VOCAB, "a red circle", 3, np.random.default_rng(6),
                              Sampling(top_k=3))
    with active(fake_cupy.cupy) as xp:
        got = sample_scale_codes({k: xp.asarray(v) for k, v in params.items()}, CFG, VOCAB,
                                 "a red circle", 3, np.random.default_rng(6), Sampling(top_k=3))
    assert isinstance(got, np.ndarray) and got.shape == (3, L)
    np.testing.assert_array_equal(got, want)


def test_bad_settings_and_sequences_are_one_line_errors():
    params = scaled_params()
    with pytest.raises(ShapeError) as e:
        scales_forward(np.zeros((2, CONTEXT - 1), dtype=np.int64), params, CFG)
    assert "reads whole sequences (B, 27)" in one_line(e)
    with pytest.raises(ConfigError) as e:
        init_scales_params(gpt_config(CFG, scales=()), carried=quantizer())
    assert "must name its maps' sizes" in one_line(e)
    with pytest.raises(ConfigError) as e:
        init_scales_params(CFG)
    assert "needs the multi-scale tokenizer's quantizer" in one_line(e)
    with pytest.raises(ShapeError) as e:
        init_scales_params(gpt_config(CFG, scales=(2, 4)), carried=quantizer())
    assert "maps need one each (2, K, D)" in one_line(e)
    with pytest.raises(ConfigError) as e:
        init_scales_params(gpt_config(CFG, scales=(2, 1, 4)), carried=quantizer())
    assert "increasing" in one_line(e)


# --- training, checkpoints, the pipeline ---------------------------------------------------

def tiny_tokenizer(seed=0):
    """An untrained multi-scale tokenizer of 8x8 pictures on a 4x4 grid, maps 1, 2, 4."""
    cfg = replace(tokenizer_config("vqvae-tiny"), image_size=8, hidden=8, res_hidden=4,
                  code_dim=D, num_codes=VOCAB.num_codes, downsamplings=1)
    cfg = replace(with_quantizer(cfg, "scales"), scales=SCALES)
    return Tokenizer(init_tokenizer_params(cfg, seed=seed), cfg)


def train_scales(out, tokenizer, steps=60, **options):
    texts = ["a red circle", "a large blue square", "a small red square", "a blue circle"]
    words = [VOCAB.encode_text(texts[i % 4]) for i in range(64)]
    maps = np.stack([np.full(L, i % 4) for i in range(64)])     # one picture a caption
    carried = {k: np.asarray(tokenizer.params[k]) for k in CARRIED}
    config = gpt_config("gpt-tiny", **model_overrides("scales", VOCAB, tokenizer,
                                                      caption_slots=SLOTS))
    data = PriorData(maps, words, VOCAB, quantizer=carried)
    settings = TrainSettings(steps=steps, batch_size=8, lr=3e-3, warmup=2, seed=1,
                             checkpoint_every=100, log_every=10)
    return train_prior(data, config, settings, str(out), log=lambda *a: None,
                       progress_stream=open("/dev/null", "w"), kind="scales", **options)


def test_training_lowers_the_loss_keeps_the_quantizer_and_saves_its_kind(tmp_path):
    tok = tiny_tokenizer()
    history = train_scales(tmp_path / "p.npz", tok)
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    ckpt = load_checkpoint(tmp_path / "p.npz", kind="prior")
    assert ckpt.config["kind"] == "scales" and ckpt.config["model"]["scales"] == [1, 2, 4]
    for k in CARRIED:
        np.testing.assert_array_equal(ckpt.params[k], np.asarray(tok.params[k]))
    prior = Prior.load(tmp_path / "p.npz")
    assert prior.kind is PRIOR_KINDS["scales"] and prior.config.context == CONTEXT
    pipe = Pipeline(tok, prior)
    pictures = pipe.generate(["a red circle", "a blue circle"], n=2, seed=3)
    assert pictures.shape == (4, 8, 8, 3) and pictures.dtype == np.uint8
    np.testing.assert_array_equal(pictures, pipe.generate(["a red circle", "a blue circle"],
                                                          n=2, seed=3))
    assert pipe.generate_codes("a red circle", 3).shape == (3, L)
    assert pipe.sampling is SCALES_SAMPLING                  # drawn at its recommended settings
    np.testing.assert_array_equal(
        pictures, pipe.generate(["a red circle", "a blue circle"], n=2, seed=3,
                                sampling=SCALES_SAMPLING))


def test_pairing_and_refusals_are_one_line(tmp_path):
    tok = tiny_tokenizer()
    train_scales(tmp_path / "p.npz", tok, steps=2)
    prior = Prior.load(tmp_path / "p.npz")
    with pytest.raises(ConfigError) as e:
        Pipeline(tiny_tokenizer(seed=1), prior)
    assert "trained on another tokenizer's codes" in one_line(e)
    other_maps = tiny_tokenizer()
    other_maps.config = replace(other_maps.config, scales=(2, 3, 4))
    with pytest.raises(ConfigError) as e:
        Pipeline(other_maps, prior)
    assert "writes maps (1, 2, 4) but the tokenizer's are (2, 3, 4)" in one_line(e)
    grid = Tokenizer.load()                              # the shipped grid tokenizer
    with pytest.raises(ConfigError) as e:
        Pipeline(grid, prior)
    assert "pair it with its multi-scale tokenizer" in one_line(e)
    with pytest.raises(ConfigError) as e:
        check_tokenizer("raster", tok)
    assert "a raster prior reads grids of tokens" in one_line(e)
    with pytest.raises(ConfigError) as e:
        check_tokenizer("scales", grid)
    assert "train it on a multi-scale tokenizer" in one_line(e)
    pipe = Pipeline(tok, prior)
    pictures = pipe.generate("a red circle", n=1)
    for call in (lambda: pipe.caption(pictures), lambda: pipe.converse(["a red circle"]),
                 lambda: pipe.edit(pictures, "make it blue")):
        with pytest.raises(ConfigError) as e:
            call()
        assert "a scales prior draws pictures only" in one_line(e)
    with pytest.raises(ConfigError) as e:
        pipe.inpaint(pictures, (0, 0, 4, 4), "a red circle")
    assert "writes whole maps coarse to fine, so it cannot redraw a region" in one_line(e)


def test_train_prior_refuses_a_scales_config_without_its_maps(tmp_path):
    tok = tiny_tokenizer()
    carried = {k: np.asarray(tok.params[k]) for k in CARRIED}
    data = PriorData(np.zeros((4, L), dtype=np.int64), [[]] * 4, VOCAB, quantizer=carried)
    for config in (gpt_config("gpt-tiny", vocab_size=VOCAB.size),
                   gpt_config("gpt-tiny", vocab_size=VOCAB.size, scales=SCALES, context=L)):
        with pytest.raises(ConfigError) as e:
            train_prior(data, config, TrainSettings(steps=1, batch_size=2), str(tmp_path / "x"),
                        log=lambda *a: None, kind="scales")
        assert "must name its tokenizer's scales and a context that holds them" in one_line(e)
    with pytest.raises(ConfigError) as e:
        train_prior(data, gpt_config("gpt-tiny", vocab_size=VOCAB.size, scales=SCALES,
                                     context=CONTEXT),
                    TrainSettings(steps=1, batch_size=2), str(tmp_path / "x"),
                    log=lambda *a: None, kind="scales", p_conversation=0.5)
    assert "learns pictures from captions only" in one_line(e)


# --- the command line --------------------------------------------------------------------------

def test_the_command_line_trains_draws_and_refuses_with_a_next_scale_prior(tmp_path, capsys):
    tok_path = str(tmp_path / "tok.npz")
    cfg = replace(with_quantizer(tokenizer_config("vqvae-tiny"), "scales"), num_codes=8)
    Tokenizer(init_tokenizer_params(cfg, seed=0), cfg).save(tok_path)
    prior = str(tmp_path / "prior.npz")
    assert main(["train-prior", "--tokenizer", tok_path, "--kind", "scales", "--config",
                 "gpt-tiny", "--steps", "3", "--n-images", "40", "--batch-size", "4",
                 "--out", prior]) == 0
    assert main(["sample", "--tokenizer", tok_path, "--prior", prior, "--prompt",
                 "a red circle", "-n", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").exists()
    capsys.readouterr()
    assert main(["train-prior", "--tokenizer", "data/checkpoints/shapes_tokenizer.npz",
                 "--kind", "scales", "--steps", "1", "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "train it on a multi-scale tokenizer" in err and "\n" not in err
    assert main(["sample", "--tokenizer", "data/checkpoints/shapes_tokenizer.npz", "--prior",
                 prior, "--prompt", "a red circle"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pair it with its multi-scale tokenizer" in err and "\n" not in err
    assert main(["caption", "--tokenizer", tok_path, "--prior", prior,
                 str(tmp_path / "s.png")]) == 2
    assert "a scales prior draws pictures only" in capsys.readouterr().err
    assert main(["sample", "--prompt", "a red circle", "--cfg-ramp",
                 "--out", str(tmp_path / "r.png")]) == 2            # the shipped raster prior
    err = capsys.readouterr().err.strip()
    assert "a raster prior guides every pass at cfg_scale" in err and "\n" not in err
    assert not (tmp_path / "r.png").exists()


def test_the_shipped_next_scale_models_draw_through_the_pipeline_and_the_command_line(tmp_path):
    """A fresh install draws from the shipped multi-scale tokenizer and next-scale prior."""
    from tinytok.data.datasets import make_shapes
    from tinytok.evaluate.metrics import caption_for, read_attributes
    from tinytok.pipeline import SHIPPED
    tok, prior = SHIPPED["shapes-scales-tokenizer"], SHIPPED["shapes-scales-prior"]
    pipe = Pipeline.load(tok, prior)
    labels = make_shapes(4, seed=10_000, split="train").labels
    pictures = pipe.generate(caption_for(labels), n=2, seed=0)
    right = (read_attributes(pictures) == np.repeat(labels, 2, axis=0)).all(axis=1)
    assert right.mean() >= 0.5, right          # the record: all 96 seen-pair pictures right
    out = tmp_path / "drawn.png"
    assert main(["sample", "--tokenizer", str(tok), "--prior", str(prior), "--prompt",
                 "a large red circle at the top left", "-n", "2", "--out", str(out)]) == 0
    assert out.exists()
