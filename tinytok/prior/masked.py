"""The masked prior (MaskGIT): a transformer that sees the whole grid and fills in many codes
at once.

The raster prior writes 64 codes in 64 passes, each seeing only the codes before it. The
masked prior is the same transformer (prior/gpt.py, the same blocks) with attention that
sees every position, over one fixed layout:

    <bos> w1 .. wn <pad> .. <pad> <image> c1 .. c64          (context tokens in all)

The caption is padded to a fixed number of slots, so every image token has the same
position in every example. In training, a share of the image tokens is replaced by <mask>,
a token of its own after the vocabulary's ids (id vocab.size, so the raster prior's ids are
unchanged), and the model predicts the hidden codes: cross-entropy on the masked positions
only, the others ignored (targets -1). The share is cosine_schedule(r), r uniform in [0, 1):
from all masked (r = 0) to a few, weighted towards many, as decoding needs most help at
the start. A dropped caption (all slots <pad>) teaches p(image) for guidance.

Decoding (fill_in) starts from a grid of <mask> and takes a few steps (8 by default, the
sampling setting `steps`). Each step runs the model once, draws a code for every masked
position, and keeps the ones it is most sure of; the rest are masked again. After step t
of T, cosine_schedule((t + 1) / T) of the masked codes stay masked, so the first steps
commit few codes and the last ones many. The confidences get Gumbel noise that anneals
to nothing (the setting choice_temperature, times 1 - (t + 1) / T): early choices are
varied rather than always the easiest codes (flat background). Inpainting is the same loop
started from a grid where only a region is masked.

Host-side NumPy for the layout and the random draws (a seed fixes the picture on NumPy
and CuPy); the model runs on the backend.
"""
import math

import numpy as np

from tinytok import backend
from tinytok.backend import get_array_module
from tinytok.errors import ConfigError, PromptError, ShapeError
from tinytok.ops.softmax import softmax
from tinytok.prior.gpt import gpt_forward
from tinytok.prior.sample import draw, filter_logits, guided
from tinytok.prior.vocab import BOS, IGNORE_INDEX, IMAGE, PAD, caption_tokens, check_codes

MASK_NAME = "<mask>"


def mask_id(vocab):
    """The id of <mask>: the first id after the vocabulary's (the masked prior's model has
    vocab.size + 1 token embeddings)."""
    return vocab.size


def caption_slots(vocab, context, image_len=None):
    """How many caption words fit: the context less <bos>, <image> and the image tokens
    (image_len of them; default the grid's, vocab.image_len)."""
    image_len = vocab.image_len if image_len is None else image_len
    slots = context - image_len - 2
    if slots < 1:
        raise ConfigError(f"a prior's context of {context} cannot hold a caption beside "
                          f"<bos>, <image> and {image_len} image tokens; it needs at least "
                          f"{image_len + 3}")
    return slots


def image_start(vocab, context):
    """The position of the first image token: the same in every sequence."""
    return context - vocab.image_len


# ---------------------------------------------------------------- the layout

def masked_prefix(vocab, caption_ids, context, image_len=None):
    """<bos> w1 .. wn <pad> .. <image> int64 (context - image_len,); caption_ids None or
    empty: the unconditional prefix (every slot <pad>). image_len: the image tokens after
    it (default vocab.image_len; the next-scale prior's maps are more, prior/scales.py)."""
    words = [] if caption_ids is None else caption_tokens(vocab, caption_ids)
    slots = caption_slots(vocab, context, image_len)
    if len(words) > slots:
        raise PromptError(f"the caption has {len(words)} words but a prior of context "
                          f"{context} holds at most {slots}; shorten it")
    prefix = np.full(slots + 2, PAD, dtype=np.int64)
    prefix[0], prefix[-1] = BOS, IMAGE
    prefix[1:1 + len(words)] = words
    return prefix


def prompt_prefix(vocab, text, context, image_len=None):
    """The prefix of a caption given as text (encode_text's checks and errors)."""
    return masked_prefix(vocab, vocab.encode_text(text), context, image_len)


