"""A conversation with the pipeline: draw, edit and describe in one stream, turn after turn.

    chat = Conversation(tinytok.Pipeline.load(), seed=0)       # the recommended sampling
    picture = chat.say("a large red circle at the top left")   # uint8 (32, 32, 3)
    picture = chat.say("make it blue")
    chat.say("what is it?")                                      # -> a caption (str)

Each user turn is words or a picture (uint8 (S, S, 3)); the model's reply continues the
one token stream of prior/layouts.py, and the model chooses its modality with the first
token it writes (sample.reply_is_picture). The stream so far lives in one KV cache
(history), fed once: a reply runs only its own new tokens through the model. A picture
reply is exactly one grid of image codes, guided (sampling.cfg_scale) against the stream
without the user's last words, and the best of several candidates (sampling.rerank for a
drawing, sampling.edit_rerank for an edit) by the caption it should have: the user's
caption for a drawing, the caption edited by the instruction for an edit
(data.edits.edited_caption).
"""
import numpy as np

from tinytok.data.edits import edited_caption, is_question, parse_instruction
from tinytok.errors import ContextFullError, PromptError
from tinytok.parallel import blas_threads_for_small_products
from tinytok.pipeline import check_seed
from tinytok.prior.kinds import refuse_words
from tinytok.prior.sample import NextTokenLogits, draw_picture, reply_is_picture, write_reply
from tinytok.prior.settings import SAMPLING, check_sampling
from tinytok.prior.layouts import conversation_tokens, picture_ids, reply_prompt
from tinytok.prior.vocab import IMAGE, MODEL, USER


class Conversation:
    """One stream of turns with a Pipeline; say(turn) returns the model's reply."""

    def __init__(self, pipeline, *, seed=0, sampling=SAMPLING):
        check_seed(seed)
        refuse_words(pipeline.prior.kind, "hold a conversation")
        self.pipeline, self.prior = pipeline, pipeline.prior
        self.sampling, self.rng = check_sampling(sampling), np.random.default_rng(seed)
        self.turns = []        # [(speaker, ids)]: the stream so far
        self.history = NextTokenLogits(self.prior.params, self.prior.config, 1)  # its cache
        self.picture = None    # codes (g, g) of the picture in hand, if any
        self.caption = None    # what that picture shows, when the stream says so
        self._asked = False    # the last user turn asked "what is it?"

    def say(self, turn):
        """The model's reply to one user turn: a uint8 picture (S, S, 3) or a string."""
        user_ids, text = self._user_turn(turn)
        with blas_threads_for_small_products():
            prompt = self._unfed(reply_prompt(self.turns + [(USER, user_ids)]))
            if reply_is_picture(self.prior.params, self.prior.config, self.prior.vocab, prompt,
                                self.history):
                return self.pipeline.tokenizer.decode(self._draw(user_ids, text, 1))[0]
            return self._describe(user_ids, prompt)

    def draw(self, turn, n=1):
        """n pictures (n, g, g) codes answering a user turn, whatever the model would
        choose; the first becomes the stream's reply (Pipeline.edit calls this)."""
        user_ids, text = self._user_turn(turn)
        with blas_threads_for_small_products():
            return self._draw(user_ids, text, n)

    # ------------------------------------------------------------------ the two replies

    def _draw(self, user_ids, text, n):
        prior, vocab = self.prior, self.prior.vocab
        prompt = self._unfed(np.concatenate([reply_prompt(self.turns + [(USER, user_ids)]),
                                             [IMAGE]]))
        uncond = self._unfed(np.concatenate([reply_prompt(self.turns + [(USER, [])]), [IMAGE]]))
        target = self._caption_wanted(text)
        k = self._candidates(text) if target is not None else 1  # nothing to judge by: one
        codes = draw_picture(prior.params, prior.config, vocab, prompt, uncond, n * k,
                             self.rng, self.sampling, history=self.history)
        if k > 1:
            codes = self.pipeline.best_of(codes.reshape(n, k, *codes.shape[1:]), target)
        self._append(user_ids, picture_ids(vocab, codes[0]))
        self.picture, self.caption = codes[0], target
        return codes

    def _describe(self, user_ids, prompt):
        prior = self.prior
        words = write_reply(prior.params, prior.config, prior.vocab, prompt[None], self.rng,
                            history=self.history)[0]
        self._append(user_ids, prior.vocab.encode_text(words) if words else [])
        if self.turns[-2][1][:1] == [IMAGE] or self._asked:   # it described the picture
            self.caption = words
        return words

    def _unfed(self, tokens):
        """The tokens of the stream (L,) after what history holds, once history holds all
        of the finished turns (fed now if not yet)."""
        done, _ = conversation_tokens(self.turns, end=False)
        if len(done) > self.prior.config.context:
            raise ContextFullError(f"the conversation's {len(done)} tokens fill the prior's "
                                   f"context of {self.prior.config.context}; start a new one")
        if len(done) > self.history.length:
            self.history.step(done[None, self.history.length:])
        return tokens[self.history.length:]

    # ------------------------------------------------------------------ the user's turn

    def _user_turn(self, turn):
        """(ids, text or None) of a user turn; PromptError for words the model can't use."""
        if isinstance(turn, str):
            ids = self.prior.vocab.encode_text(turn)
            self._asked = is_question(turn)
            if self.picture is None and (self._asked or _is_instruction(turn)):
                raise PromptError(f"{turn!r} needs a picture, and there is none yet: write a "
                                  "caption to draw one, or show a picture")
            return ids, turn
        images = self.pipeline.tokenizer._check(turn)
        if len(images) != 1:
            raise PromptError(f"show one picture per turn, got {len(images)}")
        self._asked = False
        self.picture, self.caption = self.pipeline.tokenizer.encode(images)[0], None
        return picture_ids(self.prior.vocab, self.picture), None

    def _caption_wanted(self, text):
        """The caption the picture answering text should have, or None if unknown."""
        if text is None or is_question(text):
            return None
        if _is_instruction(text):
            return edited_caption(self.caption, text) if self.caption else None
        return text                                       # a caption to draw

    def _candidates(self, text):
        """How many pictures to draw for one answer: an edit gains far more from more
        candidates than a drawing from a caption (prior/settings.py says why)."""
        return self.sampling.edit_rerank if _is_instruction(text) else self.sampling.rerank

    def _append(self, user_ids, model_ids):
        self.turns += [(USER, list(user_ids)), (MODEL, list(model_ids))]


def _is_instruction(text):
    try:
        parse_instruction(text)
        return True
    except PromptError:
        return False


def converse(pipeline, turns, *, seed=0, sampling=SAMPLING):
    """The model's replies to turns, in order: each a uint8 picture or a string."""
    if isinstance(turns, (str, np.ndarray)):
        turns = [turns]
    chat = Conversation(pipeline, seed=seed, sampling=sampling)
    return [chat.say(turn) for turn in turns]


def edit(pipeline, images, instruction, n=1, *, seed=0, sampling=SAMPLING):
    """uint8 (len(images) * n, S, S, 3): n edits of each picture, following instruction.

    Each picture is shown in a stream of its own and described by the model (the first
    reply), then the instruction is answered with a picture.
    """
    parse_instruction(instruction)                       # a clear error before any work
    images = pipeline.tokenizer._check(images)
    codes = []
    for i, image in enumerate(images):
        chat = Conversation(pipeline, seed=seed + 1000 * i, sampling=sampling)
        chat.say(image)
        codes.append(chat.draw(instruction, n))
    return pipeline.tokenizer.decode(np.concatenate(codes))

