"""How big a vocabulary? The sweep behind lesson 8: PSNR and code usage against bits.

    python -m tinytok.bench.vocabulary --out lessons/08_vocabulary_curve.json \\
        --picture lessons/08_vocabulary_curve.png          # trains every point (~30 min)
    python -m tinytok.bench.vocabulary --redraw lessons/08_vocabulary_curve.json \\
        --picture lessons/08_vocabulary_curve.png          # only draws the table again

Each point is one short training run of a small tokenizer (vqvae-small, 600 steps of
batch 32, as `tinytok train-tokenizer --data photos` trains, on the same 20,000 training
crops) measured as `tinytok eval-tokenizer --data photos` measures: mean PSNR and code
usage on 2,000 crops of the validation photographs, downscaled 2x and 4x. Its cost is
bits = tokens x log2(vocabulary). The points: VQ with an EMA codebook, 64 to 16,384 codes,
with codebook care (k-means start, dead-code restarts) and without; FSQ at comparable
sizes; a few 16x16 grids. The baseline is the thumbnail frontier: for each budget, the best
thumbnail (tinytok.evaluate.thumbnail) of no more bits on the same pictures.

The table (JSON) holds the settings, one row per point (its configuration, bits, PSNR,
usage, perplexity, dead codes, training seconds), every thumbnail's cost and PSNR, and the
shipped photos tokenizer measured the same way ("reference"). It is
written after each point, so an interrupted sweep keeps what it measured, and a rerun with
--resume trains only the points still missing.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from tinytok.data.datasets import photo_crops, training_images
from tinytok.data.images import resize_images
from tinytok.evaluate import eval_tokenizer, psnr, round_channels, thumbnail_cost
from tinytok.files import write_atomically
from tinytok.pipeline import SHIPPED, Tokenizer
from tinytok.tokenizer.quantizers import QUANTIZERS
from tinytok.tokenizer.vqvae import with_grid, with_quantizer
from tinytok.training.checkpoint import load_checkpoint

# Every point of the curve. care: k-means start and dead-code restarts every 100 steps;
# the start reads 256 pictures (16,384 vectors, one per code at the largest size), not the
# command line's 1,024, which would make k-means of 16,384 codes take about ten minutes. Without
# care: a random codebook that is never helped (--no-kmeans --no-restarts). FSQ has no
# codebook to care for.
VQ_SIZES = (64, 256, 1024, 4096, 16384)
FSQ_LEVELS = ((4, 4, 4), (8, 6, 5), (8, 5, 5, 5), (7, 5, 5, 5, 5), (8, 8, 8, 6, 5))
POINTS = ([{"family": "vq, care", "quantizer": "ema", "codes": k, "care": True, "grid": 8}
           for k in VQ_SIZES]
          + [{"family": "vq, no care", "quantizer": "ema", "codes": k, "care": False,
              "grid": 8} for k in VQ_SIZES]
          + [{"family": "fsq", "quantizer": "fsq", "levels": list(lv), "grid": 8}
             for lv in FSQ_LEVELS]
          + [{"family": "16x16 grid", "quantizer": "ema", "codes": 256, "care": True,
              "grid": 16},
             {"family": "16x16 grid", "quantizer": "fsq", "levels": [8, 6, 5], "grid": 16}])

# The committed table and picture, beside the lesson that reads them.
LESSONS = Path(__file__).resolve().parents[2] / "lessons"
CURVE_TABLE = LESSONS / "08_vocabulary_curve.json"
CURVE_PICTURE = LESSONS / "08_vocabulary_curve.png"

SETTINGS = {"config": "vqvae-small", "image_size": 32, "steps": 600, "batch_size": 32,
            "lr": 1e-3, "warmup": 100, "seed": 0, "train_images": 20000, "val_images": 2000,
            "val_seed": 12345, "kmeans_images": 256, "restart_every": 100}


def sized_by_levels(quantizer):
    """Whether a quantizer's vocabulary is set by its levels (fsq), not by a count of codes."""
    return QUANTIZERS[quantizer].reads("levels")


def point_name(point):
    """A short label: "ema 1024, care", "fsq 8,5,5,5", with "16x16" for the finer grid."""
    if sized_by_levels(point["quantizer"]):
        name = f"{point['quantizer']} " + ",".join(str(v) for v in point["levels"])
    else:
        name = f"{point['quantizer']} {point['codes']}, {'care' if point['care'] else 'no care'}"
    return name + (f", {point['grid']}x{point['grid']}" if point["grid"] != 8 else "")


