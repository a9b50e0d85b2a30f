"""The `tinytok` command, every subcommand once, on tiny configs, in a real subprocess."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinytok.training.checkpoint import load_checkpoint
from tinytok.data.datasets import make_shapes

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1", "TINYTOK_BACKEND": "numpy"}


def tinytok(*args, cwd, timeout=120, script=False, stdin=None):
    """Run the command (the console script, or python -m tinytok.cli); return the result."""
    exe = [shutil.which("tinytok")] if script else [sys.executable, "-m", "tinytok.cli"]
    r = subprocess.run(exe + [str(a) for a in args], cwd=cwd, env=ENV, capture_output=True,
                       text=True, timeout=timeout, input=stdin)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def ok(r):
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder holding a tiny tokenizer and prior trained by the command line, and images."""
    d = tmp_path_factory.mktemp("cli")
    r = ok(tinytok("train-tokenizer", "--config", "vqvae-tiny", "--n-images", 32,
                   "--steps", 3, "--batch-size", 4, "--checkpoint-every", 2, "--log-every", 1,
                   "--restart-every", 2, "--out", "tok.npz", cwd=d))
    assert "wrote tok.npz" in r.stdout
    assert "3/3" in r.stderr                       # the progress line reached the end
    r = ok(tinytok("train-prior", "--tokenizer", "tok.npz", "--config", "gpt-tiny",
                   "--n-images", 32, "--steps", 3, "--batch-size", 4, "--log-every", 1,
                   "--out", "prior.npz", cwd=d))
    assert "wrote prior.npz" in r.stdout
    for i, img in enumerate(make_shapes(2, seed=4).images):
        Image.fromarray(img).save(d / f"shape{i}.png")
    return d


def test_train_tokenizer_and_prior_write_checkpoints(work):
    tok = load_checkpoint(work / "tok.npz", kind="tokenizer")
    assert tok.step == 3 and tok.config["model"]["name"] == "vqvae-tiny"
    prior = load_checkpoint(work / "prior.npz", kind="prior")
    assert prior.step == 3 and prior.config["model"]["name"] == "gpt-tiny"
    assert not [f for f in os.listdir(work) if f.endswith(".tmp")]


def test_train_tokenizer_split_all_sees_held_out_shapes(tmp_path, monkeypatch):
    """--split all hands the trainer every combination (the tokenizer reads no captions);
    the default keeps the prior's held-out pairs out."""
    from tinytok.data import datasets
    from tinytok.training import tokenizer_trainer
    seen = {}
    monkeypatch.setattr(tokenizer_trainer, "train_tokenizer",
                        lambda images, *a, **k: seen.setdefault("images", images))
    from tinytok.cli import main
    for split in ("all", "train"):
        seen.clear()
        assert main(["train-tokenizer", "--config", "vqvae-tiny", "--n-images", "300",
                     "--steps", "1", "--split", split, "--out", str(tmp_path / "t.npz")]) == 0
        labels = datasets.read_attributes(seen["images"])
        assert datasets.is_heldout(labels).any() == (split == "all")


def test_eval_tokenizer_json_and_pictures(work):
    r = ok(tinytok("eval-tokenizer", "--tokenizer", "tok.npz", "--n-images", 8,
                   "--pictures", "pics", "--json", cwd=work))
    figures = json.loads(r.stdout)
    assert figures["pictures"] == "pics"
    assert any("psnr" in k for k in figures), figures
    assert -1 < figures["ssim"] < 1 and figures["hf_share"] > 0 and figures["hf_share_035"] > 0
    for name in ("reconstructions.png", "palette.png", "token_map.png"):
        with Image.open(work / "pics" / name) as img:
            assert img.size[0] > 0
    assert not (work / "pics" / "side_by_side.png").exists()   # only with --compare
    r = ok(tinytok("eval-tokenizer", "--tokenizer", "tok.npz", "--n-images", 8, cwd=work))
    lines = {k.strip(): v.strip() for k, v in (line.split(":", 1)
                                               for line in r.stdout.splitlines())}
    assert float(lines["psnr_db"]) > 0 and float(lines["ssim"]) == pytest.approx(
        figures["ssim"], rel=1e-3)
    for key in ("hf_share", "hf_share_035"):   # shown as percentages
        assert lines[key] == f"{figures[key]:.1%}"


