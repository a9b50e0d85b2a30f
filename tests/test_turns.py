"""One stream, many turns: instructions, the conversation layout, training conversations,
the warm start, and conversations with a (small, untrained) pipeline."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinytok.data.datasets import (CAPTION_WORDS, COLOURS, POSITIONS, SHAPES, SIZES,
                                   caption_for, is_heldout, make_shapes, parse_caption)
from tinytok.data.edits import (COLOUR, FORMS, INSTRUCTION_WORDS, POSITION, SHAPE, SIZE,
                                apply_edit, edited_caption, instruction, is_question,
                                parse_instruction, possible_edits)
from tinytok.errors import ConfigError, ContextFullError, PromptError, ShapeError
from tinytok.prior.settings import SAMPLING
from tinytok.prior.layouts import conversation_tokens, picture_ids, reply_prompt
from tinytok.prior.vocab import (BOS, END_IMAGE, EOS, IGNORE_INDEX, IMAGE, MODEL, USER, Vocab,
                                 saved_token_names)
from tinytok.training.conversations import (PictureBank, longest_conversation,
                                            random_conversation)
from tinytok.training.prior_batches import conversation_batch
from tinytok.training.prior_trainer import cut_padding, warm_start

K = 16
VOCAB = Vocab(list(CAPTION_WORDS) + list(INSTRUCTION_WORDS), K)


# ---------------------------------------------------------------- instructions

@given(st.sampled_from(list(FORMS)), st.data())
def test_every_instruction_parses_back(attribute, data):
    value = data.draw(st.integers(0, len(FORMS[attribute][1]) - 1))
    text = instruction(attribute, value)
    assert parse_instruction(text) == (attribute, value)
    assert parse_instruction(text.upper() + ".") == (attribute, value)
    VOCAB.encode_text(text)                           # every word is in the vocabulary


def test_instruction_forms_exact():
    assert instruction(COLOUR, COLOURS.index("blue")) == "make it blue"
    assert instruction(SIZE, SIZES.index("small")) == "make it small"
    assert instruction(POSITION, POSITIONS.index("top left")) == "move it to the top left"
    assert instruction(SHAPE, SHAPES.index("square")) == "turn it into a square"
    assert is_question("What is it?") and not is_question("make it blue")


@pytest.mark.parametrize("text", ["make it", "make it huge", "paint it blue", "move it to top",
                                  "turn it into square", ""])
def test_not_an_instruction_names_the_forms(text):
    with pytest.raises(PromptError, match=r"make it \{colour\}.*turn it into a \{shape\}"):
        parse_instruction(text)


def test_an_edit_changes_one_attribute_and_never_makes_a_heldout_pair():
    for labels in make_shapes(50, seed=3).labels:
        for attribute, value in possible_edits(labels):
            edited = apply_edit(labels, attribute, value)
            assert (edited != labels).sum() == 1 and edited[attribute] == value
            assert not is_heldout(edited)
    circle_red = np.array([SHAPES.index("circle"), COLOURS.index("red"), 0, 0])
    green = (COLOUR, COLOURS.index("green"))
    assert green not in possible_edits(circle_red)
    assert green in possible_edits(circle_red, allow_heldout=True)


def test_edited_caption():
    assert edited_caption("a small red circle at the top", "make it blue") == \
        "a small blue circle at the top"
    assert edited_caption("a small red circle at the top", "move it to the bottom left") == \
        "a small red circle at the bottom left"
    assert edited_caption("red circle", "make it blue") is None


# ---------------------------------------------------------------- the layout

def test_conversation_layout_and_who_is_scored():
    codes = np.arange(64).reshape(8, 8) % K
    pic = picture_ids(VOCAB, codes)
    draw, blue = VOCAB.encode_text("a small red circle at the top"), VOCAB.encode_text("make it blue")
    tokens, scored = conversation_tokens([(USER, draw), (MODEL, pic), (USER, blue), (MODEL, pic)])
    assert tokens.tolist() == [BOS, USER, *draw, MODEL, *pic, USER, *blue, MODEL, *pic, EOS]
    assert pic[0] == IMAGE and pic[-1] == END_IMAGE and len(pic) == 66
    expected = ([False, False] + [False] * len(draw) + [False] + [True] * 66 +
                [True] + [False] * len(blue) + [False] + [True] * 66 + [True])
    assert scored.tolist() == expected      # the model's turns, its hand-overs and <eos>


def test_reply_prompt_and_bad_turns():
    words = VOCAB.encode_text("what is it")
    assert reply_prompt([(USER, words)]).tolist() == [BOS, USER, *words, MODEL]
    with pytest.raises(PromptError, match="end with one"):
        reply_prompt([(USER, words), (MODEL, words)])
    with pytest.raises(PromptError, match="alternate"):
        conversation_tokens([(USER, words), (USER, words), (MODEL, words)])
    with pytest.raises(PromptError, match="ends with the model"):
        conversation_tokens([(USER, words)])


def test_conversation_batch_scores_only_the_model_and_cuts_padding():
    short = [(USER, VOCAB.encode_text("a at")), (MODEL, VOCAB.encode_text("the"))]
    longer = short + [(USER, VOCAB.encode_text("what is it")), (MODEL, VOCAB.encode_text("a"))]
    inputs, targets = conversation_batch(VOCAB, [short, longer], context=20)
    tokens, scored = conversation_tokens(longer)
    assert inputs.shape == targets.shape == (2, len(tokens) - 1)
    assert inputs[1].tolist() == tokens[:-1].tolist()
    assert targets[1].tolist() == np.where(scored[1:], tokens[1:], IGNORE_INDEX).tolist()
    the = VOCAB.encode_text("the")[0]         # <bos> <user> a at <model> the <eos>: the last two
    assert targets[0].tolist() == [IGNORE_INDEX] * 4 + [the, EOS] + [IGNORE_INDEX] * 6
    with pytest.raises(ShapeError, match="raise the context"):
        conversation_batch(VOCAB, [longer], context=5)


def test_cut_padding():
    inputs = np.array([[1, 5, 0, 0], [1, 0, 0, 0]])
    cut_in, cut_t = cut_padding(inputs, inputs * 2)
    assert cut_in.tolist() == [[1, 5], [1, 0]] and cut_t.tolist() == [[2, 10], [2, 0]]


# ---------------------------------------------------------------- training conversations

@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2 ** 16))
def test_random_conversations_fit_and_hold_no_heldout_pair(seed):
    shapes = make_shapes(600, seed=1)
    bank = PictureBank(np.random.default_rng(0).integers(0, K, (600, 8, 8)), shapes.labels)
    rng = np.random.default_rng(seed)
    for _ in range(20):
        turns = random_conversation(rng, bank, VOCAB)
        tokens, _ = conversation_tokens(turns)
        assert len(tokens) <= longest_conversation(VOCAB)
        for speaker, ids in turns:
            text = VOCAB.describe(ids)
            if ids and ids[0] != IMAGE and text.startswith("a "):       # a caption
                assert not is_heldout(parse_caption(text))


def test_picture_bank_finds_by_labels():
    shapes = make_shapes(200, seed=2)
    codes = np.arange(200)[:, None, None] * np.ones((1, 8, 8), int)
    bank = PictureBank(codes, shapes.labels)
    rng = np.random.default_rng(0)
    for i in (0, 17, 199):
        picked = bank.pick(rng, shapes.labels[i])
        assert (shapes.labels[picked[0, 0]] == shapes.labels[i]).all()
    missing = np.array([0, 0, 0, 0])
    if not bank.has(missing):
        with pytest.raises(ConfigError, match="no picture of"):
            bank.pick(rng, missing)


def test_warm_start_moves_rows_by_token_name():
    from tinytok.prior.gpt import gpt_config, init_gpt_params
    old_vocab = {"specials": ["<pad>", "<bos>", "<eos>", "<image>", "</image>", "<caption>"],
                 "words": list(CAPTION_WORDS), "num_codes": K, "grid_size": 8}
    old_names = saved_token_names(old_vocab)
    old = init_gpt_params(gpt_config("gpt-tiny", vocab_size=len(old_names), context=80), seed=1)
    new = init_gpt_params(gpt_config("gpt-tiny", vocab_size=VOCAB.size, context=100), seed=2)
    started = warm_start(new, VOCAB, old, old_names)
    red_old = old_names.index("'red'")
    assert np.array_equal(started["gpt.wte"][VOCAB.encode_text("red")[0]], old["gpt.wte"][red_old])
    assert np.array_equal(started["gpt.wte"][VOCAB.image_offset + 3],
                          old["gpt.wte"][old_names.index("image code 3")])
    assert np.array_equal(started["gpt.wte"][USER], new["gpt.wte"][USER])      # new: fresh
    assert np.array_equal(started["gpt.wpe"][:80], old["gpt.wpe"])
    assert np.array_equal(started["gpt.wpe"][80:], new["gpt.wpe"][80:])
    wide = init_gpt_params(gpt_config("gpt-small", vocab_size=VOCAB.size, context=100))
    with pytest.raises(ConfigError, match="same layers and width"):
        warm_start(wide, VOCAB, old, old_names)


# ---------------------------------------------------------------- conversations

@pytest.fixture(scope="module")
def pipe():
    """The shipped tokenizer with a small untrained prior: replies are noise, but their
    kinds, shapes and errors are what a user gets."""
    from tinytok.pipeline import Pipeline, Prior, Tokenizer
    from tinytok.prior.gpt import gpt_config, init_gpt_params
    from tinytok.training.prior_data import shapes_vocab
    tokenizer = Tokenizer.load()
    vocab = shapes_vocab(tokenizer.config.num_codes)
    config = gpt_config("gpt-tiny", vocab_size=vocab.size, context=238)
    return Pipeline(tokenizer, Prior(init_gpt_params(config, seed=0), config, vocab))


def test_converse_replies_in_order(pipe):
    image = make_shapes(1, seed=4).images[0]
    sampling = SAMPLING.but(rerank=2, edit_rerank=2)
    replies = pipe.converse([image, "make it blue", "what is it?"], seed=1, sampling=sampling)
    assert len(replies) == 3
    for reply in replies:
        assert isinstance(reply, str) or (reply.dtype == np.uint8 and reply.shape == (32, 32, 3))
    again = pipe.converse([image, "make it blue", "what is it?"], seed=1, sampling=sampling)
    for a, b in zip(replies, again):                                   # a seed, a stream
        assert (a == b) if isinstance(a, str) else np.array_equal(a, b)


def test_edit_shapes_and_bad_turns(pipe):
    images = make_shapes(2, seed=5).images
    edited = pipe.edit(images, "make it small", n=3, sampling=SAMPLING.but(edit_rerank=2))
    assert edited.shape == (6, 32, 32, 3)
    with pytest.raises(PromptError, match="not an instruction"):
        pipe.edit(images, "make it huge")
    with pytest.raises(PromptError, match="needs a picture"):
        pipe.converse(["make it blue"])
    with pytest.raises(PromptError, match="unknown word"):
        pipe.converse(["a hexagon"])


def test_a_full_stream_says_so(pipe):
    from tinytok.conversation import Conversation
    chat = Conversation(pipe)
    image = make_shapes(1, seed=6).images[0]
    with pytest.raises(ContextFullError, match="context of 238"):
        for _ in range(5):
            chat.draw(image)
