"""The layouts of the token stream: how captions, pictures and turns become sequences.

The vocabulary (prior/vocab.py) gives every word, picture code and special token an id;
this module lays them out. An example is one of three short layouts (g*g = 64 image tokens
for an 8x8 grid):

    text-to-image   <bos> a large red circle ... <image> c1 .. c64 </image> <eos>
    image-to-text   <bos> <image> c1 .. c64 </image> <caption> a large red circle ... <eos>
    unconditional   <bos> <image> c1 .. c64 </image> <eos>

Trained on the first, the model draws from a caption (DALL-E, Parti); on the second, the
same weights describe a picture (Gemini's one stream). The third is the text-to-image
layout with the caption dropped: it teaches p(image) with no caption, the second half of
classifier-free guidance. Note that the captioning layout starts the same way, so both
teach the model the same unconditional p(image) up to </image>. That is intended.

Or a conversation, the fourth layout: one stream of many turns of words and pictures
(draw, edit, describe):

    <bos> <user> a large red circle at the top left <model> <image> c1 .. c64 </image>
          <user> make it blue <model> <image> c1 .. c64 </image>
          <user> what is it <model> a large blue circle at the top left <eos>

Each turn is who speaks, <user> or <model>, then what they say: words, or one picture
between <image> and </image>. Nothing else marks a turn's end: the next speaker's token
does, or <eos> after the model's last turn. So after <model> the model itself chooses the
modality of its reply with its first token, <image> or a word, and after a picture or
some words it chooses to hand the turn back (<user>) or to end the stream (<eos>).

Who is scored where. The short layouts score everything after <bos>, captions included.
A conversation scores only what the model says: every token of a model turn and the token
that ends it (<user> or <eos>). The user's words and pictures are context, never targets:
the model is not taught to guess what a user will ask. A turn here is a pair (speaker,
ids): speaker USER or MODEL, ids a list of token ids, as turn_ids makes them from words or
a code grid.

Every layout reaches the model the same way: padded sequences and what is scored in them
go through inputs_and_targets, the one shift (targets are the next token), ignore mask
and word noise. Which layouts a training batch holds is training/prior_batches.py's
choice. Host-side NumPy only, like vocab.py.
"""
import numpy as np

from tinytok import backend
from tinytok.errors import ConfigError, PromptError, ShapeError
from tinytok.ops.checks import require_positive_int
from tinytok.prior.vocab import (BOS, CAPTION, END_IMAGE, EOS, IGNORE_INDEX, IMAGE, MODEL, PAD,
                                 SPECIALS, USER, caption_tokens, image_tokens)

DEFAULT_CONTEXT = 80      # gpt-ref's context: up to 12 caption words, specials, 64 image tokens

# The three short layouts, as the codes training batches draw (prior_batches.choose_layouts).
TEXT_TO_IMAGE, IMAGE_TO_TEXT, UNCONDITIONAL = 0, 1, 2
LAYOUT_NAMES = ("text-to-image", "image-to-text", "unconditional")

SPEAKERS = (USER, MODEL)


# ----------------------------------------------------------------------------------------
# The three short layouts

def max_caption_words(vocab, context=DEFAULT_CONTEXT):
    """The most caption words that fit one example, in either layout, in `context` positions.

    A sequence of context + 1 tokens trains all `context` positions (inputs = seq[:-1],
    targets = seq[1:]). The longer layout, captioning, holds the words, the image and 5
    specials (<bos> <image> </image> <caption> <eos>): words + image_len + 5 <= context + 1.
    For context 80 and 64 image tokens: 12 words. One limit for both layouts, so that any
    caption the model trained on can be used both ways.
    """
    return context + 1 - (vocab.image_len + 5)


def caption_limit(vocab, context):
    """max_caption_words, or ConfigError if the context cannot hold even a one-word example."""
    require_positive_int("context", context)
    limit = max_caption_words(vocab, context)
    if limit < 1:
        raise ConfigError(f"a context of {context} cannot hold a caption and "
                          f"{vocab.image_len} image tokens; it needs at least "
                          f"{vocab.image_len + 5}")
    return limit


def layout_tokens(layout, caption, image):
    """The token list of one example; caption and image are lists of token ids."""
    if layout == TEXT_TO_IMAGE:
        return [BOS, *caption, IMAGE, *image, END_IMAGE, EOS]
    if layout == IMAGE_TO_TEXT:
        return [BOS, IMAGE, *image, END_IMAGE, CAPTION, *caption, EOS]
    return [BOS, IMAGE, *image, END_IMAGE, EOS]                 # UNCONDITIONAL