def point_config(point, settings=SETTINGS):
    """The TokenizerConfig of a point: the sweep's model with the point's quantizer and grid."""
    config = with_grid(settings["config"], settings["image_size"], point["grid"])
    if sized_by_levels(point["quantizer"]):
        return with_quantizer(config, point["quantizer"], tuple(point["levels"]))
    return replace(with_quantizer(config, point["quantizer"]), num_codes=point["codes"])


def train_point(point, images, folder, settings=SETTINGS):
    """Train one point's tokenizer on uint8 images; returns (Tokenizer, seconds)."""
    from tinytok.training import TokenizerRecipe, TrainSettings, train_tokenizer
    care = point.get("care", False)
    recipe = TokenizerRecipe(kmeans_init=care, kmeans_images=settings["kmeans_images"],
                             restart_every=settings["restart_every"] if care else 0)
    train = TrainSettings(steps=settings["steps"], batch_size=settings["batch_size"],
                          lr=settings["lr"], warmup=settings["warmup"], seed=settings["seed"],
                          checkpoint_every=settings["steps"], log_every=100)
    path = os.path.join(folder, "point.npz")
    start = time.perf_counter()
    train_tokenizer(images, point_config(point, settings), train, path, recipe,
                    log=lambda text: None)
    seconds = time.perf_counter() - start
    return Tokenizer.load(path), seconds


def measure(tokenizer, val_images):
    """The figures eval-tokenizer prints that the curve needs, as a dict; for FSQ also how
    many levels each channel used (a code is one combination of every channel's level)."""
    figures, _, ids = eval_tokenizer(tokenizer, val_images)
    keep = ("bits_per_picture", "vocab_size", "psnr_db", "usage", "perplexity", "dead",
            "thumbnail_psnr_db", "margin_db")
    row = {key: figures.get(key) for key in keep}
    if sized_by_levels(tokenizer.config.quantizer):
        row["levels_used"] = levels_used(ids, tokenizer.config.levels)
    return row


