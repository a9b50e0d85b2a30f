"""Grids of 8x8 or 16x16 tokens, pictures of 32x32 or 64x64: the data, the Tokenizer, and
the commands (train-tokenizer --grid/--size, eval-tokenizer, encode, decode) follow them."""
import json

import numpy as np
import pytest
from PIL import Image

from test_cli import ok, tinytok
from tinytok.cli import main
from tinytok.data.datasets import make_shapes, training_images
from tinytok.errors import ConfigError, ShapeError
from tinytok.pipeline import Tokenizer
from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_config, with_grid
from tinytok.training.checkpoint import load_checkpoint

TINY = ("--config", "vqvae-tiny", "--steps", 2, "--batch-size", 4, "--log-every", 1)


# ---------------------------------------------------------------- data at another size

@pytest.mark.parametrize("source, n, expect", [("photos", 6, 6), ("faces", None, 90),
                                               ("digits", 5, 5)])
def test_training_images_at_64(source, n, expect):
    images = training_images(source, n, seed=1, size=64)
    assert images.shape == (expect, 64, 64, 3) and images.dtype == np.uint8
    assert images.std() > 5  # real pictures, not an empty canvas


def test_shapes_exist_at_32_only():
    assert training_images("shapes", 3, size=32).shape == (3, 32, 32, 3)
    with pytest.raises(ConfigError, match="shapes are drawn at 32x32 only"):
        training_images("shapes", 3, size=64)
    with pytest.raises(ConfigError, match="size must be"):
        training_images("photos", 3, size=0)


# ---------------------------------------------------------------- the Tokenizer

@pytest.mark.parametrize("size, grid", [(32, 16), (64, 16), (64, 32)])
def test_tokenizer_encode_decode_follow_the_grid(size, grid):
    config = with_grid("vqvae-tiny", size, grid)
    tok = Tokenizer(init_tokenizer_params(config, seed=0), config)
    pictures = training_images("photos", 3, seed=2, size=size)
    ids = tok.encode(pictures)
    assert ids.shape == (3, grid, grid) and tok.grid_size == grid
    assert tok.decode(ids).shape == (3, size, size, 3)
    assert tok.bits_per_picture == grid * grid * 6  # 64 codes: 6 bits a token
    assert tok.code_tiles().shape == (64, size, size, 3)
    with pytest.raises(ShapeError, match=f"\\(N, {grid}, {grid}\\)"):
        tok.decode(np.zeros((1, 8, 8), int) if grid != 8 else np.zeros((1, 4, 4), int))
    with pytest.raises(ShapeError, match=f"{size}, {size}, 3"):
        tok.encode(make_shapes(1).images if size != 32 else np.zeros((1, 64, 64, 3), np.uint8))


# ---------------------------------------------------------------- the commands

def test_16x16_grid_trains_encodes_decodes_and_evaluates(tmp_path):
    ok(tinytok("train-tokenizer", *TINY, "--n-images", 16, "--grid", 16, "--out", "t.npz",
               cwd=tmp_path))
    assert load_checkpoint(tmp_path / "t.npz").config["model"]["downsamplings"] == 1
    Image.fromarray(make_shapes(1, seed=4).images[0]).save(tmp_path / "s.png")
    r = ok(tinytok("encode", "--tokenizer", "t.npz", "--json", "s.png", cwd=tmp_path))
    assert np.array(json.loads(r.stdout)["s.png"]).shape == (16, 16)
    (tmp_path / "ids.json").write_text(r.stdout)
    ok(tinytok("decode", "--tokenizer", "t.npz", "--ids", "ids.json", "--out", "d.png",
               "--scale", 1, cwd=tmp_path))
    with Image.open(tmp_path / "d.png") as img:
        assert min(img.size) >= 32
    r = ok(tinytok("eval-tokenizer", "--tokenizer", "t.npz", "--n-images", 8, "--json",
                   cwd=tmp_path))
    figures = json.loads(r.stdout)
    assert (figures["image_size"], figures["grid_size"]) == (32, 16)
    assert figures["bits_per_picture"] == 16 * 16 * 6
    assert figures["thumbnail_bits"] <= figures["bits_per_picture"]


