"""One vocabulary and one token stream for text and images.

The prior (gpt.py) is a plain next-token predictor; everything it knows about captions and
pictures comes from how we lay them out as ids. The joint vocabulary is

    id 0..7                      special tokens: <pad> <bos> <eos> <image> </image> <caption>
                                 <user> <model>
    id 8..8+W-1                  the W words, sorted (so the ids never depend on the order
                                 the captions came in)
    id image_offset + c          image code c of the VQ-VAE codebook, c in [0, num_codes)

and an example is one of three layouts (g*g = 64 image tokens for an 8x8 grid):

    text-to-image   <bos> a large red circle ... <image> c1 .. c64 </image> <eos>
    image-to-text   <bos> <image> c1 .. c64 </image> <caption> a large red circle ... <eos>
    unconditional   <bos> <image> c1 .. c64 </image> <eos>

Trained on the first, the model draws from a caption (DALL-E, Parti); on the second, the
same weights describe a picture (Gemini's one stream). The third is the text-to-image
layout with the caption dropped: it teaches p(image) with no caption, the second half of
classifier-free guidance. Note that the captioning layout starts the same way, so both
teach the model the same unconditional p(image) up to </image>. That is intended.

<user> and <model> mark who speaks in a conversation, the fourth layout, where one stream
holds many turns of words and pictures (draw, edit, describe): see prior/turns.py.

Host-side NumPy only: these are data-prep functions; train.py moves batches to the device.
"""
import string
from dataclasses import dataclass, field

import numpy as np

from tinytok import backend
from tinytok.errors import ConfigError, DTypeError, PromptError, ShapeError
from tinytok.ops.checks import require_positive_int

# ----------------------------------------------------------------------------------------
# The special tokens. Their ids are fixed: checkpoints and the sampler rely on them.

SPECIALS = ("<pad>", "<bos>", "<eos>", "<image>", "</image>", "<caption>", "<user>", "<model>")
PAD, BOS, EOS, IMAGE, END_IMAGE, CAPTION, USER, MODEL = range(len(SPECIALS))
IGNORE_INDEX = -1         # targets at pad positions: cross_entropy skips them
DEFAULT_CONTEXT = 80      # gpt-ref's context: up to 12 caption words, specials, 64 image tokens

# The three layouts, as the codes make_training_batch draws (see choose_layouts).
TEXT_TO_IMAGE, IMAGE_TO_TEXT, UNCONDITIONAL = 0, 1, 2
LAYOUT_NAMES = ("text-to-image", "image-to-text", "unconditional")

EXAMPLE_CAPTION = "a large red circle at the top left"


def split_words(text):
    """The words of `text`: lowercased, split on whitespace, surrounding punctuation removed.

    "A large red circle, at the top left." -> ["a", "large", "red", "circle", "at", ...]
    Punctuation inside a word stays ("top-left" is one word), and a token that is only
    punctuation ("--") disappears.
    """
    words = (w.strip(string.punctuation) for w in text.lower().split())
    return [w for w in words if w]


# ----------------------------------------------------------------------------------------
# The vocabulary

