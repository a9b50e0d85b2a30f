"""The recipe itself, drawn: the pipeline from pixels to tokens and back, and VQ in 2-D."""
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from tinytok.backend import to_numpy
from tinytok.errors import ShapeError
from tinytok.viz.style import (BACKGROUND, FONT_SIZE, MARGIN, MUTED, PAD, TEXT, _check_images,
                               _check_int, _finish, _font, _line_height, _outlined_text,
                               _text_width, _wrap, upscale)


STREAM_COLOURS = {"special": (255, 190, 90), "word": TEXT, "image": (120, 200, 255)}


def _pca_colours(vectors):
    """(M, D) float vectors -> (M, 3) uint8: each vector's first three principal components,
    each stretched to 0..255 over its 2nd..98th percentile (so one outlier cannot wash the
    rest out). Near-equal vectors get near-equal colours, which is all a picture needs."""
    v = np.asarray(vectors, dtype=np.float64)
    v = v - v.mean(axis=0)
    _, _, vt = np.linalg.svd(v, full_matrices=False)
    basis = np.zeros((v.shape[1], 3))
    basis[:, :min(3, len(vt))] = vt[:3].T
    p = v @ basis                                                     # (M, 3)
    lo, hi = np.percentile(p, 2, axis=0), np.percentile(p, 98, axis=0)
    p = (p - lo) / np.where(hi > lo, hi - lo, 1.0)
    return np.clip(np.rint(40 + 200 * p), 0, 255).astype(np.uint8)


def _cells(colours, g, cell):
    """(g*g, 3) uint8 colours -> a (g*cell, g*cell, 3) image of flat squares, 1 px apart."""
    tiles = np.repeat(np.repeat(colours.reshape(g, g, 1, 1, 3), cell, 2), cell, 3)
    tiles[:, :, -1, :] = BACKGROUND                                   # thin dark grid lines
    tiles[:, :, :, -1] = BACKGROUND
    return tiles.transpose(0, 2, 1, 3, 4).reshape(g * cell, g * cell, 3)


