"""Tests for tinytok.data.datasets and tinytok.data.images: shapes, the attribute reader, files,
folders, scikit-image/scikit-learn sources and stateless batching."""
import re
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image
from scipy.ndimage import gaussian_filter

from tinytok.data import datasets as ds
from tinytok.data import images as im
from tinytok.errors import ConfigError, DTypeError, ImageError, ShapeError


@pytest.fixture(scope="module")
def shapes():
    return ds.make_shapes(3000, seed=11, split="all")


# --- shapes -----------------------------------------------------------------------------

def test_make_shapes_is_deterministic_and_well_formed():
    a, b, c = ds.make_shapes(64, seed=3), ds.make_shapes(64, seed=3), ds.make_shapes(64, seed=4)
    assert a.images.shape == (64, 32, 32, 3) and a.images.dtype == np.uint8
    assert a.labels.shape == (64, 4) and a.labels.dtype == np.int64
    np.testing.assert_array_equal(a.images, b.images)
    assert a.captions == b.captions
    assert not np.array_equal(a.images, c.images)
    # jitter: two images with the same labels are not pixel copies
    same = [(i, j) for i in range(64) for j in range(i) if (a.labels[i] == a.labels[j]).all()]
    assert all(not np.array_equal(a.images[i], a.images[j]) for i, j in same)


def test_caption_template_and_round_trip(shapes):
    pattern = re.compile(r"^a (small|large) (\w+) (circle|square|triangle) at the "
                         r"(top left|top|top right|left|center|right|bottom left|bottom|"
                         r"bottom right)$")
    for caption, labels in zip(shapes.captions[:200], shapes.labels[:200]):
        assert pattern.match(caption), caption
        np.testing.assert_array_equal(ds.parse_caption(caption), labels)
    assert ds.caption_for([0, 0, 1, 0]) == "a large red circle at the top left"
    assert set(" ".join(shapes.captions).split()) <= set(ds.CAPTION_WORDS)
    with pytest.raises(ConfigError, match="template"):
        ds.parse_caption("red circle")
    with pytest.raises(ConfigError, match="unknown colour 'pink'"):
        ds.parse_caption("a small pink circle at the top")


def test_heldout_pairs_split():
    train = ds.make_shapes(2000, seed=1, split="train").labels
    heldout = ds.make_shapes(300, seed=1, split="heldout").labels
    assert not ds.is_heldout(train).any()
    assert ds.is_heldout(heldout).all()
    # every shape and every colour is still seen in training
    assert set(train[:, 0]) == set(range(len(ds.SHAPES)))
    assert set(train[:, 1]) == set(range(len(ds.COLOURS)))
    # every held-out pair does occur in the heldout split
    pairs = {(ds.SHAPES[s], ds.COLOURS[c]) for s, c in heldout[:, :2]}
    assert pairs == set(ds.HELDOUT_PAIRS)
    both = ds.make_shapes(2000, seed=1, split="all").labels
    assert 0 < ds.is_heldout(both).mean() < 0.3
    with pytest.raises(ConfigError, match="split"):
        ds.make_shapes(1, split="val")


def test_render_shape_names_or_indices():
    a = ds.render_shape("triangle", "blue", "large", "bottom right")
    b = ds.render_shape(2, 5, 1, 8)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(ds.read_attributes(a), [[2, 5, 1, 8]])
    with pytest.raises(ConfigError, match="unknown shape 'hexagon'"):
        ds.render_shape("hexagon", "red", "small", "top")


# --- the attribute reader ---------------------------------------------------------------

def test_reader_exact_on_clean_renders(shapes):
    read = ds.read_attributes(shapes.images)
    np.testing.assert_array_equal(read, shapes.labels)


def test_reader_exact_on_every_unjittered_combination():
    labels = np.array([(s, c, z, p) for s in range(3) for c in range(len(ds.COLOURS))
                       for z in range(2) for p in range(9)])
    images = np.stack([ds.render_shape(*row) for row in labels])
    np.testing.assert_array_equal(ds.read_attributes(images), labels)


