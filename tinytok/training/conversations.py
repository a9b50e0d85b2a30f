"""Training conversations: draw, describe, edit and ask, built from encoded shapes.

Every conversation opens with a picture drawn from a caption, or one the user shows and the
model describes. Then come up to two edits ("make it blue"), each answered by the edited
picture, and maybe the question "what is it?", answered by the caption of the picture in
hand:

    draw    <user> caption <model> picture
    show    <user> picture <model> caption
    edit    <user> make it blue <model> picture          0, 1 or 2 of them
    ask     <user> what is it <model> caption            at most once, at the end

The pictures are token grids of real encoded shapes: an edit's answer is another picture
of the data set with exactly the edited attributes (PictureBank), so the model learns to
draw what the words ask for, not to copy pixels. No picture and no edit of a held-out
(shape, colour) pair ever appears: the data are the training split and edits that would
make a held-out pair are never chosen, so "make it green" on a circle, asked at test time,
measures composition.
"""
import numpy as np

from tinytok.data.datasets import caption_for
from tinytok.data.edits import QUESTION, apply_edit, instruction, possible_edits, random_edit
from tinytok.errors import ConfigError
from tinytok.prior.layouts import picture_ids
from tinytok.prior.vocab import IMAGE, MODEL, USER

OPENINGS = ("draw", "show")
EDIT_COUNTS = (0, 1, 2)
P_EDIT_COUNTS = (0.2, 0.4, 0.4)   # most conversations edit: it is the new skill
P_QUESTION = 0.5


def label_keys(labels):
    """One integer per label row (shape, colour, size, position): equal rows, equal keys."""
    labels = np.asarray(labels, dtype=np.int64)
    return ((labels[..., 0] * 8 + labels[..., 1]) * 2 + labels[..., 2]) * 9 + labels[..., 3]


class PictureBank:
    """Encoded pictures, found by their attributes: codes (N, g, g), labels (N, 4)."""

    def __init__(self, codes, labels):
        self.codes, self.labels = np.asarray(codes), np.asarray(labels, dtype=np.int64)
        keys = label_keys(self.labels)
        order = np.argsort(keys, kind="stable")
        unique, starts = np.unique(keys[order], return_index=True)
        self._rows = dict(zip(unique.tolist(), np.split(order, starts[1:])))

    def __len__(self):
        return len(self.codes)

    def has(self, labels):
        """True if the bank holds a picture with exactly these labels (4,)."""
        return int(label_keys(labels)) in self._rows

    def pick(self, rng, labels):
        """The codes (g, g) of a random picture with exactly these labels (4,)."""
        rows = self._rows.get(int(label_keys(labels)))
        if rows is None:
            raise ConfigError(f"no picture of {caption_for(labels)!r} among the {len(self)} "
                              "encoded shapes; encode more (--n-images)")
        return self.codes[rows[rng.integers(len(rows))]]


def random_conversation(rng, bank, vocab, p_drop_caption=0.1):
    """One conversation [(speaker, ids)] drawn with rng from the bank (see module note).

    With probability p_drop_caption, the words of a turn answered by a picture are left
    out: the model then learns the unconditional answer that classifier-free guidance
    compares against.
    """
    def words(text):
        return vocab.encode_text(text)

    def asks_for_picture(text):
        return [] if rng.random() < p_drop_caption else words(text)

    start = rng.integers(len(bank))
    labels, codes = bank.labels[start], bank.codes[start]
    if OPENINGS[rng.integers(len(OPENINGS))] == "draw":
        turns = [(USER, asks_for_picture(caption_for(labels))), (MODEL, picture_ids(vocab, codes))]
    else:
        turns = [(USER, picture_ids(vocab, codes)), (MODEL, words(caption_for(labels)))]
    n_edits = rng.choice(EDIT_COUNTS, p=P_EDIT_COUNTS)
    for _ in range(n_edits):
        edits = [e for e in possible_edits(labels) if bank.has(apply_edit(labels, *e))]
        if not edits:     # a small bank may hold no edited picture of this one
            break
        attribute, value = random_edit(rng, edits)
        labels = apply_edit(labels, attribute, value)
        turns += [(USER, asks_for_picture(instruction(attribute, value))),
                  (MODEL, picture_ids(vocab, bank.pick(rng, labels)))]
    last_reply_is_picture = turns[-1][1][:1] == [IMAGE]
    if last_reply_is_picture and rng.random() < P_QUESTION:  # (a caption needs no question)
        turns += [(USER, words(QUESTION)), (MODEL, words(caption_for(labels)))]
    return turns


def longest_conversation(vocab, caption_words=8, instruction_words=6, question_words=3):
    """Tokens in the longest conversation random_conversation writes: <bos>, an opening,
    two edits, the question, <eos>. For the shapes captions and a g x g grid: 239 (g = 8)."""
    picture = vocab.image_len + 2
    opening = 2 + caption_words + picture
    edit = 2 + instruction_words + picture
    ask = 2 + question_words + caption_words
    return 1 + opening + 2 * edit + ask + 1
