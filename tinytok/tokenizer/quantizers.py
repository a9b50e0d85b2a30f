"""The quantizers, one record each: the one place that says what each one is and does.

Every module that depends on the quantizer (the tokenizer in vqvae.py, its trainer, the
command line, the vocabulary sweep) asks this table, never the quantizer's name:

    name        op pair                              codebook        codebook care
    vq          vector_quantize (quantize.py)        learned (loss)  k-means start, restarts
    ema         vector_quantize (quantize.py)        learned (EMA)   k-means start, restarts, EMA
    gumbel      gumbel_quantize (gumbel.py)          learned (loss)  none
    fsq         fsq (fsq.py)                         a fixed grid    none: there is no codebook
    cosine      cosine_quantize (cosine.py)          unit vectors    k-means start, restarts
    factorized  factorized_quantize (cosine.py)      unit, d dims    k-means start, restarts
    scales      multiscale_quantize (multiscale.py)  one per scale   k-means start, restarts,
                                                                     each scale on its residuals

A record holds the op pair itself, how the tokenizer calls it (forward_in_model and
backward_in_model: the pair with the parameters and config it needs), the quantizer's own
parameters (init_params: "quant.*", such as "quant.codebook"), how an encoder output
becomes ids at inference (ids_of) and how ids map back to code vectors (codes_of), where
the nearest-code search looks (search_space: the vectors and codes it compares, which is
where the k-means start and the restarts must work too), the shape of one picture's ids
(id_shape: the grid (g, g), or the multi-scale quantizer's flat row (L,)), and plain facts
that the rest of the package reads: whether there is a learned codebook (the parameter
"quant.codebook"), which codebook care applies, and which config fields the quantizer
reads. Adding a
quantizer is one entry here and its op pair in a module of its own.
"""
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from tinytok.backend import get_array_module
from tinytok.errors import ConfigError
from tinytok.ops.linear import linear_forward
from tinytok.ops.norm import l2_normalize_forward
from tinytok.tokenizer.cosine import (cosine_quantize_backward, cosine_quantize_forward,
                                      factorized_quantize_backward, factorized_quantize_forward)
from tinytok.tokenizer.fsq import fsq_backward, fsq_codes, fsq_forward
from tinytok.tokenizer.gumbel import gumbel_quantize_backward, gumbel_quantize_forward
from tinytok.tokenizer.multiscale import (climb, multiscale_codes, multiscale_ids,
                                          multiscale_quantize_backward,
                                          multiscale_quantize_forward, scale_residuals,
                                          token_count)
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
    backward_in_model: Callable  # (dz_q, cache, config, dloss) -> dz, {param name: gradient}
    init_params: Callable        # (host rng, config) -> its parameters {"quant.*": array}
    ids_of: Callable             # (z, params, config) -> ids (N, *id_shape), at inference
    codes_of: Callable           # (ids, params, config) -> z_q (N, D, h, w), the ids' codes
    config_fields: tuple         # the TokenizerConfig fields it reads, beyond the sizes
    search_space: Callable = None  # (z, params, config) -> vectors (N, d, h, w), codes (K, d):
                                   # what the nearest-code search compares (None: no search)
    has_codebook: bool = True    # a learned codebook, the parameter "quant.codebook"
    scores_codes: bool = False   # the encoder writes one score per code (K channels), not z
    annealed: bool = False       # Gumbel noise each step, at a temperature annealed over the run
    kmeans_start: bool = False   # codebook care: start the codes on k-means of encoder outputs
    restarts: bool = False       # codebook care: move dead codes onto encoder outputs
    ema_updates: bool = False    # codebook care: the codes follow an EMA, not the gradient
    id_shape: Callable = None    # (config) -> one picture's ids' shape; None: (g, g)
    care_groups: Callable = None  # (z, params, config) -> [(codes (K, d) to move, vectors,
                                  # searched)], one per codebook; None: the codebook and
                                  # search_space
    codebooks: Callable = None   # (config) -> how many codebooks of K codes; None: 1
    counted_ids: Callable = None  # (ids, config) -> ids as rows of all codebooks together
                                  # (codebook j's code i is row j K + i); None: the ids

    def reads(self, field):
        """Whether the TokenizerConfig field means anything to this quantizer."""
        return field in self.config_fields

    def ids_shape(self, config):
        """The shape of one picture's ids: (g, g), one per cell of the grid, unless the
        record says otherwise (the multi-scale quantizer: (L,), its maps in a row)."""
        if self.id_shape is None:
            return (config.grid_size, config.grid_size)
        return tuple(self.id_shape(config))

    def code_rows(self, config):
        """How many codes there are to count and care for: K, or K per codebook."""
        return config.num_codes * (1 if self.codebooks is None else self.codebooks(config))

    def rows_of(self, ids, config):
        """ids as rows of code_rows (the same ids for a single codebook)."""
        return ids if self.counted_ids is None else self.counted_ids(ids, config)

    def groups(self, z, params, config):
        """Codebook care's work, codebook by codebook: [(codes (K, d), vectors (N, d, h, w),
        searched (K, d))], the codes changed in place (a k-means start, restarts), from the
        vectors as the search compares them with the searched codes."""
        if self.care_groups is not None:
            return self.care_groups(z, params, config)
        return [(params["quant.codebook"], *self.search_space(z, params, config))]


