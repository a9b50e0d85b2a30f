"""One vocabulary for text and images: the ids of the token stream.

The prior (gpt.py) is a plain next-token predictor; everything it knows about captions and
pictures comes from how we lay them out as ids. The joint vocabulary is

    id 0..7                      special tokens: <pad> <bos> <eos> <image> </image> <caption>
                                 <user> <model>
    id 8..8+W-1                  the W words, sorted (so the ids never depend on the order
                                 the captions came in)
    id image_offset + c          image code c of the VQ-VAE codebook, c in [0, num_codes)

This module holds the ids and text <-> ids. How the ids are laid out into sequences
(caption then picture, picture then caption, conversations), the prompts of each layout
and the one step from sequences to (inputs, targets) live in prior/layouts.py; which
layouts a training batch draws, with what probabilities, in training/prior_batches.py.

Host-side NumPy only: these are data-prep functions; train.py moves batches to the device.
"""
import string
from dataclasses import dataclass, field

import numpy as np

from tinytok.errors import ConfigError, DTypeError, PromptError, ShapeError
from tinytok.ops.checks import require_positive_int

# ----------------------------------------------------------------------------------------
# The special tokens. Their ids are fixed: checkpoints and the sampler rely on them.

SPECIALS = ("<pad>", "<bos>", "<eos>", "<image>", "</image>", "<caption>", "<user>", "<model>")
PAD, BOS, EOS, IMAGE, END_IMAGE, CAPTION, USER, MODEL = range(len(SPECIALS))
IGNORE_INDEX = -1         # a target the loss skips (padding, a user's turn): cross_entropy

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
# Token ids of pictures and captions, checked: what every layout is made of

def image_tokens(vocab, image_codes):
    """Raw codes (g, g) or (g*g,) -> token ids (g*g,) int64; ShapeError if they don't fit."""
    codes = np.asarray(image_codes)
    g = vocab.grid_size
    if codes.shape not in ((g, g), (g * g,)):
        raise ShapeError(f"image codes must have shape ({g}, {g}) or ({g * g},) for a "
                         f"{g}x{g} token grid, got {codes.shape}")
    check_codes(vocab, codes)
    return codes.reshape(-1).astype(np.int64) + vocab.image_offset


def check_codes(vocab, codes):
    """Raw codebook ids must be integers in [0, num_codes)."""
    if codes.dtype.kind not in "iu":
        raise DTypeError(f"image codes must be integers (codebook ids), got dtype {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() >= vocab.num_codes):
        raise ShapeError(f"image codes must lie in [0, {vocab.num_codes}) for a codebook of "
                         f"{vocab.num_codes} codes, got values from {codes.min()} to "
                         f"{codes.max()}")


def caption_tokens(vocab, caption_ids):
    """Word ids as a list of ints; PromptError if any id is not a word."""
    ids = np.asarray(caption_ids, dtype=np.int64).reshape(-1).tolist()
    bad = [i for i in ids if not vocab.is_word(i)]
    if bad:
        raise PromptError(f"caption ids must be word ids in [{len(SPECIALS)}, "
                          f"{vocab.image_offset}), got {bad[:5]} "
                          f"({', '.join(vocab.token_name(i) for i in bad[:5])})")
    return ids


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
