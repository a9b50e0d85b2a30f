"""The three-ways measurement (tinytok.evaluate.three_ways) and the record's named entries.

The priors here are untrained gpt-tiny ones (random parameters) on small fresh tokenizers,
saved as checkpoints in a temporary folder: enough to run every path of the measurement in
seconds. What they draw is noise, so the figures are checked against what the pictures
say, never against what a trained prior would reach.
"""
import io
import json
from dataclasses import replace

import numpy as np
import pytest

from tinytok import PLAIN, SAMPLING
from tinytok.bench.workloads import drawing_work
from tinytok.data.datasets import read_attributes
from tinytok.errors import ConfigError
from tinytok.evaluate import record as rec
from tinytok.evaluate import three_ways as tw
from tinytok.evaluate.metrics import eval_prompts
from tinytok.pipeline import Prior, Tokenizer
from tinytok.prior import kinds
from tinytok.prior import scales as scales_module
from tinytok.prior.gpt import gpt_config
from tinytok.prior.kinds import PRIOR_KINDS, model_overrides
from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_config, with_quantizer
from tinytok.training.prior_data import shapes_vocab

CODES = 16


def tiny_tokenizer(quantizer):
    """A small untrained tokenizer of 32x32 pictures on an 8x8 grid (maps 1 .. 8 for scales)."""
    config = replace(tokenizer_config("vqvae-tiny"), hidden=8, res_hidden=4, code_dim=4,
                     num_codes=CODES)
    if quantizer == "scales":
        config = with_quantizer(config, "scales")
    return Tokenizer(init_tokenizer_params(config, seed=1), config)