@dataclass(frozen=True)
class Vocab:
    """The joint vocabulary: special tokens, then sorted words, then image codes.

    Vocab(words, num_codes, grid_size=8); words are sorted and deduplicated here, so two
    vocabularies built from the same word set are equal (equality compares content).
    """
    words: tuple
    num_codes: int
    grid_size: int = 8
    _word_ids: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if isinstance(self.words, str):
            raise ConfigError("words must be a list of words, not one string")
        bad = [w for w in self.words if not isinstance(w, str) or split_words(w) != [w]]
        if bad:
            raise ConfigError(f"vocabulary words must be single lowercase words without "
                              f"surrounding punctuation; got {', '.join(map(repr, bad[:5]))}")
        words = tuple(sorted(set(self.words)))
        # frozen dataclass: set the normalised fields through object.__setattr__
        object.__setattr__(self, "words", words)
        for name in ("num_codes", "grid_size"):
            object.__setattr__(self, name, require_positive_int(name, getattr(self, name)))
        object.__setattr__(self, "_word_ids",
                           {w: len(SPECIALS) + i for i, w in enumerate(words)})

    @classmethod
    def from_captions(cls, captions, num_codes, grid_size=8):
        """The vocabulary of every word used in `captions` (a list of strings)."""
        return cls(tuple({w for c in captions for w in split_words(c)}), num_codes, grid_size)

    @property
    def image_offset(self):
        """Id of image code 0: image code c is token image_offset + c."""
        return len(SPECIALS) + len(self.words)

    @property
    def size(self):
        """Number of ids: the width of the embedding table and of the model's logits."""
        return self.image_offset + self.num_codes

    @property
    def image_len(self):
        """Tokens per image: the grid_size x grid_size code grid, read row by row."""
        return self.grid_size ** 2

    # -- text --------------------------------------------------------------------------

    def encode_text(self, text):
        """Ids of the words of `text` (see split_words); PromptError if empty or unknown."""
        if not isinstance(text, str):
            raise PromptError(f"the prompt must be a string, got {type(text).__name__}")
        words = split_words(text)
        if not words:
            raise PromptError(f"the prompt is empty; write a caption such as "
                              f"{self._example()!r} using the words the model knows: "
                              f"{', '.join(self.words)}")
        unknown = sorted({w for w in words if w not in self._word_ids})
        if unknown:
            raise PromptError(f"unknown word{'s' if len(unknown) > 1 else ''} in the prompt: "
                              f"{', '.join(map(repr, unknown))}; the model knows these "
                              f"words: {', '.join(self.words)}")
        return [self._word_ids[w] for w in words]

    def decode_text(self, ids):
        """The words of `ids`, joined by spaces: the exact inverse of encode_text.

        Strict on purpose: an id that is not a word (a special or image token, or out of
        range) raises PromptError naming it. To read model output, which holds specials
        and image tokens, use caption_from_tokens, which skips them.
        """
        words = []
        for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if not self.is_word(i):
                raise PromptError(f"decode_text: id {i} ({self.token_name(i)}) is not a word "
                                  "id; use caption_from_tokens to read model output")
            words.append(self.words[i - len(SPECIALS)])
        return " ".join(words)

    def is_word(self, i):
        """True if id i is a caption word (not a special, an image code or out of range)."""
        return len(SPECIALS) <= i < self.image_offset

    def token_name(self, i):
        """A readable name for id i: '<bos>', 'red', 'code 17', or 'out of range'."""
        i = int(i)
        if 0 <= i < len(SPECIALS):
            return SPECIALS[i]
        if self.is_word(i):
            return repr(self.words[i - len(SPECIALS)])
        if self.image_offset <= i < self.size:
            return f"image code {i - self.image_offset}"
        return f"out of range 0..{self.size - 1}"

    def describe(self, ids):
        """A sequence of ids as readable text, image codes shown as #c (for lessons, debug)."""
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i < len(SPECIALS):
                out.append(SPECIALS[i] if i >= 0 else str(i))
            elif self.is_word(i):
                out.append(self.words[i - len(SPECIALS)])
            else:
                out.append(f"#{i - self.image_offset}")
        return " ".join(out)

    def _example(self):
        known = [w for w in split_words(EXAMPLE_CAPTION) if w in self._word_ids]
        return " ".join(known) if len(known) > 2 else " ".join(self.words[:3])

    # -- checkpoints ---------------------------------------------------------------------

    def to_dict(self):
        """A JSON-able dict; the specials are stored so a foreign layout is detected."""
        return {"specials": list(SPECIALS), "words": list(self.words),
                "num_codes": self.num_codes, "grid_size": self.grid_size}

    @classmethod
    def from_dict(cls, d):
        """The Vocab saved by to_dict; ConfigError if the dict is not one."""
        try:
            specials, words = d["specials"], d["words"]
            num_codes, grid_size = d["num_codes"], d["grid_size"]
        except (KeyError, TypeError) as e:
            raise ConfigError(f"not a saved vocabulary (missing {e}); expected the keys "
                              "specials, words, num_codes, grid_size") from None
        if list(specials) != list(SPECIALS):
            raise ConfigError(f"saved vocabulary has special tokens {list(specials)}, "
                              f"this version of tinytok uses {list(SPECIALS)}; the ids of "
                              "its words and codes differ, so retrain it with this version "
                              "(tinytok train-prior)")
        if list(words) != sorted(set(words)):
            raise ConfigError("saved vocabulary words are not sorted and unique: the ids "
                              "would change on loading")
        return cls(tuple(words), num_codes, grid_size)


