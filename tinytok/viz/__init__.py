"""Pictures of images, tokens and training: what the README and the lessons show.

Every function takes uint8 NHWC images (NumPy or CuPy: they are copied to the host here,
at the edge), returns a ``PIL.Image`` and, given ``path``, also saves it (atomically: a temp
file in the same folder, then ``os.replace``). The look is shared by all of them:

* nearest-neighbour upscaling by a whole factor (``scale``), so every pixel stays a crisp
  square: tile pixels are exactly ``image.repeat(scale, 0).repeat(scale, 1)``;
* tiles ``gap`` pixels apart on a dark neutral background, with ``MARGIN`` pixels around;
* small labels in Pillow's default font.

    image_grid(x, labels=captions)                 # a grid of images with captions
    comparison_grid([x, x_rec], ["original", "reconstruction"])
    codebook_palette(decoded, counts)              # every code, most used first
    token_map(x[0], ids[0])                        # an image with its 8x8 token ids over it
    token_fill_strip(partials, [8, 16, 32, 64])    # an image filling in token by token
    fill_in_strip(pictures, known)                 # grids filling in many tokens a step
    fill_in_rows([a, b], ["raster", "masked"])     # strips of different lengths, one a row
    prompt_grid(samples, prompts, 4, marks=ok)     # one row per prompt, green/red dots
    loss_curve(losses, log=True)                   # a line plot without matplotlib
    chart([Series("vq", bits, psnr)], log_x=True)  # several named series (tinytok.viz.chart)

The recipe itself, drawn (tinytok.viz.recipe, also importable from here):

    pipeline_diagram(x, z, codebook, ids, stream, written_ids, written)   # the recipe
    vq_cells_picture(points, codebook)             # 2-D vectors, the cells of each code

The look they share (colours, fonts, checks, saving) is tinytok.viz.style.
"""
import math
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from tinytok.backend import to_numpy
from tinytok.errors import ConfigError, DTypeError, ShapeError
from tinytok.tokenizer.codebook import usage_stats
from tinytok.viz.style import (ACCENT, ACCENT_FAINT, BACKGROUND, BAD, CAPTION_LINES, FONT_SIZE,
                               GOOD, GRID, MARGIN, MASKED, MUTED, PAD, ROW_LABEL_WIDTH, TEXT,
                               _check_images, _check_int, _check_len, _finish, _font,
                               _line_height, _outlined_text, _text_width, _wrap, upscale)
from tinytok.viz.style import save_image  # noqa: F401 (public: save any picture atomically)


# ---------------------------------------------------------------- grids

