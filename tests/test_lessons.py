"""Run every lesson in lessons/ as a test, so that the lessons cannot rot.

For each ``lessons/NN_*.md`` the ```python fenced blocks are taken in order and executed in
one fresh namespace (one namespace per lesson, shared by its blocks), with the working
directory set to a temporary folder and the backend reset to NumPy. Other languages
(```text, ```bash, ...) are not run. The first line of a block can mark it:

    # lesson: skip    never run (a sketch, or something slow to show but not to test)
    # lesson: gpu     run only where tinytok.backend.use("cupy") works; skipped otherwise,
                      and the backend is set back to NumPy after it, so the blocks that
                      follow behave the same with or without a GPU
    # lesson: mpi     needs `mpiexec -n 2` (the mpi extra): where MPI cannot start, the
                      whole lesson is skipped with the reason; elsewhere a normal block

Pictures. The namespace holds ``LESSON_DIR`` (a pathlib.Path): a lesson saves its pictures
there. It is the lessons/ folder itself when ``TINYTOK_WRITE_LESSON_IMAGES=1`` is set (to
refresh the committed pictures), and the test's temporary folder otherwise.

    TINYTOK_WRITE_LESSON_IMAGES=1 python -m pytest tests/test_lessons.py -q

Run times. Each lesson states its run time through a marker that reads lessons/run_times.json
(tinytok.evaluate.record); with ``TINYTOK_WRITE_LESSON_TIMES=1`` each lesson's run as a plain
script is timed and written there, then ``python -m tinytok.evaluate.record README.md
lessons/*.md`` sets the lessons and the README's table from it.

Errors point at the Markdown: each block is compiled under the path of its .md file with
its code placed at its own line numbers, so a traceback reads
``lessons/03_convolution.md:57``, and the failing block's start line is added as a note.

As a learner runs it. A learner pastes the blocks into a REPL or saves them as a script, in
a folder of their own, with no LESSON_DIR. So the check that counts runs each lesson that
way: its blocks (less the skip and gpu ones) written to one ``lesson.py`` in an empty
folder, run with ``python lesson.py`` there, which must exit 0 and leave nothing in that
folder but, at most, one output folder of the lesson's own (no stray .npz or .png). Only
when that fails is the lesson run again in this harness, for a traceback that points into
the Markdown; a lesson with gpu blocks also runs in the harness where CuPy works. Each
lesson thus runs once in a normal test run. With TINYTOK_WRITE_LESSON_IMAGES=1 the harness
run is the one that runs, writing the pictures into lessons/.
"""
import json
import os
import re
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import pytest

from tinytok import backend
from tinytok.errors import BackendError

ROOT = Path(__file__).resolve().parent.parent
LESSONS_DIR = ROOT / "lessons"
LESSONS = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.md"))

FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")  # an opening or closing fence, + language
MARKER = re.compile(r"^#\s*lesson:\s*(\w+)\s*$")
MARKERS = ("skip", "gpu", "mpi")


