"""The next-scale prior (VAR): a transformer that writes a picture map by map, coarse to fine.

A multi-scale tokenizer (tokenizer/multiscale.py) says a picture as K token maps of growing
size s_1 < ... < s_K = g, each coding what the coarser ones left out. This prior writes
them in that order, a whole map in one pass of the model, on the same blocks as the other
priors (prior/gpt.py's trunk). Its sequence is

    <bos> w1 .. wn <pad> .. <image> | map 1 (s_1^2 positions) | map 2 | ... | map K

P caption positions, as the masked prior lays them out, then L = s_1^2 + ... + s_K^2. A
map's positions are not its tokens: each reads what the coarser maps already say at its
cell, and predicts its own code.

    f_hat_{k-1}   the tokenizer's running sum after maps 1 .. k-1     (D, g, g); 0 for k = 1
    input_k       area_resize(f_hat_{k-1}, s_k), one D-vector per cell of map k
    x_k[cell]     input_k[cell] W + b + level[k] + wpe[position]       (C,)

The attention is block-causal: a position sees the caption, every coarser map and the
whole of its own map, never a finer one; the caption sees itself. So in training one pass
scores every map at once (teacher forcing: the inputs come from the picture's own codes),
and in drawing one pass writes a whole map, its s_k^2 codes drawn independently given
everything coarser; the KV cache holds the caption and the coarser maps. Guidance, the
temperature and top-k/top-p act on each position's codes as in the other priors.

The inputs depend on the tokenizer's codebooks and phi, so the prior keeps a copy of them
under the tokenizer's own names (CARRIED; never trained): it draws without the tokenizer,
and a pipeline pairs it only with the tokenizer whose quantizer it holds (check_pairing).
The codes are the last ids of the vocabulary (image_offset), as in the raster prior.
"""
from typing import Any, NamedTuple

import numpy as np

from tinytok import backend
from tinytok.backend import get_array_module, to_device
from tinytok.errors import ConfigError, ShapeError
from tinytok.ops import (cross_entropy_backward, cross_entropy_forward, embedding_backward,
                         embedding_forward, linear_backward, linear_forward)
from tinytok.ops.resample import area_resize_forward
from tinytok.prior.gpt import (_add, check_kv, init_gpt_params, new_kv_cache,
                               token_embedding_backward, token_embedding_forward,
                               trunk_backward, trunk_forward)
from tinytok.prior.masked import masked_prefix, prompt_prefix
from tinytok.prior.sample import draw, filter_logits, guided
from tinytok.prior.settings import SAMPLING
from tinytok.prior.vocab import check_codes
from tinytok.tokenizer.multiscale import (PHI_MIX, check_scales, climb, join_scale_ids,
                                          prefix_lengths, scale_book, scale_step,
                                          split_scale_ids, token_count)
from tinytok.tokenizer.quantizers import MULTISCALE_PARAMS

CARRIED = MULTISCALE_PARAMS      # the tokenizer's codebooks and phi, copied into the prior

# The recommended settings of a next-scale prior: guidance rising over the maps from none at
# the first to 2.5 at the last (cfg_ramp, VAR's sampler), every code drawn at temperature 0.4.
# The first map's one code stands for a whole shape-colour pair; for a pair the prior never
# drew, guidance there pushes it to a code of the shape asked in another colour, or to one
# the tokenizer seldom uses, and no finer map changes the colour. The finer maps have only
# the shape to fix, and a strong push towards the caption fixes it. A map's codes are drawn
# independently of each other, so a cooler softmax keeps each cell to its likelier codes
# (lesson 17). Held-out pairs drawn right on the shipped prior (eval-prior's 48 prompts of a
# kind, 2 pictures each; mean over the prompts of seeds 0-7, on which the settings were
# chosen): guidance 1.5 on every map at temperature 0.7, the earlier settings, 65.2%; 3 on
# the first three maps, 39.8% (seeds 0-3); rising to 2.5 at 0.7, 69.3% (seeds 0-3); at 0.4,
# 77.9%; at 0.3, 77.2%. On seeds 8-15, not looked at while choosing, 78.6% against 66.1%;
# seen pairs stay at 98-99%. The record's `seeds16` entry has all 16 seeds.
SCALES_SAMPLING = SAMPLING.but(cfg_scale=2.5, cfg_ramp=True, temperature=0.4)


