"""Bad input of every kind: the command line answers with exit code 2 and one line on stderr
naming the file and the problem (never a traceback); the API raises a specific TinytokError.

Covers checkpoints (unsafe, broken, foreign, wrong kind, mismatched), images, token-id
files, prompts, arguments and backends, and the numerical guards of training (NaN/inf,
divergence) that must never overwrite a good checkpoint.
"""
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zlib
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from tinytok import backend
from tinytok.training.checkpoint import load_checkpoint, save_checkpoint
from tinytok.cli import main
from tinytok.data.datasets import make_shapes
from tinytok.errors import (BackendError, CheckpointError, ConfigError, DTypeError, ImageError,
                            PromptError, ShapeError, TinytokError)
from tinytok.prior.gpt import gpt_config
from tinytok.data.images import load_image
from tinytok.pipeline import Tokenizer
from tinytok.training.prior_data import shapes_prior_data
from tinytok.training import (TokenizerRecipe, TrainSettings, TrainingDiverged, train_prior,
                              train_tokenizer)
from tinytok.tokenizer.vqvae import (TokenizerConfig, init_tokenizer_params, tokenizer_config,
                                     with_quantizer)

QUIET = dict(log=lambda *a: None, progress_stream=io.StringIO())


# ---------------------------------------------------------------------------------------
# Helpers

def cli(capsys, *args):
    """Run `tinytok ARGS` in this process: (exit code, stdout, stderr).

    An exception escaping main() is what a user would see as a traceback: the test fails
    on it, showing it.
    """
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *names):
    """Exit code 2 and exactly one line on stderr, 'tinytok: error: ...', naming names."""
    assert code == 2, f"exit code {code}, stderr: {err!r}"
    assert err.startswith("tinytok: error: ") and err.endswith("\n"), err
    assert err.count("\n") == 1, f"more than one line on stderr: {err!r}"
    for name in names:
        assert str(name) in err, f"{name!r} is not named in {err!r}"
    return err


def last_line_error(code, err, *names):
    """As assert_one_line_error, for commands that print progress lines before failing."""
    assert code == 2, f"exit code {code}, stderr: {err!r}"
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tinytok: error: "), err
    for name in names:
        assert str(name) in last, f"{name!r} is not named in {last!r}"
    return last


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    """A tiny tokenizer and prior (two steps each), and a folder for bad files."""
    d = tmp_path_factory.mktemp("bad_input")
    config = with_quantizer(tokenizer_config("vqvae-tiny"), "ema")   # the CLI's default
    images = make_shapes(16, seed=0).images
    train_tokenizer(images, config, TrainSettings(steps=2, batch_size=4, checkpoint_every=1000),
                    str(d / "tok.npz"), TokenizerRecipe(kmeans_images=16), **QUIET)
    tok = Tokenizer.load(d / "tok.npz")
    data = shapes_prior_data(tok, 16, cache=None, log=lambda *a: None)
    train_prior(data, gpt_config("gpt-tiny", vocab_size=data.vocab.size),
                TrainSettings(steps=2, batch_size=4, checkpoint_every=1000),
                str(d / "prior.npz"), **QUIET)
    Image.fromarray(images[0]).save(d / "img.png")
    return d


# ---------------------------------------------------------------------------------------
# 2. Checkpoints: never unpickled, every broken file one clear line