def test_eval_tokenizer_split_all_measures_every_picture_of_a_set(work, tmp_path):
    """--split all: every picture of a fixed set (one the tokenizer never trained on), not
    just its held-out tenth; the record names the split."""
    folder = tmp_path / "set"
    folder.mkdir()
    for i, img in enumerate(make_shapes(20, seed=5).images):
        Image.fromarray(img).save(folder / f"p{i:02d}.png")
    counts = {}
    for split in ("val", "all"):
        r = ok(tinytok("eval-tokenizer", "--tokenizer", "tok.npz", "--data", folder,
                       "--split", split, "--json", cwd=work))
        figures = json.loads(r.stdout)
        counts[split] = figures["images"]
        assert figures["data"] == f"{folder} ({split} split)"
    assert counts == {"val": 2, "all": 20}      # every tenth picture is validation
    r = tinytok("eval-tokenizer", "--tokenizer", "tok.npz", "--split", "train", cwd=work)
    assert r.returncode == 2 and "invalid choice: 'train'" in r.stderr


def test_eval_tokenizer_compare_side_by_side(work, tmp_path):
    """--compare: the other tokenizer's fidelity figures on the same pictures, its hash in the
    record, and with --pictures the originals and both reconstructions, enlarged, in one PNG."""
    from tinytok.evaluate.record import sha256_of
    from tinytok.viz.style import MARGIN, ROW_LABEL_WIDTH, PAD
    other = ROOT / "data" / "checkpoints" / "shapes_tokenizer.npz"
    r = ok(tinytok("eval-tokenizer", "--tokenizer", "tok.npz", "--n-images", 8, "--compare",
                   other, "--pictures", "both", "--json", "--record", "compared", cwd=work))
    figures = json.loads(r.stdout)
    assert figures["compare"] == str(other)
    for key in ("psnr_db", "psnr_db_median", "ssim", "hf_share", "hf_share_035"):
        assert isinstance(figures[f"compare_{key}"], float)
    assert figures["compare_psnr_db"] > figures["psnr_db"] + 5   # trained vs 3 steps
    files = json.loads((work / "figures.json").read_text())["tok"]["compared"]["files"]
    assert files == {"tok.npz": sha256_of(work / "tok.npz"), other.name: sha256_of(other)}
    n, side, gap = 6, 32 * 6, 2              # six pictures, 32x32 enlarged 6 times
    with Image.open(work / "both" / "side_by_side.png") as img:
        img.load()
        assert img.format == "PNG" and img.mode == "RGB"
        width, height = img.size
    assert height == 2 * MARGIN + 3 * side + 2 * gap          # originals, tok, shapes
    tiles = 2 * MARGIN + n * side + (n - 1) * gap
    assert tiles < width <= tiles + ROW_LABEL_WIDTH + PAD     # and the row labels
    # the same data for both, or one line: a tokenizer of 64x64 pictures
    from tinytok.pipeline import Tokenizer
    from tinytok.tokenizer.vqvae import init_tokenizer_params, with_grid
    config = with_grid("vqvae-tiny", 64, 16)
    Tokenizer(init_tokenizer_params(config), config).save(tmp_path / "t64.npz")
    r = tinytok("eval-tokenizer", "--tokenizer", "tok.npz", "--n-images", 8, "--compare",
                tmp_path / "t64.npz", cwd=work)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "reads 64x64 pictures, the tokenizer 32x32" in r.stderr


def test_encode_json_then_decode(work):
    r = ok(tinytok("encode", "--tokenizer", "tok.npz", "--json", "shape0.png", "shape1.png",
                   cwd=work, script=True))
    grids = json.loads(r.stdout)
    assert list(grids) == ["shape0.png", "shape1.png"]
    ids = np.array(list(grids.values()))
    assert ids.shape == (2, 8, 8) and ids.min() >= 0 and ids.max() < 64
    (work / "ids.json").write_text(r.stdout)
    r = ok(tinytok("decode", "--tokenizer", "tok.npz", "--ids", "ids.json", "--out",
                   "decoded.png", "--scale", 2, cwd=work))
    assert "wrote decoded.png (2 images)" in r.stdout
    with Image.open(work / "decoded.png") as img:
        assert img.mode in ("RGB", "RGBA") and min(img.size) >= 64
    # the plain (not --json) listing: one header line per image, then 8 rows of 8 ids
    r = ok(tinytok("encode", "--tokenizer", "tok.npz", "shape0.png", cwd=work))
    lines = r.stdout.splitlines()
    assert lines[0] == "shape0.png:" and len(lines) == 9
    assert [int(v) for v in lines[1].split()] == grids["shape0.png"][0]