# ---------------------------------------------------------------- the layout

def scales_of(config):
    """The prior's map sizes; ConfigError for a config that names none."""
    if not config.scales:
        raise ConfigError("a next-scale prior's config must name its maps' sizes (scales), "
                          "those of its tokenizer; this one names none")
    return config.scales


def image_positions(config):
    """L = s_1^2 + ... + s_K^2: the positions of all the maps."""
    return token_count(scales_of(config))


def caption_positions(config):
    """P: the positions before the first map (<bos>, the caption's slots, <image>)."""
    return config.context - image_positions(config)


def map_span(config, k):
    """Map k's positions in the sequence: (first, last + 1)."""
    starts = (0,) + prefix_lengths(scales_of(config))
    P = caption_positions(config)
    return P + starts[k], P + starts[k + 1]


def image_offset(params, config):
    """The id of code 0: the codes are the vocabulary's last ids."""
    return config.vocab_size - params["quant.codebook"].shape[-2]


def map_levels(scales):
    """int64 (L,): the map each image position belongs to (0 .. K - 1)."""
    return np.repeat(np.arange(len(scales)), [s * s for s in scales])


def block_causal_mask(config, xp=np):
    """bool (T, T), T = context: position i sees j when j's map is i's or coarser (the
    caption counts as map -1; it sees only itself)."""
    groups = np.concatenate([np.full(caption_positions(config), -1),
                             map_levels(scales_of(config))])
    return xp.asarray(groups[None, :] <= groups[:, None])


# ---------------------------------------------------------------- the parameters

def init_scales_params(config, seed=0, dtype="float32", carried=None):
    """The transformer's parameters (init_gpt_params), the maps' input projection
    scales.proj (D -> C), the level table scales.level (K, C), N(0, 0.02), and the copy of
    the tokenizer's quantizer carried (a dict of CARRIED arrays: needed, it sets D)."""
    check_carried(carried, config)
    C, D = config.n_embd, carried["quant.codebook"].shape[-1]
    rng = backend.rng(seed + 1)              # the trunk's draws stay those of seed
    params = init_gpt_params(config, seed, dtype)
    extra = {"scales.proj.w": rng.normal(0.0, 0.02, (D, C)), "scales.proj.b": np.zeros(C),
             "scales.level": rng.normal(0.0, 0.02, (len(config.scales), C))}
    params.update({k: to_device(v, dtype=dtype) for k, v in extra.items()})
    params.update({k: to_device(backend.to_numpy(carried[k]), dtype=dtype) for k in CARRIED})
    return params


def check_carried(carried, config):
    """One-line errors unless carried holds a multi-scale quantizer of the config's maps."""
    if carried is None or any(k not in carried for k in CARRIED):
        raise ConfigError("a next-scale prior needs the multi-scale tokenizer's quantizer ("
                          f"{', '.join(CARRIED)}): train it on a tokenizer trained with "
                          "--quantizer scales")
    check_scales(scales_of(config), context="next-scale prior: ")
    book = carried["quant.codebook"]
    if book.ndim != 3 or len(book) != len(config.scales):
        raise ShapeError(f"the quantizer has codebooks {tuple(book.shape)}, but the prior's "
                         f"{len(config.scales)} maps need one each ({len(config.scales)}, K, D)")


def carried_params(params):
    """The quantizer's arrays a tokenizer's or a prior's params hold (CARRIED)."""
    return {k: params[k] for k in CARRIED}


def check_pairing(prior_params, config, tokenizer):
    """ConfigError unless the tokenizer is the multi-scale one whose maps the prior writes
    and whose quantizer it carries, bit for bit (another one gives the model inputs it
    never saw)."""
    if tokenizer.writes_grids:
        raise ConfigError("a next-scale prior writes maps of growing size; pair it with its "
                          "multi-scale tokenizer (trained with --quantizer scales), not a "
                          "tokenizer of one grid")
    if tuple(tokenizer.config.scales) != tuple(config.scales):
        raise ConfigError(f"this next-scale prior writes maps {tuple(config.scales)} but the "
                          f"tokenizer's are {tuple(tokenizer.config.scales)}; pair it with "
                          "the tokenizer it was trained with")
    for k in CARRIED:
        mine, theirs = backend.to_numpy(prior_params[k]), backend.to_numpy(tokenizer.params[k])
        if mine.shape != theirs.shape or not np.array_equal(mine, theirs):
            raise ConfigError(f"this next-scale prior was trained on another tokenizer's codes "
                              f"({k} differs); pair it with the tokenizer it was trained with")


