"""The quantizers, one record each: the one place that says what each one is and does.

Every module that depends on the quantizer (the tokenizer in vqvae.py, its trainer, the
command line, the vocabulary sweep) asks this table, never the quantizer's name:

    name     op pair                          codebook        codebook care
    vq       vector_quantize (quantize.py)    learned (loss)  k-means start, restarts
    ema      vector_quantize (quantize.py)    learned (EMA)   k-means start, restarts, EMA
    gumbel   gumbel_quantize (gumbel.py)      learned (loss)  none
    fsq      fsq (fsq.py)                     a fixed grid    none: there is no codebook

A record holds the op pair itself, how the tokenizer calls it (forward_in_model and
backward_in_model: the pair with the parameters and config it needs), how an encoder output
becomes ids at inference (ids_of) and how ids map back to code vectors (codes_of), and
plain facts that the rest of the package reads: whether there is a learned codebook
(the parameter "quant.codebook"), which codebook care applies, and which config fields the
quantizer reads. Adding a quantizer is one entry here and its op pair in a module of its own.
"""
from dataclasses import dataclass, replace
from typing import Callable

from tinytok.backend import get_array_module
from tinytok.errors import ConfigError
from tinytok.tokenizer.fsq import fsq_backward, fsq_codes, fsq_forward
from tinytok.tokenizer.gumbel import gumbel_quantize_backward, gumbel_quantize_forward
from tinytok.tokenizer.quantize import (columns_as_ids, latents_as_columns, nearest_codes,
                                        vector_quantize_backward, vector_quantize_forward)


@dataclass(frozen=True)
class Quantizer:
    """One quantizer: its op pair, how the tokenizer uses it, and what care it needs."""
    name: str
    summary: str                 # a few words for help texts
    forward: Callable            # the op pair, as the lessons and `tinytok check` call it
    backward: Callable
    forward_in_model: Callable   # (z, params, config, tau, noise) -> z_q, ids, loss, cache
    backward_in_model: Callable  # (dz_q, cache, config, dloss) -> dz, dcodebook (None: none)
    ids_of: Callable             # (z, params, config) -> ids (N, h, w), at inference
    codes_of: Callable           # (ids, params, config) -> z_q (N, D, h, w), the ids' codes
    config_fields: tuple         # the TokenizerConfig fields it reads, beyond the sizes
    has_codebook: bool = True    # a learned codebook, the parameter "quant.codebook"
    scores_codes: bool = False   # the encoder writes one score per code (K channels), not z
    annealed: bool = False       # Gumbel noise each step, at a temperature annealed over the run
    kmeans_start: bool = False   # codebook care: start the codes on k-means of encoder outputs
    restarts: bool = False       # codebook care: move dead codes onto encoder outputs
    ema_updates: bool = False    # codebook care: the codes follow an EMA, not the gradient

    def reads(self, field):
        """Whether the TokenizerConfig field means anything to this quantizer."""
        return field in self.config_fields


# ---------------------------------------------------------------- the pairs in the tokenizer

def vq_in_model(z, params, config, tau=1.0, noise=None):
    """Nearest code, straight through; loss = codebook + beta * commitment."""
    return vector_quantize_forward(z, params["quant.codebook"], config.beta)


def vq_backward_in_model(dz_q, cache, config, dloss=1.0):
    return vector_quantize_backward(dz_q, cache, dloss)


def gumbel_in_model(z, params, config, tau=1.0, noise=None):
    """z are the code scores (logits); the loss is the KL term, weighted by kl_weight."""
    z_q, ids, kl, cache = gumbel_quantize_forward(z, params["quant.codebook"], tau, noise)
    return z_q, ids, kl * config.kl_weight, cache


def gumbel_backward_in_model(dz_q, cache, config, dloss=1.0):
    return gumbel_quantize_backward(dz_q, cache, dloss * config.kl_weight)


def fsq_in_model(z, params, config, tau=1.0, noise=None):
    """No quantizer loss (0): nothing pulls codes and encoder together."""
    z_q, ids, cache = fsq_forward(z, config.levels)
    return z_q, ids, get_array_module(z).zeros((), dtype=z.dtype), cache


def fsq_backward_in_model(dz_q, cache, config, dloss=1.0):
    """Its loss is 0, so dloss adds nothing; and there is no codebook to update."""
    return fsq_backward(dz_q, cache), None


# ---------------------------------------------------------------- ids and codes at inference

def nearest_ids(z, params, config):
    """VQ and EMA: each vector's nearest code."""
    return columns_as_ids(nearest_codes(latents_as_columns(z), params["quant.codebook"]),
                          z.shape)


def likeliest_ids(z, params, config):
    """Gumbel: the encoder wrote one score per code; the token is the highest."""
    return columns_as_ids(get_array_module(z).argmax(latents_as_columns(z), axis=0), z.shape)


def fsq_ids(z, params, config):
    """FSQ: each channel rounded to its levels, the digits read as one number."""
    return fsq_forward(z, config.levels)[1]


def codebook_rows(ids, params, config):
    """Each id's row of the codebook: (N, h, w) -> (N, D, h, w)."""
    return params["quant.codebook"][ids].transpose(0, 3, 1, 2)


def fsq_grid_codes(ids, params, config):
    """Each id's digits read back: no table (fsq_codes), in the decoder's dtype."""
    return fsq_codes(ids, config.levels, params["dec.conv1.w"].dtype)


# ---------------------------------------------------------------- the table

VQ = Quantizer("vq", "nearest code, codebook loss",
               forward=vector_quantize_forward, backward=vector_quantize_backward,
               forward_in_model=vq_in_model, backward_in_model=vq_backward_in_model,
               ids_of=nearest_ids, codes_of=codebook_rows, config_fields=("beta",),
               kmeans_start=True, restarts=True)

QUANTIZERS = {q.name: q for q in [
    VQ,
    replace(VQ, name="ema", summary="nearest code, EMA codebook", ema_updates=True),
    Quantizer("gumbel", "Gumbel-softmax over code scores (the dVAE)",
              forward=gumbel_quantize_forward, backward=gumbel_quantize_backward,
              forward_in_model=gumbel_in_model, backward_in_model=gumbel_backward_in_model,
              ids_of=likeliest_ids, codes_of=codebook_rows, config_fields=("kl_weight",),
              scores_codes=True, annealed=True),
    Quantizer("fsq", "finite scalar quantization, no codebook",
              forward=fsq_forward, backward=fsq_backward,
              forward_in_model=fsq_in_model, backward_in_model=fsq_backward_in_model,
              ids_of=fsq_ids, codes_of=fsq_grid_codes, config_fields=("levels",),
              has_codebook=False),
]}


def quantizer_named(name, context=""):
    """The record of a quantizer's name, or a ConfigError listing the choices (context: the
    message's start, such as "tokenizer config: ")."""
    if not isinstance(name, str) or name not in QUANTIZERS:
        raise ConfigError(f"{context}unknown quantizer {name!r}; choose one of "
                          f"{', '.join(QUANTIZERS)}")
    return QUANTIZERS[name]


def quantizers_reading(field):
    """The names of the quantizers that read a TokenizerConfig field, such as ["fsq"]."""
    return [name for name, q in QUANTIZERS.items() if q.reads(field)]
