"""The prior's training batches: which layouts each batch holds, and how often.

The layouts themselves (caption then picture, picture then caption, conversations) and
the step from sequences to (inputs, targets) are prior/layouts.py's; what is chosen here
is the policy. Half of the short examples (p_caption_layout) are captioning; of the
others, a share (p_drop_caption) lose their caption, so classifier-free guidance has an
unconditional model; word noise (p_word_noise) touches only captions written after a
picture, or in a conversation the model's own words. A batch of conversations
(conversation_batch) is as long as its longest one, not a whole context.

Host-side NumPy, like the layouts: prior_trainer.py moves each batch to the device.
"""
import numpy as np

from tinytok.errors import ConfigError, PromptError, ShapeError
from tinytok.prior.layouts import (DEFAULT_CONTEXT, IMAGE_TO_TEXT, TEXT_TO_IMAGE, UNCONDITIONAL,
                                   caption_limit, conversation_tokens, inputs_and_targets,
                                   layout_tokens)
from tinytok.prior.masked import masked_batch
from tinytok.prior.scales import scales_batch
from tinytok.prior.vocab import PAD, caption_tokens, check_codes


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
    limit = caption_limit(vocab, context)
    check_codes(vocab, codes)
    image = (codes.reshape(n, -1).astype(np.int64) + vocab.image_offset).tolist()  # vectorised
    layouts = choose_layouts(rng, n, p_caption_layout, p_drop_caption)

    seq = np.full((n, context + 1), PAD, dtype=np.int64)
    for i, layout in enumerate(layouts.tolist()):     # N token lists: data prep, not a hot path
        caption = caption_tokens(vocab, caption_ids_list[i])
        if len(caption) > limit:
            raise PromptError(f"caption {i} has {len(caption)} words; a context of {context} "
                              f"holds at most {limit} words beside the {vocab.image_len} "
                              "image tokens and 5 special tokens")
        tokens = layout_tokens(layout, caption, image[i])
        seq[i, :len(tokens)] = tokens
    # <pad> only ever appears as padding; word noise only in captions written after a
    # picture, where it makes the model look at the picture (layouts.inputs_and_targets)
    return inputs_and_targets(vocab, seq, seq != PAD, rng, p_word_noise,
                              may_noise=(layouts == IMAGE_TO_TEXT)[:, None])


def conversation_batch(vocab, conversations, context, rng=None, p_word_noise=0.0):
    """inputs, targets int64 (N, T) for a list of conversations ([(speaker, ids)] each).

    T is the longest conversation less one (at most context): a batch of short turns
    costs what its tokens cost, not a whole context. Targets are IGNORE_INDEX where the
    token is not the model's (not scored) or is padding. p_word_noise, with rng, swaps that
    share of the model's input words for random words, targets kept (see
    layouts.inputs_and_targets: it makes the captions look at the picture).
    """
    laid_out = [conversation_tokens(turns) for turns in conversations]
    longest = max(len(tokens) for tokens, _ in laid_out)
    if longest > context + 1:
        raise ShapeError(f"a conversation of {longest} tokens does not fit a context of "
                         f"{context} (inputs = tokens[:-1]); raise the context to "
                         f"{longest - 1} or shorten the conversations")
    seq = np.full((len(laid_out), longest), PAD, dtype=np.int64)
    scored = np.zeros(seq.shape, dtype=bool)
    for i, (tokens, mask) in enumerate(laid_out):   # N short lists: data prep, not a hot path
        seq[i, :len(tokens)], scored[i, :len(tokens)] = tokens, mask
    return inputs_and_targets(vocab, seq, scored, rng, p_word_noise)


def raster_batch(vocab, caption_ids_list, image_codes, rng, context, layouts):
    """make_training_batch with a run's layout probabilities (a dict as train_prior keeps)."""
    return make_training_batch(vocab, caption_ids_list, image_codes, rng, context,
                               layouts["p_caption_layout"], layouts["p_drop_caption"],
                               layouts["p_word_noise"])


def masked_training_batch(vocab, caption_ids_list, image_codes, rng, context, layouts):
    """masked.masked_batch with a run's share of dropped captions: inputs with <mask>,
    targets on the masked positions only."""
    return masked_batch(vocab, caption_ids_list, image_codes, rng, context,
                        layouts["p_drop_caption"])


def scales_training_batch(vocab, caption_ids_list, image_ids, rng, context, layouts):
    """scales.scales_batch with a run's share of dropped captions: every map scored."""
    return scales_batch(vocab, caption_ids_list, image_ids, rng, context,
                        layouts["p_drop_caption"])


# The short examples of each kind of prior (prior/kinds.py), as the trainer draws them.
SHORT_BATCHES = {"raster": raster_batch, "masked": masked_training_batch,
                 "scales": scales_training_batch}
