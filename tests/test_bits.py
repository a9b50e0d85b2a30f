"""Bits per picture, and the thumbnail baseline a tokenizer must beat to earn them."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tinytok.data.datasets import make_shapes
from tinytok.evaluate import best_thumbnail, psnr, round_channels, thumbnail, thumbnail_cost
from tinytok.pipeline import Tokenizer
from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "TINYTOK_BACKEND": "numpy"}
ROOT = Path(__file__).resolve().parent.parent
IMAGES = make_shapes(16, seed=3).images  # (16, 32, 32, 3) uint8


def test_thumbnail_keeps_shape_and_dtype():
    out = thumbnail(IMAGES, 5, 3)
    assert out.shape == IMAGES.shape and out.dtype == np.uint8


def test_thumbnail_cost_is_pixels_times_channels_times_bits():
    assert thumbnail_cost(6, 5) == 540
    assert thumbnail_cost(9, 6) == 9 * 9 * 3 * 6


def test_full_size_at_8_bits_is_the_picture():
    assert psnr(IMAGES, thumbnail(IMAGES, 32, 8)).min() > 40


def test_rounding_of_a_constant_image():
    """100 at 2 bits: level round(100 / 255 * 3) = 1, shown as round(1 * 255 / 3) = 85."""
    flat = np.full((1, 32, 32, 3), 100, np.uint8)
    assert (thumbnail(flat, 4, 2) == 85).all()
    assert (round_channels(np.array([0, 255, 200], np.uint8), 1) == [0, 255, 255]).all()
    assert (round_channels(np.arange(256, dtype=np.uint8), 8) == np.arange(256)).all()


def test_best_thumbnail_respects_the_budget_and_more_bits_never_hurt():
    scores = []
    for max_bits in (12, 100, 300, 576, 1500):
        best = best_thumbnail(IMAGES, max_bits)
        assert best.cost <= max_bits and best.cost == thumbnail_cost(best.size, best.bits)
        assert np.isclose(best.psnr_db, psnr(IMAGES, thumbnail(IMAGES, best.size,
                                                               best.bits)).mean())
        scores.append(best.psnr_db)
    assert scores == sorted(scores)
    assert best_thumbnail(IMAGES, 11) is None  # 2 x 2 pixels at 1 bit already cost 12


def test_bits_per_picture_of_a_small_config():
    config = tokenizer_config("vqvae-tiny")  # 8 x 8 grid of 64 codes
    tokenizer = Tokenizer(init_tokenizer_params(config), config)
    assert tokenizer.vocab_size == 64
    assert tokenizer.bits_per_picture == 8 * 8 * 6


def test_eval_tokenizer_prints_bits_and_margin():
    r = subprocess.run([sys.executable, "-m", "tinytok.cli", "eval-tokenizer", "--tokenizer",
                        str(ROOT / "data/checkpoints/shapes_tokenizer.npz"), "--data", "shapes",
                        "--n-images", "16"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(":", 1) for line in r.stdout.splitlines())
    lines = {k.strip(): v.strip() for k, v in lines.items()}
    assert lines["vocab_size"] == "256" and lines["bits_per_picture"] == "512"  # 8 x 8 x 8
    assert int(lines["thumbnail_bits"]) <= 512
    for key in ("thumbnail_size", "thumbnail_bits_per_channel", "thumbnail_psnr_db"):
        assert key in lines
    margin = float(lines["psnr_db"]) - float(lines["thumbnail_psnr_db"])
    assert abs(float(lines["margin_db"]) - margin) < 0.02  # all three shown to 4 digits