def saved_token_names(d):
    """The name (as Vocab.token_name gives it) of every id of a saved vocabulary dict, of
    this or an earlier version of tinytok (whose special tokens may differ): what a warm
    start needs to find each old token's row in a new vocabulary."""
    try:
        return (list(d["specials"]) + [repr(w) for w in d["words"]] +
                [f"image code {c}" for c in range(int(d["num_codes"]))])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"not a saved vocabulary ({e}); expected the keys specials, "
                          "words, num_codes") from None


# ----------------------------------------------------------------------------------------
# Sequence layouts

def max_caption_words(vocab, context=DEFAULT_CONTEXT):
    """The most caption words that fit one example, in either layout, in `context` positions.

    A sequence of context + 1 tokens trains all `context` positions (inputs = seq[:-1],
    targets = seq[1:]). The longer layout, captioning, holds the words, the image and 5
    specials (<bos> <image> </image> <caption> <eos>): words + image_len + 5 <= context + 1.
    For context 80 and 64 image tokens: 12 words. One limit for both layouts, so that any
    caption the model trained on can be used both ways.
    """
    return context + 1 - (vocab.image_len + 5)


def _caption_limit(vocab, context):
    """max_caption_words, or ConfigError if the context cannot hold even a one-word example."""
    require_positive_int("context", context)
    limit = max_caption_words(vocab, context)
    if limit < 1:
        raise ConfigError(f"a context of {context} cannot hold a caption and "
                          f"{vocab.image_len} image tokens; it needs at least "
                          f"{vocab.image_len + 5}")
    return limit


def _image_tokens(vocab, image_codes):
    """Raw codes (g, g) or (g*g,) -> token ids (g*g,) int64; ShapeError if they don't fit."""
    codes = np.asarray(image_codes)
    g = vocab.grid_size
    if codes.shape not in ((g, g), (g * g,)):
        raise ShapeError(f"image codes must have shape ({g}, {g}) or ({g * g},) for a "
                         f"{g}x{g} token grid, got {codes.shape}")
    _check_codes(vocab, codes)
    return codes.reshape(-1).astype(np.int64) + vocab.image_offset


def _check_codes(vocab, codes):
    """Raw codebook ids must be integers in [0, num_codes)."""
    if codes.dtype.kind not in "iu":
        raise DTypeError(f"image codes must be integers (codebook ids), got dtype {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() >= vocab.num_codes):
        raise ShapeError(f"image codes must lie in [0, {vocab.num_codes}) for a codebook of "
                         f"{vocab.num_codes} codes, got values from {codes.min()} to "
                         f"{codes.max()}")


def _caption_tokens(vocab, caption_ids):
    """Word ids as a list of ints; PromptError if any id is not a word."""
    ids = np.asarray(caption_ids, dtype=np.int64).reshape(-1).tolist()
    bad = [i for i in ids if not vocab.is_word(i)]
    if bad:
        raise PromptError(f"caption ids must be word ids in [{len(SPECIALS)}, "
                          f"{vocab.image_offset}), got {bad[:5]} "
                          f"({', '.join(vocab.token_name(i) for i in bad[:5])})")
    return ids


def _layout(layout, caption, image):
    """The token list of one example; caption and image are lists of token ids."""
    if layout == TEXT_TO_IMAGE:
        return [BOS, *caption, IMAGE, *image, END_IMAGE, EOS]
    if layout == IMAGE_TO_TEXT:
        return [BOS, IMAGE, *image, END_IMAGE, CAPTION, *caption, EOS]
    return [BOS, IMAGE, *image, END_IMAGE, EOS]                 # UNCONDITIONAL


def _check_fits(seq_len, context, what):
    if context is not None and seq_len > context + 1:
        raise PromptError(f"{what} has {seq_len} tokens but a context of {context} trains on "
                          f"at most {context + 1} (inputs = tokens[:-1]); shorten the caption "
                          "or raise the context")


def text_to_image_sequence(vocab, caption_ids, image_codes, context=None):
    """<bos> w1..wn <image> c1..c64 </image> <eos> as int64 (n + image_len + 4,).

    caption_ids: word ids (from encode_text); image_codes: raw codebook ids, (g, g) or
    flat. With no words this is exactly the unconditional sequence. If `context` is given,
    PromptError when the sequence is longer than context + 1 tokens.
    """
    seq = _layout(TEXT_TO_IMAGE, _caption_tokens(vocab, caption_ids),
                  _image_tokens(vocab, image_codes).tolist())
    _check_fits(len(seq), context, "this text-to-image example")
    return np.array(seq, dtype=np.int64)


def image_to_text_sequence(vocab, caption_ids, image_codes, context=None):
    """<bos> <image> c1..c64 </image> <caption> w1..wn <eos> as int64 (n + image_len + 4,).

    Same arguments, in the same order, as text_to_image_sequence.
    """
    seq = _layout(IMAGE_TO_TEXT, _caption_tokens(vocab, caption_ids),
                  _image_tokens(vocab, image_codes).tolist())
    _check_fits(len(seq), context, "this captioning example")
    return np.array(seq, dtype=np.int64)


def unconditional_sequence(vocab, image_codes):
    """<bos> <image> c1..c64 </image> <eos> as int64 (image_len + 4,): no caption at all."""
    return np.array(_layout(UNCONDITIONAL, [], _image_tokens(vocab, image_codes).tolist()),
                    dtype=np.int64)


# ----------------------------------------------------------------------------------------
# Training batches

def choose_layouts(rng, n, p_caption_layout=0.5, p_drop_caption=0.1):
    """n layout codes (int64): IMAGE_TO_TEXT with probability p_caption_layout; otherwise
    TEXT_TO_IMAGE, with its caption dropped (UNCONDITIONAL) with probability p_drop_caption.

    So P(unconditional) = (1 - p_caption_layout) * p_drop_caption. Two draws of n uniforms
    every call, whatever the probabilities: the rng advances the same way in every run.
    """
    for name, p in (("p_caption_layout", p_caption_layout), ("p_drop_caption", p_drop_caption)):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"{name} must be a probability in [0, 1], got {p}")
    caption_first = rng.random(n) < p_caption_layout
    drop = rng.random(n) < p_drop_caption
    layouts = np.full(n, TEXT_TO_IMAGE, dtype=np.int64)
    layouts[drop] = UNCONDITIONAL
    layouts[caption_first] = IMAGE_TO_TEXT          # the captioning layout never drops
    return layouts


