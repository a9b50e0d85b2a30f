"""The one sampler: the prior writes tokens one by one, with a KV cache and guidance.

    continue_sequences(prompt, params, config, n_new, rng, ...)   the loop itself
    sample_image_codes(...)    a caption's prompt, then exactly one grid of image codes
    write_captions(...)        a picture's prompt, then words up to <eos>
    caption_log_likelihood(...)   the reverse: how likely a caption is after a picture

Everything that writes with the prior (the pipeline, the benchmark, the lessons) calls these.

Generation runs the model forward only. Recomputing the whole prefix for every new token
costs O(T^2) per token; the KV cache keeps each layer's keys and values from earlier
positions, so a step only computes the new token's query, key and value and attends to the
stored ones. The cache is the model's own (gpt_forward's kv, prior/gpt.py): the same
forward, fed only the new tokens. The two paths give the same logits (tests check it); the
cache is the default.

Random draws come from a host generator (seeded), so a seed means the same picture on NumPy
and CuPy.
"""
import numpy as np

from tinytok import backend
from tinytok.backend import get_array_module
from tinytok.errors import ContextFullError, ShapeError
from tinytok.prior.gpt import check_ids, gpt_forward, new_kv_cache
from tinytok.prior.settings import PLAIN
from tinytok.prior.layouts import (caption_from_tokens, caption_prompt, image_prompt,
                                   image_to_text_sequence, unconditional_prompt)
from tinytok.prior.vocab import EOS, IMAGE, SPECIALS, USER, image_token_mask, text_token_mask
from tinytok.ops.softmax import log_softmax, softmax


# ---------------------------------------------------------------- next-token logits

class NextTokenLogits:
    """Logits for the last position of growing sequences, with or without the KV cache.

    Call ``step(new_ids (B, t))`` with the prompt first, then one token at a time; it
    returns the logits (B, V) of the next token.
    """

    def __init__(self, params, config, batch, use_cache=True):
        self.params, self.config, self.use_cache = params, config, use_cache
        self.kv = new_kv_cache(params, config, batch) if use_cache else None
        self.seq = None  # the whole sequence so far, for the uncached path

    @property
    def length(self):
        """How many tokens of each sequence have been fed so far."""
        if self.use_cache:
            return self.kv[0].length
        return 0 if self.seq is None else self.seq.shape[1]

    def fork(self, batch):
        """A new state holding batch copies of this state's one sequence.

        A conversation is fed once (Conversation.history); each reply forks it into the
        rows it draws side by side (candidates, and guidance's unconditional half), so
        the earlier turns are never run through the model again.
        """
        rows = (self.kv[0].k if self.use_cache else self.seq)
        if rows is not None and rows.shape[0] != 1:
            raise ShapeError(f"fork copies a state of one sequence, this one holds "
                             f"{rows.shape[0]}")
        copy = NextTokenLogits(self.params, self.config, batch, self.use_cache)
        if self.use_cache:
            copy.kv = [layer.repeated(batch) for layer in self.kv]
        elif self.seq is not None:
            copy.seq = get_array_module(self.seq).repeat(self.seq, batch, axis=0)
        return copy

    def step(self, new_ids):
        xp = get_array_module(self.params["gpt.wte"])
        new_ids = xp.asarray(new_ids)
        if self.use_cache:
            return gpt_forward(new_ids, self.params, self.config, self.kv)[0][:, -1]
        self.seq = new_ids if self.seq is None else xp.concatenate([self.seq, new_ids], 1)
        check_ids(self.seq, self.config)
        return gpt_forward(self.seq, self.params, self.config)[0][:, -1]


# ---------------------------------------------------------------- choosing the next token

def filter_logits(logits, temperature=1.0, top_k=None, top_p=None, allowed=None):
    """logits (B, V) -> logits with disallowed tokens at -inf, divided by the temperature.

    allowed (V,) bool keeps sampling inside the right part of the vocabulary (image tokens
    inside an image). top_k keeps the k largest; top_p keeps the smallest set of tokens
    whose probability adds up to at least p (nucleus sampling).
    """
    xp = get_array_module(logits)
    logits = logits / temperature
    if allowed is not None:
        logits = xp.where(xp.asarray(allowed), logits, -xp.inf)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = xp.sort(logits, axis=-1)[:, -int(top_k)][:, None]
        logits = xp.where(logits < kth, -xp.inf, logits)
    if top_p is not None and top_p < 1:
        probs = softmax(logits)
        ranked = -xp.sort(-probs, axis=-1)                           # (B, V), largest first
        before = xp.cumsum(ranked, axis=-1) - ranked                 # mass of better tokens
        n_keep = (before < top_p).sum(axis=-1)                       # >= 1: the best is kept
        cutoff = ranked[xp.arange(ranked.shape[0]), n_keep - 1][:, None]
        logits = xp.where(probs < cutoff, -xp.inf, logits)
    return logits