def _ids_over(img, ids, cell, font):
    """Write each cell's id, centred and outlined, over a PIL image of g x g cells."""
    draw = ImageDraw.Draw(img)
    for (i, j), k in np.ndenumerate(ids):
        text = str(int(k))
        l, t, r, b = font.getbbox(text)
        _outlined_text(draw, (j * cell + (cell - (r - l)) // 2 - l,
                              i * cell + (cell - (b - t)) // 2 - t), text, font)
    return img


def _arrow(draw, x0, x1, y, label, font):
    """A left-to-right arrow from x0 to x1 at height y, its label centred above it."""
    draw.line([(x0, y), (x1 - 2, y)], fill=MUTED, width=2)
    draw.polygon([(x1, y), (x1 - 7, y - 4), (x1 - 7, y + 4)], fill=MUTED)
    for k, line in enumerate(reversed(label.split("\n"))):
        w = _text_width(font, line)
        draw.text(((x0 + x1 - w) // 2, y - 6 - (k + 1) * _line_height(font)), line,
                  font=font, fill=TEXT)


def _stream_kind(token):
    if token.startswith("<"):
        return "special"
    return "image" if token.lstrip("#").isdigit() else "word"


def _fit_stream(tokens, font, width):
    """The tokens that fit in `width` px: all of them, or the caption, the first image ids,
    "…", the last two ids and the closing specials."""
    sep = _text_width(font, "  ")

    def length(ts):
        return sum(_text_width(font, t) for t in ts) + sep * (len(ts) - 1)

    if length(tokens) <= width:
        return list(tokens)
    image = [i for i, t in enumerate(tokens) if _stream_kind(t) == "image"]
    if len(image) < 4:
        return list(tokens)
    head, tail = tokens[:image[0]], tokens[image[-1] - 1:]
    for n in range(len(image) - 3, 0, -1):
        shown = head + tokens[image[0]:image[0] + n] + ["…"] + tail
        if length(shown) <= width:
            return shown
    return head + ["…"] + tail


# ---------------------------------------------------------------- the pipeline diagram

ARROW_W = 96                # the gap between two panels, where an arrow and its label go
PANEL_FILL = (40, 40, 46)   # the stream's box and the prompt: a shade lighter than BACKGROUND


class _Layout(NamedTuple):
    """Where the diagram's parts go: three columns of side x side panels, ARROW_W apart."""
    side: int       # a panel's width and height, a whole number of cells
    cell: int       # one token's cell in the grid panels
    font: object
    small: object   # the font of the ids written over the cells, sized to fit a cell
    lh: int         # the line height of `font`
    width: int
    row_h: int      # a row of panels: two title lines, the panels, a caption line
    stream_h: int   # the token stream's title and its one boxed line
    xs: list        # the left edge of each column

    @property
    def height(self):
        return 2 * MARGIN + 2 * self.row_h + self.stream_h


def _check_diagram_inputs(image, latents, codebook, ids, written_ids, written):
    """The arrays on the host, checked against each other; the error (ShapeError, or
    DTypeError for a picture) names the first that does not fit (see pipeline_diagram)."""
    image = _check_images(image, "image")[0]
    written = _check_images(written, "written")[0]
    latents, codebook = to_numpy(latents), to_numpy(codebook)
    ids, written_ids = to_numpy(ids), to_numpy(written_ids)
    if latents.ndim != 3 or latents.shape[1] != latents.shape[2]:
        raise ShapeError(f"pipeline_diagram: latents must be (D, g, g), got {latents.shape}")
    D, g = latents.shape[0], latents.shape[1]
    if codebook.ndim != 2 or codebook.shape[1] != D:
        raise ShapeError(f"pipeline_diagram: codebook must be (K, {D}), got {codebook.shape}")
    for what, a in (("ids", ids), ("written_ids", written_ids)):
        if a.shape != (g, g) or a.dtype.kind not in "iu":
            raise ShapeError(f"pipeline_diagram: {what} must be ({g}, {g}) integers, got "
                             f"{a.shape} {a.dtype}")
    return image, latents, codebook, ids, written_ids, written


def _layout(image_side, g, scale):
    """The diagram's geometry for an image_side-pixel picture, a g x g grid and `scale`."""
    cell = image_side * scale // g
    side = cell * g         # every panel is side x side, so the grids have no ragged edge
    font, small = _font(), _font(max(8, min(FONT_SIZE, cell // 3 + 1)))
    lh = _line_height(font)
    return _Layout(side=side, cell=cell, font=font, small=small, lh=lh,
                   width=2 * MARGIN + 3 * side + 2 * ARROW_W,
                   row_h=2 * lh + PAD + side + PAD + lh, stream_h=3 * lh + 2 * PAD,
                   xs=[MARGIN + k * (side + ARROW_W) for k in range(3)])


def _grid_panels(latents, codebook, ids, written_ids, layout):
    """The three grids of vectors as panels: the encoder's output, the input's nearest codes
    and the codes the transformer wrote, the last two with their ids over them. One PCA
    over all three, so that one colour means one vector in every panel."""
    D, g = latents.shape[0], latents.shape[1]
    vectors = np.concatenate([latents.reshape(D, -1).T, codebook[ids.reshape(-1)],
                              codebook[written_ids.reshape(-1)]])
    colours = _pca_colours(vectors)
    m = g * g
    z = Image.fromarray(_cells(colours[:m], g, layout.cell))
    codes = Image.fromarray(_cells(colours[m:2 * m], g, layout.cell))
    written = Image.fromarray(_cells(colours[2 * m:], g, layout.cell))
    return (z, _ids_over(codes, ids, layout.cell, layout.small),
            _ids_over(written, written_ids, layout.cell, layout.small))


def _picture_panel(image, scale, side):
    """An (S, S, 3) picture as a side x side panel, nearest-neighbour: pixels stay squares."""
    return Image.fromarray(upscale(image, scale)).resize((side, side), Image.NEAREST)


def _prompt_panel(stream, layout):
    """What the transformer is given: <bos>, the stream's words (at most six lines), <image>."""
    words = [t for t in stream if _stream_kind(t) == "word"]
    font, side = layout.font, layout.side
    prompt = Image.new("RGB", (side, side), PANEL_FILL)
    draw = ImageDraw.Draw(prompt)
    lines = ["<bos>"] + _wrap(" ".join(words), font, side - 2 * PAD, 6) + ["<image>"]
    for k, line in enumerate(lines):
        kind = "special" if line.startswith("<") else "word"
        draw.text((PAD, PAD + k * layout.lh), line, font=font, fill=STREAM_COLOURS[kind])
    return prompt


def _draw_row(img, layout, y, title, panels, captions, arrows):
    """One row of the diagram at height y: its title, three panels with a caption under
    each, and an arrow with its label between neighbouring panels."""
    draw, font, side = ImageDraw.Draw(img), layout.font, layout.side
    draw.text((MARGIN, y), _wrap(title, font, layout.width - 2 * MARGIN, 1)[0], font=font,
              fill=TEXT)
    top = y + 2 * layout.lh + PAD   # two title lines: room for the arrows' two-line labels
    for x, panel, caption in zip(layout.xs, panels, captions):
        img.paste(panel, (x, top))
        caption = _wrap(caption, font, side, 1)[0]
        w = _text_width(font, caption)
        draw.text((x + (side - w) // 2, top + side + PAD // 2), caption, font=font, fill=MUTED)
    for k, label in enumerate(arrows):
        _arrow(draw, layout.xs[k] + side + 6, layout.xs[k + 1] - 6, top + side // 2, label,
               font)


def _draw_stream(img, layout, y, stream):
    """The middle row at height y: a title, then the token stream in one boxed line, each
    token coloured by its kind, cut down with "…" to fit the box."""
    draw, font, width = ImageDraw.Draw(img), layout.font, layout.width
    draw.text((MARGIN, y), _wrap("2. Caption and ids in one token stream: what the "
                                 "transformer learns to continue", font, width, 1)[0],
              font=font, fill=TEXT)
    shown = _fit_stream([str(t) for t in stream], font, width - 2 * MARGIN - 2 * PAD)
    box_top = y + layout.lh + PAD // 2
    draw.rectangle([MARGIN, box_top, width - MARGIN, box_top + layout.lh + 2 * PAD],
                   outline=MUTED, fill=PANEL_FILL)
    x = MARGIN + PAD
    for t in shown:
        kind = _stream_kind(t)
        fill = MUTED if t == "…" else STREAM_COLOURS[kind]
        # "#17" names an image id where a bare 17 could be a word; the box shows just 17
        draw.text((x, box_top + PAD), t.lstrip("#") if kind == "image" else t, font=font,
                  fill=fill)
        x += _text_width(font, t) + _text_width(font, "  ")


def pipeline_diagram(image, latents, codebook, ids, stream, written_ids, written, scale=6,
                     path=None):
    """The whole recipe in one picture, from real arrays.

    Top row, the tokenizer reading a picture: pixels -> the encoder's g x g grid of
    D-vectors -> each cell's nearest code, with its id written over it. Middle: the token
    stream the transformer trains on, caption and ids in one sequence (abbreviated with "…"
    to fit). Bottom row, generation: the caption -> the transformer -> the ids it writes ->
    the decoder's pixels.

    image, written: (S, S, 3) uint8, the input picture and the decoded drawing.
    latents: (D, g, g) float, the encoder's output for `image`. codebook: (K, D).
    ids, written_ids: (g, g) int, the input's nearest codes and the transformer's ids.
    stream: the token sequence as strings, e.g. ``vocab.describe(seq).split()``: names
    starting with "<" are specials, numbers (or "#17") are image ids, the rest words.
    Vectors are coloured by their first three principal components (one projection for
    the encoder grid and all codes), so similar vectors look alike.
    """
    image, latents, codebook, ids, written_ids, written = _check_diagram_inputs(
        image, latents, codebook, ids, written_ids, written)
    scale = _check_int(scale, "scale")
    D, g = latents.shape[0], latents.shape[1]
    layout = _layout(image.shape[0], g, scale)
    z_panel, code_panel, written_panel = _grid_panels(latents, codebook, ids, written_ids,
                                                      layout)
    img = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    _draw_row(img, layout, MARGIN, "1. The tokenizer reads a picture",
              [_picture_panel(image, scale, layout.side), z_panel, code_panel],
              [f"pixels {image.shape[0]}x{image.shape[1]}x3",
               f"{g}x{g} cells, {D} numbers each", f"{g * g} ids, one per cell"],
              ["encoder", "nearest\ncode"])
    _draw_stream(img, layout, MARGIN + layout.row_h, stream)
    _draw_row(img, layout, MARGIN + layout.row_h + layout.stream_h,
              "3. Generation: the transformer writes ids after a caption, the decoder paints them",
              [_prompt_panel(stream, layout), written_panel,
               _picture_panel(written, scale, layout.side)],
              ["the prompt", f"{g * g} ids it wrote",
               f"pixels {written.shape[0]}x{written.shape[1]}x3"],
              ["transformer", "decoder"])
    return _finish(img, path)


def vq_cells_picture(points, codebook, size=320, path=None, title=None):
    """Vector quantization in two dimensions: the plane coloured by nearest code.

    points: (N, 2) the vectors to quantize, drawn as small dots; codebook: (K, 2), drawn as
    rings with their ids. Every pixel of a fine grid over the points and codes gets the
    colour of its nearest code, so the coloured cells are the regions that choose each code
    (Voronoi cells). A dot has its cell's colour, darker. Returns a PIL.Image.
    """
    pts, codes = to_numpy(points).astype(np.float64), to_numpy(codebook).astype(np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or codes.ndim != 2 or codes.shape[1] != 2:
        raise ShapeError(f"vq_cells_picture: expected points (N, 2) and codebook (K, 2), got "
                         f"{pts.shape} and {codes.shape}")
    size = _check_int(size, "size", 32)
    both = np.concatenate([pts, codes])
    lo, hi = both.min(axis=0), both.max(axis=0)
    span = max(float((hi - lo).max()), 1e-9) * 1.1
    centre = (lo + hi) / 2
    lo = centre - span / 2                                   # a square view, 5% margin

    def to_px(v):
        return (v - lo) / span * (size - 1) * np.array([1, -1]) + np.array([0, size - 1])

    grid = (np.arange(size) + 0.5) / size * span
    gx, gy = np.meshgrid(lo[0] + grid, lo[1] + grid[::-1])  # row 0 is the top: y up
    cells = np.stack([gx.ravel(), gy.ravel()], axis=1)
    nearest = ((cells[:, None] - codes[None]) ** 2).sum(-1).argmin(1)
    hues = np.arange(len(codes)) / len(codes)
    palette = np.stack([np.array(Image.new("HSV", (1, 1), (int(255 * h), 110, 215))
                                 .convert("RGB"))[0, 0] for h in hues])
    plane = palette[nearest].reshape(size, size, 3).astype(np.uint8)
    font = _font()
    top = MARGIN + (_line_height(font) + PAD if title else 0)
    img = Image.new("RGB", (size + 2 * MARGIN, size + top + MARGIN), BACKGROUND)
    img.paste(Image.fromarray(plane), (MARGIN, top))
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((MARGIN, MARGIN), _wrap(title, font, size, 1)[0], font=font, fill=TEXT)
    point_ids = ((pts[:, None] - codes[None]) ** 2).sum(-1).argmin(1)
    for (x, y), k in zip(to_px(pts), point_ids):
        x, y = x + MARGIN, y + top
        dark = tuple(int(c * 0.45) for c in palette[k])
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=dark)
    for k, (x, y) in enumerate(to_px(codes)):
        x, y = x + MARGIN, y + top
        draw.ellipse([x - 7, y - 7, x + 7, y + 7], fill=(255, 255, 255), outline=(0, 0, 0),
                     width=2)
        text = str(k)
        l, t, r, b = font.getbbox(text)
        draw.text((x - (r - l) / 2 - l, y - (b - t) / 2 - t), text, font=font, fill=(0, 0, 0))
    return _finish(img, path)
