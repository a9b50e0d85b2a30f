"""One stream, many turns: a conversation of words and pictures as one token sequence.

    <bos> <user> a large red circle at the top left <model> <image> c1 .. c64 </image>
          <user> make it blue <model> <image> c1 .. c64 </image>
          <user> what is it <model> a large blue circle at the top left <eos>

Each turn is who speaks, <user> or <model>, then what they say: words, or one picture
between <image> and </image>. Nothing else marks a turn's end: the next speaker's token
does, or <eos> after the model's last turn. So after <model> the model itself chooses the
modality of its reply with its first token, <image> or a word, and after a picture or
some words it chooses to hand the turn back (<user>) or to end the stream (<eos>).

Who is scored where. The loss counts only what the model says: every token of a model
turn and the token that ends it (<user> or <eos>). The user's words and pictures are
context, never targets: the model is not taught to guess what a user will ask. (The
older layouts of vocab.py score everything after <bos>, captions included.)

A turn here is a pair (speaker, ids): speaker USER or MODEL, ids a list of token ids, as
turn_ids makes them from words or a code grid. Host-side NumPy, like vocab.py.
"""
import numpy as np

from tinytok.errors import PromptError, ShapeError
from tinytok.prior.vocab import (BOS, END_IMAGE, EOS, IGNORE_INDEX, IMAGE, MODEL, PAD, SPECIALS,
                                 USER, _image_tokens)

SPEAKERS = (USER, MODEL)


def picture_ids(vocab, codes):
    """<image> c1 .. c64 </image> as a list of ids, from a raw code grid (g, g)."""
    return [IMAGE, *_image_tokens(vocab, codes).tolist(), END_IMAGE]


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


def conversation_batch(vocab, conversations, context, rng=None, p_word_noise=0.0):
    """inputs, targets int64 (N, T) for a list of conversations ([(speaker, ids)] each).

    T is the longest conversation less one (at most context): a batch of short turns
    costs what its tokens cost, not a whole context. Targets are IGNORE_INDEX where the
    token is not the model's (not scored) or is padding. p_word_noise, with rng, swaps that
    share of the model's input words for random words, targets kept (see
    vocab.make_training_batch: it makes the captions look at the picture).
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
    inputs, targets = seq[:, :-1].copy(), seq[:, 1:].copy()
    targets[~scored[:, 1:]] = IGNORE_INDEX
    if p_word_noise:
        is_word = (inputs >= len(SPECIALS)) & (inputs < vocab.image_offset)
        noisy = scored[:, :-1] & is_word & (rng.random(inputs.shape) < p_word_noise)
        inputs[noisy] = rng.integers(len(SPECIALS), vocab.image_offset, int(noisy.sum()))
    return inputs, targets
