"""A chart of several named series against one x axis, drawn with Pillow (no matplotlib).

    chart([Series("vq", bits, psnr), Series("thumbnails", cost, best, style="steps")],
          x_label="bits per picture", y_label="PSNR (dB)", log_x=True, path="curve.png")

Each series is drawn as a line through its points with a dot on each ("line"), as dots
alone ("points"), or as a staircase that holds each value until the next x ("steps": the
best of no more than x, such as a frontier). Axes get round ticks: powers of two on a
log-2 x axis, steps of 1, 2 or 5 times a power of ten otherwise. A legend lists the series.
"""
import math
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from tinytok.errors import ConfigError, ShapeError
from tinytok.viz.style import BACKGROUND, GRID, MARGIN, MUTED, PAD, TEXT, _finish, _font, \
    _line_height, _text_width

COLOURS = ((110, 170, 255), (235, 75, 75), (70, 200, 110), (250, 170, 60), (200, 120, 240),
           (240, 240, 240))


class Series(NamedTuple):
    label: str
    x: list
    y: list
    style: str = "line"      # "line", "points" or "steps"
    colour: tuple = None     # RGB; None takes the next of COLOURS


def round_ticks(lo, hi, target=5):
    """About `target` round values covering [lo, hi]: multiples of 1, 2 or 5 x 10^k."""
    raw = (hi - lo) / max(target, 1) or 1.0
    power = 10 ** math.floor(math.log10(raw))
    step = min((m * power for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def power_of_two_ticks(lo, hi):
    """The powers of two in [lo, hi] (lo > 0); with 1.5 times each too if they are few."""
    powers = [2.0 ** k for k in range(math.ceil(math.log2(lo)) - 1, math.floor(math.log2(hi)) + 1)]
    ticks = [t for t in powers if lo <= t <= hi]
    if len(ticks) < 4:
        ticks = sorted(ticks + [1.5 * t for t in powers if lo <= 1.5 * t <= hi])
    return ticks


def _decimals(ticks):
    """Digits after the point that tell the ticks apart (0 for 18, 19, 20; 1 for 18.5)."""
    for digits in range(4):
        if all(abs(t - round(t, digits)) < 1e-9 for t in ticks):
            return digits
    return 4


def _check(series, log_x, legend):
    if legend not in ("top left", "bottom right"):
        raise ConfigError(f"chart: legend must be 'top left' or 'bottom right', got {legend!r}")
    for s in series:
        if len(s.x) != len(s.y) or not len(s.x):
            raise ShapeError(f"chart: series {s.label!r} needs as many x as y values, "
                             f"at least one, got {len(s.x)} and {len(s.y)}")
        if s.style not in ("line", "points", "steps"):
            raise ConfigError(f"chart: unknown style {s.style!r}; use line, points or steps")
        if log_x and min(s.x) <= 0:
            raise ConfigError(f"chart: log_x needs positive x values ({s.label!r})")


class _Frame(NamedTuple):
    """The plot area in pixels and the data ranges it shows."""
    left: int
    top: int
    right: int
    bottom: int
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    log_x: bool

    def px(self, x, y):
        """Data -> pixel, clipped to the frame: a point out of range sits on the edge."""
        fx = math.log2 if self.log_x else float
        u = (fx(x) - fx(self.x_lo)) / (fx(self.x_hi) - fx(self.x_lo))
        v = (y - self.y_lo) / (self.y_hi - self.y_lo)
        return (self.left + min(max(u, 0), 1) * (self.right - self.left),
                self.bottom - min(max(v, 0), 1) * (self.bottom - self.top))


def _ranges(series, log_x, x_range, y_range):
    """(x_lo, x_hi, y_lo, y_hi): the ranges asked for, else every point with some room
    (15% either side on a log x axis, 5% of the spread above and below along y)."""
    xs = np.concatenate([np.asarray(s.x, float) for s in series])
    ys = np.concatenate([np.asarray(s.y, float) for s in series])
    room = (xs.min() / 1.15, xs.max() * 1.15) if log_x else (xs.min(), xs.max())
    x_lo, x_hi = x_range or room
    y_pad = (ys.max() - ys.min()) * 0.05 or 1.0   # one value alone still gets a range
    y_lo, y_hi = y_range or (ys.min() - y_pad, ys.max() + y_pad)
    return x_lo, x_hi, y_lo, y_hi


def _frame(font, y_labels, title, width, height, ranges, log_x):
    """The plot area: the y label and the widest tick value at its left, an optional title
    line above it, and two lines below it for the tick values and the x label."""
    lh = _line_height(font)
    left = MARGIN + lh + PAD + max(_text_width(font, t) for t in y_labels) + PAD
    top, right = MARGIN + (lh + PAD if title else 0), width - MARGIN
    bottom = height - MARGIN - 2 * lh - PAD
    return _Frame(left, top, right, bottom, *ranges, log_x)


def _draw_grid(draw, frame, font, x_ticks, y_ticks, y_format, width):
    """Faint lines at the ticks, each labelled with its value."""
    lh = _line_height(font)
    for t in y_ticks:
        _, y = frame.px(frame.x_lo, t)
        draw.line([(frame.left, y), (frame.right, y)], fill=GRID)
        label = y_format.format(t)
        draw.text((frame.left - PAD - _text_width(font, label), y - lh // 2), label,
                  font=font, fill=MUTED)
    for t in x_ticks:
        x, _ = frame.px(t, frame.y_lo)
        draw.line([(x, frame.top), (x, frame.bottom)], fill=GRID)
        label = f"{t:g}"
        w = _text_width(font, label)  # centred under its line, but kept inside the picture
        draw.text((min(x - w / 2, width - MARGIN - w), frame.bottom + 3), label, font=font,
                  fill=MUTED)


def _draw_axes(img, draw, frame, font, x_label, y_label):
    """The left and bottom axes, the x label centred below, the y label upright at left."""
    left, top, right, bottom = frame.left, frame.top, frame.right, frame.bottom
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=MUTED)
    draw.text(((left + right - _text_width(font, x_label)) / 2,
               bottom + _line_height(font) + PAD), x_label, font=font, fill=TEXT)
    _vertical_text(img, y_label, font, (MARGIN, (top + bottom) / 2))


def _draw_series(draw, frame, s, colour):
    """One series in its style (see the module docstring), its points in order of x."""
    points = [frame.px(x, y) for x, y in sorted(zip(s.x, s.y))]
    if s.style == "steps":  # hold each value until the next x, then to the frame's edge
        corners = [p for a, b in zip(points, points[1:]) for p in (a, (b[0], a[1]))]
        draw.line(corners + [points[-1], (frame.right, points[-1][1])], fill=colour, width=2)
    elif s.style == "line" and len(points) > 1:
        draw.line(points, fill=colour, width=2)
    if s.style != "steps":
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)


def _draw_legend_row(draw, frame, font, labels, i, colour, legend):
    """Row i of the legend: a short stroke in the series' colour, then its label. Rows go
    down from the top left, or stack up to the bottom right corner."""
    lh = _line_height(font)
    if legend == "top left":
        lx, ly = frame.left + 8, frame.top + 4 + i * lh
    else:
        widest = max(_text_width(font, t) for t in labels)
        lx, ly = frame.right - widest - 36, frame.bottom - 4 - (len(labels) - i) * lh
    draw.line([(lx, ly + lh // 2), (lx + 16, ly + lh // 2)], fill=colour, width=2)
    draw.text((lx + 22, ly), labels[i], font=font, fill=TEXT)


def chart(series, x_label="", y_label="", title=None, log_x=False, x_range=None,
          y_range=None, legend="top left", width=640, height=360, path=None):
    """A PIL.Image of the series (see the module docstring); saved when `path` is given.

    x_range, y_range: (lo, hi) to show (default: every point, with a little room); values
    outside are clipped to the frame. legend: "top left" or "bottom right".
    """
    _check(series, log_x, legend)
    font = _font()
    x_lo, x_hi, y_lo, y_hi = ranges = _ranges(series, log_x, x_range, y_range)
    y_ticks = [t for t in round_ticks(y_lo, y_hi) if y_lo <= t <= y_hi]
    x_ticks = power_of_two_ticks(x_lo, x_hi) if log_x else round_ticks(x_lo, x_hi)
    y_format = f"{{:.{_decimals(y_ticks)}f}}"   # one number of decimals for every y tick
    frame = _frame(font, [y_format.format(t) for t in y_ticks], title, width, height, ranges,
                   log_x)
    img = Image.new("RGB", (int(width), int(height)), BACKGROUND)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((MARGIN, MARGIN), title, font=font, fill=TEXT)
    _draw_grid(draw, frame, font, x_ticks, y_ticks, y_format, width)
    _draw_axes(img, draw, frame, font, x_label, y_label)
    labels = [s.label for s in series]
    for i, s in enumerate(series):
        colour = s.colour or COLOURS[i % len(COLOURS)]
        _draw_series(draw, frame, s, colour)
        _draw_legend_row(draw, frame, font, labels, i, colour, legend)
    return _finish(img, path)


def _vertical_text(img, text, font, centre):
    """text rotated a quarter turn (reading upwards), centred at `centre` along the left."""
    w, h = _text_width(font, text) + 2, _line_height(font)
    label = Image.new("RGB", (w, h), BACKGROUND)
    ImageDraw.Draw(label).text((1, 0), text, font=font, fill=TEXT)
    label = label.rotate(90, expand=True)
    img.paste(label, (int(centre[0]), int(centre[1] - label.height / 2)))