class Marker:
    """Unpickling this creates a file: proof that a pickle was (or was not) run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _craft(d, kind):
    """Write one bad 'checkpoint' into d; return its path."""
    good = load_checkpoint(d / "tok.npz")
    path = d / f"bad_{kind}.npz"
    raw = (d / "tok.npz").read_bytes()
    model = good.config["model"]
    if kind == "truncated":
        path.write_bytes(raw[:len(raw) // 2])
    elif kind == "truncated_tail":
        path.write_bytes(raw[:-10])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "corrupt":
        data = bytearray(raw)
        for i in range(200, len(data), 997):
            data[i] ^= 0x5A
        path.write_bytes(bytes(data))
    elif kind == "foreign_text":
        path.write_text("this is a shopping list, not a checkpoint\n")
    elif kind == "foreign_npz":
        np.savez(path, weights=np.arange(5.0))
    elif kind == "single_npy":
        with open(path, "wb") as f:
            np.save(f, np.arange(5.0))
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(Marker(d / "PWNED_raw")))
    elif kind == "pickle_in_npz":
        with open(path, "wb") as f:
            np.savez(f, meta=np.array([Marker(d / "PWNED_npz")], dtype=object))
    elif kind == "missing":
        pass
    elif kind == "directory":
        path.mkdir(exist_ok=True)
    elif kind == "other_config_params":       # vqvae-tiny's config, vqvae-small's arrays
        save_checkpoint(path, kind="tokenizer", config=good.config,
                        params=init_tokenizer_params(tokenizer_config("vqvae-small")))
    elif kind == "missing_param":
        params = dict(good.params)
        del params["quant.codebook"]
        save_checkpoint(path, kind="tokenizer", config=good.config, params=params)
    elif kind == "no_model_config":
        save_checkpoint(path, kind="tokenizer", config={}, params=good.params)
    elif kind == "unknown_config_field":
        save_checkpoint(path, kind="tokenizer", config={"model": {**model, "colour": "red"}},
                        params=good.params)
    elif kind == "config_field_of_wrong_type":
        save_checkpoint(path, kind="tokenizer",
                        config={"model": {**model, "num_codes": "sixty-four"}},
                        params=good.params)
    elif kind == "negative_num_codes":
        save_checkpoint(path, kind="tokenizer", config={"model": {**model, "num_codes": -64}},
                        params=good.params)
    elif kind == "model_config_not_a_dict":
        save_checkpoint(path, kind="tokenizer", config={"model": [1, 2, 3]},
                        params=good.params)
    else:
        raise KeyError(kind)
    return path


BAD_TOKENIZERS = ["truncated", "truncated_tail", "empty", "corrupt", "foreign_text",
                  "foreign_npz", "single_npy", "pickle", "pickle_in_npz", "missing",
                  "directory", "other_config_params", "missing_param", "no_model_config",
                  "unknown_config_field", "config_field_of_wrong_type",
                  "negative_num_codes", "model_config_not_a_dict"]


def _tokenizer_commands(bad, ck):
    return {"encode": ["encode", "--tokenizer", bad, ck / "img.png"],
            "decode": ["decode", "--tokenizer", bad, "--ids", ck / "nowhere.json",
                       "--out", ck / "never.png"],
            "eval-tokenizer": ["eval-tokenizer", "--tokenizer", bad, "--n-images", 4],
            "train-prior": ["train-prior", "--tokenizer", bad, "--config", "gpt-tiny",
                            "--n-images", 4, "--steps", 1, "--out", ck / "never_prior.npz"],
            "sample": ["sample", "--tokenizer", bad, "--prior", ck / "prior.npz",
                       "--prompt", "a red circle", "-n", 1, "--out", ck / "never.png"],
            "caption": ["caption", "--tokenizer", bad, "--prior", ck / "prior.npz",
                        ck / "img.png"]}


@pytest.mark.parametrize("kind", BAD_TOKENIZERS)
def test_bad_tokenizer_checkpoint_is_one_line_for_every_command(kind, ck, capsys):
    bad = _craft(ck, kind)
    for command, args in _tokenizer_commands(bad, ck).items():
        code, out, err = cli(capsys, *args)
        assert_one_line_error(code, err, bad.name)
        assert not (ck / "never.png").exists() and not (ck / "never_prior.npz").exists()
    assert not (ck / "PWNED_raw").exists() and not (ck / "PWNED_npz").exists()
    with pytest.raises(CheckpointError, match=bad.name):
        Tokenizer.load(bad)


@pytest.mark.parametrize("kind", ["pickle", "pickle_in_npz"])
def test_a_pickle_is_refused_by_name_and_never_run(kind, ck, capsys):
    bad = _craft(ck, kind)
    code, _, err = cli(capsys, "encode", "--tokenizer", bad, ck / "img.png")
    assert "pickle" in assert_one_line_error(code, err, bad.name)
    assert not list(ck.glob("PWNED*"))


def test_a_prior_given_as_tokenizer_and_the_reverse(ck, capsys):
    code, _, err = cli(capsys, "encode", "--tokenizer", ck / "prior.npz", ck / "img.png")
    assert "tokenizer" in assert_one_line_error(code, err, "prior.npz")
    code, _, err = cli(capsys, "train-prior", "--tokenizer", ck / "prior.npz", "--config",
                       "gpt-tiny", "--n-images", 4, "--steps", 1, "--out", ck / "p2.npz")
    assert_one_line_error(code, err, "prior.npz")
    code, _, err = cli(capsys, "sample", "--tokenizer", ck / "tok.npz", "--prior",
                       ck / "tok.npz", "--prompt", "a red circle", "-n", 1)
    assert "prior" in assert_one_line_error(code, err, "tok.npz")


def _bad_prior(ck, kind):
    good = load_checkpoint(ck / "prior.npz")
    path = ck / f"bad_prior_{kind}.npz"
    if kind == "truncated":
        path.write_bytes((ck / "prior.npz").read_bytes()[:3000])
    elif kind == "no_vocab":
        save_checkpoint(path, kind="prior", config={"model": good.config["model"]},
                        params=good.params)
    elif kind == "bad_vocab":
        save_checkpoint(path, kind="prior",
                        config={**good.config, "vocab": {"words": "oops"}}, params=good.params)
    elif kind == "other_config_params":
        cfg = dict(good.config["model"], n_embd=64)
        save_checkpoint(path, kind="prior", config={**good.config, "model": cfg},
                        params=good.params)
    elif kind == "unknown_config_field":
        cfg = dict(good.config["model"], dropout=0.1)
        save_checkpoint(path, kind="prior", config={**good.config, "model": cfg},
                        params=good.params)
    return path


@pytest.mark.parametrize("kind", ["truncated", "no_vocab", "bad_vocab", "other_config_params",
                                  "unknown_config_field"])
def test_bad_prior_checkpoint_is_one_line(kind, ck, capsys):
    bad = _bad_prior(ck, kind)
    for args in (["sample", "--prompt", "a red circle", "-n", 1, "--out", ck / "never.png"],
                 ["caption", ck / "img.png"],
                 ["eval-prior", "--prompts", 1, "-n", 1, "--captions", 1]):
        code, _, err = cli(capsys, *args, "--tokenizer", ck / "tok.npz", "--prior", bad)
        assert_one_line_error(code, err, bad.name)


def test_a_prior_of_another_codebook_size_is_refused(ck, capsys, tmp_path):
    """A prior written for 32 codes with a 64-code tokenizer: a clear error, not garbage."""
    good = load_checkpoint(ck / "prior.npz")
    from tinytok.prior.gpt import init_gpt_params
    from tinytok.training.prior_data import shapes_vocab
    vocab = shapes_vocab(32, 8)
    config = gpt_config("gpt-tiny", vocab_size=vocab.size)
    path = tmp_path / "prior32.npz"
    save_checkpoint(path, kind="prior", params=init_gpt_params(config),
                    config={**good.config, "model": asdict(config), "vocab": vocab.to_dict()})
    code, _, err = cli(capsys, "sample", "--tokenizer", ck / "tok.npz", "--prior", path,
                       "--prompt", "a red circle", "-n", 1, "--out", tmp_path / "x.png")
    assert "codes" in assert_one_line_error(code, err)


def test_default_checkpoints_missing_is_one_line(ck, capsys):
    """Without --tokenizer the shipped checkpoint is used; where absent, say so."""
    from tinytok.pipeline import SHIPPED
    if SHIPPED["shapes-tokenizer"].exists():
        pytest.skip("the shipped checkpoint exists here")
    code, _, err = cli(capsys, "encode", ck / "img.png")
    assert_one_line_error(code, err, "shapes_tokenizer.npz")


# ---------------------------------------------------------------------------------------
# 3. Images

def _png_header_only(width, height):
    """A PNG whose header claims width x height, with almost no pixel data."""
    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data)))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _bad_image(d, kind):
    rng = np.random.default_rng(0)
    path = d / f"bad_{kind}.png"
    if kind == "missing":
        pass
    elif kind == "text":
        path.write_text("not an image")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
        path.write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    elif kind == "tiny":
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(path)
    elif kind == "thin":
        Image.fromarray(rng.integers(0, 256, (4, 500, 3), dtype=np.uint8)).save(path)
    elif kind == "huge_65mp":                   # above MAX_PIXELS, under Pillow's own limit
        path.write_bytes(_png_header_only(8100, 8100))
    elif kind == "huge_400mp":                  # a decompression bomb by Pillow's rule too
        path.write_bytes(_png_header_only(20000, 20000))
    elif kind == "folder":
        path.mkdir(exist_ok=True)
    elif kind == "jpeg_garbage":
        path = d / "bad_garbage.jpg"
        path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    return path


BAD_IMAGES = ["missing", "text", "empty", "truncated", "tiny", "thin", "huge_65mp",
              "huge_400mp", "folder", "jpeg_garbage"]


@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_bad_image_is_one_line(kind, ck, capsys):
    bad = _bad_image(ck, kind)
    code, _, err = cli(capsys, "encode", "--tokenizer", ck / "tok.npz", bad)
    assert_one_line_error(code, err, bad.name)
    code, _, err = cli(capsys, "caption", "--tokenizer", ck / "tok.npz", "--prior",
                       ck / "prior.npz", bad)
    assert_one_line_error(code, err, bad.name)
    with pytest.raises(ImageError, match=bad.name):
        load_image(bad)


def test_unreadable_image_file_is_one_line(ck, capsys, tmp_path):
    path = tmp_path / "locked.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: a mode-000 file is still readable")
        code, _, err = cli(capsys, "encode", "--tokenizer", ck / "tok.npz", path)
        assert_one_line_error(code, err, path.name)
    finally:
        path.chmod(0o644)


def _odd_mode_images(d):
    """Images in the modes that must be converted to RGB, not refused."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    files = {}
    files["gray.png"] = Image.fromarray(rgb[..., 0])
    files["palette.png"] = Image.fromarray(rgb).convert("P")
    files["rgba.png"] = Image.fromarray(np.dstack([rgb, rgb[..., :1]]))
    files["gray_alpha.png"] = Image.merge("LA", [Image.fromarray(rgb[..., 0]),
                                                 Image.fromarray(rgb[..., 1])])
    files["bilevel.png"] = Image.fromarray(rgb[..., 0]).convert("1")
    files["gray16.png"] = Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))
    files["cmyk.jpg"] = Image.fromarray(rgb).convert("CMYK")
    files["float.tif"] = Image.fromarray(rgb[..., 0].astype(np.float32) / 255)
    files["big.png"] = Image.fromarray(np.repeat(np.repeat(rgb, 20, 0), 20, 1))  # 800x960
    for name, img in files.items():
        img.save(d / name)
    return list(files)