# ---------------------------------------------------------------- the inputs

def next_map_input(f_hat, size):
    """f_hat (N, D, g, g) -> (N, size^2, D): the running sum averaged down to the next
    map's size, one row per cell (row-major)."""
    y = f_hat if size == f_hat.shape[-1] else area_resize_forward(f_hat, size)[0]
    N, D = y.shape[:2]
    return y.reshape(N, D, -1).transpose(0, 2, 1)


def map_inputs(codes, params, config):
    """codes (N, L) -> (N, L, D): every position's input for teacher forcing, from the
    running sums of the picture's own coarser maps (zeros for the first map). Constants:
    no gradient flows into the tokenizer's copy."""
    scales = scales_of(config)
    book = params["quant.codebook"]
    xp = get_array_module(book)
    N, D, g = len(codes), book.shape[-1], scales[-1]
    maps = split_scale_ids(codes, scales)
    sums = climb((N, D, g, g), *carried_params(params).values(), scales,
                 maps=maps[:-1]).sums                      # after maps 1 .. K - 1
    first = xp.zeros((N, scales[0] ** 2, D), dtype=book.dtype)
    return xp.concatenate([first] + [next_map_input(s, size)
                                     for s, size in zip(sums, scales[1:])], axis=1)


class MapEmbedCache(NamedTuple):
    proj: tuple      # the projection's (linear D -> C)
    level: tuple     # the level table's lookup
    span: tuple      # the positions (first, last + 1) in the sequence


def embed_maps_forward(inputs, params, config, first, last):
    """inputs (B, n, D) of maps first .. last - 1 -> x (B, n, C): projected, plus each
    position's map (level) and place (wpe) embeddings."""
    P = caption_positions(config)
    lo, hi = map_span(config, first)[0], map_span(config, last - 1)[1]
    levels = get_array_module(inputs).asarray(map_levels(config.scales)[lo - P:hi - P])[None]
    x, c_proj = linear_forward(inputs, params["scales.proj.w"], params["scales.proj.b"])
    lvl, c_level = embedding_forward(levels, params["scales.level"])
    return x + lvl + params["gpt.wpe"][lo:hi], MapEmbedCache(c_proj, c_level, (lo, hi))


def embed_maps_backward(dx, cache, grads):
    """The mirror: dx (B, n, C) -> the projection's, the levels' and the positions'
    gradients added into grads (the inputs are constants)."""
    lo, hi = cache.span
    grads["gpt.wpe"][lo:hi] += dx.sum(axis=0)
    _add(grads, "scales.level", embedding_backward(dx.sum(axis=0, keepdims=True),
                                                   cache.level))
    _, dw, db = linear_backward(dx, cache.proj)
    _add(grads, "scales.proj.w", dw); _add(grads, "scales.proj.b", db)


# ---------------------------------------------------------------- the model

class ScalesCache(NamedTuple):
    caption: Any           # the caption's token embedding
    maps: MapEmbedCache    # the maps' embeddings
    trunk: Any             # the blocks, the final layer norm and the head (TrunkCache)
    P: int                 # caption positions


def check_sequence(ids, config):
    if ids.ndim != 2 or ids.shape[1] != config.context:
        raise ShapeError(f"a next-scale prior reads whole sequences (B, {config.context}): "
                         f"the caption part, then every map; got {tuple(ids.shape)}")


def scales_forward(ids, params, config, mask="block"):
    """ids (B, T = context): the caption part, then the maps' codes as ids (code +
    image_offset) -> logits (B, T, V), cache. Position i of map k predicts its own code
    from the coarser maps. mask "block": block_causal_mask (another is taken as given)."""
    check_sequence(ids, config)
    xp = get_array_module(params["gpt.wte"])
    P = caption_positions(config)
    x_cap, c_cap = token_embedding_forward(ids[:, :P], params)
    inputs = map_inputs(ids[:, P:] - image_offset(params, config), params, config)
    x_img, c_maps = embed_maps_forward(inputs, params, config, 0, len(config.scales))
    if isinstance(mask, str) and mask == "block":
        mask = block_causal_mask(config, xp)
    logits, c_trunk = trunk_forward(xp.concatenate([x_cap, x_img], axis=1), params, config,
                                    mask=mask)
    return logits, ScalesCache(c_cap, c_maps, c_trunk, P)


