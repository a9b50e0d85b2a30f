"""Progress: a tqdm bar on a terminal, one plain line every log_every steps in a log."""
import io
import re

from tinytok.training.progress import Progress, speed_text


class Terminal(io.StringIO):
    def isatty(self):
        return True


def run(stream, total=10, start=0, log_every=3, **kwargs):
    with Progress(total, start, "prior", log_every, stream, **kwargs) as progress:
        for done in range(start + 1, total + 1):
            progress.update(done, {"loss": f"{1 / done:.4f}", "lr": "1.0e-03"})
    return stream.getvalue()


def test_a_log_gets_a_line_every_log_every_steps_and_at_the_end():
    lines = run(io.StringIO()).splitlines()
    assert [re.match(r"prior (\d+)/10 \[", line).group(1) for line in lines] == \
        ["3", "6", "9", "10"]
    assert "\r" not in "".join(lines)
    assert lines[-1].endswith("step/s, loss=0.1000, lr=1.0e-03]"), lines[-1]


def test_a_resumed_log_counts_from_the_checkpoint_and_prints_a_stopped_run_last_step():
    stream = io.StringIO()
    with Progress(100, 40, "tokenizer", 50, stream, items_per_step=32, item="img") as p:
        for done in (41, 42, 43):               # stopped (Ctrl-C) after step 43
            p.update(done, {"loss": "0.5"})
    lines = stream.getvalue().splitlines()      # no multiple of 50 passed: the last step only
    assert len(lines) == 1
    assert re.match(r"tokenizer 43/100 \[.* img/s, loss=0\.5\]$", lines[0]), lines


def test_a_terminal_gets_a_tqdm_bar_redrawn_in_place():
    text = run(Terminal(), items_per_step=2560, item="tok")
    assert text.startswith("\r") and text.endswith("\n")
    last = text.rstrip("\n").split("\r")[-1]
    assert re.match(r"prior: 100%\|.*\| 10/10 \[.* tok/s, loss=0\.1000, lr=1\.0e-03\]$",
                    last), last


def test_speed_in_steps_or_in_items():
    assert speed_text(2.1) == "2.10 step/s"
    assert speed_text(8.0, items_per_step=2560, item="tok") == "20.5k tok/s"
    assert speed_text(None, item="img") == "? img/s"