# ---------------------------------------------------------------- the pairs in the tokenizer

def vq_in_model(z, params, config, tau=1.0, noise=None):
    """Nearest code, straight through; loss = codebook + beta * commitment."""
    return vector_quantize_forward(z, params["quant.codebook"], config.beta)


def vq_backward_in_model(dz_q, cache, config, dloss=1.0):
    dz, dcodebook = vector_quantize_backward(dz_q, cache, dloss)
    return dz, {"quant.codebook": dcodebook}


def gumbel_in_model(z, params, config, tau=1.0, noise=None):
    """z are the code scores (logits); the loss is the KL term, weighted by kl_weight."""
    z_q, ids, kl, cache = gumbel_quantize_forward(z, params["quant.codebook"], tau, noise)
    return z_q, ids, kl * config.kl_weight, cache


def gumbel_backward_in_model(dz_q, cache, config, dloss=1.0):
    dz, dcodebook = gumbel_quantize_backward(dz_q, cache, dloss * config.kl_weight)
    return dz, {"quant.codebook": dcodebook}


def fsq_in_model(z, params, config, tau=1.0, noise=None):
    """No quantizer loss (0): nothing pulls codes and encoder together."""
    z_q, ids, cache = fsq_forward(z, config.levels)
    return z_q, ids, get_array_module(z).zeros((), dtype=z.dtype), cache


def fsq_backward_in_model(dz_q, cache, config, dloss=1.0):
    """Its loss is 0, so dloss adds nothing; and there is no codebook to update."""
    return fsq_backward(dz_q, cache), {}


def cosine_in_model(z, params, config, tau=1.0, noise=None):
    """Nearest unit code to the unit vector; loss = codebook + beta * commitment on them."""
    return cosine_quantize_forward(z, params["quant.codebook"], config.beta)


def cosine_backward_in_model(dz_q, cache, config, dloss=1.0):
    dz, dcodebook = cosine_quantize_backward(dz_q, cache, dloss)
    return dz, {"quant.codebook": dcodebook}


FACTORIZED_PARAMS = ("quant.down.w", "quant.down.b", "quant.codebook", "quant.up.w",
                     "quant.up.b")   # in the order of the pair's arguments and gradients


def factorized_in_model(z, params, config, tau=1.0, noise=None):
    """Down to d dims, the cosine lookup there, back up to D; the cosine quantizer's loss."""
    return factorized_quantize_forward(z, *(params[k] for k in FACTORIZED_PARAMS), config.beta)


def factorized_backward_in_model(dz_q, cache, config, dloss=1.0):
    dz, *dparams = factorized_quantize_backward(dz_q, cache, dloss)
    return dz, dict(zip(FACTORIZED_PARAMS, dparams))


MULTISCALE_PARAMS = ("quant.codebook", "quant.phi.w", "quant.phi.b")


def multiscale_in_model(z, params, config, tau=1.0, noise=None):
    """The scales coarse to fine on residuals; loss: the running sums against z, averaged."""
    return multiscale_quantize_forward(z, *(params[k] for k in MULTISCALE_PARAMS),
                                       config.scales, config.beta)


def multiscale_backward_in_model(dz_q, cache, config, dloss=1.0):
    dz, *dparams = multiscale_quantize_backward(dz_q, cache, dloss)
    return dz, dict(zip(MULTISCALE_PARAMS, dparams))


# ---------------------------------------------------------------- their parameters

def codebook_params(rng, config):
    """A codebook (K, D), uniform in +-1/K (the VQ-VAE paper's code starts it so)."""
    K = config.num_codes
    return {"quant.codebook": rng.uniform(-1 / K, 1 / K, (K, config.code_dim))}


def no_params(rng, config):
    """FSQ's codes are a fixed grid: no parameter at all."""
    return {}


def unit_rows(rng, K, d):
    """K random directions (K, d), rows of length 1: a code's length means nothing to a
    normalized quantizer, but it sets how far an Adam step turns the code (a step of about
    lr per entry turns a code of length 1/K all the way round)."""
    rows = rng.standard_normal((K, d))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def cosine_params(rng, config):
    return {"quant.codebook": unit_rows(rng, config.num_codes, config.code_dim)}


