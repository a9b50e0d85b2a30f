"""Instructions in the shapes world: "make it blue", "move it to the top left", ...

An edit changes one attribute of the picture and keeps the other three. There are exactly
four forms, one per attribute:

    make it {colour}            make it blue            the colour
    make it {size}              make it small           the size
    move it to the {position}   move it to the top      the position
    turn it into a {shape}      turn it into a square   the shape

and one question, "what is it?", answered by the caption of the current picture. Because
an instruction names an attribute and a value, the picture an edit asks for is known
exactly (apply_edit), so edits are measured the way prompts are: read back from the pixels.
"""
import numpy as np

from tinytok.data.datasets import (COLOURS, POSITIONS, SHAPES, SIZES, caption_for, is_heldout,
                                  parse_caption)
from tinytok.errors import ConfigError, PromptError
from tinytok.prior.vocab import split_words

# (attribute, the instruction's words before the value, the values) in label order:
# labels are (shape, colour, size, position), see datasets.ShapesData.
SHAPE, COLOUR, SIZE, POSITION = range(4)
FORMS = {SHAPE: ("turn it into a", SHAPES), COLOUR: ("make it", COLOURS),
         SIZE: ("make it", SIZES), POSITION: ("move it to the", POSITIONS)}
QUESTION = "what is it?"
INSTRUCTION_WORDS = tuple(sorted({w for lead, _ in FORMS.values() for w in lead.split()}
                                 | set(split_words(QUESTION))))
EXAMPLES = ("make it blue", "make it small", "move it to the top left",
            "turn it into a square", QUESTION)


def instruction(attribute, value):
    """The words asking for one change: instruction(COLOUR, 5) -> "make it blue"."""
    lead, names = FORMS[attribute]
    return f"{lead} {names[value]}"


def is_question(text):
    """True if text asks "what is it?" (case and punctuation aside)."""
    return split_words(text) == split_words(QUESTION)


def parse_instruction(text):
    """(attribute, value index) of an instruction; PromptError naming the forms if not one.

    "Make it blue." -> (COLOUR, 5). "make it" is followed by a colour or a size, which
    never share a word, so the value alone tells the two forms apart.
    """
    words = " ".join(split_words(text))
    for attribute, (lead, names) in FORMS.items():
        if words.startswith(lead + " ") and words[len(lead) + 1:] in names:
            return attribute, names.index(words[len(lead) + 1:])
    raise PromptError(f"{text!r} is not an instruction; use one of: make it {{colour}}, "
                      "make it {size}, move it to the {position}, turn it into a {shape} "
                      f"(such as {', '.join(map(repr, EXAMPLES[:4]))}), or ask {QUESTION!r}")


def apply_edit(labels, attribute, value):
    """The labels (4,) after an edit: the one attribute set to value, the others kept."""
    edited = np.array(labels, dtype=np.int64)
    edited[attribute] = value
    return edited


def possible_edits(labels, allow_heldout=False):
    """Every (attribute, value) that changes labels (4,); unless allow_heldout, only those
    whose result is not a held-out (shape, colour) pair. A list of pairs."""
    edits = []
    for attribute, (_, names) in FORMS.items():
        for value in range(len(names)):
            if value == labels[attribute]:
                continue                               # an edit must change something
            if allow_heldout or not is_heldout(apply_edit(labels, attribute, value)):
                edits.append((attribute, value))
    return edits


def random_edit(rng, edits):
    """One of edits [(attribute, value)], the attribute first (uniformly), then its value.

    Choosing the attribute first keeps the four forms equally common: there are 8
    positions to move to but only one other size.
    """
    attributes = sorted({a for a, _ in edits})
    attribute = attributes[rng.integers(len(attributes))]
    values = [v for a, v in edits if a == attribute]
    return attribute, values[rng.integers(len(values))]


def edited_caption(caption, text):
    """The caption a picture should have after an edit: edited_caption("a small red circle
    at the top", "make it blue") -> "a small blue circle at the top". None when the caption
    is not in the shapes template or text is not an instruction."""
    try:
        labels = parse_caption(caption)
        attribute, value = parse_instruction(text)
    except (ConfigError, PromptError):
        return None
    return caption_for(apply_edit(labels, attribute, value))
