"""The objects a user holds: a Tokenizer, a Prior, and a Pipeline joining them.

    tok = Tokenizer.load("data/checkpoints/shapes_tokenizer.npz")
    ids = tok.encode(images)            # uint8 (N, 32, 32, 3) -> int (N, 8, 8)
    images = tok.decode(ids)            # and back
    # a multi-scale tokenizer (--quantizer scales): ids (N, L), its maps in a row; the
    # first k maps alone, ids[:, :tok.prefix_lengths[k - 1]], decode to a preview

    pipe = Pipeline.load()              # the shipped shapes tokenizer and prior
    images = pipe.generate(["a small blue triangle at the bottom right"], n=8)
    images = pipe.generate(["a small blue triangle"], n=8, sampling=tinytok.Sampling(cfg_scale=2))
    captions = pipe.caption(images)

They hold parameters on the active backend and call the model pairs; nothing here trains.
"""
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tinytok import backend
from tinytok.data.images import check_images, images_to_model, model_to_images
from tinytok.errors import CheckpointError, ConfigError, DTypeError, ShapeError
from tinytok.ops.checks import is_whole_number
from tinytok.parallel import blas_threads_for_small_products, for_batch_parts
from tinytok.prior.gpt import config_dict, gpt_config
from tinytok.prior.kinds import (check_kind_sampling, check_tokenizer, draws_per_picture,
                                 kind_of_checkpoint, model_vocab_size, prior_kind,
                                 refuse_inpainting, refuse_words)
from tinytok.prior.masked import inpaint_codes
from tinytok.prior.sample import caption_log_likelihood, write_captions
from tinytok.prior.settings import check_sampling
from tinytok.prior.vocab import Vocab
from tinytok.tokenizer.discriminator import is_discriminator_param
from tinytok.tokenizer.multiscale import prefix_lengths, split_scale_ids
from tinytok.tokenizer.quantizers import QUANTIZERS
from tinytok.tokenizer.vqvae import decode_ids, encode_ids, init_tokenizer_params, tokenizer_config
from tinytok.training.checkpoint import check_params_match, load_checkpoint, save_checkpoint

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "data" / "checkpoints"
SHIPPED = {"shapes-tokenizer": CHECKPOINT_DIR / "shapes_tokenizer.npz",
           "shapes-scales-tokenizer": CHECKPOINT_DIR / "shapes_scales_tokenizer.npz",
           "photos-tokenizer": CHECKPOINT_DIR / "photos_tokenizer.npz",
           "photos-gan-tokenizer": CHECKPOINT_DIR / "photos_gan_tokenizer.npz",
           "shapes-prior": CHECKPOINT_DIR / "shapes_prior.npz",
           "shapes-masked-prior": CHECKPOINT_DIR / "shapes_masked_prior.npz",
           "shapes-scales-prior": CHECKPOINT_DIR / "shapes_scales_prior.npz"}


def _from_checkpoint(path, what, make):
    """make() builds a config from a checkpoint's metadata; any failure names the file."""
    try:
        return make()
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        detail = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"{path} holds a malformed {what}: {detail}") from None


def check_seed(seed):
    """A sampling seed must be a whole number that numpy's generator takes."""
    if not is_whole_number(seed) or seed >= 2 ** 32:
        raise ConfigError(f"seed must be a whole number in [0, 2**32), got {seed!r}")