def draw(logits, rng, greedy=False):
    """One token per row of logits (B, V): argmax if greedy, else a sample of softmax(logits).

    The uniform numbers come from the host generator rng, so a seed fixes the result on
    either backend; inverse-CDF sampling then picks the token on the device.
    """
    xp = get_array_module(logits)
    if greedy:
        return xp.argmax(logits, axis=-1)
    probs = softmax(logits.astype(xp.float64))
    cdf = xp.cumsum(probs, axis=-1)
    u = xp.asarray(rng.random(logits.shape[0]))[:, None] * cdf[:, -1:]
    return xp.minimum((cdf < u).sum(axis=-1), logits.shape[-1] - 1)


def guided(cond, uncond, scale):
    """Classifier-free guidance: uncond + scale * (cond - uncond); scale 1 is plain sampling."""
    return uncond + scale * (cond - uncond)


# ---------------------------------------------------------------- the loop

def continue_sequences(prompt, params, config, n_new, rng, sampling=PLAIN, allowed=None,
                       uncond_prompt=None, greedy=False, stop=None, use_cache=True,
                       history=None):
    """Write up to n_new tokens after each prompt row: (B, L) ids -> (B, n) host int64.

    Each step: the next token's logits (from the KV cache, or the whole prefix again),
    mixed with the unconditional stream's when guiding (uncond_prompt, and a
    sampling.cfg_scale other than 1), filtered (sampling's temperature, top-k and top-p;
    allowed tokens only) and drawn (or argmax when greedy) with uniforms from the host
    generator rng. sampling is a Sampling value (prior/settings.py); its rerank settings are
    for the callers that draw several candidates, not for this loop. With stop (a token id, or a tuple of
    them), a row that has written one writes the first from then on, and the loop ends
    when every row has: n may then be less than n_new. With history (a NextTokenLogits of
    one sequence), prompt and uncond_prompt continue the stream it holds.
    """
    prompt = np.asarray(prompt)
    first_stop = stop[0] if isinstance(stop, tuple) else stop
    guide = uncond_prompt is not None and sampling.cfg_scale != 1.0
    cond = _new_state(params, config, len(prompt), use_cache, history)
    logits = cond.step(prompt)
    if guide:  # the same model without the caption: the unconditional half of guidance
        uncond = _new_state(params, config, len(prompt), use_cache, history)
        u_logits = uncond.step(np.asarray(uncond_prompt))
    written, done = [], np.zeros(len(prompt), dtype=bool)
    for i in range(n_new):
        mixed = guided(logits, u_logits, sampling.cfg_scale) if guide else logits
        token = draw(filter_logits(mixed, sampling.temperature, sampling.top_k,
                                   sampling.top_p, allowed), rng, greedy)
        host = backend.to_numpy(token).astype(np.int64)
        if stop is not None:
            host = np.where(done, first_stop, host)
            done |= np.isin(host, stop)
        written.append(host)
        if i + 1 == n_new or done.all():
            break
        logits = cond.step(token[:, None])
        if guide:
            u_logits = uncond.step(token[:, None])
    return np.stack(written, axis=1)


def _new_state(params, config, batch, use_cache, history):
    """A NextTokenLogits for batch rows: empty, or continuing history (forked)."""
    if history is None:
        return NextTokenLogits(params, config, batch, use_cache)
    return history.fork(batch)


def _fed(history):
    """Tokens a history already holds (0 without one)."""
    return 0 if history is None else history.length


def sample_image_codes(params, config, vocab, prompt, n, rng, sampling, use_cache=True):
    """n token grids (n, g, g) for one caption: its prompt, then exactly one grid of codes.

    Sampling is restricted to image codes, so the model cannot leave the picture early;
    a sampling.cfg_scale other than 1 guides it against the same model given no caption
    (Parti's classifier-free guidance). One draw per grid: reranking is the caller's.
    """
    return draw_picture(params, config, vocab, image_prompt(vocab, prompt, config.context),
                        unconditional_prompt(vocab), n, rng, sampling, use_cache)