def make_training_batch(vocab, caption_ids_list, image_codes, rng, context=DEFAULT_CONTEXT,
                        p_caption_layout=0.5, p_drop_caption=0.1, p_word_noise=0.0):
    """One batch for the prior: inputs, targets, both int64 (N, context).

    caption_ids_list: N lists of word ids; image_codes: raw codes (N, g, g); rng: a NumPy
    Generator (same state, same batch). Each example gets a layout (choose_layouts), is
    padded with <pad> to context + 1 tokens, and split: inputs = seq[:-1], targets =
    seq[1:] with IGNORE_INDEX (-1) where the target is <pad>, so padding adds no loss.
    """
    codes = np.asarray(image_codes)
    n, g = len(caption_ids_list), vocab.grid_size
    if codes.shape != (n, g, g):
        raise ShapeError(f"image_codes must have shape (N, {g}, {g}) = ({n}, {g}, {g}) for "
                         f"{n} captions, got {codes.shape}")
    limit = _caption_limit(vocab, context)
    _check_codes(vocab, codes)
    image = (codes.reshape(n, -1).astype(np.int64) + vocab.image_offset).tolist()  # vectorised
    layouts = choose_layouts(rng, n, p_caption_layout, p_drop_caption)

    seq = np.full((n, context + 1), PAD, dtype=np.int64)
    for i, layout in enumerate(layouts.tolist()):     # N token lists: data prep, not a hot path
        caption = _caption_tokens(vocab, caption_ids_list[i])
        if len(caption) > limit:
            raise PromptError(f"caption {i} has {len(caption)} words; a context of {context} "
                              f"holds at most {limit} words beside the {vocab.image_len} "
                              "image tokens and 5 special tokens")
        tokens = _layout(layout, caption, image[i])
        seq[i, :len(tokens)] = tokens
    inputs, targets = seq[:, :-1].copy(), seq[:, 1:].copy()  # (N, context) each
    targets[targets == PAD] = IGNORE_INDEX            # <pad> only ever appears as padding
    if p_word_noise:
        # In captions written after a picture, swap some *input* words for random words
        # (the targets stay true): to write the next word the model must then look at the
        # picture rather than guess from the words before it ("green" is followed by
        # "triangle" in training), which is what lets it describe unseen combinations.
        is_word = (inputs >= len(SPECIALS)) & (inputs < vocab.image_offset)
        noisy = is_word & (rng.random(inputs.shape) < p_word_noise)
        noisy &= (layouts == IMAGE_TO_TEXT)[:, None]
        inputs[noisy] = rng.integers(len(SPECIALS), vocab.image_offset, int(noisy.sum()))
    return inputs, targets