class Tokenizer:
    """A trained VQ-VAE: images to token grids and back."""

    def __init__(self, params, config):
        self.config = tokenizer_config(config)
        self.params = backend.params_to_device(params)

    @classmethod
    def load(cls, path=None):
        """Load a tokenizer checkpoint (default: the shipped shapes tokenizer)."""
        path = path or SHIPPED["shapes-tokenizer"]
        ckpt = load_checkpoint(path, kind="tokenizer")
        config = _from_checkpoint(path, "tokenizer config",
                                  lambda: tokenizer_config(dict(ckpt.config["model"])))
        # A tokenizer trained against a discriminator keeps it ("disc." parameters), for
        # resuming and for looking at; encoding and decoding never need it.
        params = {k: v for k, v in ckpt.params.items() if not is_discriminator_param(k)}
        check_params_match(params, init_tokenizer_params(config), path)
        return cls(params, config)

    def save(self, path):
        """Write the parameters and config (no optimizer state) to path, atomically."""
        save_checkpoint(path, kind="tokenizer", params=self.params,
                        config={"model": asdict(self.config)})

    @property
    def grid_size(self):
        return self.config.grid_size

    @property
    def vocab_size(self):
        """How many distinct token ids a grid cell can hold (the codebook's size)."""
        return self.config.num_codes

    @property
    def ids_shape(self):
        """One picture's ids: (g, g), one per cell; a multi-scale tokenizer's (L,), its maps
        one after the other (L = sum of the scales' squares)."""
        return QUANTIZERS[self.config.quantizer].ids_shape(self.config)

    @property
    def writes_grids(self):
        """Whether a picture's ids are one (g, g) grid (what the priors read)."""
        return self.ids_shape == (self.grid_size, self.grid_size)

    @property
    def prefix_lengths(self):
        """The id counts decode takes: the whole (g * g or L), and for a multi-scale
        tokenizer every prefix of whole maps (1, 5, 14, ... ids: a preview)."""
        if QUANTIZERS[self.config.quantizer].reads("scales"):
            return prefix_lengths(self.config.scales)
        return (math.prod(self.ids_shape),)

    def maps(self, ids):
        """ids (N, *ids_shape) as a list of 2-D maps (N, s, s): the one grid, or a
        multi-scale tokenizer's maps, coarse to fine."""
        if self.writes_grids:
            return [ids]
        return split_scale_ids(ids, self.config.scales)

    @property
    def code_rows(self):
        """Its codes: num_codes, or num_codes per scale for a multi-scale tokenizer (each
        map has a codebook of its own)."""
        return QUANTIZERS[self.config.quantizer].code_rows(self.config)

    def rows_of(self, ids):
        """ids as rows of all the codes (code_rows): scale k's id i is k K + i."""
        return QUANTIZERS[self.config.quantizer].rows_of(ids, self.config)

    @property
    def tokens_per_picture(self):
        return math.prod(self.ids_shape)

    @property
    def bits_per_picture(self):
        """What one picture costs as tokens: its ids (grid_size**2, or a multi-scale
        tokenizer's L) of log2(vocab_size) bits each."""
        return self.tokens_per_picture * math.log2(self.vocab_size)

    def require_grids(self, what):
        """A one-line ConfigError unless the ids are (g, g) grids: what needs them."""
        if not self.writes_grids:
            raise ConfigError(f"{what} reads grids of tokens, but this {self.config.quantizer} "
                              f"tokenizer writes {self.tokens_per_picture} ids per picture in "
                              "maps of growing size; use a tokenizer of one grid (vq, ema, ...)")

    def _check(self, images):
        return check_images(images, self.config.image_size)

    def encode(self, images, batch_size=64):
        """uint8 images (N, S, S, 3) or one (S, S, 3) -> int64 token ids (N, g, g), g the
        grid_size (S / 4, or S / 2 for a tokenizer with one downsampling); a multi-scale
        tokenizer's (N, L).

        Works through the images batch_size at a time: smaller batches keep each layer's
        columns in cache (64 was 10% faster than 256 on a 2-core laptop-class CPU).
        """
        images = self._check(images)
        return np.concatenate([self._encode_batch(images[i:i + batch_size])
                               for i in range(0, len(images), batch_size)])

    def _encode_batch(self, images):
        """One batch, in parts on the threads of tinytok.parallel (one part on one thread)."""
        x = images_to_model(images)
        parts = for_batch_parts(lambda lo, hi: encode_ids(x[lo:hi], self.params, self.config),
                                len(x))
        return np.concatenate([backend.to_numpy(ids) for ids in parts]).astype(np.int64)

    def check_ids(self, ids):
        """ids must be integers in [0, num_codes) shaped (N, g, g) or (g, g) (a multi-scale
        tokenizer: (N, L_k) or (L_k,), L_k one of prefix_lengths): ShapeError for a wrong
        shape or value, DTypeError for anything but integers."""
        K, wanted = self.config.num_codes, self._ids_wanted()
        try:
            ids = np.asarray(backend.to_numpy(ids))
        except (ValueError, TypeError):
            raise ShapeError(f"token ids must be a rectangular array {wanted} of "
                             "integers") from None
        one = len(self.ids_shape)
        if ids.ndim == one:
            ids = ids[None]
        if ids.ndim != one + 1 or ids.shape[1:] not in self._accepted_shapes():
            raise ShapeError(f"token ids must have shape {wanted} for this tokenizer, got "
                             f"{ids.shape}")
        if ids.dtype.kind not in "iu":
            raise DTypeError(f"token ids must be integers, got {ids.dtype}")
        if len(ids) == 0:
            raise ShapeError("no token grids given (an empty batch)")
        if ids.size and (ids.min() < 0 or ids.max() >= K):
            raise ShapeError(f"token ids must lie in [0, {K}) for a codebook of {K} codes, got "
                             f"values from {ids.min()} to {ids.max()}")
        return ids

    def _accepted_shapes(self):
        """One picture's ids as decode takes them: the grid, or every prefix of whole maps."""
        if self.writes_grids:
            return [self.ids_shape]
        return [(n,) for n in self.prefix_lengths]

    def _ids_wanted(self):
        """The shapes check_ids takes, in words."""
        if self.writes_grids:
            g = self.grid_size
            return f"(N, {g}, {g}) or ({g}, {g})"
        L = self.tokens_per_picture
        return (f"(N, {L}) or ({L},), or the first maps alone (N, L_k), L_k one of "
                f"{', '.join(map(str, self.prefix_lengths[:-1]))}")

    def decode(self, ids, batch_size=256):
        """int ids (N, g, g) or (g, g) -> uint8 images (N, S, S, 3). A multi-scale
        tokenizer's (N, L), or its first k maps (N, L_k): a preview from those alone."""
        ids = self.check_ids(ids)
        return np.concatenate([self._decode_batch(ids[i:i + batch_size])
                               for i in range(0, len(ids), batch_size)])

    def _decode_batch(self, ids):
        """One batch, in parts on the threads of tinytok.parallel, like encoding."""
        ids = backend.xp().asarray(ids)
        parts = for_batch_parts(lambda lo, hi: decode_ids(ids[lo:hi], self.params, self.config),
                                len(ids))
        return np.concatenate([model_to_images(x_hat) for x_hat in parts])

    def code_tiles(self):
        """Every code drawn on its own: uint8 (K, S, S, 3), image k a grid filled with code k
        (a multi-scale tokenizer: code k at every cell of every map).

        This is the visual vocabulary's "palette" (see tinytok.viz.codebook_palette).
        """
        K, n = self.config.num_codes, self.tokens_per_picture
        return self.decode(np.repeat(np.arange(K), n).reshape((K,) + self.ids_shape))

    def reconstruct(self, images):
        """encode then decode: what the tokenizer keeps of each image."""
        return self.decode(self.encode(images))


