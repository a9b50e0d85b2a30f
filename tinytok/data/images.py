"""Reading, converting and checking images: the edge where pixels enter tinytok.

Every image that reaches a model is a uint8 array in NHWC layout, ``(N, size, size, 3)``,
values 0..255: what Pillow gives and what the rest of the Python world expects. This module
turns image files of any kind into that, and checks arrays handed to a model API.

    load_image("cat.jpg")           # (32, 32, 3) uint8
    load_image_folder("my_photos")  # (N, 32, 32, 3) uint8, and the file names
    check_images(x)                 # x as (N, 32, 32, 3) uint8, or a clear error
    images_to_model(x)              # float32 (N, 3, 32, 32) in [-0.5, 0.5]: what models read
    model_to_images(x_hat)          # and back to uint8 (N, 32, 32, 3) on the host
    load_photo("astronaut")         # scikit-image's sample photographs, faces, digits

Pillow's many modes are converted to RGB explicitly (see ``to_rgb_array``), because its own
``convert("RGB")`` clips 16-bit and float images instead of scaling them, and drops alpha
onto black.
"""
from functools import lru_cache
import importlib
import os
import warnings

import numpy as np

from tinytok import backend
from tinytok.errors import ConfigError, DTypeError, ImageError, ShapeError
from tinytok.ops.checks import require_positive_int

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico")
MIN_SIDE = 8                 # smaller images hold too little to resize up from
MAX_PIXELS = 64_000_000      # larger ones are refused before decoding (decompression bombs)
BACKGROUND = (255, 255, 255) # transparent pixels are composited onto this colour

SIZE_RULE = (f"images must be at least {MIN_SIDE}x{MIN_SIDE} pixels "
             f"and at most {MAX_PIXELS // 1_000_000} megapixels")


def check_images(images, size=32):
    """Check an array handed to a model API; return it as (N, size, size, 3) uint8.

    A single image (size, size, 3) gets a batch axis. The shape is checked first
    (ShapeError), then the dtype (DTypeError); both messages say what was given and what
    is expected. NumPy and CuPy arrays are both accepted and returned as they are.
    """
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        images = np.asarray(images)
    expected = f"uint8 images of shape (N, {size}, {size}, 3) or one image ({size}, {size}, 3)"
    shape = tuple(images.shape)
    if len(shape) == 3 and shape == (size, size, 3):
        images = images[None]
    elif len(shape) != 4 or shape[1:] != (size, size, 3):
        hint = ""
        if len(shape) == 4 and shape[1] == 3 and shape[2:] == (size, size):
            hint = "; this looks like NCHW, use images.transpose(0, 2, 3, 1)"
        raise ShapeError(f"expected {expected}, got an array of shape {shape}{hint}")
    if images.shape[0] == 0:
        raise ShapeError(f"expected {expected}, got an empty batch of shape {shape}")
    if images.dtype != np.uint8:
        hint = ""
        if images.dtype.kind == "f":
            hint = "; for floats in [0, 1] use (images * 255).round().astype(np.uint8)"
        raise DTypeError(f"expected {expected} with dtype uint8 (0..255), "
                         f"got dtype {images.dtype}{hint}")
    return images