# ----------------------------------------------------------------------------------------
# Generation prompts and reading the model's output

def image_prompt(vocab, text, context=DEFAULT_CONTEXT):
    """<bos> w1..wn <image> int64 (n + 2,): the model continues with the image tokens.

    PromptError if the caption has more than max_caption_words(vocab, context) words: the
    most the model was trained with, which leaves room for the image, </image> and <eos>.
    """
    ids = vocab.encode_text(text)
    limit = _caption_limit(vocab, context)
    if len(ids) > limit:
        raise PromptError(f"the prompt has {len(ids)} words but at most {limit} fit a context "
                          f"of {context} beside the {vocab.image_len} image tokens; "
                          f"shorten it to {limit} words or fewer")
    return np.array([BOS, *ids, IMAGE], dtype=np.int64)


def unconditional_prompt(vocab):
    """<bos> <image> int64 (2,): the prompt for p(image), the other half of guidance."""
    return np.array([BOS, IMAGE], dtype=np.int64)


def caption_prompt(vocab, image_codes):
    """<bos> <image> c1..c64 </image> <caption> int64 (image_len + 4,): the model writes
    the caption next. image_codes: raw codebook ids, (g, g) or flat."""
    return np.array([BOS, IMAGE, *_image_tokens(vocab, image_codes).tolist(), END_IMAGE,
                     CAPTION], dtype=np.int64)


def image_codes_from_tokens(vocab, tokens):
    """The raw code grid written by the model: (T,) -> (g, g), or (B, T) -> (B, g, g).

    Reads the image_len tokens after the first <image> (or from the start if the tokens
    hold no <image>, i.e. just the generated part). A non-image token there raises
    ShapeError rather than being mapped to some code: the sampler masks non-image tokens
    (image_token_mask), so one showing up means a bug worth seeing.
    """
    tokens = backend.to_numpy(tokens)               # the sampler's output may be on the GPU
    if tokens.ndim == 2:
        return np.stack([image_codes_from_tokens(vocab, row) for row in tokens]) \
            if len(tokens) else np.zeros((0, vocab.grid_size, vocab.grid_size), np.int64)
    if tokens.ndim != 1:
        raise ShapeError(f"tokens must be (T,) or (B, T), got shape {tokens.shape}")
    starts = np.flatnonzero(tokens == IMAGE)
    start = starts[0] + 1 if len(starts) else 0
    image = tokens[start:start + vocab.image_len].astype(np.int64)
    if len(image) < vocab.image_len:
        raise ShapeError(f"an image needs {vocab.image_len} tokens after <image>, only "
                         f"{len(image)} were given")
    bad = np.flatnonzero((image < vocab.image_offset) | (image >= vocab.size))
    if len(bad):
        j = bad[0]
        raise ShapeError(f"image token {j} is {image[j]} ({vocab.token_name(image[j])}), "
                         f"not an image token in [{vocab.image_offset}, {vocab.size}); "
                         "was the sampler's image_token_mask applied?")
    return (image - vocab.image_offset).reshape(vocab.grid_size, vocab.grid_size)


def caption_from_tokens(vocab, tokens):
    """The words the model wrote: (T,) -> str, or (B, T) -> list of str.

    Starts after the last <caption> if there is one (else at the start), stops at the first
    <eos> or <pad>, and skips anything that is not a word. Lenient, unlike decode_text:
    model output may hold anything.
    """
    tokens = backend.to_numpy(tokens)
    if tokens.ndim == 2:
        return [caption_from_tokens(vocab, row) for row in tokens]
    ids = tokens.reshape(-1).tolist()
    if CAPTION in ids:
        ids = ids[len(ids) - ids[::-1].index(CAPTION):]
    words = []
    for i in ids:
        if i in (EOS, PAD):
            break
        if vocab.is_word(i):
            words.append(vocab.words[i - len(SPECIALS)])
    return " ".join(words)


def image_token_mask(vocab):
    """bool (size,): True for the image tokens, the only ones allowed inside an image."""
    mask = np.zeros(vocab.size, dtype=bool)
    mask[vocab.image_offset:] = True
    return mask


def text_token_mask(vocab):
    """bool (size,): True for the words and <eos>, the tokens allowed in a caption."""
    mask = np.zeros(vocab.size, dtype=bool)
    mask[len(SPECIALS):vocab.image_offset] = True
    mask[EOS] = True
    return mask