class Prior:
    """A trained prior: a GPT over the joint vocabulary of caption words and image codes.
    kind: its PriorKind (prior/kinds.py): a raster prior, or a masked one (MaskGIT)."""

    def __init__(self, params, config, vocab, kind="raster"):
        self.config, self.vocab, self.kind = config, vocab, prior_kind(kind)
        wanted = model_vocab_size(self.kind, vocab)   # checked here: drawing would fail later
        if config.vocab_size != wanted:               # with an error about embedding rows
            raise ConfigError(f"a {self.kind.name} prior over this vocabulary needs "
                              f"vocab_size={wanted}, the config has {config.vocab_size}")
        self.params = backend.params_to_device(params)

    @classmethod
    def load(cls, path=None):
        path = path or SHIPPED["shapes-prior"]
        ckpt = load_checkpoint(path, kind="prior")
        config = _from_checkpoint(path, "prior config",
                                  lambda: gpt_config(dict(ckpt.config["model"])))
        vocab = _from_checkpoint(path, "vocabulary",
                                 lambda: Vocab.from_dict(ckpt.config["vocab"]))
        kind = _from_checkpoint(path, "kind of prior", lambda: kind_of_checkpoint(ckpt.config))
        if model_vocab_size(kind, vocab) != config.vocab_size:
            raise CheckpointError(f"{path}: a {kind.name} prior over its vocabulary has "
                                  f"{model_vocab_size(kind, vocab)} tokens but the model "
                                  f"{config.vocab_size}")
        carried = {k: ckpt.params[k] for k in kind.carried if k in ckpt.params}
        fresh = _from_checkpoint(path, f"{kind.name} prior",
                                 lambda: kind.init(config, carried=carried or None))
        check_params_match(ckpt.params, fresh, path)
        return cls(ckpt.params, config, vocab, kind)

    def save(self, path):
        """Write the parameters, kind, config and vocabulary (no optimizer state),
        atomically."""
        save_checkpoint(path, kind="prior", params=self.params,
                        config={"kind": self.kind.name, "model": config_dict(self.config),
                                "vocab": self.vocab.to_dict()})


