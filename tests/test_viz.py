"""Pictures: sizes follow from scale and gap, tiles are exact nearest-neighbour copies,
the palette sorts by usage, bad input is refused clearly, and saving is atomic."""
import os

import numpy as np
import pytest
from PIL import Image, ImageFont

from tinytok import viz
from tinytok.errors import ConfigError, DTypeError, ShapeError

M = viz.MARGIN


def images(n, h=4, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def upscaled(image, s):
    """The reference nearest-neighbour upscale, written independently of viz.upscale."""
    return np.kron(image, np.ones((s, s, 1), dtype=np.uint8))


def crop(img, x, y, w, h):
    return np.asarray(img)[y:y + h, x:x + w]


# ---------------------------------------------------------------- image_grid

def test_image_grid_size_and_exact_tiles():
    x, s, gap, ncols = images(5), 3, 2, 3
    img = viz.image_grid(x, ncols=ncols, scale=s, gap=gap)
    h, w = 4 * s, 5 * s
    assert img.size == (2 * M + 3 * w + 2 * gap, 2 * M + 2 * h + gap)
    for i in range(5):
        r, c = divmod(i, ncols)
        tile = crop(img, M + c * (w + gap), M + r * (h + gap), w, h)
        np.testing.assert_array_equal(tile, upscaled(x[i], s))
    empty = crop(img, M + 2 * (w + gap), M + h + gap, w, h)  # the sixth cell is background
    assert (empty == viz.BACKGROUND).all()
    gap_column = crop(img, M + w, M, gap, h)
    assert (gap_column == viz.BACKGROUND).all()


def test_image_grid_default_is_about_square_and_accepts_one_image():
    assert viz.image_grid(images(9), scale=1, gap=0).size == (2 * M + 15, 2 * M + 12)
    assert viz.image_grid(images(1)[0], scale=2).size == (2 * M + 10, 2 * M + 8)


def test_text_makes_room_for_itself():
    x = images(4)
    plain = viz.image_grid(x, ncols=2)
    captioned = viz.image_grid(x, ncols=2, labels=list("abcd"))
    named = viz.image_grid(x, ncols=2, row_labels=["first", "second"])
    titled = viz.image_grid(x, ncols=2, title="four images")
    assert captioned.width == plain.width and captioned.height > plain.height
    assert named.height == plain.height and named.width > plain.width
    assert titled.width == plain.width and titled.height > plain.height
    with pytest.raises(ShapeError, match="labels"):
        viz.image_grid(x, labels=["too", "few"])
    with pytest.raises(ShapeError, match="row_labels"):
        viz.image_grid(x, ncols=2, row_labels=["one"])


def test_long_text_wraps_then_ends_with_an_ellipsis():
    font = viz._font()
    lines = viz._wrap("a very long caption that cannot possibly fit in two short lines", font,
                      60, 2)
    assert len(lines) == 2 and lines[-1].endswith("…")
    assert all(viz._text_width(font, line) <= 60 for line in lines)
    assert viz._wrap("short", font, 60, 2) == ["short"]
    (word,) = viz._wrap("Supercalifragilistic", font, 40, 1)
    assert word.endswith("…") and viz._text_width(font, word) <= 40


@pytest.mark.parametrize("bad, error, words", [
    (np.zeros((2, 4, 4, 3), np.float32), DTypeError, "uint8"),
    (np.zeros((2, 4, 4, 3), np.int64), DTypeError, "uint8"),
    (np.zeros((2, 3, 4, 4), np.uint8), ShapeError, "NCHW"),
    (np.zeros((4, 4), np.uint8), ShapeError, r"\(N, H, W, 3\)"),
    (np.zeros((0, 4, 4, 3), np.uint8), ShapeError, "shape"),
])
def test_bad_images_are_refused_with_a_clear_message(bad, error, words):
    with pytest.raises(error, match=words):
        viz.image_grid(bad)


def test_bad_scale_or_gap_is_a_config_error():
    for kwargs in ({"scale": 0}, {"scale": 1.5}, {"gap": -1}):
        with pytest.raises(ConfigError):
            viz.image_grid(images(2), **kwargs)


# ---------------------------------------------------------------- comparison_grid

def test_comparison_grid_puts_one_array_per_row():
    a, b, s, gap = images(3, seed=1), images(3, seed=2), 2, 2
    img = viz.comparison_grid([a, b], ["original", "reconstruction"], scale=s, gap=gap)
    h, w = 8, 10
    assert img.height == 2 * M + 2 * h + gap
    right = img.width - M - w  # tiles end at the right margin; names take the left
    np.testing.assert_array_equal(crop(img, right, M + h + gap, w, h), upscaled(b[2], s))
    np.testing.assert_array_equal(crop(img, right, M, w, h), upscaled(a[2], s))
    with pytest.raises(ShapeError, match="rows\\[1\\]"):
        viz.comparison_grid([a, images(2)], ["x", "y"])
    with pytest.raises(ShapeError, match="row_names"):
        viz.comparison_grid([a, b], ["only one"])


# ---------------------------------------------------------------- codebook_palette

def solid_codes(k, h=4):
    colours = np.array([[40 * i + 20, 200 - 30 * i, 100] for i in range(k)], np.uint8)
    return np.broadcast_to(colours[:, None, None, :], (k, h, h, 3)).copy(), colours


def test_palette_sorts_by_usage_and_dims_unused_codes():
    codes, colours = solid_codes(6)
    counts = np.array([0, 5, 2, 9, 0, 1])
    s, gap = 2, 1
    img = viz.codebook_palette(codes, counts, scale=s, gap=gap)
    t = 4 * s
    assert img.width == 2 * M + 6 * t + 5 * gap
    y = img.height - M - t
    pixels = [np.asarray(img)[y + 1, M + i * (t + gap) + 1] for i in range(6)]
    for pixel, code in zip(pixels[:4], [3, 1, 2, 5]):  # used, most used first
        np.testing.assert_array_equal(pixel, colours[code])
    for pixel, code in zip(pixels[4:], [0, 4]):  # unused: ties keep id order, dimmed
        assert not np.array_equal(pixel, colours[code])
        assert np.abs(pixel.astype(int) - viz.BACKGROUND).sum() < \
            np.abs(colours[code].astype(int) - viz.BACKGROUND).sum()


def test_palette_without_counts_keeps_id_order():
    codes, colours = solid_codes(3)
    img = viz.codebook_palette(codes, scale=1, gap=0)
    y = img.height - M - 4
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(img)[y, M + 4 * i], colours[i])


