"""Fuzzing the edges where outside data enters tinytok: image files, checkpoint files,
prompts and token ids. Whatever comes in, only the documented errors (TinytokError
subclasses) come out: never another exception, a crash or a hang."""
import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from tinytok.training.checkpoint import load_checkpoint, save_checkpoint
from tinytok.data.datasets import CAPTION_WORDS
from tinytok.errors import (CheckpointError, DTypeError, ImageError, PromptError, ShapeError,
                            TinytokError)
from tinytok.data.images import load_image
from tinytok.pipeline import Tokenizer
from tinytok.prior.layouts import image_prompt
from tinytok.prior.vocab import Vocab, split_words
from tinytok.tokenizer.vqvae import TokenizerConfig, init_tokenizer_params

FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

MICRO = TokenizerConfig("micro", image_size=16, hidden=8, res_hidden=4, n_res=1, code_dim=4,
                        num_codes=16)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A scratch folder with one real image of each kind and one real small checkpoint."""
    d = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    real = {}
    for fmt, ext in (("PNG", ".png"), ("JPEG", ".jpg"), ("GIF", ".gif"), ("BMP", ".bmp"),
                     ("TIFF", ".tif"), ("WEBP", ".webp"), ("PPM", ".ppm"), ("TGA", ".tga"),
                     ("ICO", ".ico")):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, fmt)
        real[ext] = buf.getvalue()
    params = init_tokenizer_params(MICRO)
    save_checkpoint(d / "real.npz", kind="tokenizer", params=params,
                    config={"model": {k: getattr(MICRO, k) for k in MICRO.__dataclass_fields__}},
                    step=3, optimizer_state={"m": params, "t": 3},
                    extra={"history": [{"step": 1, "loss": 0.5}]})
    return d, real, (d / "real.npz").read_bytes()


def _load_image_bytes(folder, data, ext):
    path = folder / f"fuzz{ext}"
    path.write_bytes(data)
    try:
        image = load_image(path)
    except ImageError as e:
        assert path.name in str(e)
        return None
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    return image


SIGNATURES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00",
              b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"P6\n", b"P5 16 16 255\n",
              b"\x00\x00\x01\x00", b"\x00\x00\x02\x00\x00\x00\x00\x00"]
EXTS = [".png", ".jpg", ".gif", ".bmp", ".tif", ".webp", ".ppm", ".tga", ".ico"]


@FUZZ
@given(head=st.sampled_from(SIGNATURES), body=st.binary(max_size=600),
       ext=st.sampled_from(EXTS))
def test_image_loader_on_arbitrary_bytes(files, head, body, ext):
    _load_image_bytes(files[0], head + body, ext)


@FUZZ
@given(ext=st.sampled_from(EXTS), data=st.data())
def test_image_loader_on_damaged_real_images(files, ext, data):
    raw = bytearray(files[1][ext])
    cut = data.draw(st.integers(0, len(raw)), label="truncate at")
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)),
                               max_size=6), label="flips")
    for i, x in flips:
        raw[i] ^= x
    _load_image_bytes(files[0], bytes(raw[:cut]), ext)


def _png(width, height, bit_depth, colour_type, payload):
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                               bit_depth, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(payload)) + chunk(b"IEND", b""))


@FUZZ
@given(width=st.integers(0, 70_000), height=st.integers(0, 70_000),
       depth=st.sampled_from([1, 2, 4, 8, 16, 3]), ctype=st.sampled_from([0, 2, 3, 4, 6, 5]),
       payload=st.binary(max_size=300))
def test_image_loader_on_pngs_with_arbitrary_headers(files, width, height, depth, ctype,
                                                     payload):
    """Sizes from 0 to 70000 a side (decompression bombs included), any bit depth."""
    _load_image_bytes(files[0], _png(width, height, depth, ctype, payload), ".png")


# ---------------------------------------------------------------- checkpoints

def _load_checkpoint_bytes(folder, data):
    path = folder / "fuzz.npz"
    path.write_bytes(data)
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        assert "fuzz.npz" in str(e)
        return None
    assert isinstance(ckpt.params, dict) and isinstance(ckpt.config, dict)
    return ckpt


@FUZZ
@given(head=st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY", b"\x80\x04"]),
       body=st.binary(max_size=800))
def test_checkpoint_loader_on_arbitrary_bytes(files, head, body):
    _load_checkpoint_bytes(files[0], head + body)


@FUZZ
@given(data=st.data())
def test_checkpoint_loader_on_truncated_and_damaged_real_checkpoints(files, data):
    raw = bytearray(files[2])
    cut = data.draw(st.integers(0, len(raw)), label="truncate at")
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)),
                               max_size=4), label="flips")
    for i, x in flips:
        raw[i] ^= x
    ckpt = _load_checkpoint_bytes(files[0], bytes(raw[:cut]))
    if ckpt is not None and not flips:
        assert cut == len(raw)                      # a truncated file never loads


@FUZZ
@given(cut=st.integers(0, 10_000))
def test_tokenizer_load_on_truncated_checkpoints(files, cut):
    """Tokenizer.load too: only CheckpointError (and the good file loads)."""
    path = files[0] / "fuzz_tok.npz"
    raw = files[2]
    path.write_bytes(raw[:len(raw) - cut])
    try:
        tok = Tokenizer.load(path)
    except CheckpointError:
        assert cut > 0
        return
    assert cut == 0 and tok.grid_size == 4


# ---------------------------------------------------------------- prompts

VOCAB = Vocab(list(CAPTION_WORDS), 16, 4)


@FUZZ
@given(text=st.one_of(st.text(max_size=200),
                      st.lists(st.sampled_from(list(CAPTION_WORDS) + ["", " ", ",", "Red",
                                                                      "zebra", "\n", "é"]),
                               max_size=30).map(" ".join)))
def test_prompt_tokenizer_on_arbitrary_text(text):
    try:
        ids = VOCAB.encode_text(text)
    except PromptError as e:
        assert str(e)
    else:
        assert ids and all(VOCAB.is_word(i) for i in ids)
        assert VOCAB.decode_text(ids).split() == split_words(text)
    for context in (32, 80):
        try:
            seq = image_prompt(VOCAB, text, context)
        except PromptError:
            continue
        assert len(seq) + VOCAB.image_len <= context


@FUZZ
@given(value=st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=20),
                       st.lists(st.text(max_size=5), max_size=3)))
def test_prompt_tokenizer_on_non_text(value):
    with pytest.raises(PromptError):
        VOCAB.encode_text(value)


# ---------------------------------------------------------------- token ids

@pytest.fixture(scope="module")
def micro_tokenizer():
    return Tokenizer(init_tokenizer_params(MICRO), MICRO)


DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "bool", "float32", "float64"]


@FUZZ
@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
       dtype=st.sampled_from(DTYPES), data=st.data())
def test_id_decoding_on_arbitrary_arrays(micro_tokenizer, shape, dtype, data):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    low, high = (int(info.min), int(info.max)) if info else (-20, 20)
    values = data.draw(st.lists(st.integers(max(low, -40), min(high, 40)),
                                min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    ids = np.array(values, dtype=np.int64).astype(dtype).reshape(shape)
    try:
        checked = micro_tokenizer.check_ids(ids)
    except (ShapeError, DTypeError):
        return
    assert checked.ndim == 3 and checked.shape[1:] == (4, 4)
    try:
        images = micro_tokenizer.decode(ids)
    except TinytokError:
        return
    assert images.shape == (len(checked), 16, 16, 3) and images.dtype == np.uint8


@FUZZ
@given(n=st.integers(0, 3), value=st.integers(-2 ** 63, 2 ** 64 - 1))
def test_id_decoding_on_extreme_values(micro_tokenizer, n, value):
    dtype = np.uint64 if value >= 2 ** 63 else np.int64
    ids = np.full((n, 4, 4), value, dtype=dtype)
    try:
        images = micro_tokenizer.decode(ids)
    except TinytokError:
        return
    assert 0 <= value < 16 and images.shape == (n, 16, 16, 3)


@FUZZ
@given(ids=st.recursive(st.one_of(st.integers(-3, 20), st.floats(), st.text(max_size=2)),
                        lambda inner: st.lists(inner, max_size=5), max_leaves=40))
def test_id_decoding_on_nested_lists(micro_tokenizer, ids):
    """What a JSON file could hold: nested lists of anything."""
    try:
        micro_tokenizer.decode(ids)
    except TinytokError:
        pass