def _grid(tiles, ncols, gap, labels=None, row_labels=None, title=None):
    """Lay out tiles (N, h, w, 3) uint8 in rows; return (image, boxes).

    Size: width  = 2*MARGIN + label_w + ncols*w + (ncols-1)*gap,
          height = 2*MARGIN + title_h + nrows*(h + caption_h) + (nrows-1)*gap,
    where label_w, caption_h and title_h are 0 when there is no such text.
    boxes[i] = (x, y) is the top-left corner of tile i.
    """
    n, h, w = tiles.shape[:3]
    ncols = max(1, min(int(ncols or math.ceil(math.sqrt(n))), n))
    nrows = math.ceil(n / ncols)
    font = _font()
    lh = _line_height(font)
    labels = _check_len(labels, n, "labels")
    row_labels = _check_len(row_labels, nrows, "row_labels (one per row)")
    captions = [_wrap(t, font, w - 4, CAPTION_LINES) for t in labels] if labels else None
    cap_h = max(len(c) for c in captions) * lh + 6 if captions else 0
    rows = [_wrap(t, font, ROW_LABEL_WIDTH, max(1, h // lh)) for t in row_labels or []]
    label_w = max((_text_width(font, s) for r in rows for s in r), default=-PAD) + PAD
    title_h = lh + PAD if title else 0

    width = 2 * MARGIN + label_w + ncols * w + (ncols - 1) * gap
    height = 2 * MARGIN + title_h + nrows * (h + cap_h) + (nrows - 1) * gap
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((MARGIN, MARGIN), _wrap(title, font, width - 2 * MARGIN, 1)[0],
                  font=font, fill=TEXT)
    boxes = []
    for i in range(n):
        r, c = divmod(i, ncols)
        x = MARGIN + label_w + c * (w + gap)
        y = MARGIN + title_h + r * (h + cap_h + gap)
        img.paste(Image.fromarray(tiles[i]), (x, y))
        boxes.append((x, y))
        for k, line in enumerate(captions[i] if captions else []):
            tx = x + (w - _text_width(font, line)) // 2
            draw.text((tx, y + h + 2 + k * lh), line, font=font, fill=MUTED)
    for r, lines in enumerate(rows):
        y = MARGIN + title_h + r * (h + cap_h + gap) + (h - len(lines) * lh) // 2
        for k, line in enumerate(lines):
            draw.text((MARGIN, y + k * lh), line, font=font, fill=TEXT)
    return img, boxes


def image_grid(images, ncols=None, scale=4, gap=2, labels=None, row_labels=None,
               title=None, path=None):
    """A grid of images (N, H, W, 3) uint8, each upscaled `scale` times (nearest neighbour).

    ncols: tiles per row (default: about a square). labels: N captions drawn under the tiles
    (wrapped to two lines, then cut with "…"). row_labels: one text per row, at the left.
    title: one line above the grid. Returns a PIL.Image; saves it when `path` is given.
    """
    tiles = upscale(_check_images(images), _check_int(scale, "scale"))
    img, _ = _grid(tiles, ncols, _check_int(gap, "gap", 0), labels, row_labels, title)
    return _finish(img, path)


def comparison_grid(rows, row_names, scale=4, gap=2, path=None):
    """One row per array of `rows` (each (N, H, W, 3) uint8, all the same shape), named at left.

    For example ``comparison_grid([x, decode(encode(x))], ["original", "reconstruction"])``.
    """
    arrays = [_check_images(r, f"rows[{i}]") for i, r in enumerate(rows)]
    if not arrays:
        raise ShapeError("comparison_grid: expected at least one row of images")
    for i, a in enumerate(arrays):
        if a.shape != arrays[0].shape:
            raise ShapeError(f"comparison_grid: rows[{i}] has shape {a.shape}, "
                             f"rows[0] has {arrays[0].shape}; all rows must match")
    return image_grid(np.concatenate(arrays), ncols=len(arrays[0]), scale=scale, gap=gap,
                      row_labels=_check_len(row_names, len(arrays), "row_names"), path=path)


def palette_title(counts):
    """The palette's header for (K,) usage counts: "K codes, U used, perplexity P"."""
    counts = to_numpy(counts)
    perplexity = usage_stats(counts)["perplexity"]
    return f"{counts.size} codes, {int((counts > 0).sum())} used, perplexity {perplexity:.1f}"


def codebook_palette(decoded_codes, counts=None, ncols=32, scale=2, gap=1, path=None):
    """Every code of a codebook as a small tile, most used first when `counts` are given.

    decoded_codes: (K, H, W, 3) uint8, tile k showing what code k looks like. Make it by
    decoding, for each k, a token grid (e.g. 8x8) filled with k alone and passing the whole
    decoded image or its centre crop (the centre is free of padding effects at the borders).
    counts: (K,) how often each code was chosen (``quantize.code_counts``), or None.
    With counts, unused codes are dimmed and crossed out and the header reads
    "K codes, U used, perplexity P".
    """
    tiles = upscale(_check_images(decoded_codes, "decoded_codes"), _check_int(scale, "scale"))
    k = len(tiles)
    title = f"{k} codes"  # without counts, usage is unknown
    if counts is not None:
        counts = to_numpy(counts)
        if counts.shape != (k,):
            raise ShapeError(f"codebook_palette: counts must have shape ({k},), one per code, "
                             f"got {counts.shape}")
        order = np.argsort(-counts, kind="stable")  # most used first, ties by id
        tiles, counts = tiles[order], counts[order]
        used = counts > 0
        dim = (0.3 * tiles + 0.7 * np.array(BACKGROUND)).astype(np.uint8)
        tiles = np.where(used[:, None, None, None], tiles, dim)
        title = palette_title(counts) + " (most used first)"
    img, boxes = _grid(tiles, ncols, _check_int(gap, "gap", 0), title=title)
    if counts is not None:
        draw = ImageDraw.Draw(img)
        h, w = tiles.shape[1:3]
        for (x, y), u in zip(boxes, used):
            if not u:
                draw.line([(x, y + h - 1), (x + w - 1, y)], fill=(150, 62, 62), width=1)
    return _finish(img, path)


# ---------------------------------------------------------------- tokens

def token_map(image, ids, scale=8, path=None):
    """One image (H, W, 3) uint8 with its token grid `ids` (g, g) drawn over it.

    The picture is exactly (W*scale, H*scale): the upscaled image, faint grid lines between
    the cells that each token covers, and each cell's id in outlined text. H and W must be
    multiples of g.
    """
    image = _check_images(image, "image")
    if len(image) != 1:
        raise ShapeError(f"token_map: expected one image (H, W, 3), got {image.shape}")
    ids = to_numpy(ids)
    if ids.ndim != 2:
        raise ShapeError(f"token_map: expected ids of shape (g, g), got {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise DTypeError(f"token_map: expected integer ids, got dtype {ids.dtype}")
    (h, w), (gh, gw) = image.shape[1:3], ids.shape
    if h % gh or w % gw:
        raise ShapeError(f"token_map: the image ({h}x{w}) must split evenly into the "
                         f"{gh}x{gw} token grid")
    scale = _check_int(scale, "scale")
    ch, cw = h * scale // gh, w * scale // gw  # one cell, in output pixels
    base = Image.fromarray(upscale(image[0], scale)).convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    lines = [[(0, i * ch), (base.width, i * ch)] for i in range(1, gh)]
    lines += [[(j * cw, 0), (j * cw, base.height)] for j in range(1, gw)]
    for line in lines:
        draw.line(line, fill=(255, 255, 255, 70))
    img = Image.alpha_composite(base, overlay).convert("RGB")
    draw = ImageDraw.Draw(img)
    font = _font(max(8, min(FONT_SIZE, cw // 3)))
    for i in range(gh):
        for j in range(gw):
            text = str(int(ids[i, j]))
            l, t, r, b = font.getbbox(text)
            x = j * cw + (cw - (r - l)) // 2 - l
            y = i * ch + (ch - (b - t)) // 2 - t
            _outlined_text(draw, (x, y), text, font)
    return _finish(img, path)


def token_fill_strip(partial_images, steps, scale=4, gap=2, path=None):
    """A row of images (each (H, W, 3) uint8) filling in token by token, labelled by `steps`.

    partial_images[i] is the image decoded after steps[i] tokens were written (the rest
    left blank or filled by the caller); the labels read "8 tokens", "16 tokens", ...
    """
    images = np.stack([_check_images(p, f"partial_images[{i}]")[0]
                       for i, p in enumerate(partial_images)]) if len(partial_images) else []
    steps = _check_len(steps, len(images), "steps (one per image)")
    labels = [f"{int(s)} token{'s' if int(s) != 1 else ''}" for s in steps]
    return image_grid(images, ncols=len(images), scale=scale, gap=gap, labels=labels,
                      path=path)


def fill_in_strip(pictures, known, labels=None, ncols=None, scale=4, gap=2, path=None):
    """Token grids filling in many cells at a time (a masked prior's steps), undecided
    cells grey.

    pictures (N, H, W, 3) uint8: each grid decoded with its undecided cells set to any code;
    known (N, g, g) bool: True where a cell's code is decided. The H/g x W/g pixels of every
    undecided cell are painted MASKED, so a tile shows the decided cells only (as the
    decoder draws them beside whatever code stood in for the rest). ncols: tiles per row
    (default: all in one row); labels: one per tile (default "k of g*g").
    """
    tiles, known = _grey_undecided(pictures, known, "fill_in_strip")
    if labels is None:
        g = known.shape[1]
        labels = [f"{int(k)} of {g * g}" for k in known.sum(axis=(1, 2))]
    return image_grid(tiles, ncols=ncols or len(tiles), scale=scale, gap=gap, labels=labels,
                      path=path)


def _grey_undecided(pictures, known, what):
    """(tiles, known): pictures (N, H, W, 3) with every cell that known (N, g, g) bool
    leaves undecided painted MASKED; one-line errors for a known of the wrong kind."""
    pictures = _check_images(pictures, "pictures")
    known = to_numpy(known)
    n, h, w = pictures.shape[:3]
    if known.dtype != bool:
        raise DTypeError(f"{what}: known must be a bool array (True where a cell's "
                         f"code is decided, e.g. codes >= 0), got dtype {known.dtype}")
    if known.ndim != 3 or len(known) != n or known.shape[1] != known.shape[2]:
        raise ShapeError(f"{what}: known must have shape ({n}, g, g), one square grid "
                         f"per picture, got {known.shape}")
    g = known.shape[1]
    if h % g or w % g:
        raise ShapeError(f"{what}: the pictures ({h}x{w}) must split evenly into the "
                         f"{g}x{g} grid of known")
    pixels = known.repeat(h // g, axis=1).repeat(w // g, axis=2)      # (N, H, W)
    return np.where(pixels[..., None], pictures, np.array(MASKED, dtype=np.uint8)), known


def fill_in_rows(rows, row_names, known=None, labels=None, scale=4, gap=2, path=None):
    """Strips of pictures of different lengths, one per row, named at the left: several
    ways of writing a picture side by side, each with as many steps as it takes.

    rows: a list of (n_i, H, W, 3) uint8, every picture the same size; row_names: one
    text per row. known: None, or one entry per row, None (every pixel shown) or a bool
    (n_i, g, g) as fill_in_strip takes it (undecided cells grey). labels: None, or one list
    of n_i captions per row. A row shorter than the longest ends in empty background.
    """
    arrays = [_check_images(r, f"rows[{i}]") for i, r in enumerate(rows)]
    if not arrays:
        raise ShapeError("fill_in_rows: expected at least one row of pictures")
    for i, a in enumerate(arrays):
        if a.shape[1:] != arrays[0].shape[1:]:
            raise ShapeError(f"fill_in_rows: rows[{i}] holds pictures {a.shape[1:]}, rows[0] "
                             f"{arrays[0].shape[1:]}; every picture must be the same size")
    known = _check_len(known, len(arrays), "known (one entry per row)") or [None] * len(arrays)
    labels = _check_len(labels, len(arrays), "labels (one list per row)")
    width = max(len(a) for a in arrays)
    blank = np.full((1, *arrays[0].shape[1:]), BACKGROUND, dtype=np.uint8)
    tiles, captions = [], []
    for i, (a, k) in enumerate(zip(arrays, known)):
        shown = a if k is None else _grey_undecided(a, k, f"fill_in_rows, row {i}")[0]
        tiles += [shown, blank.repeat(width - len(a), axis=0)]
        if labels is not None:
            captions += _check_len(labels[i], len(a), f"labels[{i}]") + [""] * (width - len(a))
    return image_grid(np.concatenate(tiles), ncols=width, scale=scale, gap=gap,
                      labels=captions if labels is not None else None,
                      row_labels=_check_len(row_names, len(arrays), "row_names"), path=path)


def prompt_grid(images, prompts, n_per_prompt, marks=None, scale=4, gap=2, path=None):
    """Samples (P*n, H, W, 3) uint8, one row of n per prompt, the prompt at the row's left.

    marks: optional P*n booleans, True when the attributes read back from a sample match its
    prompt; drawn as a green (True) or red (False) dot in the tile's top-right corner.
    """
    images, prompts = _check_images(images), list(prompts)
    n = _check_int(n_per_prompt, "n_per_prompt")
    if len(images) != len(prompts) * n:
        raise ShapeError(f"prompt_grid: expected {len(prompts)} prompts x {n} samples = "
                         f"{len(prompts) * n} images, got {len(images)}")
    marks = _check_len(None if marks is None else to_numpy(marks).reshape(-1), len(images),
                       "marks (one per image)")
    tiles = upscale(images, _check_int(scale, "scale"))
    img, boxes = _grid(tiles, n, _check_int(gap, "gap", 0), row_labels=prompts)
    draw = ImageDraw.Draw(img)
    r = max(3, tiles.shape[2] // 20)  # dot radius
    for (x, y), ok in zip(boxes, marks or []):
        cx, cy = x + tiles.shape[2] - r - 3, y + r + 3
        draw.ellipse([cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1], fill=(0, 0, 0))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=GOOD if ok else BAD)
    return _finish(img, path)


# ---------------------------------------------------------------- plots

class _CurveFrame(NamedTuple):
    """A loss curve's plot area in pixels, and the y range (log10 when log) it spans."""
    left: int
    top: int
    right: int
    bottom: int
    lo: float
    hi: float

    def to_y(self, t):
        """Data (log10 when log) -> pixel row; for one value or an array of them."""
        return self.bottom - (t - self.lo) / (self.hi - self.lo) * (self.bottom - self.top)


def _curve_values(values, log):
    """(steps, v, y): the finite values `v`, the steps they were at, and y = v or log10(v)."""
    v = to_numpy(values).astype(np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ShapeError(f"loss_curve: expected a non-empty 1-D sequence, got shape {v.shape}")
    steps, v = np.flatnonzero(np.isfinite(v)), v[np.isfinite(v)]
    if v.size == 0:
        raise ShapeError("loss_curve: every value is nan or inf; nothing to plot")
    if log and (v <= 0).any():
        raise ConfigError("loss_curve: log=True needs positive values")
    return steps, v, (np.log10(v) if log else v)


def _curve_ticks(y, log):
    """([(t, label)], lo, hi): the y axis' max, middle and min (one tick for a flat curve)
    with their values as text, and the y range to span."""
    lo, hi = float(y.min()), float(y.max())
    ticks = [hi, (lo + hi) / 2, lo] if hi > lo else [hi]
    labels = [f"{10 ** t if log else t:.4g}" for t in ticks]
    if hi == lo:
        lo, hi = lo - 1, hi + 1  # a flat line: draw it across the middle
    return list(zip(ticks, labels)), lo, hi


def _curve_frame(font, ticks, width, height, lo, hi):
    """The plot area: the widest tick value at its left, a header line above, the step
    numbers below; a ConfigError when that leaves less than 20 px either way."""
    lh = _line_height(font)
    left = MARGIN + max(_text_width(font, label) for _, label in ticks) + PAD
    top, bottom, right = MARGIN + lh + PAD, height - MARGIN - lh - 2, width - MARGIN
    if right - left < 20 or bottom - top < 20:
        raise ConfigError(f"loss_curve: {width}x{height} is too small for a plot")
    return _CurveFrame(left, top, right, bottom, lo, hi)


def _curve_text(draw, font, width, xy, text, fill=MUTED, anchor_right=False):
    """One line of text at xy (its right end there when anchor_right), cut to `width`."""
    text = _wrap(text, font, width, 1)[0]
    x, y = xy
    draw.text((x - _text_width(font, text) if anchor_right else x, y), text, font=font,
              fill=fill)


def _draw_curve_axes(draw, font, frame, width, ticks, steps):
    """Faint grid lines at the ticks with their values, the axes, the first and last step."""
    lh = _line_height(font)
    for t, label in ticks:
        draw.line([(frame.left, frame.to_y(t)), (frame.right, frame.to_y(t))], fill=GRID)
        _curve_text(draw, font, width, (frame.left - PAD, frame.to_y(t) - lh // 2 - 1), label,
                    anchor_right=True)
    draw.line([(frame.left, frame.top), (frame.left, frame.bottom),
               (frame.right, frame.bottom)], fill=MUTED)
    _curve_text(draw, font, width, (frame.left, frame.bottom + 3), str(steps[0]))
    _curve_text(draw, font, width, (frame.right, frame.bottom + 3), str(steps[-1]),
                anchor_right=True)


def _draw_curve_line(draw, frame, steps, y):
    """The values against their steps: a dot for one, a line while there are no more
    points than pixel columns, else the raw values faintly under each column's mean (a
    noisy curve of thousands of steps would otherwise be a solid band)."""
    left, right = frame.left, frame.right
    xs = left + (steps - steps[0]) / max(steps[-1] - steps[0], 1) * (right - left)
    ys = frame.to_y(y)
    if len(xs) == 1:
        draw.ellipse([xs[0] - 2, ys[0] - 2, xs[0] + 2, ys[0] + 2], fill=ACCENT)
    elif len(xs) <= right - left:
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=ACCENT, width=2, joint="curve")
    else:
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=ACCENT_FAINT)
        col = np.round(xs - left).astype(int)
        n = np.bincount(col)
        x_mean = np.flatnonzero(n) + left
        y_mean = np.bincount(col, weights=ys)[n > 0] / n[n > 0]
        draw.line(list(zip(x_mean.tolist(), y_mean.tolist())), fill=ACCENT, width=2,
                  joint="curve")


def loss_curve(values, path=None, title=None, width=480, height=240, log=False):
    """A line plot of `values` (a 1-D sequence, e.g. one loss per step), drawn with Pillow.

    Non-finite values (nan, inf) are skipped. log=True puts the y axis on a log scale (all
    values must then be positive). The y axis is labelled at its max, middle and min, the x
    axis at the first and last step; the last value is shown at the top right.
    """
    steps, v, y = _curve_values(values, log)
    ticks, lo, hi = _curve_ticks(y, log)
    font = _font()
    frame = _curve_frame(font, ticks, width, height, lo, hi)
    img = Image.new("RGB", (int(width), int(height)), BACKGROUND)
    draw = ImageDraw.Draw(img)
    _curve_text(draw, font, width, (MARGIN, MARGIN),
                (title or "") + ("  (log scale)" if log else ""), fill=TEXT)
    _curve_text(draw, font, width, (frame.right, MARGIN), f"last {v[-1]:.4g}",
                anchor_right=True)
    _draw_curve_axes(draw, font, frame, width, ticks, steps)
    _draw_curve_line(draw, frame, steps, y)
    return _finish(img, path)


# the recipe's two pictures, so that viz.pipeline_diagram works as viz.image_grid does
from tinytok.viz.recipe import pipeline_diagram, vq_cells_picture  # noqa: E402, F401
from tinytok.viz.chart import Series, chart  # noqa: E402, F401