def test_palette_title_and_bad_counts():
    assert viz.palette_title(np.array([3, 3, 0, 0])) == "4 codes, 2 used, perplexity 2.0"
    assert viz.palette_title(np.array([1, 1, 1, 1])).endswith("perplexity 4.0")
    with pytest.raises(ShapeError, match="counts"):
        viz.codebook_palette(solid_codes(3)[0], np.array([1, 2]))


# ---------------------------------------------------------------- token_map

def test_token_map_is_the_upscaled_image_with_ids_over_it():
    x = images(1, 8, 8)[0]
    ids = np.array([[7, 511], [0, 42]])
    img = viz.token_map(x, ids, scale=8)
    assert img.size == (64, 64)
    a = np.asarray(img)
    np.testing.assert_array_equal(a[2, 2], x[0, 0])      # a cell's corner: the image itself
    np.testing.assert_array_equal(a[61, 61], x[7, 7])
    assert not np.array_equal(a[10, 32], x[1, 4])         # the grid line between cells
    assert (a[8:24, 8:24] != upscaled(x, 8)[8:24, 8:24]).any()  # the id's text


@pytest.mark.parametrize("image, ids, error", [
    (images(1, 8, 8)[0], np.zeros((2, 2, 2), int), ShapeError),
    (images(1, 8, 8)[0], np.zeros((2, 2), float), DTypeError),
    (images(1, 8, 8)[0], np.zeros((3, 3), int), ShapeError),
    (images(2, 8, 8), np.zeros((2, 2), int), ShapeError),
])
def test_token_map_refuses_bad_input(image, ids, error):
    with pytest.raises(error):
        viz.token_map(image, ids)


# ---------------------------------------------------------------- token_fill_strip