def draw_picture(params, config, vocab, prompt, uncond_prompt, n, rng, sampling,
                 use_cache=True, history=None):
    """n token grids (n, g, g) after a prompt (L,) that ends with <image>: exactly one grid.

    uncond_prompt: the same stream without the words that asked for the picture (the
    caption, or the instruction of an edit), for guidance. history: as continue_sequences.
    """
    before = _fed(history)
    if before + len(prompt) + vocab.image_len > config.context:
        raise ContextFullError(f"a picture after these {before + len(prompt)} tokens would run "
                               f"past the prior's context of {config.context}; start a new "
                               "conversation")
    tokens = continue_sequences(
        np.tile(prompt, (n, 1)), params, config, vocab.image_len, rng, sampling,
        allowed=image_token_mask(vocab), uncond_prompt=np.tile(uncond_prompt, (n, 1)),
        use_cache=use_cache, history=history)
    return (tokens - vocab.image_offset).reshape(n, vocab.grid_size, vocab.grid_size)


def reply_is_picture(params, config, vocab, prompt, history=None):
    """The model's choice of modality after prompt (L,), which ends with <model>: True if
    it gives <image> more probability than all the words together. history: as
    continue_sequences."""
    before = _fed(history)
    if before + len(prompt) > config.context:
        raise ContextFullError(f"the conversation's {before + len(prompt)} tokens fill the "
                               f"prior's context of {config.context}; start a new one")
    state = _new_state(params, config, 1, True, history)
    probs = backend.to_numpy(softmax(state.step(prompt[None]).astype("float64")))[0]
    return probs[IMAGE] > probs[len(SPECIALS):vocab.image_offset].sum()


def write_reply(params, config, vocab, prompts, rng, greedy=True, temperature=1.0,
                max_words=16, history=None):
    """The words the model says after prompts (B, L) ending with <model>: a str per row,
    words only, up to the token that ends its turn (<user> or <eos>), at most max_words
    (a caption has 8: a model that rambles is cut short, not left to fill the context).
    history: as continue_sequences."""
    allowed = text_token_mask(vocab)
    allowed[USER] = True
    room = min(config.context - _fed(history) - prompts.shape[1], max_words + 1)
    if room < 1:
        raise ContextFullError(f"the conversation fills the prior's context of {config.context}; "
                          "start a new one")
    tokens = continue_sequences(prompts, params, config, room, rng,
                                PLAIN.but(temperature=temperature), allowed=allowed,
                                greedy=greedy, stop=(EOS, USER), history=history)
    return caption_from_tokens(vocab, tokens)


def write_captions(params, config, vocab, codes, rng, greedy=True, temperature=1.0):
    """A caption (str) for each token grid codes (N, g, g): the picture's prompt, then words
    (text tokens only) up to <eos> or the end of the context."""
    prompts = np.stack([caption_prompt(vocab, c) for c in backend.to_numpy(codes)])  # (N, L)
    tokens = continue_sequences(prompts, params, config, config.context - prompts.shape[1],
                                rng, PLAIN.but(temperature=temperature),
                                allowed=text_token_mask(vocab),
                                greedy=greedy, stop=EOS)
    return caption_from_tokens(vocab, tokens)


def caption_log_likelihood(params, config, vocab, codes, caption, batch_size=64):
    """log p(caption words, then <eos> | picture) for each token grid: (N, g, g) -> (N,).

    The captioning layout read forwards, in float64: how likely the model is to write
    exactly this caption after seeing each picture. Reranking keeps the likeliest.
    """
    words = vocab.encode_text(caption)
    seqs = np.stack([image_to_text_sequence(vocab, words, c, config.context)
                     for c in backend.to_numpy(codes)])                  # (N, L)
    n_scored = len(words) + 1                                            # the words and <eos>
    scores = []
    for start in range(0, len(seqs), batch_size):
        part = backend.to_device(seqs[start:start + batch_size])
        logits, _ = gpt_forward(part[:, :-1], params, config)           # (b, L-1, V)
        log_probs = log_softmax(logits[:, -n_scored:].astype("float64"))
        targets = part[:, -n_scored:]                                    # (b, n_scored)
        picked = get_array_module(log_probs).take_along_axis(
            log_probs, targets[..., None], axis=-1)[..., 0]
        scores.append(backend.to_numpy(picked.sum(axis=1)))
    return np.concatenate(scores)
