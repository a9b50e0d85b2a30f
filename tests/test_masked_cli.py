"""The command line with a masked prior (MaskGIT): sample and inpaint draw, the commands that
need words refuse in one line, eval-prior measures adherence and inpainting.

The priors here are untrained gpt-tiny ones (random parameters) beside the shipped shapes
tokenizer: enough to run every path in seconds; what they draw is noise, so only the
shipped masked prior is asked to inpaint well.
"""
import json

import numpy as np
import pytest
from PIL import Image

from test_cli import ok, tinytok
from tinytok.data.datasets import CELL_CENTRES, SIZE_PX, is_heldout, make_shapes
from tinytok.evaluate import eval_prior, inpaint_figures
from tinytok.evaluate.metrics import inpaint_tasks, shape_box
from tinytok.pipeline import SHIPPED, Pipeline, Prior, Tokenizer
from tinytok.prior.gpt import gpt_config, init_gpt_params
from tinytok.prior.kinds import model_vocab_size
from tinytok.training.prior_data import shapes_vocab

CAPTION = "a large blue square at the top left"


def tiny_prior(kind, num_codes):
    """An untrained gpt-tiny prior of this kind over the shapes vocabulary."""
    vocab = shapes_vocab(num_codes)
    config = gpt_config("gpt-tiny", vocab_size=model_vocab_size(kind, vocab))
    return Prior(init_gpt_params(config, seed=3), config, vocab, kind)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with a tiny masked prior, a tiny raster one and two shapes pictures."""
    d = tmp_path_factory.mktemp("masked-cli")
    num_codes = Tokenizer.load().config.num_codes
    tiny_prior("masked", num_codes).save(d / "masked.npz")
    tiny_prior("raster", num_codes).save(d / "raster.npz")
    for i, img in enumerate(make_shapes(2, seed=4).images):
        Image.fromarray(img).save(d / f"shape{i}.png")
    return d


def refused(r, *words):
    """r ended with one line on stderr holding every one of words, and exit code 2."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("tinytok: error: "), r.stderr
    for word in words:
        assert word in r.stderr, r.stderr


def test_sample_draws_from_a_masked_prior(work):
    r = ok(tinytok("sample", "--prior", "masked.npz", "--prompt", CAPTION, "--prompt",
                   "a small red circle at the center", "-n", 2, "--steps", 3,
                   "--choice-temperature", 0, "--out", "samples.png", cwd=work))
    assert "wrote samples.png (4 images" in r.stdout
    with Image.open(work / "samples.png") as img:
        assert min(img.size) >= 64


@pytest.mark.parametrize("region, cells", [("0,0,8,8", 4), ("1,1,9,9", 9), ("0,0,32,32", 64)])
def test_inpaint_writes_the_picture_and_redraws_the_cells_the_region_touches(work, region,
                                                                            cells):
    r = ok(tinytok("inpaint", "shape0.png", "--region", region, "--prompt", CAPTION, "-n", 2,
                   "--steps", 2, "--prior", "masked.npz", "--scale", 2, "--out", "inp.png",
                   cwd=work))
    assert f"wrote inp.png (2 inpaintings of shape0.png, {cells} of 64 cells redrawn" in r.stdout
    with Image.open(work / "inp.png") as img:
        assert img.size[0] > 3 * 64 > img.size[1]         # three tiles of 64 pixels in a row


def test_inpaint_with_the_same_seed_is_the_same_picture(work):
    for out in ("a.png", "b.png"):
        ok(tinytok("inpaint", "shape1.png", "--region", "4,4,20,20", "--prompt", CAPTION,
                   "-n", 1, "--seed", 7, "--prior", "masked.npz", "--out", out, cwd=work))
    assert np.array_equal(np.asarray(Image.open(work / "a.png")),
                          np.asarray(Image.open(work / "b.png")))


@pytest.mark.parametrize("args, words", [
    (["inpaint", "shape0.png", "--region", "0,0,8,8", "--prompt", CAPTION, "--prior",
      "raster.npz"], ["a raster prior", "cannot redraw a region", "--kind masked"]),
    (["inpaint", "shape0.png", "--region", "0,0,40,8", "--prompt", CAPTION, "--prior",
      "masked.npz"], ["--region 0,0,40,8 leaves the 32x32 picture", "<= 32"]),
    (["inpaint", "shape0.png", "--region", "8,0,4,8", "--prompt", CAPTION, "--prior",
      "masked.npz"], ["--region", "LEFT < RIGHT", "got 8,0,4,8"]),
    (["inpaint", "shape0.png", "--region", "0,0,8", "--prompt", CAPTION, "--prior",
      "masked.npz"], ["--region", "four whole numbers", "'0,0,8'"]),
    (["inpaint", "shape0.png", "--region=-1,0,8,8", "--prompt", CAPTION, "--prior",
      "masked.npz"], ["--region", "0 <= LEFT"]),
    (["inpaint", "shape0.png", "--region", "0,0,8,8", "--prompt", "a hexagon", "--prior",
      "masked.npz"], ["unknown word", "'hexagon'"]),
    (["inpaint", "shape0.png", "--prompt", CAPTION], ["--region", "required"]),
    (["caption", "shape0.png", "--prior", "masked.npz"],
     ["a masked prior draws pictures only", "cannot write captions"]),
    (["edit", "shape0.png", "make it blue", "--prior", "masked.npz"],
     ["a masked prior draws pictures only", "cannot edit a picture"]),
    (["chat", "--prior", "masked.npz"],
     ["a masked prior draws pictures only", "cannot hold a conversation"]),
    (["sample", "--prompt", CAPTION, "--prior", "masked.npz", "--steps", 0],
     ["--steps", "must be >= 1, got 0"]),
    (["sample", "--prompt", CAPTION, "--prior", "masked.npz", "--steps", 2.5],
     ["--steps", "expected a whole number"]),
    (["sample", "--prompt", CAPTION, "--prior", "masked.npz", "--choice-temperature", -1],
     ["--choice-temperature", ">= 0"]),
])
def test_what_a_prior_cannot_do_is_one_line(work, args, words):
    refused(tinytok(*args, cwd=work, stdin="a red circle\n"), *words)