def test_odd_image_modes_are_converted_and_encoded(ck, capsys, tmp_path):
    names = _odd_mode_images(tmp_path)
    for name in names:
        image = load_image(tmp_path / name)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8, name
    code, out, err = cli(capsys, "encode", "--tokenizer", ck / "tok.npz", "--json",
                         *[tmp_path / n for n in names])
    assert code == 0, err
    grids = json.loads(out)
    assert len(grids) == len(names)
    assert all(np.array(g).shape == (8, 8) for g in grids.values())


def test_16_bit_is_scaled_not_clipped_and_alpha_goes_onto_white(tmp_path):
    Image.fromarray(np.full((16, 16), 32896, np.uint16)).save(tmp_path / "mid16.png")
    assert np.all(load_image(tmp_path / "mid16.png") == 128)       # 32896 / 257 = 128
    Image.fromarray(np.zeros((16, 16, 4), np.uint8)).save(tmp_path / "clear.png")
    assert np.all(load_image(tmp_path / "clear.png") == 255)        # transparent -> white


def test_train_tokenizer_on_an_empty_or_broken_folder(ck, capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no pictures here")
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(broken / "a.png")
    (broken / "b.png").write_text("not a png")
    for folder, named in ((empty, "empty"), (tmp_path / "notes", "notes"),
                          (broken, "b.png"), (tmp_path / "nowhere", "nowhere")):
        code, _, err = cli(capsys, "train-tokenizer", "--data", folder, "--config",
                           "vqvae-tiny", "--steps", 1, "--out", tmp_path / "t.npz")
        assert_one_line_error(code, err, named)
        code, _, err = cli(capsys, "eval-tokenizer", "--tokenizer", ck / "tok.npz",
                           "--data", folder)
        assert_one_line_error(code, err, named)
    assert not (tmp_path / "t.npz").exists()


# ---------------------------------------------------------------------------------------
# 3. Token ids for decode

BAD_IDS = {"out_of_range": [[[64] * 8] * 8], "negative": [[[-1] * 8] * 8],
           "wrong_grid": [[[0] * 4] * 4], "one_row": [[0] * 8], "floats": [[[0.5] * 8] * 8],
           "ragged": [[[0] * 8] * 7 + [[0] * 7]], "empty_list": [], "empty_dict": {},
           "string": "hello", "number": 5, "bools": [[[True] * 8] * 8],
           "huge_int": [[[10 ** 30] * 8] * 8], "null": None,
           "dict_of_bad": {"a.png": [[1, 2], [3, 4]]}}


@pytest.mark.parametrize("kind", list(BAD_IDS) + ["not_json", "binary", "missing",
                                                  "deeply_nested"])
def test_bad_token_ids_for_decode(kind, ck, capsys, tmp_path):
    path = tmp_path / f"{kind}.json"
    if kind in BAD_IDS:
        path.write_text(json.dumps(BAD_IDS[kind]))
    elif kind == "not_json":
        path.write_text("{nope")
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00\x01")
    elif kind == "deeply_nested":
        path.write_text("[" * 100_000)
    code, _, err = cli(capsys, "decode", "--tokenizer", ck / "tok.npz", "--ids", path,
                       "--out", tmp_path / "out.png")
    assert_one_line_error(code, err)
    assert not (tmp_path / "out.png").exists()


def test_check_ids_raises_shape_error(ck):
    tok = Tokenizer.load(ck / "tok.npz")
    for ids in (np.full((1, 8, 8), 64), np.full((8, 8), -1), np.zeros((2, 4, 4), int),
                np.zeros((1, 1, 8, 8), int), np.zeros((1, 1, 8, 8), bool)):
        with pytest.raises(ShapeError):
            tok.decode(ids)
    for ids, dtype in ((np.zeros((8, 8)), "float64"), (np.zeros((8, 8), bool), "bool")):
        with pytest.raises(DTypeError, match=f"^token ids must be integers, got {dtype}$"):
            tok.decode(ids)
    assert tok.decode(np.zeros((8, 8), np.uint8)).shape == (1, 32, 32, 3)


# ---------------------------------------------------------------------------------------
# 3. Prompts

PROMPT = ["sample", "-n", 1, "--cfg", 1, "--out"]


@pytest.mark.parametrize("prompt, expect", [
    ("", "empty"), ("   ", "empty"), ("...", "empty"),
    ("a large red zebra", "zebra"),
    ("a large red circle at the top left " * 2, "words"),
    ("a small blue square at the bottom right " * 20, "words")])
def test_bad_prompts(prompt, expect, ck, capsys, tmp_path):
    code, _, err = cli(capsys, *PROMPT, tmp_path / "s.png", "--prompt", prompt,
                       "--tokenizer", ck / "tok.npz", "--prior", ck / "prior.npz")
    line = assert_one_line_error(code, err, expect)
    if expect in ("empty", "zebra"):
        assert "circle" in line and "triangle" in line      # the known words are listed
    assert not (tmp_path / "s.png").exists()


def test_prompt_errors_from_the_api(ck):
    from tinytok.pipeline import Pipeline
    pipe = Pipeline.load(ck / "tok.npz", ck / "prior.npz")
    for prompt in ("", "a red zebra", "circle " * 40, None, 5):
        with pytest.raises(PromptError):
            pipe.generate_codes(prompt, 1)


def test_prompts_are_case_and_punctuation_tolerant(ck, capsys, tmp_path):
    code, out, err = cli(capsys, *PROMPT, tmp_path / "s.png", "--prompt",
                         "A Large RED circle, at the top-left.", "--tokenizer",
                         ck / "tok.npz", "--prior", ck / "prior.npz")
    # "top-left" is one (unknown) word by split_words' rule: an error that names it
    assert_one_line_error(code, err, "top-left")
    code, out, err = cli(capsys, *PROMPT, tmp_path / "s.png", "--prompt",
                         "A Large RED circle, at the top left.", "--tokenizer",
                         ck / "tok.npz", "--prior", ck / "prior.npz")
    assert code == 0, err


# ---------------------------------------------------------------------------------------
# 3. Arguments and backends

TRAIN = ["train-tokenizer", "--config", "vqvae-tiny", "--n-images", 4, "--steps", 1,
         "--batch-size", 2]


@pytest.mark.parametrize("extra, named", [
    (["--steps", 0], "--steps"), (["--steps", -3], "--steps"), (["--steps", "1.5"], "--steps"),
    (["--steps", "many"], "--steps"), (["--batch-size", 0], "--batch-size"),
    (["--batch-size", -1], "--batch-size"), (["--lr", 0], "--lr"), (["--lr", -1], "--lr"),
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"),
    (["--checkpoint-every", 0], "--checkpoint-every"), (["--log-every", 0], "--log-every"),
    (["--warmup", -5], "warmup"), (["--n-images", 0], "--n-images"), (["--codes", 0], "--codes"),
    (["--restart-every", 0], "--restart-every"), (["--quantizer", "lfq"], "--quantizer"),
    (["--config", "vqvae-huge"], "vqvae-huge"), (["--data", "imagenet"], "imagenet"),
    (["--seed", -1], "seed"), (["--seed", 2 ** 70], "seed"), (["--split", "heldout"], "--split")])
def test_bad_training_arguments(extra, named, capsys, tmp_path):
    code, _, err = cli(capsys, *TRAIN, "--out", tmp_path / "t.npz", *extra)
    assert_one_line_error(code, err, named)
    assert not (tmp_path / "t.npz").exists()


@pytest.mark.parametrize("extra, named", [
    (["--temperature", 0], "--temperature"), (["--temperature", -1], "--temperature"),
    (["--temperature", "nan"], "--temperature"), (["--temperature", "inf"], "--temperature"),
    (["--top-p", 0], "--top-p"), (["--top-p", 1.5], "--top-p"), (["--top-p", -0.1], "--top-p"),
    (["--top-p", "nan"], "--top-p"), (["--top-k", 0], "--top-k"), (["--cfg", -1], "--cfg"),
    (["-n", 0], "-n"), (["--seed", -1], "seed")])
def test_bad_sampling_arguments(extra, named, ck, capsys, tmp_path):
    code, _, err = cli(capsys, "sample", "--prompt", "a red circle", "--tokenizer",
                       ck / "tok.npz", "--prior", ck / "prior.npz", "--out",
                       tmp_path / "s.png", *extra)
    assert_one_line_error(code, err, named)
    assert not (tmp_path / "s.png").exists()


def test_top_p_of_one_is_allowed(ck, capsys, tmp_path):
    code, _, err = cli(capsys, "sample", "--prompt", "a red circle", "-n", 1, "--top-p", 1,
                       "--cfg", 1, "--tokenizer", ck / "tok.npz", "--prior",
                       ck / "prior.npz", "--out", tmp_path / "s.png")
    assert code == 0, err


def test_bad_arguments_from_the_api():
    for bad in (dict(steps=0), dict(steps=-1), dict(steps=2.5), dict(steps=True),
                dict(batch_size=0), dict(lr=0.0), dict(lr=float("nan")),
                dict(lr=float("inf")), dict(warmup=-1), dict(checkpoint_every=0)):
        with pytest.raises(ConfigError):
            TrainSettings(**bad).check()
    from tinytok import Sampling
    for args in ((0, None, None), (-1, None, None), (float("nan"), None, None),
                 (1, 0, None), (1, 1.5, None), (1, None, 0), (1, None, 1.01),
                 (1, None, float("nan"))):
        with pytest.raises(ConfigError):
            Sampling(*args)


def test_unknown_backend(capsys, monkeypatch):
    code, _, err = cli(capsys, "--backend", "torch", "encode", "x.png")
    assert_one_line_error(code, err, "torch")
    monkeypatch.setattr(backend, "_active", None)
    monkeypatch.setenv("TINYTOK_BACKEND", "torch")
    code, _, err = cli(capsys, "encode", "x.png")
    assert_one_line_error(code, err, "torch", "numpy")
    with pytest.raises(BackendError):
        backend.use("torch")


def test_cupy_backend_without_cupy_says_how_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)          # `import cupy` now fails
    saved = backend._active
    code, _, err = cli(capsys, "--backend", "cupy", "encode", "x.png")
    assert_one_line_error(code, err, "pip install 'tinytok[cuda]'")
    assert backend._active is saved                          # still usable afterwards
    monkeypatch.setattr(backend, "_active", None)
    monkeypatch.setenv("TINYTOK_BACKEND", "cupy")
    code, _, err = cli(capsys, "encode", "x.png")
    assert_one_line_error(code, err, "pip install 'tinytok[cuda]'")