def fenced_blocks(text):
    """[(language, first_line, end_line)] of every fenced block; lines 0-based, end exclusive.

    A block opens with ``` or ~~~ (three or more) and a language, and closes at a line of
    the same fence character at least as long, as in CommonMark.
    """
    lines = text.splitlines()
    blocks, n = [], 0
    while n < len(lines):
        m = FENCE.match(lines[n])
        if not m:
            n += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        closing = re.compile(rf"^{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = n + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        blocks.append((lang, n + 1, end))
        n = end + 1
    return blocks


def python_blocks(text):
    """[(start_line, code, marker)] for every ```python block, in order.

    start_line is the 1-based line number of the block's first code line in the file;
    marker is "skip", "gpu" or None, read from a first line such as ``# lesson: gpu``.
    """
    lines = text.splitlines()
    blocks = []
    for lang, start, end in fenced_blocks(text):
        if lang not in ("python", "py", "python3"):
            continue
        body = lines[start:end]
        marker = None
        mm = MARKER.match(body[0].strip()) if body else None
        if mm:
            marker = mm.group(1).lower()
            if marker not in MARKERS:
                raise ValueError(f"line {start + 1}: unknown lesson marker {marker!r}; "
                                 f"use one of {MARKERS}")
        blocks.append((start + 1, "\n".join(body) + "\n", marker))
    return blocks


def prose_lines(text):
    """The lines outside fenced blocks (a '# comment' in code is not a heading)."""
    lines = text.splitlines()
    inside = set()
    for _, start, end in fenced_blocks(text):
        inside.update(range(start - 1, end + 1))
    return [line for n, line in enumerate(lines) if n not in inside]


@lru_cache(maxsize=None)
def gpu_available():
    """Whether tinytok.backend.use("cupy") works here (asked once per session)."""
    try:
        backend.use("cupy")
        return True
    except BackendError:
        return False
    finally:
        backend.use("numpy")


def run_block(md_path, start_line, code, namespace):
    """exec one block so that tracebacks and line numbers point into the .md file."""
    __tracebackhide__ = True  # pytest: start the failure report in the lesson itself
    source = "\n" * (start_line - 1) + code
    compiled = compile(source, str(md_path), "exec")
    try:
        exec(compiled, namespace)
    except BaseException as e:
        if isinstance(e, Exception):
            e.add_note(f"in the python block of {md_path.relative_to(ROOT)} "
                       f"that starts at line {start_line}")
        raise


SCRIPT_TIMEOUT = 600  # seconds for one lesson run as a script (the slowest takes ~30 s)


def lesson_script(text):
    """The lesson as one plain Python script: its python blocks in order, less the ones
    marked skip or gpu, each preceded by a comment naming its line in the .md file."""
    return "".join(f"# --- block at line {line} ---\n{code}\n"
                   for line, code, marker in python_blocks(text) if marker in (None, "mpi"))


@lru_cache(maxsize=None)
def mpi_unavailable():
    """Why `mpiexec -n 2` cannot start here (tests/test_mpi.py's check), or None."""
    from test_mpi import mpi_start_problem
    return mpi_start_problem()


def run_as_script(md_path, folder):
    """Run the lesson as `python lesson.py` in `folder` (empty), as a learner would.

    Returns the finished process and what it left in `folder` (names, lesson.py aside).
    Temporary files go to folder/../tmp, so a lesson's mkdtemp does not fill /tmp.
    """
    script = folder / "lesson.py"
    script.write_text(lesson_script(md_path.read_text(encoding="utf-8")), encoding="utf-8")
    tmp = folder.parent / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("TINYTOK_BACKEND", "TINYTOK_WRITE_LESSON_IMAGES")}
    env.update(TMPDIR=str(tmp), TEMP=str(tmp), TMP=str(tmp), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(script)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=SCRIPT_TIMEOUT)
    return proc, sorted(p.name for p in folder.iterdir() if p != script)


def stray_files(folder, left):
    """What a lesson must not leave in its working folder: any file at the top, or more
    than one folder (one output folder of its own is fine)."""
    files = [name for name in left if not (folder / name).is_dir()]
    folders = [name for name in left if (folder / name).is_dir()]
    return files + (folders if len(folders) > 1 else [])


@pytest.mark.parametrize("md_path", LESSONS, ids=[p.name for p in LESSONS])
def test_lesson_runs(md_path, tmp_path, monkeypatch):
    """The lesson runs as a plain script in an empty folder, exits 0 and leaves no stray
    files there; on failure, the harness runs it again for a traceback into the .md."""
    text = md_path.read_text(encoding="utf-8")
    if any(marker == "mpi" for _, _, marker in python_blocks(text)) and mpi_unavailable():
        pytest.skip(f"{md_path.name} needs MPI: {mpi_unavailable()}")
    write_images = os.environ.get("TINYTOK_WRITE_LESSON_IMAGES") == "1"
    if write_images:
        run_in_harness(md_path, tmp_path, monkeypatch, LESSONS_DIR)
        return
    work = tmp_path / "work"
    work.mkdir()
    started = time.perf_counter()
    proc, left = run_as_script(md_path, work)
    if os.environ.get("TINYTOK_WRITE_LESSON_TIMES") == "1" and proc.returncode == 0:
        write_run_time(md_path.stem, time.perf_counter() - started)
    if proc.returncode != 0:
        harness = tmp_path / "harness"
        harness.mkdir()
        run_in_harness(md_path, harness, monkeypatch, harness)  # raises with a good traceback
        pytest.fail(f"{md_path.name} failed as a plain script (exit {proc.returncode}) but "
                    f"passed in the harness; the script's stderr ends:\n"
                    f"{proc.stderr[-3000:]}")
    stray = stray_files(work, left)
    assert not stray, (f"{md_path.name}, run as a script, left {stray} in its working folder; "
                       "write into LESSON_DIR or a temporary folder instead")
    text = md_path.read_text(encoding="utf-8")
    if any(marker == "gpu" for _, _, marker in python_blocks(text)) and gpu_available():
        harness = tmp_path / "gpu"
        harness.mkdir()
        run_in_harness(md_path, harness, monkeypatch, harness)


