"""Reranking: the prior scores how well a caption describes each picture, and keeps the best.

caption_log_likelihood is checked against an independent computation (the KV-cache sampler's
next-token logits, one word at a time), and against sense (the true caption of a picture
scores higher than a wrong one); best_of against known scores; generate(rerank=k) for its
argument checks and for leaving rerank=1 exactly as before.
"""
import numpy as np
import pytest

from tinytok.data.datasets import make_shapes
from tinytok.errors import ConfigError
from tinytok.pipeline import Pipeline
from tinytok.prior.settings import PLAIN, SAMPLING
from tinytok.prior.sample import NextTokenLogits
from tinytok.prior.layouts import caption_prompt
from tinytok.prior.vocab import EOS


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load()                        # the shipped shapes tokenizer and prior


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(6, seed=11, split="train")


def log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_log_likelihood_equals_the_sum_of_next_token_log_probs(pipe, shapes):
    """Reference: feed <caption> prompt, then the caption word by word through the cached
    sampler, adding log p(next word) and finally log p(<eos>)."""
    codes = pipe.tokenizer.encode(shapes.images)
    caption = shapes.captions[0]
    got = pipe.caption_log_likelihood(codes, caption)
    vocab, prior = pipe.prior.vocab, pipe.prior
    words = vocab.encode_text(caption)
    for i, grid in enumerate(codes):
        model = NextTokenLogits(prior.params, prior.config, 1)
        logits = model.step(caption_prompt(vocab, grid)[None])
        total = 0.0
        for token in [*words, EOS]:
            total += log_softmax(logits)[0, token]
            logits = model.step(np.array([[token]]))
        assert got[i] == pytest.approx(total, abs=1e-4), f"picture {i}"


def test_the_true_caption_scores_higher_than_a_wrong_one(pipe, shapes):
    codes = pipe.tokenizer.encode(shapes.images)
    for grid, caption in zip(codes, shapes.captions):
        wrong = caption.replace("large", "SMALL").replace("small", "large").replace("SMALL",
                                                                                   "small")
        true_score, wrong_score = (pipe.caption_log_likelihood(grid[None], c)[0]
                                   for c in (caption, wrong))
        assert true_score > wrong_score + 1.0, (caption, true_score, wrong_score)


def test_best_of_keeps_the_highest_score_in_each_row(pipe, monkeypatch):
    candidates = np.arange(2 * 3 * 4).reshape(2, 3, 2, 2)       # 2 pictures, 3 candidates
    scores = np.array([0.5, 2.0, -1.0, -3.0, -4.0, -2.5])
    monkeypatch.setattr(pipe, "caption_log_likelihood", lambda codes, prompt: scores)
    best = pipe.best_of(candidates, "any prompt")
    np.testing.assert_array_equal(best, candidates[[0, 1], [1, 2]])


def test_rerank_one_is_plain_sampling(pipe):
    prompt = "a small blue triangle at the bottom right"
    guided_once = PLAIN.but(cfg_scale=1.5)
    codes = pipe.tokenizer.decode(pipe.generate_codes(prompt, 2, seed=3, sampling=guided_once))
    np.testing.assert_array_equal(pipe.generate([prompt], n=2, seed=3, sampling=guided_once),
                                  codes)


def test_reranked_pictures_come_from_the_candidates(pipe):
    prompt = "a large red circle at the top left"
    candidates = pipe.tokenizer.decode(pipe.generate_codes(prompt, 2 * 3, seed=5,
                                                           sampling=PLAIN.but(cfg_scale=1.5)))
    chosen = pipe.generate([prompt], n=2, seed=5, sampling=PLAIN.but(cfg_scale=1.5, rerank=3))
    for row, picture in enumerate(chosen):            # picture i is one of its own three
        assert any((picture == c).all() for c in candidates[3 * row:3 * row + 3])


@pytest.mark.parametrize("rerank", [0, -1, 1.5, True, "2"])
def test_bad_rerank_is_a_config_error(pipe, rerank):
    with pytest.raises(ConfigError, match="rerank must be a whole number >= 1"):
        pipe.generate(["a small red square at the top"], sampling=SAMPLING.but(rerank=rerank))