def _check_fits(seq_len, context, what):
    if context is not None and seq_len > context + 1:
        raise PromptError(f"{what} has {seq_len} tokens but a context of {context} trains on "
                          f"at most {context + 1} (inputs = tokens[:-1]); shorten the caption "
                          "or raise the context")


def text_to_image_sequence(vocab, caption_ids, image_codes, context=None):
    """<bos> w1..wn <image> c1..c64 </image> <eos> as int64 (n + image_len + 4,).

    caption_ids: word ids (from encode_text); image_codes: raw codebook ids, (g, g) or
    flat. With no words this is exactly the unconditional sequence. If `context` is given,
    PromptError when the sequence is longer than context + 1 tokens.
    """
    seq = layout_tokens(TEXT_TO_IMAGE, caption_tokens(vocab, caption_ids),
                  image_tokens(vocab, image_codes).tolist())
    _check_fits(len(seq), context, "this text-to-image example")
    return np.array(seq, dtype=np.int64)


def image_to_text_sequence(vocab, caption_ids, image_codes, context=None):
    """<bos> <image> c1..c64 </image> <caption> w1..wn <eos> as int64 (n + image_len + 4,).

    Same arguments, in the same order, as text_to_image_sequence.
    """
    seq = layout_tokens(IMAGE_TO_TEXT, caption_tokens(vocab, caption_ids),
                  image_tokens(vocab, image_codes).tolist())
    _check_fits(len(seq), context, "this captioning example")
    return np.array(seq, dtype=np.int64)


def unconditional_sequence(vocab, image_codes):
    """<bos> <image> c1..c64 </image> <eos> as int64 (image_len + 4,): no caption at all."""
    return np.array(layout_tokens(UNCONDITIONAL, [], image_tokens(vocab, image_codes).tolist()),
                    dtype=np.int64)


# ----------------------------------------------------------------------------------------
# Generation prompts and reading the model's output

def image_prompt(vocab, text, context=DEFAULT_CONTEXT):
    """<bos> w1..wn <image> int64 (n + 2,): the model continues with the image tokens.

    PromptError if the caption has more than max_caption_words(vocab, context) words: the
    most the model was trained with, which leaves room for the image, </image> and <eos>.
    """
    ids = vocab.encode_text(text)
    limit = caption_limit(vocab, context)
    if len(ids) > limit:
        raise PromptError(f"the prompt has {len(ids)} words but at most {limit} fit a context "
                          f"of {context} beside the {vocab.image_len} image tokens; "
                          f"shorten it to {limit} words or fewer")
    return np.array([BOS, *ids, IMAGE], dtype=np.int64)


def unconditional_prompt(vocab):
    """<bos> <image> int64 (2,): the prompt for p(image), the other half of guidance."""
    return np.array([BOS, IMAGE], dtype=np.int64)


def caption_prompt(vocab, image_codes):
    """<bos> <image> c1..c64 </image> <caption> int64 (image_len + 4,): the model writes
    the caption next. image_codes: raw codebook ids, (g, g) or flat."""
    return np.array([BOS, IMAGE, *image_tokens(vocab, image_codes).tolist(), END_IMAGE,
                     CAPTION], dtype=np.int64)


def image_codes_from_tokens(vocab, tokens):
    """The raw code grid written by the model: (T,) -> (g, g), or (B, T) -> (B, g, g).

    Reads the image_len tokens after the first <image> (or from the start if the tokens
    hold no <image>, i.e. just the generated part). A non-image token there raises
    ShapeError rather than being mapped to some code: the sampler masks non-image tokens
    (image_token_mask), so one showing up means a bug worth seeing.
    """
    tokens = backend.to_numpy(tokens)               # the sampler's output may be on the GPU
    if tokens.ndim == 2:
        return np.stack([image_codes_from_tokens(vocab, row) for row in tokens]) \
            if len(tokens) else np.zeros((0, vocab.grid_size, vocab.grid_size), np.int64)
    if tokens.ndim != 1:
        raise ShapeError(f"tokens must be (T,) or (B, T), got shape {tokens.shape}")
    starts = np.flatnonzero(tokens == IMAGE)
    start = starts[0] + 1 if len(starts) else 0
    image = tokens[start:start + vocab.image_len].astype(np.int64)
    if len(image) < vocab.image_len:
        raise ShapeError(f"an image needs {vocab.image_len} tokens after <image>, only "
                         f"{len(image)} were given")
    bad = np.flatnonzero((image < vocab.image_offset) | (image >= vocab.size))
    if len(bad):
        j = bad[0]
        raise ShapeError(f"image token {j} is {image[j]} ({vocab.token_name(image[j])}), "
                         f"not an image token in [{vocab.image_offset}, {vocab.size}); "
                         "was the sampler's image_token_mask applied?")
    return (image - vocab.image_offset).reshape(vocab.grid_size, vocab.grid_size)