def images_to_model(images):
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-0.5, 0.5], on the active backend.

    Models read channels first (NCHW, as convolutions are written) and values centred on 0.
    """
    xp = backend.xp()
    x = xp.asarray(images).astype(xp.float32)
    return (x / 255 - 0.5).transpose(0, 3, 1, 2)


def model_to_images(x):
    """float (N, 3, H, W) around [-0.5, 0.5] -> uint8 (N, H, W, 3) on the host."""
    x = backend.to_numpy(x).transpose(0, 2, 3, 1)
    return np.clip(np.rint((x + 0.5) * 255), 0, 255).astype(np.uint8)


def _scale_to_uint8(a, mode):
    """A high-bit-depth gray array (H, W) scaled to uint8 0..255, never clipped.

    The mode says what the numbers mean: "I;16" holds 16 bits, so 65535 becomes 255;
    "I" (32-bit integers) is read as 8-bit if it fits in 0..255 and as 16-bit if it fits
    in 0..65535; "F" (floats) in [0, 1] is multiplied by 255. Anything else is stretched
    linearly from its own minimum to its maximum.
    """
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if mode.startswith("I;16") or (mode == "I" and 0 <= lo and 255 < hi <= 65535):
        scaled = a / 257
    elif mode == "I" and 0 <= lo and hi <= 255:
        scaled = a
    elif mode == "F" and 0 <= lo and hi <= 1:
        scaled = a * 255
    else:
        scaled = (a - lo) * (255 / max(hi - lo, 1e-12))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def to_rgb_array(img, background=BACKGROUND):
    """A Pillow image of any mode as a uint8 array (H, W, 3).

    High-bit-depth modes (I;16, I, F) are scaled to 8 bits; modes with transparency
    (LA, PA, RGBA, P with a transparent colour) are composited onto ``background``;
    everything else (1, L, P, CMYK, YCbCr, LAB, HSV, RGB) goes through Pillow's conversion.
    """
    from PIL import Image

    if img.mode.startswith("I") or img.mode == "F":
        gray = _scale_to_uint8(np.asarray(img), img.mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = img.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        img = Image.alpha_composite(canvas, rgba)
    return np.asarray(img.convert("RGB"))


def resize_center_crop(rgb, size=32):
    """Resize (H, W, 3) uint8 so its shorter side is ``size`` (bicubic), then crop the
    centre to (size, size, 3). Pillow's bicubic filter widens when shrinking, so large
    photos are antialiased rather than aliased."""
    from PIL import Image, ImageOps

    fitted = ImageOps.fit(Image.fromarray(rgb), (size, size), method=Image.Resampling.BICUBIC)
    return np.asarray(fitted)


def _check_size_arg(size):
    require_positive_int("size", size)


def load_image(path, size=32, background=BACKGROUND):
    """Read one image file and return it as uint8 (size, size, 3).

    Any format Pillow reads; the first frame of animations and multi-page files; EXIF
    rotation applied (phone photos); converted to RGB by ``to_rgb_array``; shorter side
    resized to ``size`` and the centre cropped. Raises ImageError naming the file when it
    is missing, not an image, truncated, or outside the size rule (SIZE_RULE).
    """
    from PIL import Image, ImageOps

    _check_size_arg(size)
    name = os.fspath(path)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 89 and 179 megapixels; make that an error too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(name) as img:
                width, height = img.size  # read from the header, nothing decoded yet
                if width < MIN_SIDE or height < MIN_SIDE or width * height > MAX_PIXELS:
                    raise ImageError(f"{name}: image is {width}x{height} pixels; {SIZE_RULE}")
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = to_rgb_array(img, background)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({e}); "
                         f"{SIZE_RULE}") from None
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a folder, not an image file "
                         "(use load_image_folder)") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise ImageError(f"{name}: cannot read image ({e})") from None
    return resize_center_crop(rgb, size)


def image_files(folder):
    """Sorted relative paths of the image files under ``folder`` (recursively), chosen by
    extension (IMAGE_EXTENSIONS, any case); hidden files and folders are skipped."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ImageError(f"{folder}: not a folder")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(root, f), folder))
    # Sort by path so that the order (and so every seeded batch) is the same on every OS.
    return sorted(p.replace(os.sep, "/") for p in found)


def load_image_folder(folder, size=32, background=BACKGROUND):
    """Every image file under ``folder`` as uint8 (N, size, size, 3), and their names.

    Returns ``(images, names)`` with names the relative paths in sorted order. A file that
    has an image extension but cannot be read is an error (ImageError naming it), not
    silently skipped; a folder without image files is an ImageError listing what is read.
    """
    _check_size_arg(size)
    names = image_files(folder)
    if not names:
        raise ImageError(f"{os.fspath(folder)}: no images found; files ending in "
                         f"{', '.join(IMAGE_EXTENSIONS)} (any case) are read")
    images = np.empty((len(names), size, size, 3), np.uint8)
    for i, name in enumerate(names):
        images[i] = load_image(os.path.join(os.fspath(folder), name), size, background)
    return images, names