def linear_params(rng, name, n_in, n_out):
    """PyTorch's nn.Linear start: uniform in +-1/sqrt(n_in), w stored (in, out)."""
    bound = 1 / np.sqrt(n_in)
    return {name + ".w": rng.uniform(-bound, bound, (n_in, n_out)),
            name + ".b": rng.uniform(-bound, bound, (n_out,))}


def factorized_params(rng, config):
    """The down projection (D, d), a codebook of unit rows (K, d), the up projection (d, D)."""
    D, d = config.code_dim, config.factor_dim
    params = linear_params(rng, "quant.down", D, d)
    params["quant.codebook"] = unit_rows(rng, config.num_codes, d)
    params.update(linear_params(rng, "quant.up", d, D))
    return params


def multiscale_params(rng, config):
    """A codebook per scale (S, K, D), each as VQ's, and phi: a 3x3 convolution D -> D with
    PyTorch's start (uniform in +-1/sqrt(9 D)), which the half-and-half mix keeps near the
    identity at first."""
    D, K = config.code_dim, config.num_codes
    bound = (D * 9) ** -0.5
    params = {"quant.codebook": rng.uniform(-1 / K, 1 / K, (len(config.scales), K, D))}
    params["quant.phi.w"] = rng.uniform(-bound, bound, (D, D, 3, 3))
    params["quant.phi.b"] = rng.uniform(-bound, bound, (D,))
    return params


# ---------------------------------------------------------------- where the codes are searched

def vq_search_space(z, params, config):
    """VQ and EMA compare the encoder's vectors with the codebook as they are."""
    return z, params["quant.codebook"]


def cosine_search_space(z, params, config):
    """Unit vectors (each cell's, over D) against unit codes."""
    return (l2_normalize_forward(z, axis=1)[0],
            l2_normalize_forward(params["quant.codebook"], axis=1)[0])


def factorized_search_space(z, params, config):
    """The vectors taken down to d dims (the pair's own product), then both sides to unit
    length: (N, d, h, w) against (K, d)."""
    p = linear_forward(z.transpose(0, 2, 3, 1), params["quant.down.w"],
                       params["quant.down.b"])[0]                          # (N, h, w, d)
    return (l2_normalize_forward(p.transpose(0, 3, 1, 2), axis=1)[0],
            l2_normalize_forward(params["quant.codebook"], axis=1)[0])


def multiscale_search_space(z, params, config):
    """Every scale's residual targets r_k, one cell of each map per picture (N, D, 1, S),
    against all the codes (S K, D): what the lookups compare, all scales together. The
    care itself goes scale by scale (multiscale_groups)."""
    codebook = params["quant.codebook"]
    return (scale_residuals(z, *(params[k] for k in MULTISCALE_PARAMS), config.scales),
            codebook.reshape(-1, codebook.shape[-1]))