def cosine_schedule(r):
    """The share of the image tokens masked at progress r in [0, 1]: cos(pi r / 2), from
    1 (all masked) at r = 0 to 0 at r = 1."""
    return np.cos(0.5 * np.pi * np.asarray(r, dtype=np.float64))


def masked_batch(vocab, caption_ids_list, image_codes, rng, context, p_drop_caption=0.1):
    """One training batch: inputs, targets int64 (N, context).

    Each example's caption is dropped with probability p_drop_caption; a share
    cosine_schedule(r) of its image tokens (at least one) becomes <mask> in the inputs,
    and only those are targets. Draws rng.random(N) three times and once (N, image_len).
    """
    codes = np.asarray(image_codes)
    n, L = len(caption_ids_list), vocab.image_len
    if codes.shape != (n, vocab.grid_size, vocab.grid_size):
        raise ShapeError(f"image_codes must have shape (N, {vocab.grid_size}, "
                         f"{vocab.grid_size}) = ({n}, ...) for {n} captions, got {codes.shape}")
    check_codes(vocab, codes)
    drop = rng.random(n) < p_drop_caption
    prefixes = np.stack([masked_prefix(vocab, None if d else c, context)
                         for c, d in zip(caption_ids_list, drop)])     # (N, P): data prep
    image = codes.reshape(n, L).astype(np.int64) + vocab.image_offset
    n_masked = np.maximum(1, np.ceil(cosine_schedule(rng.random(n)) * L)).astype(np.int64)
    hidden = random_subset(rng, n, L, n_masked)                          # (N, L) bool
    inputs = np.concatenate([prefixes, np.where(hidden, mask_id(vocab), image)], axis=1)
    targets = np.full(inputs.shape, IGNORE_INDEX, dtype=np.int64)
    targets[:, -L:] = np.where(hidden, image, IGNORE_INDEX)
    return inputs, targets


def random_subset(rng, n, L, counts):
    """bool (n, L): in row i, counts[i] positions chosen uniformly at random (the ranks of
    uniform draws)."""
    ranks = np.argsort(np.argsort(rng.random((n, L)), axis=1), axis=1)
    return ranks < np.asarray(counts)[:, None]


# ---------------------------------------------------------------- decoding

def still_masked(n_unknown, step, steps):
    """How many of the n_unknown positions a decoding began with stay masked after step
    (0-based) of steps: cosine_schedule((step + 1) / steps) of them, none after the last."""
    return int(math.floor(n_unknown * cosine_schedule((step + 1) / steps)))


def image_logits(params, config, vocab, sequences):
    """The model's logits over the image codes at every image position: (N, L, K)."""
    xp = get_array_module(params["gpt.wte"])
    logits, _ = gpt_forward(xp.asarray(sequences), params, config, mask="full")
    return logits[:, -vocab.image_len:, vocab.image_offset:vocab.size]


def fill_in(params, config, vocab, prefixes, codes, rng, sampling, uncond_prefixes=None,
            on_step=None):
    """Complete the grids codes (N, L) int64, -1 where unknown: (N, g, g) raw codes.

    prefixes (N, P): masked_prefix rows (the captions); uncond_prefixes: the same without
    the captions, for guidance (used when sampling.cfg_scale != 1). sampling.steps passes
    of the model (two rows each with guidance); its temperature, top_k and top_p filter
    each position's codes, choice_temperature anneals the confidences' noise.
    on_step(step, codes (N, L) with -1 where masked): called after each step.
    """
    codes = np.array(codes, dtype=np.int64)
    n, L = codes.shape
    if L != vocab.image_len:
        raise ShapeError(f"codes must have {vocab.image_len} positions per grid, got {L}")
    guide = uncond_prefixes is not None and sampling.cfg_scale != 1.0
    start_unknown = (codes < 0).sum(axis=1)                             # per grid
    for step in range(sampling.steps):
        unknown = codes < 0
        if not unknown.any():
            break
        tokens = np.where(unknown, mask_id(vocab), codes + vocab.image_offset)
        rows = np.concatenate([prefixes, tokens], axis=1)
        if guide:
            rows = np.concatenate([rows, np.concatenate([uncond_prefixes, tokens], axis=1)])
        logits = image_logits(params, config, vocab, rows)
        if guide:
            logits = guided(logits[:n], logits[n:], sampling.cfg_scale)
        drawn, confidence = draw_all(logits, rng, sampling)
        confidence += choice_noise(rng, (n, L), sampling.choice_temperature,
                                   1.0 - (step + 1) / sampling.steps)
        confidence[~unknown] = np.inf                                    # known stay known
        remask = lowest(confidence, [still_masked(k, step, sampling.steps)
                                     for k in start_unknown], unknown.sum(axis=1))
        codes = np.where(unknown & ~remask, drawn, codes)
        if on_step is not None:
            on_step(step, codes.copy())
    return codes.reshape(n, vocab.grid_size, vocab.grid_size)


