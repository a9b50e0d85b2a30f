"""The prior's training data: captioned shapes, encoded once by the tokenizer and cached.

Encoding 20,000 images through the tokenizer costs seconds; doing it once and keeping the
token grids means every training step reads ready-made ids. The cache file remembers which
tokenizer, how many images and which seed made it, and is rebuilt when any of them changes.
"""
import hashlib
import os

import numpy as np

from tinytok.datasets import CAPTION_WORDS, make_shapes
from tinytok.errors import CheckpointError
from tinytok.train import PriorData, default_print
from tinytok.vocab import Vocab, encode_dataset_tokens, load_token_cache, save_token_cache


def file_digest(path):
    """A short SHA-256 of a file's bytes: names the exact tokenizer a cache was made with."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def shapes_vocab(num_codes, grid_size=8):
    """The joint vocabulary of the shapes captions and a codebook of num_codes codes."""
    return Vocab(list(CAPTION_WORDS), num_codes, grid_size)


def shapes_prior_data(tokenizer, n_images, seed=0, cache=None, tokenizer_path=None,
                      log=default_print):
    """PriorData for n_images training shapes (held-out combinations excluded).

    With cache (a path prefix), the token grids live in "<cache>-<key>.npz", the key naming
    the tokenizer file's digest, n_images and seed: a different tokenizer or data set simply
    finds no file and encodes afresh.
    """
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
        codes = encode_dataset_tokens(tokenizer.encode, data.images)
        if cache and tokenizer_path:
            save_token_cache(cache, codes, data.captions, data.labels)
    captions = [vocab.encode_text(c) for c in data.captions]
    return PriorData(np.asarray(codes), captions, vocab)
