"""The look every picture shares: colours, sizes, the font, text layout, checks, saving."""

from functools import lru_cache
import os

import numpy as np
from PIL import Image, ImageFont

from tinytok.backend import to_numpy
from tinytok.errors import ConfigError, DTypeError, ShapeError
from tinytok.files import write_atomically
from tinytok.ops.checks import require_positive_int

BACKGROUND = (28, 28, 32)    # dark neutral grey, a little blue
TEXT = (222, 222, 228)
MUTED = (140, 140, 150)
ACCENT = (110, 170, 255)     # the loss curve
ACCENT_FAINT = (55, 75, 105)  # its raw values, under the per-pixel-column mean
GOOD, BAD = (70, 200, 110), (235, 75, 75)
GRID = (50, 50, 58)          # a plot's faint grid lines, just off the background
MASKED = (88, 88, 96)        # a grid cell whose code is not decided yet (<mask>)
MARGIN = 8                   # pixels around the whole picture
PAD = 6                      # pixels between a text column / header and the tiles
FONT_SIZE = 11
CAPTION_LINES = 2            # a caption under a tile wraps to at most this many lines
ROW_LABEL_WIDTH = 140        # row labels wrap to at most this many pixels


# ---------------------------------------------------------------- checks and conversions

def _check_images(images, what="images"):
    """images as a host uint8 array (N, H, W, 3); one image (H, W, 3) gets a batch axis."""
    a = to_numpy(images)
    if a.ndim == 3 and a.shape[-1] == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3 or 0 in a.shape:
        hint = "; this looks like NCHW, use x.transpose(0, 2, 3, 1)" if (
            a.ndim == 4 and a.shape[1] == 3) else ""
        raise ShapeError(f"{what}: expected uint8 images of shape (N, H, W, 3), "
                         f"got shape {a.shape}{hint}")
    if a.dtype != np.uint8:
        hint = "; for floats in [0, 1] use (x * 255).round().astype(np.uint8)" if (
            a.dtype.kind == "f") else ""
        raise DTypeError(f"{what}: expected dtype uint8 (0..255), got {a.dtype}{hint}")
    return a


def _check_len(items, n, what):
    """items as a list of length n (or None when items is None)."""
    items = None if items is None else list(items)
    if items is not None and len(items) != n:
        raise ShapeError(f"{what}: expected {n} entries, got {len(items)}")
    return items


def _check_int(value, what, minimum=1):
    """value as an int >= minimum (scale, gap, ...), or a ConfigError."""
    return require_positive_int(what, value, minimum)


def upscale(images, scale):
    """Nearest-neighbour upscaling of (..., H, W, 3) by a whole factor: (..., H*s, W*s, 3)."""
    return images.repeat(scale, axis=-3).repeat(scale, axis=-2)


# ---------------------------------------------------------------- text

@lru_cache(maxsize=None)
def _font(size=FONT_SIZE):
    """Pillow's default font at `size` px (Pillow >= 10.1), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # older Pillow, or built without FreeType
        return ImageFont.load_default()


def _text_width(font, text):
    left, _, right, _ = font.getbbox(text)
    return right - left


def _line_height(font):
    return font.getbbox("Ag")[3] + 3


def _wrap(text, font, width, max_lines):
    """text split into lines no wider than `width` px; cut with an ellipsis past max_lines.

    Pillow's default scalable font (Aileron) has a space only 2 px wide at small sizes,
    which runs words together; lines are joined with two spaces when the space is that thin.
    Its old bitmap font knows Latin-1 only: other characters become "?" and "…" is "...".
    """
    dots = "…"
    if not isinstance(font, ImageFont.FreeTypeFont):
        text, dots = str(text).encode("latin-1", "replace").decode("latin-1"), "..."
    sep = "  " if _text_width(font, "a a") - _text_width(font, "aa") < 3 else " "
    lines, line = [], ""
    for word in str(text).split():
        candidate = f"{line}{sep}{word}" if line else word
        if line and _text_width(font, candidate) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    lines.append(line)
    cut = len(lines) > max_lines
    lines = lines[:max_lines]
    for i, line in enumerate(lines):
        end = cut and i == len(lines) - 1
        while line and (end or _text_width(font, line) > width):
            if _text_width(font, line + dots) <= width:
                lines[i] = line + dots
                break
            line = line[:-1]
            end = True
    return lines


def _outlined_text(draw, xy, text, font, fill=TEXT, outline=(0, 0, 0)):
    """Text with a 1 px outline, readable on any colour (works with any Pillow font)."""
    for dx, dy in [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)]:
        draw.text((xy[0] + dx, xy[1] + dy), text, font=font, fill=outline)
    draw.text(xy, text, font=font, fill=fill)


# ---------------------------------------------------------------- saving

def save_image(img, path):
    """Save img to path atomically, with the permissions a plain write gives (tinytok.files)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in Image.registered_extensions():
        raise ConfigError(f"cannot save a picture as {path!r}: unknown extension {ext!r}; "
                          "use .png (or .jpg, .webp, ...)")
    write_atomically(path, lambda f: img.save(f, format=Image.registered_extensions()[ext]))
    return img


def _finish(img, path):
    return save_image(img, path) if path is not None else img
