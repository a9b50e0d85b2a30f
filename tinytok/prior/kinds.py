"""The kinds of prior, one record each: the one place that says how each one reads and writes.

All kinds are the same transformer (prior/gpt.py's blocks) over the same vocabulary; they
differ in what attention may see, in the tokens they add, in what they read and in what
they can be asked:

    name     attention      extra tokens   reads   draws a picture                   can caption
    raster   causal         none           grid    one token a pass (sample_image_codes)  yes
    masked   full           <mask>         grid    many a pass (sample_masked_codes)     no; inpaints
    scales   block-causal   none           maps    a map a pass (sample_scale_codes)     no

A next-scale prior (prior/scales.py) reads a multi-scale tokenizer's maps, embeds them
itself and carries a copy of that tokenizer's quantizer (its `carried` parameters, never
trained); the others read a tokenizer's grid as token ids. Each kind has its recommended
sampling settings (`sampling`); only a next-scale prior's guidance can rise pass by pass,
coarse to fine (`ramps_guidance`, Sampling.cfg_ramp).

A checkpoint says its kind (config["kind"]; a prior saved before kinds existed is a
raster one). Every module that depends on the kind (the pipeline, the trainer, the command
line) asks this table, never the kind's name.
"""
from dataclasses import dataclass
from typing import Callable

from tinytok.errors import ConfigError
from tinytok.prior.gpt import gpt_loss_backward, gpt_loss_forward, init_gpt_params
from tinytok.prior.masked import sample_masked_codes
from tinytok.prior.sample import sample_image_codes
from tinytok.prior.scales import (CARRIED, SCALES_SAMPLING, check_pairing, init_scales_params,
                                  sample_scale_codes, scales_loss_backward, scales_loss_forward)
from tinytok.prior.settings import SAMPLING, Sampling


@dataclass(frozen=True)
class PriorKind:
    name: str
    summary: str          # a few words for help texts
    attention: str        # the mask every block applies: "causal", "full" or "block"
    extra_tokens: int     # ids after the vocabulary's (the masked prior's <mask>)
    can_caption: bool     # writes words: captions, conversations, edits, reranking
    can_inpaint: bool     # redraws a region of a picture, whatever its place in the grid
    draw: Callable        # (params, config, vocab, prompt text, n, rng, sampling, use_cache)
                          # -> n pictures' ids (n, *the tokenizer's ids_shape), one caption
    reads: str = "grid"   # the tokenizer's ids it reads: one "grid", or "maps" (scales)
    init: Callable = None     # (config, seed, dtype, carried) -> fresh parameters
    carried: tuple = ()       # parameters copied from the tokenizer, never trained
    loss: tuple = (gpt_loss_forward, gpt_loss_backward)   # the training loss pair
    sampling: Sampling = SAMPLING   # the recommended settings: Pipeline's and the CLI's default
    ramps_guidance: bool = False    # its passes are coarse to fine, so cfg_ramp has a meaning


def gpt_params(config, seed=0, dtype="float32", carried=None):
    """A raster or masked prior's fresh parameters: the transformer's alone."""
    return init_gpt_params(config, seed, dtype)


PRIOR_KINDS = {
    "raster": PriorKind("raster", "a causal transformer that writes one token at a time",
                        "causal", 0, True, False, sample_image_codes, init=gpt_params),
    "masked": PriorKind("masked", "a bidirectional transformer that fills in masked codes, "
                        "many at a time (MaskGIT)", "full", 1, False, True,
                        sample_masked_codes, init=gpt_params),
    "scales": PriorKind("scales", "a transformer that writes a multi-scale tokenizer's maps, "
                        "coarse to fine, a map at a time (VAR)", "block", 0, False, False,
                        sample_scale_codes, reads="maps", init=init_scales_params,
                        carried=CARRIED, loss=(scales_loss_forward, scales_loss_backward),
                        sampling=SCALES_SAMPLING, ramps_guidance=True),
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


def draws_per_picture(kind, sampling):
    """Candidates drawn for each picture asked for: sampling.rerank where the prior can
    judge them by their caption (it writes words), else 1."""
    return sampling.rerank if prior_kind(kind).can_caption else 1


def check_kind_sampling(kind, sampling):
    """sampling, if this kind of prior can draw with it; one line naming the setting if not."""
    kind = prior_kind(kind)
    if sampling.cfg_ramp and not kind.ramps_guidance:
        raise ConfigError(f"cfg_ramp (--cfg-ramp) raises the guidance map by map, coarse to "
                          f"fine, which only a next-scale prior draws; a {kind.name} prior "
                          f"guides every pass at cfg_scale: leave cfg_ramp False "
                          f"(--no-cfg-ramp)")
    return sampling


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
        order = ("writes a grid in one order from its first cell" if kind.reads == "grid"
                 else "writes whole maps coarse to fine")
        raise ConfigError(f"a {kind.name} prior {order}, so it cannot redraw a region in "
                          "the middle; use a masked prior (tinytok train-prior --kind masked)")


def check_tokenizer(kind, tokenizer, prior=None):
    """A one-line ConfigError unless the tokenizer writes what the kind reads: a grid, or
    the maps of the multi-scale tokenizer whose maps and quantizer the prior (a Prior, when
    pairing one) holds."""
    kind = prior_kind(kind)
    if kind.reads == "grid":
        tokenizer.require_grids(f"a {kind.name} prior")
    elif prior is not None:
        check_pairing(prior.params, prior.config, tokenizer)
    elif tokenizer.writes_grids:
        raise ConfigError(f"a {kind.name} prior reads maps of growing size; train it on a "
                          "multi-scale tokenizer (tinytok train-tokenizer --quantizer scales)")


def model_overrides(kind, vocab, tokenizer, caption_slots=14):
    """What a new prior of this kind on this tokenizer's codes fixes in its config: the
    vocabulary's size, and for a next-scale prior its maps and a context that holds them
    after <bos>, caption_slots words and <image> (the gpt-ref layout's 16 positions)."""
    kind = prior_kind(kind)
    overrides = {"vocab_size": model_vocab_size(kind, vocab)}
    if kind.reads == "maps":
        overrides["scales"] = tuple(tokenizer.config.scales)
        overrides["context"] = tokenizer.tokens_per_picture + caption_slots + 2
    return overrides