def test_sample_caption_and_eval_prior(work):
    r = ok(tinytok("sample", "--tokenizer", "tok.npz", "--prior", "prior.npz", "--prompt",
                   "a large red circle at the top left", "--prompt", "a small blue square",
                   "-n", 2, "--cfg", 2, "--top-k", 10, "--top-p", 0.9, "--temperature", 0.8,
                   "--out", "samples.png", cwd=work))
    assert "wrote samples.png (4 images" in r.stdout
    with Image.open(work / "samples.png") as img:
        assert min(img.size) >= 64
    r = ok(tinytok("caption", "--tokenizer", "tok.npz", "--prior", "prior.npz", "shape0.png",
                   "shape1.png", cwd=work))
    lines = r.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["shape0.png", "shape1.png"]
    r = ok(tinytok("eval-prior", "--tokenizer", "tok.npz", "--prior", "prior.npz",
                   "--prompts", 1, "-n", 1, "--captions", 2, "--json", cwd=work))
    figures = json.loads(r.stdout)
    for key in ("adherence_train", "adherence_heldout", "caption_accuracy_heldout"):
        assert 0 <= figures[key] <= 1
    r = ok(tinytok("eval-prior", "--tokenizer", "tok.npz", "--prior", "prior.npz",
                   "--prompts", 1, "-n", 1, "--captions", 2, "--edits", 0, "--seeds", 2,
                   "--json", cwd=work))
    figures = json.loads(r.stdout)
    assert figures["seeds"] == 2
    assert figures["adherence_heldout_lowest"] <= figures["adherence_heldout"]


def test_evaluations_write_the_record_beside_the_checkpoint(work):
    """--record LABEL: the printed figures, the command and the files' hashes, one entry each."""
    from tinytok.evaluate.record import sha256_of
    r = ok(tinytok("eval-tokenizer", "--tokenizer", "tok.npz", "--n-images", 8, "--json",
                   "--record", "small", cwd=work))
    printed = json.loads(r.stdout)
    ok(tinytok("eval-prior", "--tokenizer", "tok.npz", "--prior", "prior.npz", "--prompts", 1,
               "-n", 1, "--captions", 2, "--edits", 0, "--plain", "--record", "plain",
               cwd=work))
    record = json.loads((work / "figures.json").read_text())
    assert record["tok"]["small"]["figures"] == printed
    assert record["tok"]["small"]["command"].startswith("tinytok eval-tokenizer --tokenizer")
    entry = record["prior"]["plain"]
    assert entry["files"] == {"prior.npz": sha256_of(work / "prior.npz"),
                              "tok.npz": sha256_of(work / "tok.npz")}
    assert entry["figures"]["sampling"]["cfg_scale"] == 1.0 and "--plain" in entry["command"]
    r = tinytok("eval-prior", "--tokenizer", "tok.npz", "--prior", "prior.npz", "--record",
                "two words", cwd=work)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "short label" in r.stderr


def test_chat_answers_each_turn_and_a_bad_turn_gets_one_line(work):
    """An unreadable picture file or an unknown word is one line on stderr; the chat goes on."""
    (work / "broken.png").write_bytes(b"not a picture")
    r = ok(tinytok("chat", "--tokenizer", "tok.npz", "--prior", "prior.npz", "--rerank", 1,
                   "--out", "chat-out", cwd=work,
                   stdin="a large red circle at the top left\nbroken.png\na hexagon\nshape0.png\n"))
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 2 and "broken.png" in errors[0] and "hexagon" in errors[1], r.stderr
    assert len(r.stdout.strip().splitlines()) == 2      # a reply to each good turn


def test_sample_with_the_same_seed_is_the_same_picture(work):
    for out in ("a.png", "b.png"):
        ok(tinytok("sample", "--tokenizer", "tok.npz", "--prior", "prior.npz", "--prompt",
                   "a small red circle at the center", "-n", 1, "--seed", 5, "--out", out,
                   cwd=work))
    assert np.array_equal(np.asarray(Image.open(work / "a.png")),
                          np.asarray(Image.open(work / "b.png")))


def test_help_lists_every_subcommand(tmp_path):
    r = ok(tinytok("--help", cwd=tmp_path))
    for name in ("demo", "train-tokenizer", "train-prior", "encode", "decode",
                 "eval-tokenizer", "sample", "caption", "eval-prior", "bench"):
        assert name in r.stdout


# The README's main job, end to end at its smallest: about a minute on two cores.
def test_demo_quick(tmp_path):
    t0 = time.monotonic()
    r = ok(tinytok("demo", "--quick", "--out", "demo", cwd=tmp_path, timeout=1800))
    for name in ("samples.png", "heldout_samples.png", "reconstructions.png", "palette.png",
                 "captions.png", "tokenizer.npz", "prior.npz", "figures.json"):
        assert (tmp_path / "demo" / name).exists(), name
    figures = json.loads((tmp_path / "demo" / "figures.json").read_text())
    assert figures["tokenizer_psnr_db"] > 15
    print(f"demo --quick took {time.monotonic() - t0:.0f} s; {r.stdout}")
