"""Data for tinytok: captioned shapes, photos and small image sets, and batches to train on.

Four sources, all returned as uint8 NHWC arrays (N, 32, 32, 3), or (N, size, size, 3) for
the photos, faces, digits and folders at another size (64, say, where detail shows):

- **shapes**, built in: one circle, square or triangle per image, in one of 8 colours,
  2 sizes and 9 positions, with a caption ("a large red circle at the top left") and the
  attributes as labels. A few (shape, colour) pairs never appear in training
  (HELDOUT_PAIRS), to measure whether a model composes what it learned. ``read_attributes``
  reads the attributes back from pixels, so prompt adherence is measured, not eyeballed.
- **photos**: random crops of scikit-image's sample photographs at 1x, 2x and 4x reduction;
  **faces** (scikit-image's LFW subset) and **digits** (scikit-learn), resized to 32x32
  (or the size asked for).
  These need the optional extra: ``pip install 'tinytok[data]'``.
- **a folder** of your own images.
The photographs, faces, digits and folders are read by ``tinytok.data.images``; this module
cuts, splits and batches them.

``batch_indices`` picks the items of every training step from (seed, step) alone, so a run
resumed at step k sees exactly the batches it would have seen.
"""
from dataclasses import dataclass
import os

import numpy as np

from tinytok.backend import to_numpy
from tinytok.errors import ConfigError, ImageError
from tinytok.ops.checks import require_positive_int
from tinytok.data.images import (PHOTOS, available_photos, check_images, load_digits, load_faces,
                                 load_image_folder, load_photo)

# ---------------------------------------------------------------------------------------
# Shapes: the attributes, the caption template and the held-out combinations
# ---------------------------------------------------------------------------------------

SIZE = 32  # every shapes image is SIZE x SIZE RGB
SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
# Saturated colours, at least 17 degrees apart as directions in RGB space (see
# read_attributes: blur mixes a colour with the black background, which changes its
# brightness but not its direction).
COLOUR_RGB = np.array([(230, 30, 30), (250, 135, 0), (230, 230, 20), (30, 210, 50),
                       (0, 200, 230), (40, 70, 255), (175, 50, 235), (235, 235, 235)])
SIZES = ("small", "large")
SIZE_PX = (8.0, 13.0)        # width and height of a small and a large shape, in pixels
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")  # row-major over a 3x3 grid
CELL_CENTRES = (8.0, 16.0, 24.0)  # x (or y) of the left, middle, right column (row)
CAPTION = "a {size} {colour} {shape} at the {position}"
CAPTION_WORDS = tuple(sorted(set(" ".join(
    ("a at the",) + SHAPES + COLOURS + SIZES + POSITIONS).split())))

# (shape, colour) pairs kept out of training. Every shape and every colour still appears
# in training with other partners, so a model that composes can draw these.
HELDOUT_PAIRS = (("circle", "green"), ("square", "purple"), ("triangle", "orange"))

# Jitter: shapes move by up to a pixel, grow or shrink by up to half a pixel and shift
# colour by a few levels, so no two images are copies; the reader's margins stay wide.
JITTER_POS, JITTER_SIZE, JITTER_RGB = 1.0, 0.5, 8
SUPERSAMPLE = 4  # shapes are drawn 4x larger and averaged down: antialiased edges


@dataclass
class ShapesData:
    """A batch of shapes: images uint8 (N, 32, 32, 3), captions (N strings), labels int64
    (N, 4) holding (shape, colour, size, position) as indices into SHAPES, COLOURS, SIZES,
    POSITIONS."""
    images: np.ndarray
    captions: list
    labels: np.ndarray


def _index(value, names, field):
    """The index of a name (or an index given directly) in one of the attribute tuples."""
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, (int, np.integer)) and 0 <= value < len(names):
        return int(value)
    raise ConfigError(f"unknown {field} {value!r}; choose one of {', '.join(names)}")


def is_heldout(labels):
    """True where a label row (shape, colour, size, position) is a held-out combination.

    labels: (4,) or (N, 4) ints -> bool scalar or (N,).
    """
    labels = np.asarray(labels)
    heldout = np.zeros((len(SHAPES), len(COLOURS)), bool)
    for shape, colour in HELDOUT_PAIRS:
        heldout[SHAPES.index(shape), COLOURS.index(colour)] = True
    valid = (labels[..., 0] >= 0) & (labels[..., 1] >= 0)
    return valid & heldout[labels[..., 0], labels[..., 1]]