@pytest.mark.parametrize("sigma, noise", [(0.7, 0.0), (0.7, 5.0), (1.0, 8.0)])
def test_reader_robust_to_blur_and_noise(shapes, sigma, noise):
    # decoded tokenizer output is a little blurry and noisy
    rng = np.random.default_rng(0)
    x = gaussian_filter(shapes.images[:1500].astype(np.float32), (0, sigma, sigma, 0))
    x = np.clip(np.round(x + rng.normal(0, noise, x.shape)), 0, 255).astype(np.uint8)
    correct = (ds.read_attributes(x) == shapes.labels[:1500]).all(axis=1)
    assert correct.mean() >= 0.98


def test_reader_unknowns():
    blank = np.zeros((3, 32, 32, 3), np.uint8)
    blank[1] += 20  # dark gray is still blank
    blank[2] = np.random.default_rng(0).integers(0, 12, (32, 32, 3))  # faint noise
    assert (ds.read_attributes(blank) == -1).all()
    pink = ds.render_shape("square", "white", "large", "center")
    pink = (pink * np.array([1.0, 0.4, 0.75])).astype(np.uint8)  # no named colour
    labels = ds.read_attributes(pink)[0]
    assert labels[1] == -1 and labels[0] == 1 and labels[3] == 4
    dot = np.zeros((32, 32, 3), np.uint8)
    dot[5, 5] = 255  # a single pixel: a position, but no shape or size
    assert list(ds.read_attributes(dot)[0][[0, 2]]) == [-1, -1]


# --- check_images -----------------------------------------------------------------------

def test_check_images_accepts_and_adds_batch_axis():
    one = np.zeros((32, 32, 3), np.uint8)
    assert im.check_images(one).shape == (1, 32, 32, 3)
    many = np.zeros((5, 32, 32, 3), np.uint8)
    assert im.check_images(many) is many
    with pytest.raises(ShapeError, match=r"got an array of shape \(5, 3, 32, 32\).*NCHW"):
        im.check_images(np.zeros((5, 3, 32, 32), np.uint8))
    with pytest.raises(DTypeError, match=r"got dtype float32.*\* 255"):
        im.check_images(np.zeros((5, 32, 32, 3), np.float32))
    with pytest.raises(ShapeError, match="empty"):
        im.check_images(np.zeros((0, 32, 32, 3), np.uint8))


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(0, 40), min_size=0, max_size=5),
       dtype=st.sampled_from([np.uint8, np.int8, np.uint16, np.int64, np.float32,
                              np.float64, np.bool_]))
def test_check_images_raises_the_right_error(shape, dtype):
    x = np.zeros(shape, dtype)
    shape_ok = (tuple(shape) == (32, 32, 3)
                or (len(shape) == 4 and shape[0] > 0 and tuple(shape[1:]) == (32, 32, 3)))
    if not shape_ok:
        with pytest.raises(ShapeError, match=r"expected uint8 images of shape \(N, 32, 32, 3\)"):
            im.check_images(x)
    elif dtype is not np.uint8:
        with pytest.raises(DTypeError, match=f"got dtype {np.dtype(dtype)}"):
            im.check_images(x)
    else:
        assert im.check_images(x).shape[1:] == (32, 32, 3)


# --- files and folders ------------------------------------------------------------------

def _gradient(w=40, h=30):
    """A test picture: red rises left to right, green top to bottom. uint8 (h, w, 3)."""
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    return np.stack([x, y, np.full_like(x, 128)], 2).round().astype(np.uint8)


def test_load_image_every_mode(tmp_path):
    rgb = _gradient()
    gray = rgb[..., 0]
    files = {
        "rgb.png": Image.fromarray(rgb),
        "l.png": Image.fromarray(gray),
        "la.png": Image.fromarray(np.stack([gray, np.full_like(gray, 255)], 2), "LA"),
        "p.gif": Image.fromarray(rgb).quantize(64),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full_like(gray, 255)])),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "i16.png": Image.fromarray(gray.astype(np.uint16) * 257),
        "i32.tif": Image.fromarray(gray.astype(np.int32) * 257),
        "f.tif": Image.fromarray(gray.astype(np.float32) / 255),
    }
    for name, img in files.items():
        img.save(tmp_path / name)
    expected_gray = im.resize_center_crop(np.repeat(gray[..., None], 3, 2))
    for name in files:
        out = im.load_image(tmp_path / name)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8, name
        if name in ("l.png", "la.png", "i16.png", "i32.tif", "f.tif"):
            # 16-bit and float scaled to 8 bits, not clipped to white
            assert np.abs(out.astype(int) - expected_gray).max() <= 1, name
    # lossy ones stay close to the original
    reference = im.load_image(tmp_path / "rgb.png").astype(int)
    assert np.abs(im.load_image(tmp_path / "cmyk.jpg") - reference).mean() < 8
    assert np.abs(im.load_image(tmp_path / "p.gif") - reference).mean() < 8