def draw_all(logits, rng, sampling):
    """A code for every position of logits (N, L, K) and the log-probability it had under
    the filtered distribution: (N, L) int64 and (N, L) float64, on the host."""
    xp = get_array_module(logits)
    n, L, K = logits.shape
    flat = filter_logits(logits.reshape(n * L, K), sampling.temperature, sampling.top_k,
                         sampling.top_p)
    drawn = draw(flat, rng)
    probs = softmax(flat.astype(xp.float64))
    picked = xp.take_along_axis(probs, drawn[:, None], axis=1)[:, 0]
    return (backend.to_numpy(drawn).astype(np.int64).reshape(n, L),
            np.log(backend.to_numpy(picked)).reshape(n, L))


def choice_noise(rng, shape, temperature, share_left):
    """Gumbel noise times temperature * share_left: MaskGIT's annealed randomness in which
    codes to keep (none at the last step). Always draws rng.random(shape)."""
    u = rng.random(shape)
    gumbel = -np.log(-np.log(np.clip(u, 1e-20, 1.0 - 1e-12)))
    return temperature * share_left * gumbel


def lowest(confidence, counts, n_unknown):
    """bool (N, L): in row i, the counts[i] least confident positions, but always at least
    one unknown position committed per step (so decoding ends in `steps` steps) while
    leaving none masked only at the last step (the schedule's count reaches 0)."""
    counts = np.minimum(np.asarray(counts), np.maximum(n_unknown - 1, 0))
    ranks = np.argsort(np.argsort(confidence, axis=1, kind="stable"), axis=1)
    return ranks < counts[:, None]


def sample_masked_codes(params, config, vocab, prompt, n, rng, sampling, use_cache=True):
    """n token grids (n, g, g) for one caption (text), filled in from a fully masked grid
    in sampling.steps passes, guided against the captionless prefix. use_cache is the
    raster sampler's and has no meaning here: every pass reads the whole grid anyway."""
    start = np.full((n, vocab.image_len), -1, dtype=np.int64)
    return fill_in_caption(params, config, vocab, prompt, start, rng, sampling)


def inpaint_codes(params, config, vocab, codes, hidden, prompt, rng, sampling):
    """The grids codes (N, g, g) with the cells where hidden (N, g, g) bool is True drawn
    again to fit the caption prompt (text): the same loop as sample_masked_codes, started
    from the known cells. Returns (N, g, g) raw codes; the known cells are unchanged."""
    codes = np.asarray(codes, dtype=np.int64)
    hidden = np.asarray(hidden, dtype=bool)
    if hidden.shape != codes.shape:
        raise ShapeError(f"the region's cells {hidden.shape} must match the grids "
                         f"{codes.shape}")
    start = np.where(hidden, -1, codes).reshape(len(codes), vocab.image_len)
    return fill_in_caption(params, config, vocab, prompt, start, rng, sampling)


def fill_in_caption(params, config, vocab, prompt, start, rng, sampling):
    """fill_in for one caption (text) on every row of start (N, L), guided against the
    captionless prefix."""
    n = len(start)
    return fill_in(params, config, vocab,
                   np.tile(prompt_prefix(vocab, prompt, config.context), (n, 1)), start, rng,
                   sampling, np.tile(masked_prefix(vocab, None, config.context), (n, 1)))