def caption_for(labels):
    """The caption of each label row: (4,) -> one string, (N, 4) -> list of N strings."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        s, c, z, p = (int(v) for v in labels)
        return CAPTION.format(shape=SHAPES[s], colour=COLOURS[c], size=SIZES[z],
                              position=POSITIONS[p])
    return [caption_for(row) for row in labels]


def parse_caption(text):
    """The labels (4,) of a caption written in the CAPTION template; ConfigError if not."""
    words = text.strip().lower().split()
    if len(words) < 7 or words[0] != "a" or words[4:6] != ["at", "the"]:
        raise ConfigError(f"caption {text!r} does not follow the template {CAPTION!r}")
    size, colour, shape, position = words[1], words[2], words[3], " ".join(words[6:])
    return np.array([_index(shape, SHAPES, "shape"), _index(colour, COLOURS, "colour"),
                     _index(size, SIZES, "size"), _index(position, POSITIONS, "position")])


# ---------------------------------------------------------------------------------------
# Shapes: drawing
# ---------------------------------------------------------------------------------------

def _draw_coverage(shape, cx, cy, extent):
    """How much of each pixel a shape covers, uint8 (32, 32) 0..255.

    The shape (centred at cx, cy, with its bounding box extent x extent pixels; the image
    spans 0..32) is drawn SUPERSAMPLE times larger and box-averaged down, which gives
    antialiased edges. Triangles point up, their base as wide as they are tall.
    """
    from PIL import Image, ImageDraw

    k = SUPERSAMPLE
    canvas = Image.new("L", (SIZE * k, SIZE * k), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = (round(v * k) for v in (cx - extent / 2, cy - extent / 2,
                                              cx + extent / 2, cy + extent / 2))
    # Pillow's boxes include their last pixel, hence the -1.
    if shape == 0:
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=255)
    elif shape == 1:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
    else:
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=255)
    return np.asarray(canvas.reduce(k))


def _render(labels, rng):
    """Images uint8 (N, 32, 32, 3) for label rows (N, 4); jittered if rng is given."""
    labels = np.asarray(labels)
    n = len(labels)
    pos_jitter, size_jitter, rgb_jitter = np.zeros((n, 2)), np.zeros(n), 0
    if rng is not None:
        pos_jitter = rng.uniform(-JITTER_POS, JITTER_POS, (n, 2))
        size_jitter = rng.uniform(-JITTER_SIZE, JITTER_SIZE, n)
        rgb_jitter = rng.integers(-JITTER_RGB, JITTER_RGB + 1, (n, 3))
    centres = np.array(CELL_CENTRES)
    cx = centres[labels[:, 3] % 3] + pos_jitter[:, 0]
    cy = centres[labels[:, 3] // 3] + pos_jitter[:, 1]
    extent = np.array(SIZE_PX)[labels[:, 2]] + size_jitter
    coverage = np.stack([_draw_coverage(labels[i, 0], cx[i], cy[i], extent[i])
                         for i in range(n)]) if n else np.zeros((0, SIZE, SIZE), np.uint8)
    rgb = np.clip(COLOUR_RGB[labels[:, 1]] + rgb_jitter, 0, 255)  # (N, 3)
    # On a black background, a pixel's colour is the shape's colour times its coverage.
    images = coverage[..., None].astype(np.float32) * (rgb[:, None, None, :] / 255.0)
    return np.round(images).astype(np.uint8)


def render_shape(shape, colour, size, position, rng=None):
    """One shapes image, uint8 (32, 32, 3). Attributes are names or indices; with a
    numpy Generator as ``rng`` it is jittered like ``make_shapes`` images, else exact."""
    labels = [[_index(shape, SHAPES, "shape"), _index(colour, COLOURS, "colour"),
               _index(size, SIZES, "size"), _index(position, POSITIONS, "position")]]
    return _render(np.array(labels), rng)[0]


def make_shapes(n, seed=0, split="train"):
    """n random shapes images with captions and labels (ShapesData), fixed by ``seed``.

    split: "train" never yields a HELDOUT_PAIRS combination, "heldout" yields only those,
    "all" yields both. Attributes are drawn uniformly from the allowed combinations.
    """
    if split not in ("train", "heldout", "all"):
        raise ConfigError(f"unknown shapes split {split!r}; choose train, heldout or all")
    require_positive_int("n", n, minimum=0)
    rng = np.random.default_rng(seed)
    pairs = np.array([(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))])
    pair_heldout = is_heldout(np.column_stack([pairs, np.zeros((len(pairs), 2), int)]))
    if split != "all":
        pairs = pairs[pair_heldout == (split == "heldout")]
    chosen = pairs[rng.integers(0, len(pairs), n)]
    labels = np.column_stack([chosen, rng.integers(0, len(SIZES), n),
                              rng.integers(0, len(POSITIONS), n)]).astype(np.int64)
    return ShapesData(_render(labels, rng), caption_for(labels) if n else [], labels)


# ---------------------------------------------------------------------------------------
# Shapes: reading the attributes back from pixels
# ---------------------------------------------------------------------------------------

MIN_PEAK = 48             # an image with no pixel brighter than this is blank
MAX_COLOUR_ANGLE = 12.0   # degrees; further from every named colour reads as unknown
TRIANGLE_SKEW = -0.2      # clean triangles about -0.57, circles and squares about 0
SQUARE_CORNERS = 0.1      # clean squares 0.3, circles 0
EXTENT_SPLIT = 10.5       # between the small (8) and large (13) extents, in pixels


def _moments(weights):
    """Centred pixel coordinates X, Y (N, 32, 32) and an averaging function over the
    weights (N, 32, 32): E(a) is the weighted mean of a per image, shape (N,)."""
    g = np.arange(SIZE, dtype=np.float32) + 0.5
    total = weights.sum(axis=(1, 2))

    def E(a):
        return (weights * a).sum(axis=(1, 2)) / total

    X = g[None, None, :] - E(g[None, None, :])[:, None, None]
    Y = g[None, :, None] - E(g[None, :, None])[:, None, None]
    return X, Y, E


def read_attributes(images):
    """Read (shape, colour, size, position) back from shapes images: int64 (N, 4).

    images: uint8 (N, 32, 32, 3) or one (32, 32, 3). A field that cannot be read is -1
    (all four for a blank image). Exact on clean renders; robust to mild blur and noise,
    because it relies on quantities blur barely changes:

    - foreground: pixels at least half as bright as the brightest (the half-way contour of
      a blurred edge stays where the edge was); its bounding box gives the position;
    - colour: the direction of the mean foreground pixel in RGB space, matched to the
      nearest named colour (blur darkens a colour against black; it does not turn it);
    - shape and size: moments of the brightness near the shape. A Gaussian blur adds to
      the variance but leaves the third and fourth cumulants unchanged. A triangle, which
      points up, has its mass low: negative vertical skew. A square's corners show as a
      fourth cumulant that differs along the diagonals and the axes; a circle's does not.
      The size follows from the variance, for the shape found.
    """
    images = check_images(images, SIZE)
    x = to_numpy(images).astype(np.float32)                        # (N, 32, 32, 3)
    level, mask, blank = _foreground(x)
    position, box = _position(mask)
    colour = _colour(x, mask)
    shape, size = _shape_and_size(level, mask, box)
    labels = np.column_stack([shape, colour, size, position]).astype(np.int64)
    labels[mask.sum(axis=(1, 2)) < 4, 0:3:2] = -1  # too few pixels to tell shape or size
    labels[blank] = -1
    return labels


def _foreground(x):
    """Brightness relative to the peak (N, 32, 32), the foreground mask, and blank images."""
    bright = x.max(axis=3)                                         # (N, 32, 32)
    # The peak of a 2x2 average, so that one noisy pixel does not set the scale.
    smooth = (bright[:, :-1, :-1] + bright[:, 1:, :-1] + bright[:, :-1, 1:] + bright[:, 1:, 1:])
    peak = np.maximum(smooth.max(axis=(1, 2)) / 4, 1e-9)
    blank = peak < MIN_PEAK
    level = bright / peak[:, None, None]                           # ~1 inside the shape
    mask = level >= 0.5
    mask[blank] = False
    return level, mask, blank


def _position(mask):
    """The centre of the foreground's bounding box, in the 3x3 grid; and the box (y0, y1,
    x0, x1), each (N,)."""
    rows, cols = mask.any(axis=2), mask.any(axis=1)                # (N, 32) each
    y0, y1 = rows.argmax(axis=1), SIZE - rows[:, ::-1].argmax(axis=1)
    x0, x1 = cols.argmax(axis=1), SIZE - cols[:, ::-1].argmax(axis=1)
    edges = [(a + b) / 2 for a, b in zip(CELL_CENTRES, CELL_CENTRES[1:])]
    position = np.digitize((y0 + y1) / 2, edges) * 3 + np.digitize((x0 + x1) / 2, edges)
    return position, (y0, y1, x0, x1)


def _colour(x, mask):
    """Nearest named colour by angle, from the mean foreground pixel (-1: none near). Blending
    with the black background only scales a colour, so the mean keeps its direction."""
    count = np.maximum(mask.sum(axis=(1, 2)), 1)[:, None]
    mean = (x * mask[..., None]).sum(axis=(1, 2)) / count          # (N, 3)
    unit = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-9)
    named = COLOUR_RGB / np.linalg.norm(COLOUR_RGB, axis=1, keepdims=True)
    cosine = unit @ named.T                                        # (N, colours)
    colour = cosine.argmax(axis=1)
    colour[cosine.max(axis=1) < np.cos(np.radians(MAX_COLOUR_ANGLE))] = -1
    return colour


def _shape_and_size(level, mask, box):
    """Shape and size from moments of the brightness within 3 pixels of the bounding box,
    ignoring the faintest levels (background noise would weigh heavily far out)."""
    y0, y1, x0, x1 = box
    g = np.arange(SIZE)
    near_rows = (g >= y0[:, None] - 3) & (g < y1[:, None] + 3)    # (N, 32)
    near_cols = (g >= x0[:, None] - 3) & (g < x1[:, None] + 3)    # (N, 32)
    near = near_rows[:, :, None] & near_cols[:, None, :]           # (N, 32, 32)
    weights = np.where(near & (level >= 0.2) & mask.any(axis=(1, 2))[:, None, None],
                       np.minimum(level, 1), 0)
    weights[~weights.any(axis=(1, 2))] = 1  # blank images: any finite value, overwritten later
    X, Y, E = _moments(weights)
    vx, vy = E(X * X), E(Y * Y)
    skew = E(Y * Y * Y) / np.maximum(vy, 1e-9) ** 1.5

    def cumulant4(a):
        a2 = a * a
        return E(a2 * a2) - 3 * E(a2) ** 2

    U, V = (X + Y) / np.sqrt(2), (X - Y) / np.sqrt(2)
    corners = (cumulant4(U) + cumulant4(V) - cumulant4(X) - cumulant4(Y)) / np.maximum(
        vx + vy, 1e-9) ** 2
    shape = np.where(skew < TRIANGLE_SKEW, 2, np.where(corners > SQUARE_CORNERS, 1, 0))
    # Variance of a shape of extent e: circle e^2/8, square e^2/6, triangle e^2 * 7/72.
    extent = np.sqrt(np.array([8.0, 6.0, 72 / 7])[shape] * (vx + vy))
    return shape, (extent > EXTENT_SPLIT).astype(np.int64)


# ---------------------------------------------------------------------------------------
# Photo crops (the photographs themselves come from tinytok.data.images.load_photo)
# ---------------------------------------------------------------------------------------

VALIDATION_PHOTOS = ("coffee", "coins", "gravel")  # never cropped for training
PHOTO_SCALES = (1, 2, 4)  # each photo is also shrunk 2x and 4x (bicubic) before cropping


def augment(images, rng):
    """Random horizontal flips, quarter turns and mild colour jitter (gain 0.9..1.1 per
    channel): uint8 (N, H, H, 3) -> a new uint8 array of the same shape."""
    n = len(images)
    out = np.where(rng.random(n)[:, None, None, None] < 0.5, images[:, :, ::-1], images)
    turns = rng.integers(0, 4, n)
    for k in range(1, 4):
        out[turns == k] = np.rot90(out[turns == k], k, axes=(1, 2))
    gain = rng.uniform(0.9, 1.1, (n, 1, 1, 3))
    return np.clip(np.round(out * gain), 0, 255).astype(np.uint8)


def photo_crops(n, seed=0, split="train", size=32, augmented=False, scales=PHOTO_SCALES):
    """n random size x size crops of the photographs, uint8 (n, size, size, 3).

    Each crop picks a photo of the split ("train": PHOTOS not in VALIDATION_PHOTOS,
    "val": VALIDATION_PHOTOS, "all"), a scale from ``scales`` (downscale factors) and a
    position, all uniformly; the same seed gives the same crops. ``augmented`` applies
    ``augment``.
    """
    names = {"train": [p for p in PHOTOS if p not in VALIDATION_PHOTOS],
             "val": list(VALIDATION_PHOTOS), "all": list(PHOTOS)}.get(split)
    if names is None:
        raise ConfigError(f"unknown photos split {split!r}; choose train, val or all")
    names = [name for name in names if name in available_photos()]
    sources = [(name, s) for name in names for s in scales
               if min(load_photo(name, s).shape[:2]) >= size]
    if not sources:
        raise ImageError(f"no photographs of the {split} split load here at {size}x{size} "
                         f"or larger (scales {tuple(scales)}); see "
                         f"tinytok.data.images.available_photos()")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(sources), n)
    corner = rng.random((n, 2))  # where in the photo, as a fraction of the free room
    crops = np.empty((n, size, size, 3), np.uint8)
    offsets = np.arange(size)
    for j in np.unique(pick):
        photo = load_photo(*sources[j])
        chosen = np.flatnonzero(pick == j)
        top = (corner[chosen, 0] * (photo.shape[0] - size + 1)).astype(int)
        left = (corner[chosen, 1] * (photo.shape[1] - size + 1)).astype(int)
        # One fancy index cuts all of this photo's crops at once: (k, size, size, 3).
        crops[chosen] = photo[(top[:, None] + offsets)[:, :, None],
                              (left[:, None] + offsets)[:, None, :]]
    return augment(crops, rng) if augmented else crops


# ---------------------------------------------------------------------------------------
# Training data and batches
# ---------------------------------------------------------------------------------------

SOURCES = ("shapes", "photos", "faces", "digits")


def _every_tenth(images, split):
    """A fixed split of a fixed set: every tenth item (9, 19, ...) is validation."""
    if split not in ("train", "val", "all"):
        raise ConfigError(f"unknown split {split!r}; choose train, val or all")
    if split == "all":
        return images
    is_val = np.arange(len(images)) % 10 == 9
    return images[is_val if split == "val" else ~is_val]


def training_images(source, n=None, seed=0, split="train", size=SIZE):
    """Images to train a tokenizer on, uint8 (n, size, size, 3), the same for the same seed.

    source: "shapes" or "photos" (generated: n is required; shapes splits are
    train/heldout/all, photo splits train/val/all, training photo crops are augmented),
    "faces", "digits" or a folder path (fixed sets, every tenth item is "val"; n=None
    gives the whole split, a smaller n a seeded sample of it). Photos are cropped at
    size, the fixed sets resized to it; shapes exist at 32x32 only.
    """
    require_positive_int("size", size)
    if source == "shapes" and size != SIZE:
        raise ConfigError(f"shapes are drawn at {SIZE}x{SIZE} only (their attributes are read "
                          f"back at that size), not {size}x{size}; photos, faces, digits and "
                          "folders take other sizes")
    if source in ("shapes", "photos"):
        if n is None:
            raise ConfigError(f"n (how many images) is needed for the {source} source")
        if source == "shapes":
            return make_shapes(n, seed, split).images
        return photo_crops(n, seed, split, size=size, augmented=(split == "train"))
    if source == "faces":
        images = load_faces(size)
    elif source == "digits":
        images = load_digits(size)[0]
    elif isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        images = load_image_folder(source, size)[0]
    else:
        raise ImageError(f"unknown image source {source!r}: not one of "
                         f"{', '.join(SOURCES)} and not a folder")
    images = _every_tenth(images, split)
    if n is None:
        return images
    if not 0 <= n <= len(images):
        raise ConfigError(f"n={n} but the {split} split of {source} holds {len(images)} images")
    return images[np.sort(np.random.default_rng(seed).permutation(len(images))[:n])]


def epoch_permutation(n_items, seed, epoch):
    """The order of all items in one epoch, int64 (n_items,), fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n_items)


def batch_indices(n_items, batch_size, seed, step):
    """The item indices of training step ``step``, int64 (batch_size,).

    Steps walk through one epoch's permutation after another (a batch may straddle two
    epochs), so every epoch shows every item exactly once, and the batch depends only on
    (seed, step): a run resumed at step k needs no saved data-loader state.
    """
    for name, value, low in (("n_items", n_items, 1), ("batch_size", batch_size, 1),
                             ("seed", seed, 0), ("step", step, 0)):
        require_positive_int(name, value, low)
    start = step * batch_size
    first, last = start // n_items, (start + batch_size - 1) // n_items
    stream = np.concatenate([epoch_permutation(n_items, seed, e)
                             for e in range(first, last + 1)])
    offset = start - first * n_items
    return stream[offset:offset + batch_size]