def test_unknown_backend_in_a_real_process(tmp_path):
    env = {**os.environ, "TINYTOK_BACKEND": "torch"}
    r = subprocess.run([sys.executable, "-m", "tinytok.cli", "encode", "x.png"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "torch" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------
# 4. Numerical guards

def _tiny_good_checkpoint(ck, tmp_path, name="good.npz"):
    path = tmp_path / name
    path.write_bytes((ck / "tok.npz").read_bytes())
    return path


RESUME = ["train-tokenizer", "--config", "vqvae-tiny", "--quantizer", "ema", "--n-images", 16,
          "--batch-size", 4, "--steps", 12, "--log-every", 100, "--resume"]


def test_divergent_lr_stops_with_the_step_and_keeps_the_checkpoint(ck, capsys, tmp_path):
    good = _tiny_good_checkpoint(ck, tmp_path)
    before = good.read_bytes()
    code, _, err = cli(capsys, *RESUME, "--lr", "1e6", "--out", good)
    last = last_line_error(code, err, "step")
    assert "nan" in last.lower() or "inf" in last.lower()
    assert good.read_bytes() == before, "the good checkpoint was overwritten"
    assert not list(tmp_path.glob(".*.tmp"))


def test_divergent_lr_with_frequent_checkpoints_keeps_the_good_checkpoint(ck, capsys,
                                                                          tmp_path):
    """With --checkpoint-every 1 the step before the NaN is saved too: its parameters are
    already wrecked by the huge learning rate (|w| ~ 1e5), yet it replaces the good one."""
    good = _tiny_good_checkpoint(ck, tmp_path)
    before = good.read_bytes()
    code, _, err = cli(capsys, *RESUME, "--lr", "1e6", "--checkpoint-every", 1, "--out", good)
    last_line_error(code, err, "step")
    assert "kept" in err
    assert good.read_bytes() == before, \
        f"'the last good checkpoint was kept', but {good.name} now holds step " \
        f"{load_checkpoint(good).step} with |w| up to " \
        f"{max(float(np.abs(v).max()) for v in load_checkpoint(good).params.values()):.3g}"


def test_divergent_prior_keeps_the_checkpoint(ck, capsys, tmp_path):
    good = tmp_path / "prior.npz"
    good.write_bytes((ck / "prior.npz").read_bytes())
    before = good.read_bytes()
    code, _, err = cli(capsys, "train-prior", "--tokenizer", ck / "tok.npz", "--config",
                       "gpt-tiny", "--n-images", 16, "--batch-size", 4, "--steps", 40,
                       "--log-every", 100, "--lr", "1e6", "--conversations", 0, "--resume",
                       "--out", good)
    last_line_error(code, err, "step")
    assert good.read_bytes() == before


MICRO = TokenizerConfig("micro", image_size=16, hidden=8, res_hidden=4, n_res=1, code_dim=4,
                        num_codes=16)


@pytest.mark.parametrize("what", ["gradient", "loss"])
def test_non_finite_gradient_or_loss_names_step_and_parameter(what, ck, tmp_path,
                                                              monkeypatch):
    """NaN injected at step 4 (1-based): TrainingDiverged naming step and parameter; the
    periodic checkpoint of step 2 is kept byte for byte."""
    import tinytok.training.steps as steps   # the training step calls the model from here
    from tinytok import parallel
    monkeypatch.setattr(parallel, "_threads", 1)  # one batch part: a call per step
    calls = {"n": 0}
    if what == "gradient":
        original = steps.tokenizer_backward

        def poisoned(cache, grads, config, *args, **kwargs):
            result = original(cache, grads, config, *args, **kwargs)
            calls["n"] += 1
            if calls["n"] == 4:
                grads["dec.conv_out.w" if "dec.conv_out.w" in grads
                      else sorted(grads)[0]].flat[0] = np.nan
            return result
        monkeypatch.setattr(steps, "tokenizer_backward", poisoned)
    else:
        original = steps.tokenizer_forward

        def poisoned(*args, **kwargs):
            out, cache = original(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == 4:
                out = {**out, "loss": out["loss"] * np.float32("inf")}
            return out, cache
        monkeypatch.setattr(steps, "tokenizer_forward", poisoned)

    out = tmp_path / "nan.npz"
    settings = TrainSettings(steps=6, batch_size=2, checkpoint_every=2)
    images = np.ascontiguousarray(make_shapes(8, seed=3).images[:, ::2, ::2])  # 16x16
    with pytest.raises(TrainingDiverged) as info:
        train_tokenizer(images, MICRO, settings, str(out), TokenizerRecipe(kmeans_images=8),
                        **QUIET)
    message = str(info.value)
    assert "step 4" in message and "checkpoint" in message
    if what == "gradient":
        assert any(repr(k) in message or k in message for k in init_tokenizer_params(MICRO))
    assert isinstance(info.value, TinytokError)
    assert load_checkpoint(out).step == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_past_the_end_does_not_rewrite_the_checkpoint(ck, capsys, tmp_path):
    """--resume with --steps below the checkpoint's step: nothing to do, file untouched."""
    good = _tiny_good_checkpoint(ck, tmp_path)                # holds step 2
    before = good.read_bytes()
    code, out, err = cli(capsys, "train-tokenizer", "--config", "vqvae-tiny", "--n-images",
                         16, "--steps", 1, "--lr", "1e6", "--resume", "--out", good)
    assert good.read_bytes() == before, \
        f"resuming at step 2 of 1 rewrote {good.name} (code {code}, stderr {err!r})"


@pytest.mark.parametrize("trained, resumed", [("ema", "vq"), ("ema", "gumbel"),
                                              ("vq", "ema")])
def test_resume_with_another_quantizer_is_refused(trained, resumed, ck, capsys, tmp_path):
    """A checkpoint trained with one quantizer, resumed with another: a one-line error
    naming the file (the optimizer and EMA states differ), the file untouched."""
    good = tmp_path / f"q_{trained}.npz"
    if trained == "ema":
        good.write_bytes((ck / "tok.npz").read_bytes())
    else:
        code, _, err = cli(capsys, "train-tokenizer", "--config", "vqvae-tiny", "--quantizer",
                           trained, "--n-images", 4, "--steps", 1, "--batch-size", 2,
                           "--no-kmeans", "--out", good)
        assert code == 0, err
    before = good.read_bytes()
    code, _, err = cli(capsys, "train-tokenizer", "--config", "vqvae-tiny", "--quantizer",
                       resumed, "--n-images", 16, "--steps", 3, "--batch-size", 2,
                       "--resume", "--out", good)
    last_line_error(code, err, good.name)
    assert good.read_bytes() == before