def test_64x64_pictures_from_a_folder(tmp_path):
    """--size 64 on a folder: 16x16 tokens; eval-tokenizer and encode follow the checkpoint."""
    folder = tmp_path / "mine"
    folder.mkdir()
    for i, picture in enumerate(training_images("photos", 12, seed=3, size=80)):
        Image.fromarray(picture).save(folder / f"p{i:02d}.png")
    ok(tinytok("train-tokenizer", *TINY, "--data", "mine", "--size", 64, "--out", "t.npz",
               cwd=tmp_path))
    model = load_checkpoint(tmp_path / "t.npz").config["model"]
    assert model["image_size"] == 64 and "downsamplings" not in model  # the default two
    r = ok(tinytok("eval-tokenizer", "--tokenizer", "t.npz", "--data", "mine", "--json",
                   "--pictures", "pics", cwd=tmp_path))
    figures = json.loads(r.stdout)
    assert (figures["image_size"], figures["grid_size"]) == (64, 16)
    assert figures["thumbnail_size"] <= 16 and figures["thumbnail_bits"] <= 16 * 16 * 6
    with Image.open(tmp_path / "pics" / "token_map.png") as img:
        assert img.size == (64 * 8, 64 * 8)
    r = ok(tinytok("encode", "--tokenizer", "t.npz", "--json", "mine/p00.png", cwd=tmp_path))
    assert np.array(json.loads(r.stdout)["mine/p00.png"]).shape == (16, 16)


@pytest.mark.parametrize("args, words", [
    (["--data", "shapes", "--size", "64"], "shapes are drawn at 32x32 only"),
    (["--data", "photos", "--size", "64", "--grid", "8"], "choose a grid of 32 or 16"),
    (["--data", "photos", "--size", "30"], "multiple of 4"),
    (["--data", "photos", "--size", "30", "--grid", "15"], None),  # 30 / 2: it fits
])
def test_train_tokenizer_refuses_sizes_that_do_not_fit(args, words, tmp_path, capsys,
                                                       monkeypatch):
    from tinytok.training import tokenizer_trainer
    monkeypatch.setattr(tokenizer_trainer, "train_tokenizer", lambda *a, **k: None)
    code = main(["train-tokenizer", "--config", "vqvae-tiny", "--n-images", "4", *args,
                 "--steps", "1", "--out", str(tmp_path / "t.npz")])
    err = capsys.readouterr().err
    if words is None:
        assert code == 0, err
        return
    assert code == 2 and err.count("\n") == 1 and words in err, err


def test_eval_tokenizer_refuses_another_size(tmp_path, capsys):
    config = tokenizer_config("vqvae-tiny")
    Tokenizer(init_tokenizer_params(config), config).save(tmp_path / "t.npz")
    code = main(["eval-tokenizer", "--tokenizer", str(tmp_path / "t.npz"), "--size", "64"])
    err = capsys.readouterr().err
    assert code == 2 and "reads 32x32 pictures" in err, err


def test_16x16_grid_flops_by_hand():
    """vqvae-ref with one downsampling: conv2 and its mirror are 3x3 at 16x16, the trunk
    works on 16x16 cells (4 times the 8x8 trunk's work)."""
    from tinytok.bench import flops
    f = flops.vqvae_flops(with_grid("vqvae-ref", 32, 16), 1)
    cells = 16 * 16
    res = 2 * (2 * cells * 32 * 128 * 9 + 2 * cells * 128 * 32)
    enc = (2 * cells * 64 * 3 * 16 + 2 * cells * 128 * 64 * 9 + 2 * cells * 128 * 128 * 9
           + res + 2 * cells * 64 * 128)
    dec = 2 * cells * 128 * 64 * 9 + res + 2 * cells * 64 * 128 * 9 + 2 * cells * 64 * 3 * 16
    assert f == {"encoder": enc, "vq": 2 * cells * 64 * 512, "decoder": dec}
