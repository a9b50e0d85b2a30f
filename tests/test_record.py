"""The record of the shipped models' figures: one source for every figure the book quotes.

The committed record (data/checkpoints/figures.json) must describe the committed checkpoints
(their sha256), and every marker in the README and the lessons must say what the record says.
A retrained checkpoint or a hand-edited figure fails here until the evaluation is rerun with
--record and `python -m tinytok.evaluate.record README.md lessons/*.md` has set the prose.
"""
import json
import os
import re
from pathlib import Path

import pytest

from tinytok.errors import CheckpointError, ConfigError
from tinytok.evaluate import record as rec

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "data" / "checkpoints"
BOOK = [ROOT / "README.md", *sorted((ROOT / "lessons").glob("[0-9][0-9]_*.md"))]
LESSONS = [p for p in BOOK if p.parent.name == "lessons"]


# ---------------------------------------------------------------- the committed record

def test_the_record_describes_the_committed_checkpoints():
    stale = rec.stale_entries(rec.load_record(), CHECKPOINTS)
    assert not stale, ("these figures were measured on other bytes than the committed "
                       f"checkpoints (name, label, file): {stale}; rerun the evaluation with "
                       "--record LABEL (README, Shipped checkpoints)")


def test_every_shipped_checkpoint_has_figures():
    record = rec.load_record()
    for path in CHECKPOINTS.glob("*.npz"):
        assert path.stem in record, f"{path.name} has no figures in {rec.SHIPPED_RECORD.name}"
        for label, entry in record[path.stem].items():
            assert entry["command"].startswith("tinytok eval-"), (path.stem, label)
            assert entry["figures"], (path.stem, label)


@pytest.mark.parametrize("path", BOOK, ids=[p.name for p in BOOK])
def test_quoted_figures_are_the_records(path):
    stale = rec.stale_markers(path.read_text(encoding="utf-8"), rec.load_record(),
                              rec.load_times())
    assert not stale, (f"{path.name} quotes figures the record does not give (line, text, "
                       f"record): {stale}; run python -m tinytok.evaluate.record README.md "
                       "lessons/*.md")


@pytest.mark.parametrize("path", LESSONS, ids=[p.name for p in LESSONS])
def test_each_lesson_states_its_run_time_once_from_the_times(path):
    found = rec.TIME.findall(path.read_text(encoding="utf-8"))
    assert [name for name, _ in found].count(path.stem) == 1, \
        f"{path.name} should state its run time once: <!--time {path.stem}-->...<!--/time-->"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"<!--time {path.stem}-->" in readme, f"README's lesson table lacks {path.stem}'s time"


def test_the_readme_types_no_figure_of_a_shipped_model():
    """In the README's section on the shipped checkpoints, every percentage and every dB
    figure stands inside a marker (sizes, steps and minutes of training are not figures)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Shipped checkpoints", 1)[1].split("\n## ", 1)[0]
    bare = re.findall(r"\d+(?:\.\d+)?(?:%| dB)", rec.FIG.sub("", section))
    assert not bare, f"figures typed by hand in README's Shipped checkpoints: {bare}"


def test_the_readme_is_a_front_page():
    """Detail belongs in the lessons: the README stays under 15,000 characters."""
    size = len((ROOT / "README.md").read_text(encoding="utf-8"))
    assert size < 15_000, f"README.md has {size:,} characters; move detail into a lesson"


# ---------------------------------------------------------------- the mechanism

RECORD = {"m": {"best": {"command": "tinytok eval-prior", "files": {},
                         "figures": {"share": 0.8963, "db": 34.912, "n": 256}}}}


def test_markers_are_rendered_from_the_record():
    text = ("a <!--fig m best share .1%-->0%<!--/fig--> b <!--fig m best db .1f-->1<!--/fig--> "
            "dB, <!--fig m best n d-->9<!--/fig--> codes, <!--time 01_x-->?<!--/time-->")
    got = rec.render_markers(text, RECORD, {"01_x": 0.4})
    assert got == ("a <!--fig m best share .1%-->89.6%<!--/fig--> b <!--fig m best db .1f-->"
                   "34.9<!--/fig--> dB, <!--fig m best n d-->256<!--/fig--> codes, "
                   "<!--time 01_x--><1 s<!--/time-->")
    stale = rec.stale_markers(text + "\nok\n" + text, RECORD, {"01_x": 0.4})
    assert [line for line, _, _ in stale] == [1] * 4 + [3] * 4       # each marker, by line
    assert rec.stale_markers(got, RECORD, {"01_x": 0.4}) == []


@pytest.mark.parametrize("seconds, shown", [(0.2, "<1 s"), (1.4, "1 s"), (39.6, "40 s"),
                                            (200, "3 min")])
def test_run_times_read_as_prose(seconds, shown):
    assert rec.format_seconds(seconds) == shown


def test_unknown_figures_and_lessons_are_clear_errors():
    with pytest.raises(ConfigError, match="no figure m / best / nope; it has db, n, share"):
        rec.figure("m", "best", "nope", RECORD)
    with pytest.raises(ConfigError, match="no figure x / y / z; its entries are m / best"):
        rec.figure("x", "y", "z", RECORD)
    with pytest.raises(ConfigError, match="no run time for lesson '02_y'"):
        rec.render_markers("<!--time 02_y-->1 s<!--/time-->", RECORD, {})


def test_a_missing_or_broken_record_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no record of figures"):
        rec.load_record(tmp_path / "figures.json")
    (tmp_path / "figures.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable record"):
        rec.load_record(tmp_path / "figures.json")


def test_recording_keeps_other_labels_and_hashes_every_input(tmp_path):
    prior, tok = tmp_path / "p.npz", tmp_path / "t.npz"
    prior.write_bytes(b"prior"), tok.write_bytes(b"tokenizer")
    (tmp_path / "figures.json").write_text("{}")
    os.chmod(tmp_path / "figures.json", 0o640)
    rec.record_figures(prior, "a", {"x": 1.0}, ["tinytok", "eval-prior"], inputs=[tok])
    path = rec.record_figures(prior, "b", {"x": 2.0}, ["tinytok", "eval-prior", "--seed 1"])
    record = json.loads(path.read_text())
    assert sorted(record["p"]) == ["a", "b"]
    assert record["p"]["a"]["files"] == {"p.npz": rec.sha256_of(prior),
                                         "t.npz": rec.sha256_of(tok)}
    assert record["p"]["b"]["command"] == "tinytok eval-prior '--seed 1'"
    assert os.stat(path).st_mode & 0o777 == 0o640          # the user's permissions kept
    assert rec.stale_entries(record, tmp_path) == []
    tok.write_bytes(b"retrained")
    assert rec.stale_entries(record, tmp_path) == [("p", "a", "t.npz")]


@pytest.mark.parametrize("label", ["", "a b", "-x", "x/y", "é"])
def test_bad_labels_are_refused(label):
    with pytest.raises(ConfigError, match="short label"):
        rec.check_label(label)


def test_the_update_command_sets_stale_markers(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rec, "load_record", lambda: RECORD)
    monkeypatch.setattr(rec, "load_times", lambda: {})
    page = tmp_path / "page.md"
    page.write_text("x <!--fig m best share .0%-->1%<!--/fig-->\n")
    assert rec.main([str(page), "--check"]) == 1
    assert "1%<!--/fig-->" in page.read_text()
    assert rec.main([str(page)]) == 0
    assert page.read_text() == "x <!--fig m best share .0%-->90%<!--/fig-->\n"
    assert rec.main([str(page), "--check"]) == 0
