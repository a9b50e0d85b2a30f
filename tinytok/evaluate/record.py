"""The record: the shipped models' figures in one file, written by the evaluation commands.

    tinytok eval-prior --prompts 48 -n 2 --captions 500 --edits 64 --record recommended
    figure("shapes_prior", "recommended", "adherence_heldout")    # -> 0.896

`--record LABEL` on eval-tokenizer or eval-prior writes what the command printed into
figures.json beside the checkpoint it evaluated (data/checkpoints/figures.json for the shipped
ones), under the checkpoint's name and LABEL, with the command line that produced it and the
sha256 of every checkpoint it read. A retrained checkpoint no longer matches its hash, and the
tests say so until it is evaluated again: a figure cannot outlive the model it describes.
Figures that compare several checkpoints are recorded under a name of their own (python -m
tinytok.evaluate.three_ways --record: "three_ways", a label per prior), each label with the
hashes of the checkpoints it read.

Prose reads the record through markers, HTML comments that GitHub does not show:

    adherence on held-out pairs: <!--fig shapes_prior recommended adherence_heldout .1%-->89.6%<!--/fig-->
    Running its code takes about <!--time 08_how_big_a_vocabulary-->17 s<!--/time-->.

A fig marker names the checkpoint, the label, the figure and a Python format spec; a time
marker names a lesson, whose run time comes from lessons/run_times.json (written by the lesson
tests with TINYTOK_WRITE_LESSON_TIMES=1). The text between the comments must be what the
record gives: the tests check every marker of the README and the lessons, and

    python -m tinytok.evaluate.record README.md lessons/*.md

rewrites them from the record (--check only lists the stale ones and exits 1 if any).
"""
import argparse
import hashlib
import json
import re
import shlex
import sys
from pathlib import Path

from tinytok.errors import CheckpointError, ConfigError
from tinytok.files import write_atomically

RECORD_NAME = "figures.json"
ROOT = Path(__file__).resolve().parent.parent.parent
SHIPPED_RECORD = ROOT / "data" / "checkpoints" / RECORD_NAME
LESSON_TIMES = ROOT / "lessons" / "run_times.json"

FIG = re.compile(r"<!--fig (\S+) (\S+) (\S+) (\S+?)-->(.*?)<!--/fig-->")
TIME = re.compile(r"<!--time (\S+?)-->(.*?)<!--/time-->")
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# ---------------------------------------------------------------- writing

def sha256_of(path):
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_label(label):
    if not LABEL.fullmatch(label):
        raise ConfigError(f"--record takes a short label of letters, digits, '.', '_' and "
                          f"'-' (such as recommended or seed-1), got {label!r}")
    return label


def record_figures(checkpoint, label, figures, command, inputs=(), name=None):
    """Write figures under (checkpoint's name, label) in the figures.json beside checkpoint.

    command: the command line that measured them (a list of words); inputs: the other
    checkpoints the figures depend on (a prior's tokenizer), in the same folder. name:
    the record's name for figures that are not one checkpoint's alone (a comparison of
    several, such as "three_ways"); default the checkpoint's. Returns the record's path.
    """
    checkpoint = Path(checkpoint)
    path = checkpoint.parent / RECORD_NAME
    record = load_record(path) if path.exists() else {}
    files = {Path(p).name: sha256_of(p) for p in (checkpoint, *inputs)}
    name = checkpoint.stem if name is None else check_label(name)
    if name != checkpoint.stem and (checkpoint.parent / f"{name}.npz").exists():
        raise ConfigError(f"the record's name {name!r} is the checkpoint {name}.npz's; a "
                          "comparison of several checkpoints needs a name of its own")
    record.setdefault(name, {})[check_label(label)] = {
        "command": shlex.join(command), "files": files, "figures": figures}
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))
    return path


# ---------------------------------------------------------------- reading

def load_record(path=SHIPPED_RECORD):
    """The record as a dict {checkpoint name: {label: {command, files, figures}}}."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"no record of figures at {path}; write one with "
                              "`tinytok eval-prior ... --record LABEL`") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not a readable record of figures: {e}") from None


def figure(name, label, key, record=None):
    """One recorded figure: figure("shapes_prior", "recommended", "adherence_heldout")."""
    record = load_record() if record is None else record
    try:
        return record[name][label]["figures"][key]
    except KeyError:
        known = sorted(record.get(name, {}).get(label, {}).get("figures", {}))
        raise ConfigError(f"the record has no figure {name} / {label} / {key}"
                          + (f"; it has {', '.join(known)}" if known else
                             f"; its entries are {', '.join(_entries(record))}")) from None


def _entries(record):
    return [f"{name} / {label}" for name in sorted(record) for label in sorted(record[name])]


def stale_entries(record, folder):
    """[(name, label, file)] for every recorded file in folder whose bytes changed since."""
    stale = []
    for name, labels in record.items():
        for label, entry in labels.items():
            for file, digest in entry["files"].items():
                if not (Path(folder) / file).exists() or sha256_of(Path(folder) / file) != digest:
                    stale.append((name, label, file))
    return stale


def format_seconds(seconds):
    """A lesson's run time as prose: '<1 s', '7 s', '2 min'."""
    if seconds < 1:
        return "<1 s"
    if seconds < 90:
        return f"{round(seconds)} s"
    return f"{round(seconds / 60)} min"


# ---------------------------------------------------------------- the markers in prose

def render_markers(text, record, times):
    """text with every fig and time marker's content set from the record and the times."""
    def fig(m):
        name, label, key, spec = m.group(1, 2, 3, 4)
        value = format(figure(name, label, key, record), spec)
        return f"<!--fig {name} {label} {key} {spec}-->{value}<!--/fig-->"

    def time(m):
        lesson = m.group(1)
        if lesson not in times:
            raise ConfigError(f"{LESSON_TIMES.name} has no run time for lesson {lesson!r}; run "
                              "TINYTOK_WRITE_LESSON_TIMES=1 python -m pytest tests/test_lessons.py")
        return f"<!--time {lesson}-->{format_seconds(times[lesson])}<!--/time-->"

    return TIME.sub(time, FIG.sub(fig, text))


def stale_markers(text, record, times):
    """[(line number, what the text says, what the record says)] for each marker that differs."""
    stale = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in (*FIG.finditer(line), *TIME.finditer(line)):
            want = render_markers(m.group(0), record, times)
            if want != m.group(0):
                stale.append((n, m.group(0), want))
    return stale


def load_times(path=LESSON_TIMES):
    return json.loads(Path(path).read_text(encoding="utf-8")) if Path(path).exists() else {}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tinytok.evaluate.record",
                                     description="Set the figures quoted in Markdown files "
                                                 "from the record of the shipped models.")
    parser.add_argument("files", nargs="+", help="Markdown files (README.md lessons/*.md)")
    parser.add_argument("--check", action="store_true", help="list stale markers, change nothing")
    args = parser.parse_args(argv)
    record, times = load_record(), load_times()
    stale_files = 0
    for name in args.files:
        path = Path(name)
        text = path.read_text(encoding="utf-8")
        stale = stale_markers(text, record, times)
        for line, said, want in stale:
            print(f"{path}:{line}: {said}  ->  {want}")
        if stale and not args.check:
            new = render_markers(text, record, times).encode("utf-8")
            write_atomically(path, lambda f: f.write(new))
        stale_files += bool(stale)
    print(f"{stale_files} file(s) {'with stale figures' if args.check else 'updated'}")
    return 1 if args.check and stale_files else 0


if __name__ == "__main__":
    sys.exit(main())