def scales_backward(dlogits, cache, grads, config):
    """dlogits (B, T, V) -> parameter gradients added into grads (none for the carried
    quantizer)."""
    dx = trunk_backward(dlogits, cache.trunk, grads, config)
    token_embedding_backward(dx[:, :cache.P], cache.caption, grads)
    embed_maps_backward(dx[:, cache.P:], cache.maps, grads)


class ScalesLossCache(NamedTuple):
    model: ScalesCache
    maps: list           # cross-entropy's cache for each map
    logits: Any          # (B, T, V): what the model predicted, for a caller to look at


def scales_loss_forward(ids, targets, params, config, mask="block"):
    """The maps' cross-entropies, each map's mean over its targets != -1, averaged over the
    K maps: ids, targets (B, T) (the maps' codes as ids; -1 on the caption) -> loss (0-d),
    cache. The same signature as gpt_loss_forward.

    Each map weighs the same, not each position: the 8x8 map has 64 of the 155 positions
    and the 1x1 map one, but the coarse maps are the ones that must read the caption (the
    finer ones mostly refine what their inputs already say). Weighted by position, the
    shipped run's first 500 steps left the 1x1 map's loss at 4.71 nats with the caption
    and 4.73 without it: the caption's signal was 1/155 of the loss.
    """
    logits, c_model = scales_forward(ids, params, config, mask)
    K = len(config.scales)
    loss, c_maps = 0.0, []
    for k in range(K):
        lo, hi = map_span(config, k)
        value, c = cross_entropy_forward(logits[:, lo:hi], targets[:, lo:hi], ignore_index=-1)
        loss, c_maps = loss + value / K, c_maps + [c]
    return loss, ScalesLossCache(c_model, c_maps, logits)


def scales_loss_backward(cache, grads, config, dloss=1.0):
    """The mirror: each map's share dloss / K of the gradient into its logits."""
    K = len(config.scales)
    dlogits = get_array_module(cache.logits).zeros_like(cache.logits)
    for k, c_map in enumerate(cache.maps):
        lo, hi = map_span(config, k)
        dlogits[:, lo:hi] = cross_entropy_backward(dloss / K, c_map)
    scales_backward(dlogits, cache.model, grads, config)


# ---------------------------------------------------------------- training batches

def scales_batch(vocab, caption_ids_list, image_ids, rng, context, p_drop_caption=0.1):
    """One training batch: inputs, targets int64 (N, context). image_ids (N, L): each
    picture's maps (the multi-scale tokenizer's ids). Targets: every map's codes; the
    caption (dropped with probability p_drop_caption, for guidance) scores nothing.
    Draws rng.random(N) once."""
    ids = np.asarray(image_ids)
    n = len(caption_ids_list)
    if ids.ndim != 2 or len(ids) != n or ids.shape[1] >= context:
        raise ShapeError(f"image_ids must be (N, L) maps for {n} captions with L below the "
                         f"context {context}, got {ids.shape}")
    check_codes(vocab, ids)
    L = ids.shape[1]
    drop = rng.random(n) < p_drop_caption
    prefixes = np.stack([masked_prefix(vocab, None if d else c, context, L)
                         for c, d in zip(caption_ids_list, drop)])     # (N, P): data prep
    image = ids.astype(np.int64) + vocab.image_offset
    inputs = np.concatenate([prefixes, image], axis=1)
    targets = np.concatenate([np.full(prefixes.shape, -1, dtype=np.int64), image], axis=1)
    return inputs, targets


# ---------------------------------------------------------------- drawing

