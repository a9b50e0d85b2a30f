"""The prior's training data: captioned shapes, encoded once by the tokenizer and cached.

Encoding 20,000 images through the tokenizer costs seconds; doing it once and keeping the
token grids means every training step reads ready-made ids. The cache file remembers which
tokenizer, how many images and which seed made it, and is rebuilt when any of them changes.
"""
import hashlib
import json
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from tinytok import backend
from tinytok.data.datasets import CAPTION_WORDS, make_shapes
from tinytok.data.edits import INSTRUCTION_WORDS
from tinytok.errors import CheckpointError, ShapeError
from tinytok.ops.checks import require_positive_int
from tinytok.prior.kinds import check_tokenizer
from tinytok.prior.scales import carried_params
from tinytok.prior.vocab import Vocab
from tinytok.training.checkpoint import read_npz_safely, write_npz_atomic
from tinytok.training.progress import Progress, print_to_stderr


@dataclass
class PriorData:
    """What the prior learns from: token grids of images and their captions (word ids)."""
    codes: np.ndarray          # (N, g, g) int64 codebook ids; a multi-scale tokenizer's (N, L)
    captions: list             # N lists of word ids
    vocab: object              # tinytok.prior.vocab.Vocab
    labels: np.ndarray = None  # (N, 4) attributes, for conversations (training.conversations)
    quantizer: dict = None     # a multi-scale tokenizer's quantizer, for a next-scale prior


def file_digest(path):
    """A short SHA-256 of a file's bytes: names the exact tokenizer a cache was made with."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def shapes_vocab(num_codes, grid_size=8):
    """The joint vocabulary of the shapes captions and instructions (data.edits) and a
    codebook of num_codes codes."""
    return Vocab(list(CAPTION_WORDS) + list(INSTRUCTION_WORDS), num_codes, grid_size)


def shapes_prior_data(tokenizer, n_images, seed=0, cache=None, tokenizer_path=None,
                      log=print_to_stderr, progress_stream=None, kind="raster"):
    """PriorData for n_images training shapes (held-out combinations excluded), for a prior
    of kind (prior/kinds.py): a multi-scale tokenizer's maps and quantizer for "scales",
    token grids for the others.

    With cache (a path prefix), the token grids live in "<cache>-<key>.npz", the key naming
    the tokenizer file's digest, n_images and seed: a different tokenizer or data set simply
    finds no file and encodes afresh. The encoding shows its progress on progress_stream
    (default stderr).
    """
    check_tokenizer(kind, tokenizer)     # before anything is drawn or encoded
    data = make_shapes(n_images, seed=seed, split="train")
    vocab = shapes_vocab(tokenizer.config.num_codes, tokenizer.grid_size)
    codes = None
    if cache and tokenizer_path:
        cache = f"{cache}-{file_digest(tokenizer_path)}-{n_images}-{seed}.npz"
        if os.path.exists(cache):
            try:
                codes = load_token_cache(cache).codes
            except CheckpointError:
                codes = None  # unreadable cache: encode again and overwrite it
    if codes is None:
        log(f"encoding {n_images} shapes with the tokenizer (once)...")
        with Progress(n_images, desc="encoding", log_every=max(n_images // 4, 1),
                      stream=progress_stream, unit="img") as progress:
            codes = encode_dataset_tokens(tokenizer.encode, data.images, progress=progress)
        if cache and tokenizer_path:
            save_token_cache(cache, codes, data.captions, data.labels)
    captions = [vocab.encode_text(c) for c in data.captions]
    quantizer = (None if tokenizer.writes_grids
                 else {k: backend.to_numpy(v) for k, v in carried_params(tokenizer.params).items()})
    return PriorData(np.asarray(codes), captions, vocab, data.labels, quantizer)


# ----------------------------------------------------------------------------------------
# Caching token grids: the tokenizer encodes the dataset once, the prior reads the ids

def encode_dataset_tokens(encode_fn, images, batch_size=256, progress=None):
    """encode_fn(images[i:i+batch_size]) for each batch, stacked: int64 (N, g, g) on the host
    (a multi-scale tokenizer's maps: (N, L)).

    encode_fn takes uint8 images (b, H, W, 3) and returns codes (b, g, g) or (b, L), NumPy
    or CuPy.
    progress (a training.progress.Progress over the images), if given, follows the batches.
    """
    require_positive_int("batch_size", batch_size)
    if len(images) == 0:
        raise ShapeError("no images to encode")
    parts = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        codes = backend.to_numpy(encode_fn(batch))
        if codes.ndim not in (2, 3) or codes.shape[0] != len(batch):
            raise ShapeError(f"encode_fn must return codes (b, g, g) or maps (b, L) for a "
                             f"batch of {len(batch)} images, got shape {codes.shape}")
        parts.append(codes.astype(np.int64))
        if progress is not None:
            progress.update(start + len(batch))
    return np.concatenate(parts)


class TokenCache(NamedTuple):
    """What load_token_cache returns: codes int64 (N, g, g) or maps (N, L), N captions (or
    None), labels."""
    codes: np.ndarray
    captions: list
    labels: np.ndarray


CACHE_FORMAT = "tinytok-token-cache"


def save_token_cache(path, codes, captions=None, labels=None):
    """Write codes (N, g, g) or maps (N, L) int, optional captions (N strings) and labels
    (N, ...) to `path`.

    A plain .npz, no pickle: captions go in as UTF-8 JSON in a uint8 array. Written to a
    temporary file and renamed, so `path` never holds half a cache.
    """
    codes = np.asarray(codes)
    if codes.ndim not in (2, 3) or codes.dtype.kind not in "iu":
        raise ShapeError(f"codes must be an integer array (N, g, g) or (N, L), got "
                         f"{codes.dtype} {codes.shape}")
    meta = {"format": CACHE_FORMAT, "version": 1, "captions": None}
    if captions is not None:
        captions = [str(c) for c in captions]
        if len(captions) != len(codes):
            raise ShapeError(f"{len(captions)} captions for {len(codes)} code grids")
        meta["captions"] = captions
    arrays = {"codes": codes.astype(np.int64),
              "meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.dtype == object or len(labels) != len(codes):
            raise ShapeError(f"labels must be a numeric array with {len(codes)} rows, got "
                             f"{labels.dtype} {labels.shape}")
        arrays["labels"] = labels
    write_npz_atomic(os.fspath(path), arrays)


def load_token_cache(path):
    """TokenCache(codes, captions, labels) saved by save_token_cache; CheckpointError if
    the file is missing, corrupt or something else."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"token cache {path} does not exist")
    arrays = read_npz_safely(path)                     # allow_pickle=False, clear errors
    try:
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
        codes = arrays["codes"]
        ok = meta["format"] == CACHE_FORMAT and codes.ndim in (2, 3)
    except Exception:
        ok = False
    if not ok:
        raise CheckpointError(f"{path} is not a tinytok token cache")
    return TokenCache(codes, meta["captions"], arrays.get("labels"))