def tiny_prior(kind, tokenizer):
    """An untrained gpt-tiny prior of this kind over the shapes vocabulary, on tokenizer."""
    vocab = shapes_vocab(CODES)
    config = gpt_config("gpt-tiny", **model_overrides(kind, vocab, tokenizer))
    carried = tokenizer.params if PRIOR_KINDS[kind].carried else None
    return Prior(PRIOR_KINDS[kind].init(config, seed=3, carried=carried), config, vocab, kind)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The six checkpoints of WAYS, tiny and untrained, in one folder."""
    d = tmp_path_factory.mktemp("three-ways")
    grid, maps = tiny_tokenizer("ema"), tiny_tokenizer("scales")
    grid.save(d / "shapes_tokenizer.npz")
    maps.save(d / "shapes_scales_tokenizer.npz")
    tiny_prior("raster", grid).save(d / "shapes_prior.npz")
    tiny_prior("masked", grid).save(d / "shapes_masked_prior.npz")
    tiny_prior("scales", maps).save(d / "shapes_scales_prior.npz")
    return d


@pytest.fixture(scope="module")
def pipes(folder):
    return tw.load_pipelines(tw.WAYS, folder)


# ---------------------------------------------------------------- what is wrong

def test_attribute_errors_count_the_wrong_pictures_by_attribute():
    wanted = np.array([[0, 1, 0, 4]] * 5)
    read = wanted.copy()
    read[1, 1] = 2                       # the colour
    read[2, [0, 2]] = (1, 1)             # the shape and the size
    read[3] = -1                         # nothing readable: all four wrong
    got = tw.attribute_errors(read, wanted)
    assert got == {"pictures": 5, "wrong": 3, "wrong_shape": 2 / 3, "wrong_colour": 2 / 3,
                   "wrong_size": 2 / 3, "wrong_position": 1 / 3, "unreadable": 1 / 3}
    none = tw.attribute_errors(wanted, wanted)
    assert none["wrong"] == 0 and none["wrong_colour"] == 0 and none["unreadable"] == 0


@pytest.mark.parametrize("read, wanted", [(np.zeros((3, 4)), np.zeros((2, 4))),
                                          (np.zeros((3, 3)), np.zeros((3, 3))),
                                          (np.zeros(4), np.zeros(4))])
def test_attribute_errors_refuse_what_is_not_two_tables_of_attributes(read, wanted):
    with pytest.raises(ConfigError, match=r"two \(N, 4\) arrays"):
        tw.attribute_errors(read, wanted)


def test_adherence_figures_are_what_the_pictures_read_back(pipes):
    prompts = eval_prompts(2, seed=1)
    seen = []
    figures, drawn = tw.adherence_figures(pipes["masked"], prompts, 2,
                                          SAMPLING.but(steps=2), seed=1,
                                          on_split=lambda s, n: seen.append((s, n)))
    assert seen == [("train", 4), ("heldout", 4)]
    for split, d in drawn.items():
        assert d.images.shape == (4, 32, 32, 3)
        assert np.array_equal(d.read, read_attributes(d.images))
        assert np.array_equal(d.wanted, np.repeat(prompts[split], 2, axis=0))
        right = (d.read == d.wanted).all(axis=1)
        assert figures[f"adherence_{split}"] == right.mean()
    wrong = sum(int((~(d.read == d.wanted).all(axis=1)).sum()) for d in drawn.values())
    assert figures["pictures"] == 8 and figures["wrong"] == wrong


def test_the_prompts_are_the_ones_eval_prior_asks(pipes, monkeypatch):
    """eval_prior's adherence calls, spied on, get exactly eval_prompts' prompts."""
    from tinytok.evaluate import metrics
    asked = []
    monkeypatch.setattr(metrics, "adherence",
                        lambda pipe, labels, n, **kw: asked.append(labels) or (0.0, None, None))
    metrics.eval_prior(pipes["masked"], 3, 1, seed=2, n_inpaints=0)
    mine = eval_prompts(3, seed=2)
    assert len(asked) == 2
    assert np.array_equal(asked[0], mine["train"]) and np.array_equal(asked[1], mine["heldout"])


def test_adherence_over_seeds_is_the_mean_lowest_and_spread_of_each_seeds(pipes, monkeypatch):
    """eval_prior(n_seeds=3): each seed's own prompts and draws, spied on; the figures are
    the mean, the lowest and the standard deviation of the shares the spy handed back."""
    from tinytok.evaluate import metrics
    asked, given = [], {"train": [0.5, 1.0, 0.75], "heldout": [0.25, 0.5, 1.0]}

    def spy(pipe, labels, n, *, seed, sampling):
        split = "train" if len(asked) % 2 == 0 else "heldout"
        asked.append((split, seed, labels))
        return given[split][seed - 2], None, None

    monkeypatch.setattr(metrics, "adherence", spy)
    figures = metrics.eval_prior(pipes["masked"], 3, 1, seed=2, n_seeds=3, n_inpaints=0)
    for split, seed, labels in asked:
        assert np.array_equal(labels, eval_prompts(3, seed=seed)[split])
    assert [(split, seed) for split, seed, _ in asked] == [
        (split, seed) for seed in (2, 3, 4) for split in ("train", "heldout")]
    assert figures["seeds"] == 3
    assert figures["adherence_train"] == 0.75 and figures["adherence_train_lowest"] == 0.5
    assert figures["adherence_heldout_lowest"] == 0.25
    assert figures["adherence_heldout"] == pytest.approx(1.75 / 3, abs=1e-15)
    assert figures["adherence_heldout_sd"] == pytest.approx(np.std([0.25, 0.5, 1.0], ddof=1))
    one = metrics.eval_prior(pipes["masked"], 3, 1, seed=2, n_inpaints=0)
    assert "seeds" not in one and "adherence_train_sd" not in one      # one seed: as before
    with pytest.raises(ConfigError, match="n_seeds must be a whole number >= 1, got 0"):
        metrics.eval_prior(pipes["masked"], 3, 1, n_seeds=0)


# ---------------------------------------------------------------- the work

@pytest.mark.parametrize("sampling, rows", [(SAMPLING, 2), (PLAIN, 1)])
def test_the_scales_work_is_what_write_maps_runs(pipes, monkeypatch, sampling, rows):
    """Every call of the trunk while drawing 3 pictures, counted: one pass for the caption,
    one per map, and each picture's positions (guidance's row too) run once."""
    calls = []
    real = scales_module.trunk_forward

    def counting(x, *args, **kwargs):
        calls.append(x.shape[:2])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(scales_module, "trunk_forward", counting)
    prior = pipes["scales"].prior
    n = 3
    pipes["scales"].generate_codes("a large red circle at the top left", n, sampling=sampling)
    work = tw.drawing_cost(prior, "a large red circle at the top left", sampling)
    assert work == drawing_work("scales", prior.vocab, prior.config, sampling.steps,
                                rows == 2, "a large red circle at the top left")
    assert len(calls) == work["passes"] == work["forward_calls"] == 8      # 7 maps + caption
    assert all(batch == rows * n for batch, _ in calls)
    assert sum(b * t for b, t in calls) / n == work["positions"] == rows * 171


def test_only_a_prior_that_judges_draws_candidates(pipes):
    raster, masked, scales = (pipes[k].prior.kind for k in ("raster", "masked", "scales"))
    assert kinds.draws_per_picture(raster, SAMPLING) == SAMPLING.rerank == 4
    assert kinds.draws_per_picture(raster, SAMPLING.but(rerank=1)) == 1
    assert kinds.draws_per_picture(masked, SAMPLING) == 1
    assert kinds.draws_per_picture(scales, SAMPLING) == 1


# ---------------------------------------------------------------- one run, and its record

@pytest.fixture(scope="module")
def run(folder):
    """(results, progress): one measurement of the tiny priors, and what it said on log."""
    log = io.StringIO()
    results = tw.measure(folder=folder, n_prompts=1, n_per_prompt=1, timing_pictures=2,
                         repeats=1, warmup=0, log=log)
    return results, log.getvalue()


@pytest.fixture(scope="module")
def results(run):
    return run[0]


def test_one_run_measures_every_way(run):
    results, progress = run
    assert "drawing 8/8" in progress and "timing 2 pictures" in progress
    assert list(results) == [w.label for w in tw.WAYS]
    for label, f in results.items():
        assert f["pictures"] == 2 and f["prompts"] == 1 and f["timing_pictures"] == 2
        assert f["ms_per_picture_min"] <= f["ms_per_picture"] <= f["ms_per_picture_max"]
        assert f["timing_repeats"] == 1 and f["ms_per_picture"] > 0
    assert [results[k]["passes"] for k in results] == [64, 64, 8, 8]
    assert [results[k]["draws_per_picture"] for k in results] == [4, 1, 1, 1]
    assert results["raster"]["sampling"]["rerank"] == 4
    assert results["raster-rerank1"]["sampling"]["rerank"] == 1
    table = tw.format_table(results)
    assert all(w.label in table for w in tw.WAYS) and "load average" in table


def test_the_record_names_the_comparison_and_hashes_what_each_way_read(results, folder):
    figures = folder / "figures.json"
    figures.write_text("{}")
    path = tw.record(results, ["python", "-m", "tinytok.evaluate.three_ways"], folder=folder)
    assert path == figures
    record = json.loads(figures.read_text())
    assert list(record) == ["three_ways"]
    assert sorted(record["three_ways"]) == sorted(w.label for w in tw.WAYS)
    scales = record["three_ways"]["scales"]
    assert scales["files"] == {n: rec.sha256_of(folder / n) for n in
                               ("shapes_scales_prior.npz", "shapes_scales_tokenizer.npz")}
    assert scales["command"] == "python -m tinytok.evaluate.three_ways"
    assert rec.figure("three_ways", "masked", "passes", record) == 8
    assert rec.stale_entries(record, folder) == []


def test_a_named_record_goes_stale_with_any_checkpoint_it_read(tmp_path):
    prior, tok = tmp_path / "p.npz", tmp_path / "t.npz"
    prior.write_bytes(b"prior"), tok.write_bytes(b"tokenizer")
    rec.record_figures(prior, "a", {"x": 1}, ["cmd"], inputs=[tok], name="both")
    record = rec.load_record(tmp_path / "figures.json")
    assert list(record) == ["both"] and rec.stale_entries(record, tmp_path) == []
    tok.write_bytes(b"retrained")
    assert rec.stale_entries(record, tmp_path) == [("both", "a", "t.npz")]


def test_a_named_record_cannot_take_a_checkpoints_name(tmp_path):
    prior, other = tmp_path / "p.npz", tmp_path / "other.npz"
    prior.write_bytes(b"prior"), other.write_bytes(b"another")
    with pytest.raises(ConfigError, match="the checkpoint other.npz's"):
        rec.record_figures(prior, "a", {"x": 1}, ["cmd"], name="other")
    with pytest.raises(ConfigError, match="short label"):
        rec.record_figures(prior, "a", {"x": 1}, ["cmd"], name="a b")
    assert not (tmp_path / "figures.json").exists()


# ---------------------------------------------------------------- the command line

@pytest.mark.parametrize("argv, words", [
    (["--prompts", "0"], ["--prompts", ">= 1"]),
    (["-n", "two"], ["-n", "whole number"]),
    (["--seed", "-1"], ["--seed", "2**32"]),
    (["--frobnicate"], ["unrecognized", "--frobnicate"]),
])
def test_bad_arguments_are_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        tw.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert all(w in err for w in words), err


def test_missing_checkpoints_are_one_line(tmp_path, capsys):
    assert tw.main(["--checkpoints", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must be a folder" in err
    assert tw.main(["--checkpoints", str(tmp_path)]) == 2          # a folder, but empty
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("three_ways: error:") and ".npz" in err