def write_maps(params, config, prefixes, rng, sampling, uncond_prefixes=None, use_cache=True,
               on_map=None):
    """The maps for each caption prefix (N, P): (N, L) host int64, one pass of the model per
    map (two rows each with guidance, uncond_prefixes the captionless ones).

    Map k's s_k^2 codes are drawn at once, each from its position's logits over the codes
    (sampling's temperature, top_k, top_p; guidance when cfg_scale != 1, at map_guidance's
    scale); the running sum then takes them (the tokenizer's scale_step) and gives the next
    map its inputs.
    use_cache=False runs the whole sequence so far at each map with the block-causal mask
    (the same pictures to rounding, slower). on_map(k, codes (N, L_k)): after each map.
    """
    xp = get_array_module(params["gpt.wte"])
    scales, book = scales_of(config), params["quant.codebook"]
    n, g, offset = len(prefixes), scales[-1], image_offset(params, config)
    guide = uncond_prefixes is not None and sampling.cfg_scale != 1.0
    rows = np.concatenate([prefixes, uncond_prefixes]) if guide else prefixes
    x_cap, _ = token_embedding_forward(xp.asarray(rows), params)
    kv = new_kv_cache(params, config, len(rows)) if use_cache else None
    if use_cache:
        trunk_forward(x_cap, params, config, kv, mask="full")   # the caption sees itself
    f_hat = xp.zeros((n, book.shape[-1], g, g), dtype=book.dtype)
    seen, maps = [x_cap], []
    for k, size in enumerate(scales):
        inputs = (xp.zeros((n, size * size, book.shape[-1]), dtype=book.dtype) if k == 0
                  else next_map_input(f_hat, size))
        x, _ = embed_maps_forward(inputs, params, config, k, k + 1)
        x = xp.concatenate([x, x]) if guide else x
        logits = map_logits(x, seen, params, config, kv, k)[..., offset:]    # (B, s^2, K)
        if guide:
            logits = guided(logits[:n], logits[n:], map_guidance(sampling, k, len(scales)))
        flat = filter_logits(logits.reshape(n * size * size, -1), sampling.temperature,
                             sampling.top_k, sampling.top_p)
        ids = draw(flat, rng).reshape(n, size, size)
        f_hat = f_hat + scale_step(None, scale_book(book, k), params["quant.phi.w"],
                                   params["quant.phi.b"], size, g, PHI_MIX, ids)[0]
        maps.append(ids)
        if on_map is not None:
            on_map(k, backend.to_numpy(join_scale_ids(maps)).astype(np.int64))
    return backend.to_numpy(join_scale_ids(maps)).astype(np.int64)


def map_guidance(sampling, k, n_maps):
    """The guidance scale of map k (0-based) of n_maps: sampling.cfg_scale, or with
    sampling.cfg_ramp, 1 + (cfg_scale - 1) k / (n_maps - 1), rising from none at the first
    map, which says what the whole picture is, to cfg_scale at the last (VAR's sampler)."""
    if not sampling.cfg_ramp or n_maps == 1:
        return sampling.cfg_scale
    return 1 + (sampling.cfg_scale - 1) * k / (n_maps - 1)


def map_logits(x, seen, params, config, kv, k):
    """Logits (B, s_k^2, V) of map k's positions x (B, s_k^2, C): through the KV cache
    (it holds the caption and the coarser maps), or, without one, the whole sequence so
    far again (seen: the caption's and earlier maps' embeddings; x is added to it)."""
    if kv is not None:
        check_kv(kv, x.shape[1], config)
        return trunk_forward(x, params, config, kv, mask="full")[0]
    seen.append(x)
    T = map_span(config, k)[1]
    logits, _ = trunk_forward(get_array_module(x).concatenate(seen, axis=1), params, config,
                              mask=block_causal_mask(config, get_array_module(x))[:T, :T])
    return logits[:, -x.shape[1]:]


def sample_scale_codes(params, config, vocab, prompt, n, rng, sampling, use_cache=True):
    """n pictures' maps (n, L) for one caption (text), coarse to fine, guided against the
    captionless prefix: the kinds table's draw. sampling.steps and choice_temperature are
    the masked prior's and have no meaning here (a map a pass: K passes)."""
    L = image_positions(config)
    prefix = prompt_prefix(vocab, prompt, config.context, L)
    uncond = masked_prefix(vocab, None, config.context, L)
    return write_maps(params, config, np.tile(prefix, (n, 1)), rng, sampling,
                      np.tile(uncond, (n, 1)), use_cache)