def test_alpha_is_composited_on_the_background(tmp_path):
    clear = np.zeros((20, 20, 4), np.uint8)  # fully transparent black
    Image.fromarray(clear).save(tmp_path / "clear.png")
    assert (im.load_image(tmp_path / "clear.png") == 255).all()
    out = im.load_image(tmp_path / "clear.png", background=(0, 10, 20))
    assert (out == [0, 10, 20]).all()


def test_resize_shorter_side_then_center_crop(tmp_path):
    wide = np.zeros((64, 192, 3), np.uint8)
    wide[:, 64:128] = 255  # white middle third: exactly what the centre crop keeps
    Image.fromarray(wide).save(tmp_path / "wide.png")
    out = im.load_image(tmp_path / "wide.png", size=16)
    assert out.shape == (16, 16, 3) and out[:, 2:-2].min() >= 250


def test_bad_files_raise_image_error_naming_them(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageError, match="notes.png: not an image"):
        im.load_image(tmp_path / "notes.png")
    Image.fromarray(_gradient(64, 64)).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.png: cannot read image"):
        im.load_image(tmp_path / "cut.png")
    with pytest.raises(ImageError, match="missing.png: no such file"):
        im.load_image(tmp_path / "missing.png")
    Image.fromarray(_gradient(7, 20)).save(tmp_path / "tiny.png")
    with pytest.raises(ImageError, match=r"tiny.png: image is 7x20 pixels; images must be "
                                         r"at least 8x8 pixels"):
        im.load_image(tmp_path / "tiny.png")


