"""The kinds of prior, one record each: the one place that says how each one reads and writes.

Both kinds are the same transformer (prior/gpt.py) over the same vocabulary; they differ
in what attention may see, in the tokens they add and in what they can be asked:

    name     attention   extra tokens   draws a picture                      can caption
    raster   causal      none           one token a pass (sample_image_codes)  yes, converse
    masked   full        <mask>         many a pass (sample_masked_codes)      no; inpaints

A checkpoint says its kind (config["kind"]; a prior saved before kinds existed is a
raster one). Every module that depends on the kind (the pipeline, the trainer, the command
line) asks this table, never the kind's name.
"""
from dataclasses import dataclass
from typing import Callable

from tinytok.errors import ConfigError
from tinytok.prior.masked import sample_masked_codes
from tinytok.prior.sample import sample_image_codes


@dataclass(frozen=True)
class PriorKind:
    name: str
    summary: str          # a few words for help texts
    attention: str        # the mask every block applies: "causal" or "full"
    extra_tokens: int     # ids after the vocabulary's (the masked prior's <mask>)
    can_caption: bool     # writes words: captions, conversations, edits, reranking
    can_inpaint: bool     # redraws a region of a picture, whatever its place in the grid
    draw: Callable        # (params, config, vocab, prompt text, n, rng, sampling, use_cache)
                          # -> n token grids (n, g, g) for one caption


PRIOR_KINDS = {
    "raster": PriorKind("raster", "a causal transformer that writes one token at a time",
                        "causal", 0, True, False, sample_image_codes),
    "masked": PriorKind("masked", "a bidirectional transformer that fills in masked codes, "
                        "many at a time (MaskGIT)", "full", 1, False, True,
                        sample_masked_codes),
}


def prior_kind(name):
    """The record of a kind by name; ConfigError naming the kinds for any other."""
    if isinstance(name, PriorKind):
        return name
    try:
        return PRIOR_KINDS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown kind of prior {name!r}; choose one of "
                          f"{', '.join(PRIOR_KINDS)}") from None


def kind_of_checkpoint(config):
    """The kind a saved prior's config names (raster when it names none)."""
    return prior_kind(config.get("kind", "raster"))


def model_vocab_size(kind, vocab):
    """The rows of the model's token embedding: the vocabulary and the kind's own tokens."""
    return vocab.size + prior_kind(kind).extra_tokens


def refuse_words(kind, what):
    """A one-line ConfigError when a prior of this kind is asked to write words."""
    kind = prior_kind(kind)
    if not kind.can_caption:
        raise ConfigError(f"a {kind.name} prior draws pictures only; it cannot {what}. Use "
                          "a raster prior (such as the shipped shapes_prior.npz) for that")


def refuse_inpainting(kind):
    """A one-line ConfigError when a prior of this kind is asked to redraw a region."""
    kind = prior_kind(kind)
    if not kind.can_inpaint:
        raise ConfigError(f"a {kind.name} prior writes a grid in one order from its first "
                          "cell, so it cannot redraw a region in the middle; use a masked "
                          "prior (tinytok train-prior --kind masked)")