def test_token_fill_strip_is_one_labelled_row():
    parts = list(images(4, 4, 4))
    s, gap = 4, 2
    img = viz.token_fill_strip(parts, [4, 8, 12, 16], scale=s, gap=gap)
    assert img.width == 2 * M + 4 * 16 + 3 * gap
    assert img.height > 2 * M + 16  # room for the "N tokens" captions
    for i, p in enumerate(parts):
        np.testing.assert_array_equal(crop(img, M + i * (16 + gap), M, 16, 16), upscaled(p, s))
    with pytest.raises(ShapeError, match="steps"):
        viz.token_fill_strip(parts, [4, 8])


# ---------------------------------------------------------------- fill_in_strip

def test_fill_in_strip_greys_exactly_the_undecided_cells():
    x, s, gap = images(3, 8, 8), 2, 2
    known = np.zeros((3, 4, 4), dtype=bool)          # 4x4 cells of 2x2 pixels
    known[1, 0, 0] = known[1, 3, 2] = True
    known[2] = True
    img = viz.fill_in_strip(x, known, scale=s, gap=gap)
    t = 8 * s
    assert img.width == 2 * M + 3 * t + 2 * gap and img.height > 2 * M + t  # labels below
    tiles = [crop(img, M + i * (t + gap), M, t, t) for i in range(3)]
    assert (tiles[0] == viz.MASKED).all()                       # nothing decided yet
    np.testing.assert_array_equal(tiles[2], upscaled(x[2], s))  # all decided: the picture
    cell = 2 * s                                                # one cell, in output pixels
    for r in range(4):
        for c in range(4):
            got = tiles[1][r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
            want = upscaled(x[1], s)[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
            if known[1, r, c]:
                np.testing.assert_array_equal(got, want)
            else:
                assert (got == viz.MASKED).all()


def test_fill_in_strip_labels_rows_and_bad_input():
    x, known = images(4, 8, 8), np.ones((4, 2, 2), dtype=bool)
    two_rows = viz.fill_in_strip(x, known, ncols=2, scale=1, gap=0)
    one_row = viz.fill_in_strip(x, known, scale=1, gap=0)
    assert one_row.width == 2 * M + 4 * 8 and two_rows.width == 2 * M + 2 * 8
    assert two_rows.height > one_row.height
    with pytest.raises(ShapeError, match="labels"):
        viz.fill_in_strip(x, known, labels=["one"])
    with pytest.raises(DTypeError, match="bool"):
        viz.fill_in_strip(x, known.astype(int))
    with pytest.raises(ShapeError, match=r"\(4, g, g\)"):
        viz.fill_in_strip(x, known[:3])
    with pytest.raises(ShapeError, match="split evenly"):
        viz.fill_in_strip(x, np.ones((4, 3, 3), dtype=bool))


# ---------------------------------------------------------------- fill_in_rows

def test_fill_in_rows_lays_out_rows_of_different_lengths():
    rows = [images(2, 8, 8, seed=1), images(4, 8, 8, seed=2), images(3, 8, 8, seed=3)]
    known = np.zeros((2, 4, 4), dtype=bool)
    known[1, :2] = True                                          # the top half decided
    s, gap = 2, 2
    img = viz.fill_in_rows(rows, ["a", "b", "c"], known=[known, None, None], scale=s, gap=gap)
    t = 8 * s
    assert img.height == 2 * M + 3 * t + 2 * gap
    left = img.width - M - 4 * t - 3 * gap                       # the row names' width
    assert left > M
    tile = lambda r, c: crop(img, left + c * (t + gap), M + r * (t + gap), t, t)
    assert (tile(0, 0) == viz.MASKED).all()                      # nothing decided
    np.testing.assert_array_equal(tile(0, 1)[:t // 2], upscaled(rows[0][1], s)[:t // 2])
    assert (tile(0, 1)[t // 2:] == viz.MASKED).all()
    for c in range(4):                                           # known None: as they are
        np.testing.assert_array_equal(tile(1, c), upscaled(rows[1][c], s))
    for r, c in ((0, 2), (0, 3), (2, 3)):                        # past a row's end: empty
        assert (tile(r, c) == viz.BACKGROUND).all()
    same = viz.fill_in_rows(rows[1:2], ["b"], scale=s, gap=gap)
    np.testing.assert_array_equal(crop(same, same.width - M - t, M, t, t), tile(1, 3))


def test_fill_in_rows_labels_and_bad_input():
    rows = [images(2, 8, 8), images(3, 8, 8)]
    plain = viz.fill_in_rows(rows, ["a", "b"], scale=1, gap=0)
    labelled = viz.fill_in_rows(rows, ["a", "b"], labels=[["1", "2"], ["x", "y", "z"]],
                                scale=1, gap=0)
    assert labelled.width == plain.width and labelled.height > plain.height
    with pytest.raises(ShapeError, match="row_names"):
        viz.fill_in_rows(rows, ["only one"])
    with pytest.raises(ShapeError, match=r"labels\[1\]"):
        viz.fill_in_rows(rows, ["a", "b"], labels=[["1", "2"], ["x"]])
    with pytest.raises(ShapeError, match="known"):
        viz.fill_in_rows(rows, ["a", "b"], known=[None])
    with pytest.raises(ShapeError, match=r"row 1: known must have shape \(3, g, g\)"):
        viz.fill_in_rows(rows, ["a", "b"], known=[None, np.ones((2, 2, 2), bool)])
    with pytest.raises(ShapeError, match="the same size"):
        viz.fill_in_rows([images(1, 8, 8), images(1, 4, 4)], ["a", "b"])
    with pytest.raises(ShapeError, match="at least one row"):
        viz.fill_in_rows([], [])


# ---------------------------------------------------------------- prompt_grid

def test_prompt_grid_rows_and_marks():
    x, s, gap = images(6, 8, 8), 4, 2
    marks = [True, False, True, False, False, True]
    img = viz.prompt_grid(x, ["a red circle", "a blue square"], 3, marks=marks, scale=s,
                          gap=gap)
    t = 8 * s
    assert img.height == 2 * M + 2 * t + gap
    left = img.width - M - 3 * t - 2 * gap
    r = max(3, t // 20)
    for i, ok in enumerate(marks):
        row, col = divmod(i, 3)
        x0, y0 = left + col * (t + gap), M + row * (t + gap)
        dot = np.asarray(img)[y0 + r + 3, x0 + t - r - 3]
        np.testing.assert_array_equal(dot, viz.GOOD if ok else viz.BAD)
    plain = viz.prompt_grid(x, ["a", "b"], 3, scale=s, gap=gap)
    left = plain.width - M - 3 * t - 2 * gap
    np.testing.assert_array_equal(crop(plain, left, M, t, t), upscaled(x[0], s))
    with pytest.raises(ShapeError, match="prompts"):
        viz.prompt_grid(x, ["only one prompt"], 3)
    with pytest.raises(ShapeError, match="marks"):
        viz.prompt_grid(x, ["a", "b"], 3, marks=[True])


# ---------------------------------------------------------------- loss_curve

def test_loss_curve_draws_a_line_of_the_requested_size():
    losses = 2.0 * np.exp(-np.arange(100) / 20) + 0.1
    for log in (False, True):
        img = viz.loss_curve(losses, title="loss", width=300, height=150, log=log)
        assert img.size == (300, 150)
        assert (np.asarray(img) == viz.ACCENT).all(axis=-1).sum() > 100
    with_gaps = losses.copy()
    with_gaps[[3, 50]] = [np.nan, np.inf]
    assert viz.loss_curve(with_gaps).size == (480, 240)
    assert viz.loss_curve([1.0]).size == (480, 240)
    assert viz.loss_curve([1.0, 1.0, 1.0]).size == (480, 240)


def test_a_long_curve_shows_its_raw_values_faintly_under_their_column_means():
    noisy = 1 + np.random.default_rng(0).random(5000)
    a = np.asarray(viz.loss_curve(noisy, width=200, height=100))
    for colour in (viz.ACCENT, viz.ACCENT_FAINT):
        assert (a == colour).all(axis=-1).sum() > 50


def test_loss_curve_refuses_bad_input():
    with pytest.raises(ShapeError):
        viz.loss_curve(np.ones((3, 3)))
    with pytest.raises(ShapeError):
        viz.loss_curve([])
    with pytest.raises(ShapeError, match="nan"):
        viz.loss_curve([np.nan, np.nan])
    with pytest.raises(ConfigError, match="positive"):
        viz.loss_curve([1.0, 0.0], log=True)
    with pytest.raises(ConfigError, match="small"):
        viz.loss_curve([1.0, 2.0], width=30, height=30)


# ---------------------------------------------------------------- saving and the host edge

def test_save_creates_folders_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "new" / "folder" / "grid.png"
    img = viz.image_grid(images(3), path=path)
    assert os.listdir(path.parent) == ["grid.png"]
    with Image.open(path) as loaded:
        assert loaded.size == img.size
        np.testing.assert_array_equal(np.asarray(loaded.convert("RGB")), np.asarray(img))
    viz.loss_curve([3.0, 2.0, 1.0], path=str(path))  # overwrite in place
    assert os.listdir(path.parent) == ["grid.png"]
    with Image.open(path) as loaded:
        assert loaded.size == (480, 240)


def test_every_picture_can_be_saved(tmp_path):
    x = images(4, 8, 8)
    pictures = {
        "grid.png": lambda p: viz.image_grid(x, path=p),
        "compare.png": lambda p: viz.comparison_grid([x, x], ["a", "b"], path=p),
        "palette.png": lambda p: viz.codebook_palette(x, np.arange(4), path=p),
        "map.png": lambda p: viz.token_map(x[0], np.zeros((2, 2), int), path=p),
        "fill.png": lambda p: viz.token_fill_strip(list(x), [1, 2, 3, 4], path=p),
        "fill_in.png": lambda p: viz.fill_in_strip(x, np.ones((4, 2, 2), bool), path=p),
        "rows.png": lambda p: viz.fill_in_rows([x, x[:2]], ["a", "b"], path=p),
        "prompts.png": lambda p: viz.prompt_grid(x, ["a", "b"], 2, path=p),
        "loss.png": lambda p: viz.loss_curve([2.0, 1.0], path=p),
    }
    for name, draw in pictures.items():
        img = draw(tmp_path / name)
        with Image.open(tmp_path / name) as loaded:
            assert loaded.size == img.size
    assert sorted(os.listdir(tmp_path)) == sorted(pictures)


def test_a_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="extension"):
        viz.image_grid(images(2), path=tmp_path / "grid.nope")

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        viz.image_grid(images(2), path=tmp_path / "grid.png")
    assert os.listdir(tmp_path) == []


def test_device_arrays_are_copied_to_the_host():
    """A CuPy array is recognised by its module and copied with .get() (faked here)."""
    FakeCupyArray = type("ndarray", (), {"__module__": "cupy._core.core",
                                         "__init__": lambda self, a: setattr(self, "a", a),
                                         "get": lambda self: self.a})
    x = images(2)
    img = viz.image_grid(FakeCupyArray(x), scale=1)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(viz.image_grid(x, scale=1)))
    ids = FakeCupyArray(np.zeros((2, 2), int))
    assert viz.token_map(FakeCupyArray(images(1, 8, 8)[0]), ids).size == (64, 64)


def test_old_pillow_without_font_sizes_falls_back_to_the_bitmap_font(monkeypatch):
    bitmap = getattr(ImageFont, "load_default_imagefont", None)
    if bitmap is None:
        pytest.skip("this Pillow has no separate bitmap default font")

    def load_default(*args, **kwargs):  # Pillow < 10.1: no size argument
        if args or kwargs:
            raise TypeError("load_default() takes no arguments")
        return bitmap()

    monkeypatch.setattr("PIL.ImageFont.load_default", load_default)
    viz._font.cache_clear()
    try:
        x = images(4, 8, 8)
        assert viz.image_grid(x, labels=["a long caption here"] * 4, row_labels=["r1", "r2"],
                              ncols=2, title="t…").width > 0
        assert viz.token_map(x[0], np.full((2, 2), 511)).size == (64, 64)
        assert viz.loss_curve([3.0, 1.0], title="loss").size == (480, 240)
    finally:
        viz._font.cache_clear()
