"""The two pictures of the recipe (tinytok.viz.recipe): pipeline_diagram and vq_cells_picture.

Synthetic arrays stand in for a trained model, so these run in milliseconds: the size and
mode of the picture, that the panels hold what they were given, and that saving writes a
normal file (the permissions a plain write gives under the current umask)."""
import os

import numpy as np
import pytest
from PIL import Image

from tinytok import viz
from tinytok.viz import recipe
from tinytok.errors import ShapeError

M = viz.MARGIN


def diagram_inputs(S=16, g=4, D=5, K=12, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    written = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    latents = rng.standard_normal((D, g, g))
    codebook = rng.standard_normal((K, D))
    ids = rng.integers(0, K, (g, g))
    written_ids = rng.integers(0, K, (g, g))
    stream = (["<bos>", "a", "red", "circle", "<image>"] + [str(i) for i in ids.ravel()]
              + ["</image>", "<eos>"])
    return image, latents, codebook, ids, stream, written_ids, written


def test_pipeline_diagram_draws_the_panels():
    image, latents, codebook, ids, stream, written_ids, written = diagram_inputs()
    scale = 6
    img = viz.pipeline_diagram(image, latents, codebook, ids, stream, written_ids, written,
                               scale=scale)
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    side = 16 * scale
    assert img.width == 2 * M + 3 * side + 2 * 96
    a = np.asarray(img)
    # The input picture is pasted, nearest-neighbour upscaled, somewhere in the top row:
    # find its top-left corner in the first column of panels and compare exactly.
    column = a[:, M:M + side]
    rows = [y for y in range(a.shape[0] - side)
            if np.array_equal(column[y], np.repeat(image[0], scale, axis=0))]
    assert rows, "the input picture is not in the diagram"
    top = rows[0]
    np.testing.assert_array_equal(a[top:top + side, M:M + side],
                                  image.repeat(scale, 0).repeat(scale, 1))
    # The two grid panels of the top row are coloured, not background.
    for k in (1, 2):
        x = M + k * (side + 96)
        panel = a[top:top + side, x:x + side]
        assert (panel != viz.BACKGROUND).any(axis=-1).mean() > 0.5
    # The written picture is in the bottom row's last panel.
    x = M + 2 * (side + 96)
    found = [y for y in range(top + side, a.shape[0] - side + 1)
             if np.array_equal(a[y:y + side, x:x + side],
                               written.repeat(scale, 0).repeat(scale, 1))]
    assert found, "the decoded picture is not in the bottom row"
    # Some of the stream is written in the image-id colour (text is antialiased: near it).
    near = np.abs(a.astype(int) - recipe.STREAM_COLOURS["image"]).max(axis=-1) < 30
    assert near[top + side:].sum() > 20


def test_pipeline_diagram_abbreviates_a_long_stream():
    image, latents, codebook, ids, _, written_ids, written = diagram_inputs(g=8, S=32)
    stream = ["<bos>", "a", "red", "circle", "<image>"] + ["123"] * 64 + ["</image>", "<eos>"]
    font = viz._font()
    shown = recipe._fit_stream(stream, font, 400)
    assert "…" in shown and shown[:5] == stream[:5] and shown[-2:] == stream[-2:]
    viz.pipeline_diagram(image, latents, codebook, ids, stream, written_ids, written)


def test_pipeline_diagram_refuses_mismatched_shapes():
    image, latents, codebook, ids, stream, written_ids, written = diagram_inputs()
    with pytest.raises(ShapeError, match="codebook"):
        viz.pipeline_diagram(image, latents, codebook[:, :2], ids, stream, written_ids,
                             written)
    with pytest.raises(ShapeError, match="written_ids"):
        viz.pipeline_diagram(image, latents, codebook, ids, stream, written_ids[:2],
                             written)


def test_pipeline_diagram_saves_a_normal_file(tmp_path):
    path = tmp_path / "pipeline.png"
    img = viz.pipeline_diagram(*diagram_inputs(), path=path)
    assert path.is_file()
    with Image.open(path) as saved:
        assert saved.size == img.size and saved.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(img))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["pipeline.png"]  # no temp file left


def test_vq_cells_picture_colours_the_plane_by_nearest_code(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.standard_normal((50, 2))
    codebook = np.array([[-1.0, -1.0], [1.0, -1.0], [0.0, 1.2]])
    size = 120
    img = viz.vq_cells_picture(points, codebook, size=size, path=tmp_path / "cells.png")
    assert img.mode == "RGB" and img.size == (size + 2 * M, size + 2 * M)
    a = np.asarray(img)[M:M + size, M:M + size].reshape(-1, 3)
    colours = {tuple(c) for c in a}
    assert len(colours) >= 3  # at least one colour per cell (plus dots and rings)
    # Three corners of the view lie in three different cells: three different colours.
    plane = np.asarray(img)[M:M + size, M:M + size]
    corners = {tuple(plane[2, 2]), tuple(plane[2, -3]), tuple(plane[-3, 2])}
    assert len(corners) >= 2
    assert (tmp_path / "cells.png").is_file()
    with pytest.raises(ShapeError):
        viz.vq_cells_picture(points[:, :1], codebook)