def caption_from_tokens(vocab, tokens):
    """The words the model wrote: (T,) -> str, or (B, T) -> list of str.

    Starts after the last <caption> if there is one (else at the start), stops at the first
    <eos> or <pad>, and skips anything that is not a word. Lenient, unlike decode_text:
    model output may hold anything.
    """
    tokens = backend.to_numpy(tokens)
    if tokens.ndim == 2:
        return [caption_from_tokens(vocab, row) for row in tokens]
    ids = tokens.reshape(-1).tolist()
    if CAPTION in ids:
        ids = ids[len(ids) - ids[::-1].index(CAPTION):]
    words = []
    for i in ids:
        if i in (EOS, PAD):
            break
        if vocab.is_word(i):
            words.append(vocab.words[i - len(SPECIALS)])
    return " ".join(words)


# ----------------------------------------------------------------------------------------
# Conversations: one stream, many turns

def picture_ids(vocab, codes):
    """<image> c1 .. c64 </image> as a list of ids, from a raw code grid (g, g)."""
    return [IMAGE, *image_tokens(vocab, codes).tolist(), END_IMAGE]


def turn_ids(vocab, content):
    """The ids of what one speaker says: a string -> its word ids (encode_text), a code
    grid (g, g) -> picture_ids. An empty string is an empty turn (the dropped caption of
    classifier-free guidance)."""
    if isinstance(content, str):
        return vocab.encode_text(content) if content.strip() else []
    return picture_ids(vocab, np.asarray(content))


def conversation_tokens(turns, end=True):
    """(tokens int64 (L,), scored bool (L,)) of a conversation; turns: [(speaker, ids)].

    scored[i] says token i is the model's to predict (see the module note). With end, an
    <eos> closes the stream after the last turn, which must then be the model's.
    """
    tokens, scored = [BOS], [False]
    previous = None
    for speaker, ids in turns:
        if speaker not in SPEAKERS:
            raise PromptError(f"a turn's speaker must be USER ({USER}) or MODEL ({MODEL}), "
                              f"got {speaker!r}")
        if speaker == previous:
            raise PromptError("turns must alternate between the user and the model")
        tokens.append(speaker)
        scored.append(speaker == USER and previous == MODEL)   # the model hands over
        tokens.extend(ids)
        scored.extend([speaker == MODEL] * len(ids))
        previous = speaker
    if end:
        if previous != MODEL:
            raise PromptError("a finished conversation ends with the model's turn")
        tokens.append(EOS)
        scored.append(True)
    return np.array(tokens, dtype=np.int64), np.array(scored, dtype=bool)


def reply_prompt(turns):
    """The ids the model continues to reply: the conversation so far, then <model>.

    The last turn must be the user's. int64 (L,).
    """
    if not turns or turns[-1][0] != USER:
        raise PromptError("the model replies to a user's turn; the conversation must end "
                          "with one")
    tokens, _ = conversation_tokens(turns, end=False)
    return np.concatenate([tokens, [MODEL]])


# ----------------------------------------------------------------------------------------
# From sequences to what the model learns

def inputs_and_targets(vocab, seq, scored, rng=None, p_word_noise=0.0, may_noise=None):
    """The next-token pair of padded sequences: inputs, targets int64 (N, L - 1) each.

    seq: int64 (N, L) token ids; scored: bool (N, L), True where a token is one the model
    is taught to predict. inputs = seq[:, :-1], targets = seq[:, 1:], with IGNORE_INDEX
    where the target is not scored (padding, a user's turn), so it adds no loss.

    p_word_noise, with rng (a NumPy Generator), swaps that share of the input words for
    random words, the targets kept true: to write the next word the model must then look
    at the picture rather than guess from the words before it ("green" is followed by
    "triangle" in training), which is what lets it describe unseen combinations. Only
    where may_noise (bool, broadcast to the inputs' shape; default: the scored inputs, the
    words the model itself wrote). Draws rng.random(inputs' shape), then one integer per
    swapped word.
    """
    inputs, targets = seq[:, :-1].copy(), seq[:, 1:].copy()
    targets[~scored[:, 1:]] = IGNORE_INDEX
    if p_word_noise:
        may_noise = scored[:, :-1] if may_noise is None else may_noise
        is_word = (inputs >= len(SPECIALS)) & (inputs < vocab.image_offset)
        noisy = may_noise & is_word & (rng.random(inputs.shape) < p_word_noise)
        inputs[noisy] = rng.integers(len(SPECIALS), vocab.image_offset, int(noisy.sum()))
    return inputs, targets