def multiscale_groups(z, params, config):
    """Scale k's codebook, its residual targets r_k (every cell; repeated up to K vectors,
    for a k-means start from fewer pictures than codes at 1x1) and its codes. The targets
    depend on the codebooks of the scales before (each scale codes what they left): the
    k-means start goes scale by scale, asking again after each."""
    codebook, K = params["quant.codebook"], config.num_codes
    targets = climb(z.shape, *(params[k] for k in MULTISCALE_PARAMS), config.scales,
                    f=z).targets
    xp = get_array_module(z)
    return [(codebook[k], xp.concatenate([r] * -(-K // (len(r) * r.shape[2] ** 2))),
             codebook[k]) for k, r in enumerate(targets)]


def scale_count(config):
    """Multi-scale: one codebook per scale."""
    return len(config.scales)


def multiscale_rows(ids, config):
    """Scale k's ids i as rows k K + i of the codebooks (S, K, D) taken together."""
    xp = get_array_module(ids)
    offsets = xp.concatenate([xp.full(s * s, k * config.num_codes, dtype=ids.dtype)
                              for k, s in enumerate(config.scales)])
    return ids + offsets


# ---------------------------------------------------------------- ids and codes at inference

def nearest_in(vectors, codes):
    """Each vector's nearest code: vectors (N, d, h, w), codes (K, d) -> ids (N, h, w)."""
    return columns_as_ids(nearest_codes(latents_as_columns(vectors), codes), vectors.shape)


def nearest_ids(z, params, config):
    """VQ and EMA: each vector's nearest code."""
    return nearest_in(*vq_search_space(z, params, config))


def nearest_unit_ids(z, params, config):
    """Cosine: the code at the smallest angle."""
    return nearest_in(*cosine_search_space(z, params, config))


def nearest_factorized_ids(z, params, config):
    """Factorized: the code at the smallest angle, in d dimensions."""
    return nearest_in(*factorized_search_space(z, params, config))


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


def unit_codebook_rows(ids, params, config):
    """Cosine: each id's codebook row scaled to length 1, as the forward hands it on."""
    codes = l2_normalize_forward(params["quant.codebook"], axis=1)[0]
    return codes[ids].transpose(0, 3, 1, 2)


def up_projected_codes(ids, params, config):
    """Factorized: each id's unit code (d dims) through the up projection to D, one row per
    cell in the forward's (N, h, w) order, so that the numbers are the forward's own."""
    codes = l2_normalize_forward(params["quant.codebook"], axis=1)[0]
    z_q = linear_forward(codes[ids], params["quant.up.w"], params["quant.up.b"])[0]
    return z_q.transpose(0, 3, 1, 2)                                        # (N, D, h, w)


def multiscale_token_ids(z, params, config):
    """Multi-scale: the maps' lookups, coarse to fine, in one row (N, L)."""
    return multiscale_ids(z, *(params[k] for k in MULTISCALE_PARAMS), config.scales)


def multiscale_sum(ids, params, config):
    """Multi-scale: the sum f_hat of the maps given, (N, L_k) -> (N, D, g, g); the first k
    maps alone give the preview."""
    return multiscale_codes(ids, *(params[k] for k in MULTISCALE_PARAMS), config.scales,
                            config.grid_size)


def multiscale_id_shape(config):
    """(L,): the maps one after the other, L = sum of s_k^2."""
    return (token_count(config.scales),)


# ---------------------------------------------------------------- the table

VQ = Quantizer("vq", "nearest code, codebook loss",
               forward=vector_quantize_forward, backward=vector_quantize_backward,
               forward_in_model=vq_in_model, backward_in_model=vq_backward_in_model,
               init_params=codebook_params, ids_of=nearest_ids, codes_of=codebook_rows,
               config_fields=("beta",), search_space=vq_search_space,
               kmeans_start=True, restarts=True)

QUANTIZERS = {q.name: q for q in [
    VQ,
    replace(VQ, name="ema", summary="nearest code, EMA codebook", ema_updates=True),
    Quantizer("gumbel", "Gumbel-softmax over code scores (the dVAE)",
              forward=gumbel_quantize_forward, backward=gumbel_quantize_backward,
              forward_in_model=gumbel_in_model, backward_in_model=gumbel_backward_in_model,
              init_params=codebook_params, ids_of=likeliest_ids, codes_of=codebook_rows,
              config_fields=("kl_weight",), scores_codes=True, annealed=True),
    Quantizer("fsq", "finite scalar quantization, no codebook",
              forward=fsq_forward, backward=fsq_backward,
              forward_in_model=fsq_in_model, backward_in_model=fsq_backward_in_model,
              init_params=no_params, ids_of=fsq_ids, codes_of=fsq_grid_codes,
              config_fields=("levels",), has_codebook=False),
    Quantizer("cosine", "nearest unit code to the unit vector (ViT-VQGAN)",
              forward=cosine_quantize_forward, backward=cosine_quantize_backward,
              forward_in_model=cosine_in_model, backward_in_model=cosine_backward_in_model,
              init_params=cosine_params, ids_of=nearest_unit_ids, codes_of=unit_codebook_rows,
              config_fields=("beta",), search_space=cosine_search_space,
              kmeans_start=True, restarts=True),
    Quantizer("factorized", "unit codes in factor_dim dims, projected (ViT-VQGAN)",
              forward=factorized_quantize_forward, backward=factorized_quantize_backward,
              forward_in_model=factorized_in_model,
              backward_in_model=factorized_backward_in_model, init_params=factorized_params,
              ids_of=nearest_factorized_ids, codes_of=up_projected_codes,
              config_fields=("beta", "factor_dim"), search_space=factorized_search_space,
              kmeans_start=True, restarts=True),
    Quantizer("scales", "maps of growing size on residuals, coarse to fine (VAR)",
              forward=multiscale_quantize_forward, backward=multiscale_quantize_backward,
              forward_in_model=multiscale_in_model,
              backward_in_model=multiscale_backward_in_model, init_params=multiscale_params,
              ids_of=multiscale_token_ids, codes_of=multiscale_sum,
              config_fields=("beta", "scales"), search_space=multiscale_search_space,
              kmeans_start=True, restarts=True,
              id_shape=multiscale_id_shape, care_groups=multiscale_groups,
              codebooks=scale_count, counted_ids=multiscale_rows),
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