class Pipeline:
    """Tokenizer + prior: captions to pictures, pictures to captions."""

    def __init__(self, tokenizer, prior):
        check_tokenizer(prior.kind, tokenizer, prior)
        if prior.vocab.num_codes != tokenizer.config.num_codes:
            raise ConfigError(f"the prior writes {prior.vocab.num_codes} image codes but the "
                              f"tokenizer has {tokenizer.config.num_codes}; use the tokenizer "
                              "the prior was trained with")
        self.tokenizer, self.prior = tokenizer, prior

    @classmethod
    def load(cls, tokenizer_path=None, prior_path=None):
        """Default: the shipped shapes tokenizer and prior in data/checkpoints/."""
        return cls(Tokenizer.load(tokenizer_path), Prior.load(prior_path))

    @property
    def sampling(self):
        """The recommended settings of this kind of prior (prior/kinds.py): tinytok.SAMPLING,
        or for a next-scale prior SCALES_SAMPLING (guidance rising over its maps to 2.5,
        temperature 0.4). What every drawing method uses when given no sampling, and what
        the command line starts from."""
        return self.prior.kind.sampling

    def sampling_or_recommended(self, sampling):
        """sampling checked, or the recommended settings when it is None."""
        if sampling is None:
            return self.sampling
        return check_kind_sampling(self.prior.kind, check_sampling(sampling))

    def generate_codes(self, prompt, n=1, *, seed=0, sampling=None, use_cache=True):
        """n pictures' ids for one caption: token grids (n, g, g), or a next-scale prior's
        maps (n, L); see generate for the arguments."""
        sampling = self.sampling_or_recommended(sampling)
        check_seed(seed)
        prior = self.prior
        k = draws_per_picture(prior.kind, sampling)            # the prior is the judge
        with blas_threads_for_small_products():  # a few rows per product (tinytok.parallel)
            drawn = prior.kind.draw(prior.params, prior.config, prior.vocab, prompt, n * k,
                                    np.random.default_rng(seed), sampling, use_cache)
        if k > 1:
            drawn = self.best_of(drawn.reshape(n, k, *drawn.shape[1:]), prompt)
        return drawn

    def generate(self, prompts, n=1, *, seed=0, sampling=None, use_cache=True):
        """uint8 images (len(prompts) * n, S, S, 3): n pictures per caption, prompt by prompt.

        sampling (a tinytok.Sampling; default the prior's recommended settings,
        Pipeline.sampling): temperature, top_k, top_p, the guidance scale cfg_scale, and
        rerank=k, which draws k candidates for every picture and keeps the one whose
        caption the same prior finds likeliest (see caption_log_likelihood): DALL-E's
        reranking, with the one-stream model as its own judge, k times the drawing work.
        sampling=tinytok.PLAIN draws once, unguided.
        seed fixes the draws; use_cache=False recomputes the whole prefix for each token
        (the same pictures, slower: lesson 12). A masked prior fills each grid in
        sampling.steps passes, a next-scale prior writes a map a pass (lesson 17); both
        draw each picture once (they cannot judge captions).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        codes = [self.generate_codes(prompt, n, seed=seed + 1000 * i, sampling=sampling,
                                     use_cache=use_cache)
                 for i, prompt in enumerate(prompts)]  # one batch per prompt: lengths differ
        return self.tokenizer.decode(np.concatenate(codes))

    def best_of(self, candidates, prompt):
        """candidates (n, k, g, g) -> (n, g, g): in each row, the grid the prompt fits best."""
        n, k = candidates.shape[:2]
        flat = candidates.reshape(n * k, *candidates.shape[2:])
        scores = self.caption_log_likelihood(flat, prompt).reshape(n, k)
        return candidates[np.arange(n), scores.argmax(axis=1)]

    def caption_log_likelihood(self, codes, caption, batch_size=64):
        """log p(caption words, then <eos> | picture) under the prior, for each token grid.

        codes (N, g, g) int -> (N,) float64. The captioning layout read forwards: how likely
        the model is to write exactly this caption after seeing each picture.
        """
        refuse_words(self.prior.kind, "judge how well a caption fits a picture")
        prior, codes = self.prior, backend.to_numpy(codes)
        parts = for_batch_parts(lambda lo, hi: caption_log_likelihood(
            prior.params, prior.config, prior.vocab, codes[lo:hi], caption, batch_size),
            len(codes))                                   # in parts, one per core
        return np.concatenate(parts)

    def converse(self, turns, *, seed=0, sampling=None):
        """The model's replies to turns, in order, in one stream (tinytok.conversation).

        A turn is a string (a caption to draw, an instruction such as "make it blue", or
        "what is it?") or a uint8 picture (S, S, 3) the user shows; each reply is a uint8
        picture or a string, as the model chooses. sampling as for generate; a picture
        that answers an instruction is the best of sampling.edit_rerank.
        """
        from tinytok.conversation import converse
        refuse_words(self.prior.kind, "hold a conversation")
        return converse(self, turns, seed=seed, sampling=self.sampling_or_recommended(sampling))

    def edit(self, images, instruction, n=1, *, seed=0, sampling=None):
        """uint8 (len(images) * n, S, S, 3): each picture edited by the instruction
        ("make it {colour}", "make it {size}", "move it to the {position}", "turn it into
        a {shape}"), n pictures each, each the best of sampling.edit_rerank candidates.
        sampling as for generate."""
        from tinytok.conversation import edit
        refuse_words(self.prior.kind, "edit a picture by an instruction (it inpaints: "
                     "Pipeline.inpaint)")
        return edit(self, images, instruction, n, seed=seed,
                    sampling=self.sampling_or_recommended(sampling))

    def caption(self, images, *, greedy=True, temperature=1.0, seed=0):
        """A caption (str) for each uint8 image (N, S, S, 3), written by the prior."""
        codes = self.tokenizer.encode(images)
        return self.caption_codes(codes, greedy=greedy, temperature=temperature, seed=seed)

    def caption_codes(self, codes, *, greedy=True, temperature=1.0, seed=0):
        """Captions for token grids (N, g, g)."""
        refuse_words(self.prior.kind, "write captions")
        check_seed(seed)
        prior = self.prior
        with blas_threads_for_small_products():
            return write_captions(prior.params, prior.config, prior.vocab, codes,
                                  np.random.default_rng(seed), greedy, temperature)

    def inpaint(self, images, region, prompt, n=1, *, seed=0, sampling=None):
        """uint8 (len(images) * n, S, S, 3): each picture with a region drawn again to fit
        the caption prompt, n pictures each; needs a masked prior.

        region: (left, top, right, bottom) in pixels, right and bottom excluded, or a bool
        (S, S) array of the pixels to redraw. Every grid cell the region touches is drawn
        again (region_cells); the others keep their codes. The decoder's convolutions
        blend neighbouring cells, so the pixels near the region change too; beyond the
        decoder's reach (15 pixels past a changed cell for the shapes tokenizer) the
        picture is exactly the tokenizer's reconstruction of the original. sampling as for
        generate (its steps, guidance and temperature).
        """
        refuse_inpainting(self.prior.kind)
        sampling = self.sampling_or_recommended(sampling)
        check_seed(seed)
        codes = np.repeat(self.tokenizer.encode(images), n, axis=0)
        hidden = np.broadcast_to(region_cells(region, self.tokenizer.config.image_size,
                                              self.tokenizer.grid_size), codes.shape)
        prior = self.prior
        with blas_threads_for_small_products():
            drawn = inpaint_codes(prior.params, prior.config, prior.vocab, codes, hidden,
                                  prompt, np.random.default_rng(seed), sampling)
        return self.tokenizer.decode(drawn)


def region_cells(region, image_size, grid_size):
    """bool (g, g): the grid cells a region of an S x S picture touches. region: (left,
    top, right, bottom) in pixels (right and bottom excluded) or a bool (S, S) pixel mask;
    ConfigError if it is empty or leaves the picture."""
    cell = image_size // grid_size
    if isinstance(region, np.ndarray) and region.dtype == bool:
        if region.shape != (image_size, image_size):
            raise ShapeError(f"a region mask must be ({image_size}, {image_size}), the "
                             f"picture's pixels; got {region.shape}")
        pixels = region
    else:
        box = tuple(region) if np.ndim(region) == 1 else None
        if (box is None or len(box) != 4 or not all(is_whole_number(v, 0) for v in box)
                or not (box[0] < box[2] <= image_size and box[1] < box[3] <= image_size)):
            raise ConfigError(f"region must be (left, top, right, bottom) in pixels with "
                              f"0 <= left < right <= {image_size} and 0 <= top < bottom <= "
                              f"{image_size}, or a bool ({image_size}, {image_size}) mask; "
                              f"got {describe_region(region)}")
        pixels = np.zeros((image_size, image_size), dtype=bool)
        pixels[box[1]:box[3], box[0]:box[2]] = True
    cells = pixels.reshape(grid_size, cell, grid_size, cell).any(axis=(1, 3))
    if not cells.any():
        raise ConfigError("the region holds no pixel; give at least one to redraw")
    return cells


def describe_region(region):
    """A region as an error message shows it: an array by its shape and dtype (its repr
    would fill many lines), anything else by its repr."""
    if isinstance(region, np.ndarray):
        return f"an array of shape {region.shape} and dtype {region.dtype}"
    return repr(region)
