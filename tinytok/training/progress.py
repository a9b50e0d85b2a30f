"""Progress of long work (training, encoding a data set): tqdm bars, or plain lines in a log.

    with Progress(total=1000, start=0, desc="prior", log_every=50,
                  items_per_step=32 * 80, item="tok") as progress:
        for step in range(1000):
            ...
            progress.update(step + 1, {"loss": "2.3456"})

On a terminal, or in a notebook, it is a tqdm bar (``tqdm.auto``: a widget in Jupyter)
redrawn in place a few times a second, the figures after the counts:

    prior:  40%|████      | 400/1000 [00:20<00:30, 20.5k tok/s, loss=2.3456, lr=1.0e-03]

Anywhere else (a log file, CI, a pipe) a redrawn line would pile up as one long row of
carriage returns, so instead one plain line is printed each time the count passes a
multiple of log_every, and at the end:

    prior 400/1000 [00:20<00:30, 20.5k tok/s, loss=2.3456, lr=1.0e-03]

The speed is in steps per second, or in items (tokens, images) per second when the caller
says how many a step holds; the remaining time is always counted in steps.
"""
import sys
import time

from tqdm import std
from tqdm.auto import tqdm

# The same fields in both: counts, times, speed, then the figures ("postfix").
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {speed}{postfix}]"
LINE_FORMAT = "{desc} {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {speed}{postfix}]"

# tqdm.auto picked its Jupyter widget: we are in a notebook, whose stderr is no terminal.
IN_NOTEBOOK = any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)


def print_to_stderr(*args):
    """The default `log` of the trainers: a message line on stderr, at once."""
    print(*args, file=sys.stderr, flush=True)


def speed_text(rate, unit="step", items_per_step=None, item=None):
    """'2.10 step/s', or '20.5k tok/s' when each step holds items_per_step items."""
    if not rate:
        return f"? {item or unit}/s"
    if items_per_step:
        return f"{std.tqdm.format_sizeof(rate * items_per_step)} {item}/s"
    return f"{std.tqdm.format_sizeof(rate)} {unit}/s"


class _Bar(tqdm):
    """A tqdm bar whose speed field may count items (tokens, images) instead of steps."""
    monitor_interval = 0            # no monitor thread: the loop updates the bar itself

    def __init__(self, *args, items_per_step=None, item=None, **kwargs):
        self.items_per_step, self.item = items_per_step, item   # read by the first draw
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self):
        fields = super().format_dict
        rate = fields["rate"] or _mean_rate(fields["n"] - fields["initial"], fields["elapsed"])
        fields["speed"] = speed_text(rate, fields["unit"], self.items_per_step, self.item)
        return fields


def _mean_rate(done, elapsed):
    return done / elapsed if done > 0 and elapsed > 0 else None


class Progress:
    """Counts from start to total; a live bar or plain log lines, as the stream allows.

    stream: where to write (default stderr). A bar needs a terminal (stream.isatty()) or a
    notebook; otherwise lines are printed, each time the count passes a multiple of
    log_every and once at the end.
    """

    def __init__(self, total, start=0, desc="", log_every=50, stream=None, unit="step",
                 items_per_step=None, item=None):
        self.total, self.start, self.desc, self.log_every = total, start, desc, log_every
        self.unit, self.items_per_step, self.item = unit, items_per_step, item
        self.stream = stream or sys.stderr
        self.done, self.logged, self.postfix = start, start, ""
        self.t0 = time.perf_counter()
        self.bar = None
        if _is_terminal(self.stream) or (IN_NOTEBOOK and stream is None):
            self.bar = _Bar(total=total, initial=start, desc=desc, file=self.stream, unit=unit,
                            bar_format=BAR_FORMAT, dynamic_ncols=True, leave=True,
                            items_per_step=items_per_step, item=item)

    def update(self, done, figures=None):
        """The count is now `done`; figures ({name: text}) are shown after it."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in (figures or {}).items())
        advanced, self.done = done - self.done, done
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix, refresh=False)
            self.bar.update(advanced)           # tqdm redraws when enough time has passed
        elif done // self.log_every > self.logged // self.log_every or done == self.total:
            self._write_line()

    def close(self):
        """End the bar (left on screen), or print the last line if it was not printed."""
        if self.bar is not None:
            self.bar.close()
        elif self.done != self.logged:
            self._write_line()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def line(self):
        """The plain line for the count so far, as printed in a log."""
        elapsed = time.perf_counter() - self.t0
        speed = speed_text(_mean_rate(self.done - self.start, elapsed), self.unit,
                           self.items_per_step, self.item)
        return std.tqdm.format_meter(self.done, self.total, elapsed, prefix=self.desc,
                                     unit=self.unit, postfix=self.postfix, initial=self.start,
                                     bar_format=LINE_FORMAT, speed=speed)

    def _write_line(self):
        self.stream.write(self.line() + "\n")
        self.stream.flush()
        self.logged = self.done


def _is_terminal(stream):
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