def test_huge_images_are_refused(tmp_path, monkeypatch):
    Image.fromarray(_gradient(100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(im, "MAX_PIXELS", 5000)  # our rule: checked from the header
    with pytest.raises(ImageError, match="big.png: image is 100x100 pixels.*megapixels"):
        im.load_image(tmp_path / "big.png")
    monkeypatch.setattr(im, "MAX_PIXELS", 10**9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # Pillow's own bomb check
    with pytest.raises(ImageError, match="big.png: refused as a possible decompression bomb"):
        im.load_image(tmp_path / "big.png")


def test_load_image_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.fromarray(_gradient()).save(tmp_path / "b.PNG")
    Image.fromarray(_gradient()[..., 0]).save(tmp_path / "sub" / "a.jpg")
    (tmp_path / "readme.txt").write_text("skipped: not an image extension")
    (tmp_path / ".hidden.png").write_text("skipped: hidden")
    images, names = im.load_image_folder(tmp_path, size=16)
    assert names == ["b.PNG", "sub/a.jpg"]
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    (tmp_path / "broken.png").write_text("oops")
    with pytest.raises(ImageError, match="broken.png"):
        im.load_image_folder(tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no pictures here")
    with pytest.raises(ImageError, match=r"no images found; files ending in \.png, \.jpg"):
        im.load_image_folder(tmp_path)
    with pytest.raises(ImageError, match="not a folder"):
        im.load_image_folder(tmp_path / "notes.txt")


def test_training_images_from_a_folder(tmp_path):
    for i in range(12):
        Image.fromarray(np.roll(_gradient(), i, 1)).save(tmp_path / f"{i:02d}.png")
    assert ds.training_images(str(tmp_path)).shape == (11, 32, 32, 3)  # every 10th is val
    assert ds.training_images(tmp_path, split="val").shape == (1, 32, 32, 3)
    a = ds.training_images(tmp_path, n=5, seed=2)
    np.testing.assert_array_equal(a, ds.training_images(tmp_path, n=5, seed=2))
    with pytest.raises(ConfigError, match="holds 11 images"):
        ds.training_images(tmp_path, n=50)
    with pytest.raises(ImageError, match="unknown image source"):
        ds.training_images("nowhere")


# --- batching ---------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 50), batch=st.integers(1, 64), seed=st.integers(0, 2**32))
def test_batch_indices_cover_every_epoch(n, batch, seed):
    steps = -(-3 * n // batch)  # enough steps for three whole epochs
    stream = np.concatenate([ds.batch_indices(n, batch, seed, k) for k in range(steps)])
    for e in range(3):
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))
    np.testing.assert_array_equal(stream[:n], ds.epoch_permutation(n, seed, 0))


def test_batch_indices_depend_only_on_seed_and_step():
    a = ds.batch_indices(1000, 32, 7, 123)
    np.testing.assert_array_equal(a, ds.batch_indices(1000, 32, 7, 123))
    assert not np.array_equal(a, ds.batch_indices(1000, 32, 8, 123))
    assert not np.array_equal(a, ds.batch_indices(1000, 32, 7, 124))
    assert a.shape == (32,) and a.min() >= 0 and a.max() < 1000
    with pytest.raises(ConfigError, match="batch_size must be a whole number >= 1"):
        ds.batch_indices(10, 0, 0, 0)


def test_training_images_shapes():
    a = ds.training_images("shapes", 50, seed=5)
    np.testing.assert_array_equal(a, ds.make_shapes(50, seed=5).images)
    with pytest.raises(ConfigError, match="n .* is needed"):
        ds.training_images("shapes")


# --- scikit-image and scikit-learn sources ------------------------------------------------

def test_photo_crops(monkeypatch):
    pytest.importorskip("skimage")
    assert set(im.available_photos()) == set(im.PHOTOS)
    a = ds.photo_crops(500, seed=1)
    assert a.shape == (500, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, ds.photo_crops(500, seed=1))
    assert a.std() > 20  # real content, not blank
    b = ds.training_images("photos", 200, seed=1)  # augmented training crops
    assert b.shape == (200, 32, 32, 3)
    with pytest.raises(ConfigError, match="split"):
        ds.photo_crops(1, split="heldout")
    with pytest.raises(ValueError):
        im.load_photo("coffee")[0, 0, 0] = 1  # the cached photo is read-only

    # the split is by photo: record which photos each split cuts from
    used = []
    monkeypatch.setattr(ds, "load_photo", lambda name, s: used.append(name) or
                        im.load_photo(name, s))
    ds.photo_crops(300, seed=2, split="train")
    assert used and not set(used) & set(ds.VALIDATION_PHOTOS)
    used.clear()
    ds.photo_crops(300, seed=2, split="val")
    assert set(used) == set(ds.VALIDATION_PHOTOS)


def test_augment_keeps_shape_and_content():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 32, 32, 3)).astype(np.uint8)
    y = ds.augment(x, np.random.default_rng(1))
    assert y.shape == x.shape and y.dtype == np.uint8
    # each output is a flip/turn of its input up to a mild gain: means stay close
    assert np.abs(y.mean(axis=(1, 2, 3)) - x.mean(axis=(1, 2, 3))).max() < 0.12 * 255


def test_faces_and_digits():
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    faces = im.load_faces()
    assert faces.shape == (100, 32, 32, 3) and faces.dtype == np.uint8
    assert (faces[..., 0] == faces[..., 2]).all()  # gray as RGB
    digits, labels = im.load_digits()
    assert digits.shape == (1797, 32, 32, 3) and labels.shape == (1797,)
    assert digits.max() > 200 and digits[:, :2, :2].max() < 30  # white strokes on black
    assert ds.training_images("digits", split="val").shape == (179, 32, 32, 3)
    assert ds.training_images("faces", 20, seed=0).shape == (20, 32, 32, 3)


def test_missing_extra_names_the_install_command(monkeypatch):
    # None in sys.modules makes "import sklearn.datasets" fail, as if not installed
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'tinytok\[data\]'"):
        im.load_digits()
