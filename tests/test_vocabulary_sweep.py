"""The vocabulary sweep (lesson 8's curve) and the chart it is drawn with."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tinytok.bench import vocabulary as sweep
from tinytok.data.datasets import photo_crops
from tinytok.errors import ConfigError, ShapeError
from tinytok.evaluate import best_thumbnail
from tinytok.viz.chart import Series, chart, power_of_two_ticks, round_ticks

ROOT = Path(__file__).resolve().parent.parent
VAL = photo_crops(40, seed=12345, split="val", scales=(2, 4))


def test_frontier_gives_what_best_thumbnail_finds_at_every_budget():
    edge = sweep.frontier(sweep.thumbnail_table(VAL))
    costs = [r["cost"] for r in edge]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    assert all(a["psnr_db"] < b["psnr_db"] for a, b in zip(edge, edge[1:]))
    for budget in (12, 100, 384, 576, 1000, 2048):
        best = best_thumbnail(VAL, budget)
        row = [r for r in edge if r["cost"] <= budget][-1]
        assert (row["size"], row["bits"]) == (best.size, best.bits), budget
        assert math.isclose(row["psnr_db"], best.psnr_db)


@pytest.mark.parametrize("point, bits, grid", [
    ({"quantizer": "ema", "codes": 1024, "care": True, "grid": 8}, 64 * 10, 8),
    ({"quantizer": "fsq", "levels": [8, 5, 5, 5], "grid": 8}, 64 * math.log2(1000), 8),
    ({"quantizer": "ema", "codes": 256, "care": True, "grid": 16}, 256 * 8, 16),
])
def test_point_configs_and_their_bits(point, bits, grid):
    config = sweep.point_config(point)
    assert config.name == "vqvae-small" and config.grid_size == grid
    assert math.isclose(config.grid_size ** 2 * math.log2(config.num_codes), bits)
    assert ("16x16" in sweep.point_name(point)) == (grid == 16)


def test_a_tiny_sweep_writes_its_table_and_resumes(tmp_path, monkeypatch):
    settings = dict(sweep.SETTINGS, config="vqvae-tiny", steps=2, train_images=64,
                    val_images=8, kmeans_images=4, warmup=1)
    points = [{"family": "vq, care", "quantizer": "ema", "codes": 16, "care": True, "grid": 8},
              {"family": "fsq", "quantizer": "fsq", "levels": [3, 3], "grid": 16}]
    out = tmp_path / "t.json"
    table = sweep.run_sweep(out, points, settings, log=lambda text: None)
    assert json.loads(out.read_text()) == table
    rows = {r["name"]: r for r in table["points"]}
    assert set(rows) == {"ema 16, care", "fsq 3,3, 16x16"}
    assert rows["fsq 3,3, 16x16"]["bits_per_picture"] == pytest.approx(256 * math.log2(9))
    for row in rows.values():
        assert 0 < row["usage"] <= 1 and row["train_seconds"] >= 0 and row["psnr_db"] > 5
    used = rows["fsq 3,3, 16x16"]["levels_used"]
    assert len(used) == 2 and all(1 <= u <= 3 for u in used)
    assert "levels_used" not in rows["ema 16, care"]
    assert len(table["thumbnails"]) == 15 * 8 and table["reference"]["bits_per_picture"] == 576
    trained = []
    monkeypatch.setattr(sweep, "train_point", lambda *a, **k: trained.append(a))
    sweep.run_sweep(out, points, settings, resume=True, log=lambda text: None)
    assert trained == []  # every point was already in the table


def test_levels_used_reads_each_channels_digit_back():
    from tinytok.tokenizer.fsq import fsq_ids
    digits = np.array([[0, 4, 2], [7, 4, 0], [3, 4, 2]]).reshape(3, 3, 1, 1)  # N=3, C=3
    ids = fsq_ids(digits, (8, 5, 5))                                           # (3, 1, 1)
    assert sweep.levels_used(ids, (8, 5, 5)) == [3, 1, 2]


def test_the_committed_curve_is_drawn_from_its_table(tmp_path):
    table = sweep.load_table(ROOT / "lessons" / "08_vocabulary_curve.json")
    families = {r["family"] for r in table["points"]}
    assert {"vq, care", "vq, no care", "fsq", "16x16 grid"} <= families
    img = sweep.draw_curve(table, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").exists() and img.size == (640, 700)


def test_ticks_are_round():
    assert round_ticks(18.2, 21.3) == [18.5, 19.0, 19.5, 20.0, 20.5, 21.0]
    assert round_ticks(0, 105) == [0, 20, 40, 60, 80, 100]
    assert power_of_two_ticks(200, 5000) == [256, 512, 1024, 2048, 4096]
    assert power_of_two_ticks(300, 900) == [384, 512, 768]


def test_chart_draws_each_style_and_refuses_bad_series():
    series = [Series("a", [1, 2, 4], [1.0, 2.0, 3.0]), Series("b", [2], [2.5], "points"),
              Series("c", [1, 3], [0.5, 1.5], "steps")]
    img = chart(series, "x", "y", log_x=True, width=300, height=200)
    pixels = np.asarray(img)
    assert img.size == (300, 200)
    assert (np.abs(pixels.astype(int) - (110, 170, 255)).sum(axis=2) == 0).any()  # a's colour
    with pytest.raises(ShapeError):
        chart([Series("bad", [1, 2], [1.0])])
    with pytest.raises(ConfigError):
        chart([Series("bad", [0, 2], [1.0, 2.0])], log_x=True)
    with pytest.raises(ConfigError):
        chart([Series("bad", [1], [1.0], "bars")])
