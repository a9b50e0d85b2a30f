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
from tinytok.viz.style import BACKGROUND, MARGIN, MUTED, PAD, TEXT, _finish, _font, \
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


def chart(series, x_label="", y_label="", title=None, log_x=False, x_range=None,
          y_range=None, legend="top left", width=640, height=360, path=None):
    """A PIL.Image of the series (see the module docstring); saved when `path` is given.

    x_range, y_range: (lo, hi) to show (default: every point, with a little room); values
    outside are clipped to the frame. legend: "top left" or "bottom right".
    """
    _check(series, log_x, legend)
    font = _font()
    lh = _line_height(font)
    xs = np.concatenate([np.asarray(s.x, float) for s in series])
    ys = np.concatenate([np.asarray(s.y, float) for s in series])
    room = (xs.min() / 1.15, xs.max() * 1.15) if log_x else (xs.min(), xs.max())
    x_lo, x_hi = x_range or room
    y_pad = (ys.max() - ys.min()) * 0.05 or 1.0
    y_lo, y_hi = y_range or (ys.min() - y_pad, ys.max() + y_pad)
    y_ticks = [t for t in round_ticks(y_lo, y_hi) if y_lo <= t <= y_hi]
    x_ticks = power_of_two_ticks(x_lo, x_hi) if log_x else round_ticks(x_lo, x_hi)
    y_format = f"{{:.{_decimals(y_ticks)}f}}"

    left = MARGIN + lh + PAD + max(_text_width(font, y_format.format(t)) for t in y_ticks) + PAD
    top, right = MARGIN + (lh + PAD if title else 0), width - MARGIN
    bottom = height - MARGIN - 2 * lh - PAD
    img = Image.new("RGB", (int(width), int(height)), BACKGROUND)
    draw = ImageDraw.Draw(img)
    fx = (lambda v: math.log2(v)) if log_x else float

    def px(x, y):  # data -> pixel, clipped to the frame
        u = (fx(x) - fx(x_lo)) / (fx(x_hi) - fx(x_lo))
        v = (y - y_lo) / (y_hi - y_lo)
        return (left + min(max(u, 0), 1) * (right - left),
                bottom - min(max(v, 0), 1) * (bottom - top))

    if title:
        draw.text((MARGIN, MARGIN), title, font=font, fill=TEXT)
    for t in y_ticks:
        _, y = px(x_lo, t)
        draw.line([(left, y), (right, y)], fill=(50, 50, 58))
        label = y_format.format(t)
        draw.text((left - PAD - _text_width(font, label), y - lh // 2), label, font=font,
                  fill=MUTED)
    for t in x_ticks:
        x, _ = px(t, y_lo)
        draw.line([(x, top), (x, bottom)], fill=(50, 50, 58))
        label = f"{t:g}"
        w = _text_width(font, label)  # centred under its line, but kept inside the picture
        draw.text((min(x - w / 2, width - MARGIN - w), bottom + 3), label, font=font, fill=MUTED)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=MUTED)
    draw.text(((left + right - _text_width(font, x_label)) / 2, bottom + lh + PAD), x_label,
              font=font, fill=TEXT)
    _vertical_text(img, y_label, font, (MARGIN, (top + bottom) / 2))

    for i, s in enumerate(series):
        colour = s.colour or COLOURS[i % len(COLOURS)]
        points = [px(x, y) for x, y in sorted(zip(s.x, s.y))]
        if s.style == "steps":  # hold each value until the next x, then to the frame's edge
            corners = [p for a, b in zip(points, points[1:]) for p in (a, (b[0], a[1]))]
            draw.line(corners + [points[-1], (right, points[-1][1])], fill=colour, width=2)
        elif s.style == "line" and len(points) > 1:
            draw.line(points, fill=colour, width=2)
        if s.style != "steps":
            for x, y in points:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        # the legend, one row per series
        if legend == "top left":
            lx, ly = left + 8, top + 4 + i * lh
        else:
            widest = max(_text_width(font, t.label) for t in series)
            lx, ly = right - widest - 36, bottom - 4 - (len(series) - i) * lh
        draw.line([(lx, ly + lh // 2), (lx + 16, ly + lh // 2)], fill=colour, width=2)
        draw.text((lx + 22, ly), s.label, font=font, fill=TEXT)
    return _finish(img, path)


def _vertical_text(img, text, font, centre):
    """text rotated a quarter turn (reading upwards), centred at `centre` along the left."""
    w, h = _text_width(font, text) + 2, _line_height(font)
    label = Image.new("RGB", (w, h), BACKGROUND)
    ImageDraw.Draw(label).text((1, 0), text, font=font, fill=TEXT)
    label = label.rotate(90, expand=True)
    img.paste(label, (int(centre[0]), int(centre[1] - label.height / 2)))