def write_run_time(lesson, seconds):
    """lessons/run_times.json gets this lesson's time (seconds, rounded to 0.1)."""
    from tinytok.evaluate.record import LESSON_TIMES, load_times
    times = load_times() | {lesson: round(seconds, 1)}
    LESSON_TIMES.write_text(json.dumps(dict(sorted(times.items())), indent=1) + "\n",
                            encoding="utf-8")


def run_in_harness(md_path, tmp_path, monkeypatch, lesson_dir):
    """The lesson's python blocks run, in order, in one namespace, without error."""
    __tracebackhide__ = True
    monkeypatch.chdir(tmp_path)
    namespace = {
        "__name__": "__lesson__",
        "LESSON_DIR": lesson_dir,
    }
    skipped_gpu = []
    backend.use("numpy")
    try:
        for start_line, code, marker in python_blocks(md_path.read_text(encoding="utf-8")):
            if marker == "skip":
                continue
            if marker == "gpu":
                if not gpu_available():
                    skipped_gpu.append(start_line)
                    continue
                try:
                    run_block(md_path, start_line, code, namespace)
                finally:
                    backend.use("numpy")
                continue
            run_block(md_path, start_line, code, namespace)
    finally:
        backend.use("numpy")
    if skipped_gpu:
        print(f"{md_path.name}: GPU blocks at lines {skipped_gpu} skipped (no usable CuPy)")


@pytest.mark.parametrize("md_path", LESSONS, ids=[p.name for p in LESSONS])
def test_lesson_shape(md_path):
    """At least one python block that runs, and a last section to try things in."""
    text = md_path.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    assert any(marker is None for _, _, marker in blocks), \
        f"{md_path.name} has no ```python block that runs everywhere"
    sections = [h for h in prose_lines(text) if re.match(r"^##\s", h)]
    assert sections, f"{md_path.name} has no '## ' sections"
    assert "try" in sections[-1].lower(), \
        f"{md_path.name} should end with a '## Try this' section, ends with {sections[-1]!r}"


def test_lesson_script_and_stray_files(tmp_path):
    """The script builder drops skip and gpu blocks; stray_files allows one folder only."""
    text = "```python\na = 1\n```\n```python\n# lesson: gpu\nb = 2\n```\n" \
           "```python\n# lesson: skip\nc = 3\n```\n```python\nprint(a)\n```\n"
    script = lesson_script(text)
    assert "a = 1" in script and "print(a)" in script
    assert "b = 2" not in script and "c = 3" not in script
    (tmp_path / "out").mkdir()
    assert stray_files(tmp_path, ["out"]) == []
    (tmp_path / "x.npz").write_bytes(b"")
    (tmp_path / "more").mkdir()
    assert stray_files(tmp_path, ["more", "out", "x.npz"]) == ["x.npz", "more", "out"]


def test_there_are_lessons():
    assert LESSONS, f"no lessons/NN_*.md found in {LESSONS_DIR}"


def test_block_parser():
    """The harness's own parser: languages, markers and line numbers."""
    text = "\n".join([
        "# Title",                 # 1
        "```python",               # 2
        "a = 1",                   # 3
        "```",                     # 4
        "```text",                 # 5
        "```python inside text",   # 6: not a fence opening, still inside the text block
        "```",                     # 7
        "````python",              # 8
        "# lesson: gpu",           # 9
        "```",                     # 10: shorter fence, stays inside
        "````",                    # 11
        "```python",               # 12
        "# lesson: skip",          # 13
        "```",                     # 14
    ])
    blocks = python_blocks(text)
    assert [(line, marker) for line, _, marker in blocks] == [(3, None), (9, "gpu"),
                                                             (13, "skip")]
    assert blocks[0][1] == "a = 1\n"
    assert blocks[1][1] == "# lesson: gpu\n```\n"


def test_errors_point_at_the_markdown(tmp_path):
    md = LESSONS_DIR / "00_example.md"  # never written: only used as a file name
    code = "x = 1\nraise ValueError('boom')\n"
    with pytest.raises(ValueError) as info:
        run_block(md, 40, code, {})
    frame = info.traceback[-1]
    assert str(frame.path).endswith("lessons/00_example.md")
    assert frame.lineno + 1 == 41  # pytest counts from 0
    assert "starts at line 40" in info.value.__notes__[-1]