def test_eval_prior_measures_adherence_and_inpainting_and_no_captions(work):
    r = ok(tinytok("eval-prior", "--prior", "masked.npz", "--prompts", 1, "-n", 1,
                   "--inpaints", 2, "--steps", 2, "--json", "--record", "tiny", cwd=work))
    figures = json.loads(r.stdout)
    for key in ("adherence_train", "adherence_heldout", "inpaint_right",
                "inpaint_outside_same", "inpaint_cells"):
        assert 0 <= figures[key] <= 1, key
    assert figures["inpaint_outside_psnr_db"] > 0 and figures["inpaint_pictures"] == 2
    assert not [k for k in figures if k.startswith(("caption", "edit_", "chain_"))]
    assert figures["sampling"]["steps"] == 2
    record = json.loads((work / "figures.json").read_text())
    assert record["masked"]["tiny"]["figures"] == figures
    r = ok(tinytok("eval-prior", "--prior", "masked.npz", "--prompts", 1, "-n", 1,
                   "--inpaints", 1, "--steps", 1, cwd=work))       # the table, as printed
    assert "inpaint_right: " in r.stdout and "%" in r.stdout.split("inpaint_right: ")[1]


def test_a_raster_prior_gets_no_inpainting_figures(work):
    pipe = Pipeline(Tokenizer.load(), Prior.load(work / "raster.npz"))
    figures = eval_prior(pipe, 1, 1, n_captions=1, n_inpaints=2)
    assert "caption_accuracy_heldout" in figures
    assert not [k for k in figures if k.startswith("inpaint")]


def test_shape_box_holds_every_pixel_of_the_shape_and_the_margin():
    shapes = make_shapes(16, seed=9)
    for image in shapes.images:
        left, top, right, bottom = shape_box(image, 0)
        lit = image.max(axis=-1) > 0
        assert lit[top:bottom, left:right].sum() == lit.sum()          # every lit pixel
        assert lit[top].any() and lit[bottom - 1].any()                 # and no more
        assert lit[:, left].any() and lit[:, right - 1].any()
        wide = shape_box(image, 4)
        assert wide == (max(left - 4, 0), max(top - 4, 0), min(right + 4, 32),
                        min(bottom + 4, 32))


def test_inpaint_tasks_change_the_colour_or_the_shape_into_a_training_pair():
    shapes = make_shapes(64, seed=11)
    tasks = inpaint_tasks(shapes, 4, np.random.default_rng(0))
    wanted = np.array([w for _, w in tasks])
    changed = wanted != shapes.labels
    assert (changed[:, :2].sum(axis=1) == 1).all() and not changed[:, 2:].any()
    assert not is_heldout(wanted).any()
    assert 0 < changed[:, 0].mean() < 1                     # both kinds of change are asked
    for (left, top, right, bottom), labels in zip((b for b, _ in tasks), shapes.labels):
        cx = CELL_CENTRES[labels[3] % 3]                    # the shape's centre is inside
        assert left < cx < right and right - left >= SIZE_PX[labels[2]]


def test_inpaint_figures_of_an_untrained_prior_are_shares():
    """The figures are shares; even redrawn at random, the pixels beyond the decoder's reach
    of the region are the tokenizer's reconstruction, exactly."""
    figures = inpaint_figures(Pipeline(Tokenizer.load(), tiny_prior("masked", 256)), 3, seed=1)
    assert 0 <= figures["inpaint_right"] <= 1 and 0 < figures["inpaint_cells"] < 1
    assert 0 < figures["inpaint_outside_same"] <= 1 and figures["inpaint_pictures"] == 3


@pytest.mark.skipif(not SHIPPED["shapes-masked-prior"].exists(),
                    reason="the shipped masked prior is not in data/checkpoints")
def test_the_shipped_masked_prior_redraws_most_shapes_as_asked():
    """A trained masked prior reads back right where an untrained one cannot: the figure
    measures the drawing, not the region or the reading."""
    figures = inpaint_figures(Pipeline.load(None, SHIPPED["shapes-masked-prior"]), 8, seed=0)
    assert figures["inpaint_right"] >= 0.75
    assert figures["inpaint_outside_psnr_db"] > 35