def levels_used(ids, levels):
    """How many of its levels each FSQ channel takes in ids: digit_c = (id // basis_c) % L_c,
    basis_c the product of the levels before channel c."""
    return [int(np.unique((ids // math.prod(levels[:c])) % L).size)
            for c, L in enumerate(levels)]


def thumbnail_table(images, sizes=range(2, 17), depths=range(1, 9)):
    """Every thumbnail the baseline may pick: [{"size", "bits", "cost", "psnr_db"}].

    Each picture is shrunk once per size and rounded to each depth, as best_thumbnail does.
    """
    rows = []
    for size in sizes:
        small = resize_images(images, size)
        for bits in depths:
            enlarged = resize_images(round_channels(small, bits), images.shape[1])
            rows.append({"size": size, "bits": bits, "cost": thumbnail_cost(size, bits),
                         "psnr_db": float(psnr(images, enlarged).mean())})
    return rows


def frontier(rows):
    """The thumbnails no cheaper one beats: sorted by cost, each better than all before it.

    For any budget B, the best thumbnail of at most B bits is the last frontier row whose
    cost is <= B (what tinytok.evaluate.best_thumbnail finds by searching them all).
    """
    best, out = -math.inf, []
    for row in sorted(rows, key=lambda r: (r["cost"], -r["psnr_db"])):
        if row["psnr_db"] > best:
            out.append(row)
            best = row["psnr_db"]
    return out


# ---------------------------------------------------------------- the picture

FAMILIES = (("vq, care", "VQ, k-means start + restarts", (110, 170, 255), "line"),
            ("vq, no care", "VQ, no care", (235, 75, 75), "line"),
            ("fsq", "FSQ", (70, 200, 110), "line"),
            ("16x16 grid", "16x16 grid (others 8x8)", (250, 170, 60), "points"))


def curve_series(table, y="psnr_db", scale=1.0):
    """The table's points as chart Series, one per family, y = row[y] * scale."""
    from tinytok.viz.chart import Series
    series = []
    for family, label, colour, style in FAMILIES:
        rows = [r for r in table["points"] if r["family"] == family]
        if rows:
            series.append(Series(label, [r["bits_per_picture"] for r in rows],
                                 [r[y] * scale for r in rows], style, colour))
    reference = table.get("reference")
    if reference:
        series.append(Series(reference["name"], [reference["bits_per_picture"]],
                             [reference[y] * scale], "points", (240, 240, 240)))
    return series


def draw_curve(table, path=None):
    """PSNR (top) and code usage (bottom) against bits per picture, on one log-2 axis; the
    top one with the thumbnail frontier. Returns the PIL.Image; saved when `path` is given."""
    from PIL import Image
    from tinytok.viz import save_image
    from tinytok.viz.chart import Series, chart
    bits = [r["bits_per_picture"] for r in table["points"]]
    x_range = (min(bits) / 1.3, max(bits) * 2)  # room on the right for the legends
    edge = frontier(table["thumbnails"])
    shown = [r for r in edge if x_range[0] / 2 <= r["cost"] <= x_range[1]]
    steps = Series("thumbnail frontier", [r["cost"] for r in shown],
                   [r["psnr_db"] for r in shown], "steps", (150, 150, 160))
    s = table["settings"]
    top = chart([steps] + curve_series(table), "bits per picture (log scale)", "PSNR (dB)",
                title=f"validation photographs, {s['val_images']} crops; each tokenizer "
                      f"{s['config']}, {s['steps']} steps of batch {s['batch_size']}",
                log_x=True, x_range=x_range, legend="bottom right", height=400)
    low = chart(curve_series(table, "usage", 100), "bits per picture (log scale)",
                "codes used (%)", log_x=True, x_range=x_range, y_range=(0, 105),
                legend="bottom right", height=300)
    img = Image.new("RGB", (top.width, top.height + low.height))
    img.paste(top, (0, 0))
    img.paste(low, (0, top.height))
    return save_image(img, path) if path is not None else img


# ---------------------------------------------------------------- the table

def load_table(path):
    with open(path) as f:
        return json.load(f)


def save_table(table, path):
    write_atomically(path, lambda f: f.write(json.dumps(table, indent=1).encode() + b"\n"))


def run_sweep(out, points=POINTS, settings=SETTINGS, resume=False, log=print):
    """Train and measure every point, writing the table to `out` after each one."""
    table = load_table(out) if resume and os.path.exists(out) else None
    done = {p["name"] for p in table["points"]} if table else set()
    val = photo_crops(settings["val_images"], seed=settings["val_seed"], split="val",
                      scales=(2, 4))
    if table is None:
        table = {"settings": settings, "points": [], "thumbnails": thumbnail_table(val)}
        save_table(table, out)
    if "reference" not in table:  # the shipped photos tokenizer, trained far longer
        shipped = Tokenizer.load(SHIPPED["photos-tokenizer"])
        steps = load_checkpoint(SHIPPED["photos-tokenizer"]).step
        table["reference"] = {"name": f"shipped (vqvae-ref, {steps:,} steps)",
                              "steps": steps, **measure(shipped, val)}
        save_table(table, out)
    images = training_images("photos", settings["train_images"], seed=settings["seed"])
    for point in points:
        name = point_name(point)
        if name in done:
            continue
        with tempfile.TemporaryDirectory(prefix="tinytok_sweep_") as folder:
            tokenizer, seconds = train_point(point, images, folder, settings)
        row = {"name": name, **point, **measure(tokenizer, val),
               "train_seconds": round(seconds, 1)}
        table["points"].append(row)
        order = [point_name(p) for p in points]  # resumed or not, rows in the sweep's order
        table["points"].sort(key=lambda r: order.index(r["name"]) if r["name"] in order
                             else len(order))
        save_table(table, out)
        log(f"{name:<24} {row['bits_per_picture']:7.0f} bits  {row['psnr_db']:6.2f} dB  "
            f"usage {row['usage']:6.1%}  {seconds:5.0f} s")
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tinytok.bench.vocabulary",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="08_vocabulary_curve.json", help="table to write")
    parser.add_argument("--picture", default=None, help="PNG of the curve to draw")
    parser.add_argument("--redraw", default=None, metavar="TABLE",
                        help="draw this table again without training anything")
    parser.add_argument("--resume", action="store_true", help="train only missing points")
    parser.add_argument("--steps", type=int, default=SETTINGS["steps"])
    args = parser.parse_args(argv)
    if args.redraw:
        table = load_table(args.redraw)
    else:
        table = run_sweep(args.out, settings=dict(SETTINGS, steps=args.steps),
                          resume=args.resume)
    if args.picture:
        draw_curve(table, path=args.picture)
        print(f"wrote {args.picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