# ---------------------------------------------------------------------------------------
# Sample images shipped by scikit-image and scikit-learn (the optional extra "data")
# ---------------------------------------------------------------------------------------

# The photographs bundled inside scikit-image's wheel (no download needed). Grayscale
# ones are repeated into three channels. Left out: synthetic images (logo, colorwheel,
# checkerboard, phantom, binary horse), cat (the same photo as chelsea), microaneurysms
# (102 pixels: too small at 4x), and the ones scikit-image fetches from the network.
PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
          "retina", "rocket", "camera", "coins", "moon", "brick", "grass", "gravel",
          "clock", "cell", "page", "text")
DATA_EXTRA = "pip install 'tinytok[data]'"


def _require(module):
    """Import scikit-image or scikit-learn, or say how to install them."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"this data set needs scikit-image and scikit-learn ({e}); "
                          f"install them with: {DATA_EXTRA}") from None


def _gray_to_rgb(gray, size):
    """Gray images (N, h, w), any range, as uint8 (N, size, size, 3), bicubic resize."""
    from PIL import Image
    gray = np.asarray(gray, np.float64)
    gray = np.round(255 * (gray - gray.min()) / max(gray.max() - gray.min(), 1e-12))
    out = np.stack([np.asarray(Image.fromarray(g.astype(np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC)) for g in gray])
    return np.repeat(out[..., None], 3, axis=3)


def resize_images(images, size):
    """uint8 pictures (N, H, W, 3) resized to size x size, each with Pillow's bilinear filter
    (which, shrinking, averages over the footprint of each new pixel)."""
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(img).resize((size, size),
                                                            Image.Resampling.BILINEAR))
                     for img in images])


@lru_cache(maxsize=None)
def load_photo(name, scale=1):
    """One scikit-image photograph as uint8 (H, W, 3), shrunk ``scale`` times (bicubic).
    Cached, and returned read-only so the cached copy cannot be changed by accident."""
    from PIL import Image
    if name not in PHOTOS:
        raise ConfigError(f"unknown photo {name!r}; choose one of {', '.join(PHOTOS)}")
    data = _require("skimage.data")
    try:
        image = getattr(data, name)()
    except Exception as e:  # not in this wheel: scikit-image would download it (pooch)
        raise ImageError(f"photo {name!r} is not bundled with this scikit-image and cannot "
                         f"be downloaded here ({type(e).__name__}: {e})") from None
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    img = Image.fromarray(image[..., :3].astype(np.uint8))
    if scale != 1:
        img = img.resize((img.width // scale, img.height // scale), Image.Resampling.BICUBIC)
    photo = np.asarray(img).copy()
    photo.flags.writeable = False
    return photo


def available_photos():
    """The names in PHOTOS that load here (all of them with scikit-image 0.26)."""
    available = []
    for name in PHOTOS:
        try:
            load_photo(name)
            available.append(name)
        except ImageError:
            pass
    return tuple(available)


def load_faces(size=32):
    """The 100 faces of scikit-image's LFW subset (25x25 gray) as uint8 (100, size, size, 3)."""
    faces = _require("skimage.data").lfw_subset()[:100]  # the other 100 are non-faces
    return _gray_to_rgb(faces, size)


def load_digits(size=32):
    """scikit-learn's 1797 handwritten digits (8x8, values 0..16) as uint8
    (1797, size, size, 3), white on black, and their labels int64 (1797,)."""
    digits = _require("sklearn.datasets").load_digits()
    return _gray_to_rgb(digits.images, size), digits.target.astype(np.int64)
