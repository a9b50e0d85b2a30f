"""The quantizer table (tinytok.tokenizer.quantizers): each record agrees with the model it
describes, every module asks the table (a new entry works everywhere with nothing else
changed), and each forward's cache is a named tuple of its own type (the op contract)."""
import os
from dataclasses import replace

import numpy as np
import pytest

from tinytok.cli import build_parser
from tinytok.check.cases import OPS
from tinytok.errors import ConfigError
from tinytok.tokenizer.fsq import FSQCache, fsq_forward
from tinytok.tokenizer.gumbel import GumbelQuantizeCache, gumbel_quantize_forward
from tinytok.tokenizer.quantize import VectorQuantizeCache, vector_quantize_forward
from tinytok.tokenizer.quantizers import QUANTIZERS, quantizer_named, quantizers_reading
from tinytok.tokenizer.vqvae import (config_dict, decode_ids, decoder_forward, encode_ids,
                                     init_tokenizer_params, tokenizer_backward,
                                     tokenizer_config, tokenizer_forward, with_quantizer)
from tinytok.training import TokenizerRecipe, TrainSettings, train_tokenizer
from tinytok.training.checkpoint import load_checkpoint

every_quantizer = pytest.mark.parametrize("name", list(QUANTIZERS))


def tiny(name, levels=None):
    cfg = replace(tokenizer_config("vqvae-tiny"), image_size=8, hidden=8, res_hidden=4,
                  code_dim=3, num_codes=5)
    return with_quantizer(cfg, name, levels)


def images(seed, n=2, size=8):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (n, 3, size, size))


def test_every_quantizer_returns_a_named_cache_of_its_own():
    rng = np.random.default_rng(0)
    z, codebook = rng.standard_normal((2, 3, 2, 2)), rng.standard_normal((5, 3))
    logits = rng.standard_normal((2, 5, 2, 2))
    caches = [vector_quantize_forward(z, codebook)[-1],
              gumbel_quantize_forward(logits, codebook, 0.5)[-1],
              fsq_forward(z, (4, 3, 2))[-1]]
    for cache, kind in zip(caches, (VectorQuantizeCache, GumbelQuantizeCache, FSQCache)):
        assert type(cache) is kind and isinstance(cache, tuple) and cache._fields
    assert caches[0].beta == 0.25 and caches[0].z_shape == z.shape
    assert caches[1].tau == 0.5 and caches[1].logits_shape == logits.shape


@every_quantizer
def test_each_record_describes_its_model(name):
    q, cfg = QUANTIZERS[name], tiny(name)
    params = init_tokenizer_params(cfg, dtype="float64")
    assert q.name == name and q.summary
    assert ("quant.codebook" in params) == q.has_codebook
    assert params["enc.out.w"].shape[0] == (cfg.num_codes if q.scores_codes else cfg.code_dim)
    assert q.has_codebook or not (q.kmeans_start or q.restarts or q.ema_updates)
    assert set(q.config_fields) <= set(cfg.__dataclass_fields__)
    assert ("levels" in config_dict(cfg)) == q.reads("levels")
    assert ("factor_dim" in config_dict(cfg)) == q.reads("factor_dim")
    assert {k for k in params if k.startswith("quant.")} == set(q.init_params(
        np.random.default_rng(0), cfg))
    assert (q.search_space is not None) == (q.kmeans_start or q.restarts)


@every_quantizer
def test_ids_of_and_codes_of_agree_with_the_forward(name):
    """Encoding reads the forward's ids; decoding maps them back to the forward's codes (all
    but Gumbel's, whose training z_q is a soft mixture of codes, not one)."""
    q, cfg = QUANTIZERS[name], tiny(name)
    params, x = init_tokenizer_params(cfg, dtype="float64"), images(1)
    out, _ = tokenizer_forward(x, params, cfg)
    np.testing.assert_array_equal(encode_ids(x, params, cfg), out["ids"])
    z_q = q.codes_of(out["ids"], params, cfg)
    assert z_q.shape == (2, cfg.code_dim, cfg.grid_size, cfg.grid_size)
    if not q.annealed:
        np.testing.assert_array_equal(z_q, q.forward_in_model(out["z"], params, cfg)[0])
        np.testing.assert_array_equal(decode_ids(out["ids"], params, cfg),
                                      decoder_forward(z_q, params, cfg)[0])


def test_names_are_checked_against_the_table():
    assert quantizer_named("ema") is QUANTIZERS["ema"]
    assert quantizers_reading("levels") == ["fsq"]
    assert quantizers_reading("factor_dim") == ["factorized"]
    for bad in ("lfq", None, ["vq"]):
        with pytest.raises(ConfigError, match="unknown quantizer .*choose one of vq, ema, "
                                              "gumbel, fsq"):
            quantizer_named(bad)


def test_the_command_line_offers_what_the_tables_hold():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices
    quantizer = next(a for a in sub["train-tokenizer"]._actions if a.dest == "quantizer")
    assert tuple(quantizer.choices) == tuple(QUANTIZERS)
    op = next(a for a in sub["check"]._actions if a.dest == "op")
    assert op.help == ", ".join(OPS)


def test_a_new_entry_works_everywhere(monkeypatch, tmp_path):
    """One entry, nothing else: a copy of vq under another name configures, runs forward and
    backward, encodes, decodes and trains exactly as vq does."""
    monkeypatch.setitem(QUANTIZERS, "nearest", replace(QUANTIZERS["vq"], name="nearest"))
    x = images(2)
    runs = {}
    for name in ("vq", "nearest"):
        cfg = tiny(name)
        params = init_tokenizer_params(cfg, dtype="float64")
        out, cache = tokenizer_forward(x, params, cfg)
        grads = {k: np.zeros_like(v) for k, v in params.items()}
        tokenizer_backward(cache, grads, cfg)
        ids = encode_ids(x, params, cfg)
        path = os.path.join(tmp_path, name + ".npz")
        pictures = (np.random.default_rng(3).integers(0, 256, (24, 8, 8, 3))).astype(np.uint8)
        train_tokenizer(pictures, cfg, TrainSettings(steps=3, batch_size=4, warmup=1),
                        path, TokenizerRecipe(kmeans_images=8, restart_every=2),
                        log=lambda text: None, progress_stream=open(os.devnull, "w"))
        runs[name] = (out["loss"], grads, ids, decode_ids(ids, params, cfg),
                      load_checkpoint(path).params)
    (loss, grads, ids, decoded, trained), new = runs["vq"], runs["nearest"]
    assert loss == new[0] and np.array_equal(ids, new[2]) and np.array_equal(decoded, new[3])
    for k in grads:
        np.testing.assert_array_equal(grads[k], new[1][k])
    for k in trained:
        np.testing.assert_array_equal(trained[k], new[4][k])
