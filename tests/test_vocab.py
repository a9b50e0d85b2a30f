"""The joint vocabulary, the three sequence layouts, training batches, prompts and caches."""
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinytok.errors import CheckpointError, ConfigError, DTypeError, PromptError, ShapeError
from tinytok.prior.layouts import (IMAGE_TO_TEXT, TEXT_TO_IMAGE, UNCONDITIONAL,
                                   caption_from_tokens, caption_prompt, image_codes_from_tokens,
                                   image_prompt, image_to_text_sequence, inputs_and_targets,
                                   max_caption_words,
                                   text_to_image_sequence, unconditional_prompt,
                                   unconditional_sequence)
from tinytok.prior.vocab import (BOS, CAPTION, END_IMAGE, EOS, IGNORE_INDEX, IMAGE, PAD, SPECIALS,
                                 Vocab, image_token_mask, split_words, text_token_mask)
from tinytok.training.prior_batches import choose_layouts, make_training_batch
from tinytok.training.prior_data import encode_dataset_tokens, load_token_cache, save_token_cache

# Captions in the shapes dataset's template, written out here so these tests don't need it.
CAPTIONS = ["a large red circle at the top left", "a small blue square at the center",
            "a small green triangle at the bottom right", "a large white circle at the top",
            "a small yellow square at the left"]
EXAMPLE = CAPTIONS[0]
K = 512  # codebook size of vqvae-ref


@pytest.fixture
def vocab():
    return Vocab.from_captions(CAPTIONS, num_codes=K)


def grid(seed=0, g=8, k=K):
    return np.random.default_rng(seed).integers(0, k, size=(g, g))


# ----------------------------------------------------------------------------------------
# The vocabulary

def test_ids_specials_then_sorted_words_then_codes(vocab):
    assert SPECIALS == ("<pad>", "<bos>", "<eos>", "<image>", "</image>", "<caption>",
                        "<user>", "<model>")
    assert (PAD, BOS, EOS, IMAGE, END_IMAGE, CAPTION) == (0, 1, 2, 3, 4, 5)
    assert vocab.words == ("a", "at", "blue", "bottom", "center", "circle", "green", "large",
                           "left", "red", "right", "small", "square", "the", "top",
                           "triangle", "white", "yellow")
    assert vocab.image_offset == 8 + 18
    assert vocab.size == 8 + 18 + K
    assert (vocab.num_codes, vocab.grid_size, vocab.image_len) == (K, 8, 64)
    assert vocab.encode_text("a at yellow") == [8, 9, 8 + 17]


def test_vocab_is_deterministic_and_compares_by_content():
    a = Vocab.from_captions(CAPTIONS, K)
    b = Vocab.from_captions(CAPTIONS[::-1] + CAPTIONS, K)       # order, duplicates
    assert a == b and hash(a) == hash(b)
    assert a == Vocab(list(reversed(a.words)), K)
    assert a != Vocab(a.words, K + 1) and a != Vocab(a.words, K, grid_size=4)


@pytest.mark.parametrize("words, num_codes, grid_size, match", [
    (["Red"], 8, 8, "lowercase"), (["red."], 8, 8, "punctuation"),
    (["two words"], 8, 8, "single"), (["<pad>"], 8, 8, "punctuation"),
    ("red", 8, 8, "not one string"), (["red"], 0, 8, "num_codes"),
    (["red"], 8, 0, "grid_size"), (["red"], 8.0, 8, "num_codes"),
])
def test_bad_vocab_is_a_config_error(words, num_codes, grid_size, match):
    with pytest.raises(ConfigError, match=match):
        Vocab(words, num_codes, grid_size)


def test_split_words_lowercases_and_strips_surrounding_punctuation():
    assert split_words("  A Large RED circle,  at the top-left. ") == \
        ["a", "large", "red", "circle", "at", "the", "top-left"]
    assert split_words("-- ... !") == []


def test_encode_decode_round_trip(vocab):
    ids = vocab.encode_text("A large red circle, at the top left.")
    assert vocab.decode_text(ids) == EXAMPLE
    for caption in CAPTIONS:
        assert vocab.decode_text(vocab.encode_text(caption)) == caption


@pytest.mark.parametrize("text", ["", "   ", "\n\t", " . , "])
def test_empty_prompt(vocab, text):
    with pytest.raises(PromptError, match=r"^the prompt is empty; .*a, at, blue"):
        vocab.encode_text(text)


def test_non_string_prompt(vocab):
    with pytest.raises(PromptError, match="must be a string, got NoneType"):
        vocab.encode_text(None)


def test_unknown_words_are_named_and_known_words_listed(vocab):
    with pytest.raises(PromptError) as e:
        vocab.encode_text("a purple hexagon at the top")
    msg = str(e.value)
    assert "'hexagon', 'purple'" in msg
    assert "knows these words: " + ", ".join(vocab.words) in msg


def test_decode_text_rejects_non_words(vocab):
    with pytest.raises(PromptError, match=r"id 3 \(<image>\) is not a word"):
        vocab.decode_text([8, IMAGE])
    with pytest.raises(PromptError, match="image code 5"):
        vocab.decode_text([vocab.image_offset + 5])
    with pytest.raises(PromptError, match="out of range"):
        vocab.decode_text([vocab.size])


def test_to_dict_from_dict_round_trip_through_json(vocab):
    d = json.loads(json.dumps(vocab.to_dict()))
    back = Vocab.from_dict(d)
    assert back == vocab and back.encode_text(EXAMPLE) == vocab.encode_text(EXAMPLE)


@pytest.mark.parametrize("change, match", [
    (lambda d: d.pop("words"), "missing"),
    (lambda d: d.update(specials=["<pad>", "<eos>"]), "special tokens"),
    (lambda d: d.update(words=d["words"][::-1]), "sorted"),
])
def test_from_dict_rejects_foreign_dicts(vocab, change, match):
    d = vocab.to_dict()
    change(d)
    with pytest.raises(ConfigError, match=match):
        Vocab.from_dict(d)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_text_encodes_or_raises_prompt_error(text):
    vocab = Vocab.from_captions(CAPTIONS, K)
    try:
        ids = vocab.encode_text(text)
    except PromptError:
        return
    assert ids and all(vocab.image_offset > i >= len(SPECIALS) for i in ids)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=6), max_size=5), st.integers(-2, 5), st.integers(-2, 5))
def test_any_word_list_builds_a_vocab_or_raises_config_error(words, num_codes, grid_size):
    try:
        vocab = Vocab(words, num_codes, grid_size)
    except ConfigError:
        return
    assert vocab == Vocab.from_dict(vocab.to_dict())
    assert vocab.size == len(SPECIALS) + len(set(words)) + num_codes


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(Vocab.from_captions(CAPTIONS, K).words),
                          st.sampled_from(["", ".", ",", "!"]), st.booleans()), min_size=1))
def test_known_words_in_any_case_with_punctuation_encode(parts):
    vocab = Vocab.from_captions(CAPTIONS, K)
    text = " ".join((w.upper() if up else w) + p for w, p, up in parts)
    assert vocab.decode_text(vocab.encode_text(text)) == " ".join(w for w, _, _ in parts)


# ----------------------------------------------------------------------------------------
# Layouts

def test_layouts_exact(vocab):
    codes = grid()
    words = vocab.encode_text(EXAMPLE)
    image = list(codes.reshape(-1) + vocab.image_offset)
    assert words == [8, 15, 17, 13, 9, 21, 22, 16]                    # a large red circle ...
    t2i = text_to_image_sequence(vocab, words, codes)
    assert t2i.dtype == np.int64 and t2i.ndim == 1
    assert t2i.tolist() == [BOS, *words, IMAGE, *image, END_IMAGE, EOS]
    i2t = image_to_text_sequence(vocab, words, codes)
    assert i2t.tolist() == [BOS, IMAGE, *image, END_IMAGE, CAPTION, *words, EOS]
    unc = unconditional_sequence(vocab, codes)
    assert unc.tolist() == [BOS, IMAGE, *image, END_IMAGE, EOS]
    # dropping the caption from text-to-image gives the unconditional layout, and the
    # captioning layout shares its prefix up to </image>
    assert text_to_image_sequence(vocab, [], codes).tolist() == unc.tolist()
    assert i2t[:67].tolist() == unc[:67].tolist()
    assert vocab.describe(t2i).startswith("<bos> a large red circle at the top left <image> #")


def test_layouts_accept_flat_codes_and_lists(vocab):
    codes = grid()
    words = vocab.encode_text(EXAMPLE)
    a = text_to_image_sequence(vocab, words, codes)
    assert np.array_equal(a, text_to_image_sequence(vocab, np.array(words), codes.ravel()))
    assert np.array_equal(a, text_to_image_sequence(vocab, words, codes.tolist()))


@pytest.mark.parametrize("codes, error, match", [
    (np.zeros((4, 4), int), ShapeError, r"\(8, 8\) or \(64,\).*got \(4, 4\)"),
    (np.zeros((63,), int), ShapeError, r"got \(63,\)"),
    (np.zeros((1, 8, 8), int), ShapeError, r"got \(1, 8, 8\)"),
    (np.full((8, 8), K), ShapeError, r"\[0, 512\).*from 512 to 512"),
    (np.full((8, 8), -1), ShapeError, r"\[0, 512\).*from -1"),
    (np.zeros((8, 8)), DTypeError, "integers"),
])
def test_bad_image_codes(vocab, codes, error, match):
    for make in (lambda c: text_to_image_sequence(vocab, [8], c),
                 lambda c: image_to_text_sequence(vocab, [8], c),
                 lambda c: unconditional_sequence(vocab, c), lambda c: caption_prompt(vocab, c)):
        with pytest.raises(error, match=match):
            make(codes)


def test_caption_ids_must_be_words(vocab):
    with pytest.raises(PromptError, match=r"word ids in \[8, 26\).*<eos>"):
        text_to_image_sequence(vocab, [8, EOS], grid())
    with pytest.raises(PromptError, match="image code 0"):
        image_to_text_sequence(vocab, [vocab.image_offset], grid())


def test_layout_context_check(vocab):
    words = vocab.encode_text(EXAMPLE)                  # 8 words + 68 = 76 tokens
    text_to_image_sequence(vocab, words, grid(), context=75)
    with pytest.raises(PromptError, match="76 tokens but a context of 74 trains on at most 75"):
        text_to_image_sequence(vocab, words, grid(), context=74)
    with pytest.raises(PromptError, match="captioning example"):
        image_to_text_sequence(vocab, words, grid(), context=74)


# ----------------------------------------------------------------------------------------
# Training batches

def batch_inputs(vocab, n=32, seed=0):
    rng = np.random.default_rng(seed)
    captions = [vocab.encode_text(CAPTIONS[i % len(CAPTIONS)]) for i in range(n)]
    return captions, rng.integers(0, K, size=(n, 8, 8))


def test_batch_rows_are_the_layouts_shifted_and_padded(vocab):
    captions, codes = batch_inputs(vocab)
    layouts = choose_layouts(np.random.default_rng(1), 32, 0.5, 0.3)
    inputs, targets = make_training_batch(vocab, captions, codes, np.random.default_rng(1),
                                          context=80, p_caption_layout=0.5, p_drop_caption=0.3)
    assert inputs.shape == targets.shape == (32, 80)
    assert inputs.dtype == targets.dtype == np.int64
    assert set(layouts.tolist()) == {TEXT_TO_IMAGE, IMAGE_TO_TEXT, UNCONDITIONAL}
    make = {TEXT_TO_IMAGE: lambda c, g: text_to_image_sequence(vocab, c, g),
            IMAGE_TO_TEXT: lambda c, g: image_to_text_sequence(vocab, c, g),
            UNCONDITIONAL: lambda c, g: unconditional_sequence(vocab, g)}
    for i, layout in enumerate(layouts.tolist()):
        seq = make[layout](captions[i], codes[i])
        padded = np.concatenate([seq, np.full(81 - len(seq), PAD)])
        assert np.array_equal(inputs[i], padded[:-1])
        expected = padded[1:].copy()
        expected[len(seq) - 1:] = IGNORE_INDEX              # every target after <eos>
        assert np.array_equal(targets[i], expected)
        assert targets[i, len(seq) - 2] == EOS                  # <eos> itself is trained


def test_batch_is_deterministic_given_the_rng_state(vocab):
    captions, codes = batch_inputs(vocab)
    a = make_training_batch(vocab, captions, codes, np.random.default_rng(7))
    b = make_training_batch(vocab, captions, codes, np.random.default_rng(7))
    c = make_training_batch(vocab, captions, codes, np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("p_caption, p_drop", [(0.5, 0.1), (0.2, 0.5), (0.0, 0.0), (1.0, 1.0)])
def test_layout_frequencies_match_the_probabilities(vocab, p_caption, p_drop):
    n = 4000
    captions = [vocab.encode_text(EXAMPLE)] * n
    codes = np.zeros((n, 8, 8), np.int64)
    inputs, _ = make_training_batch(vocab, captions, codes, np.random.default_rng(0),
                                    p_caption_layout=p_caption, p_drop_caption=p_drop)
    # read each row's layout off its tokens: a word second -> text-to-image;
    # <caption> after </image> -> captioning; else unconditional
    t2i = inputs[:, 1] != IMAGE
    i2t = inputs[:, 67] == CAPTION
    unc = ~t2i & ~i2t
    expected = [(1 - p_caption) * (1 - p_drop), p_caption, (1 - p_caption) * p_drop]
    for observed, p in zip((t2i, i2t, unc), expected):
        # 4 standard deviations of a binomial share: fails by chance about 1 in 16000
        assert abs(observed.mean() - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-12


def test_batch_errors(vocab):
    captions, codes = batch_inputs(vocab, n=4)
    rng = np.random.default_rng(0)
    with pytest.raises(ShapeError, match=r"\(N, 8, 8\) = \(4, 8, 8\).*got \(3, 8, 8\)"):
        make_training_batch(vocab, captions, codes[:3], rng)
    with pytest.raises(ShapeError, match=r"\[0, 512\)"):
        make_training_batch(vocab, captions, codes + K, rng)
    with pytest.raises(ConfigError, match="p_drop_caption must be a probability"):
        make_training_batch(vocab, captions, codes, rng, p_drop_caption=1.5)
    with pytest.raises(ConfigError, match="context of 40 cannot hold .* at least 69"):
        make_training_batch(vocab, captions, codes, rng, context=40)
    with pytest.raises(ConfigError, match="context must be a whole number >= 1"):
        make_training_batch(vocab, captions, codes, rng, context=80.0)
    long = captions[:3] + [vocab.encode_text("a " * 13)]
    with pytest.raises(PromptError, match="caption 3 has 13 words; a context of 80 holds at "
                                          "most 12 words"):
        make_training_batch(vocab, long, codes, rng)
    with pytest.raises(PromptError, match="word ids"):
        make_training_batch(vocab, captions[:3] + [[BOS]], codes, rng)


def test_twelve_word_captions_fill_the_context_exactly(vocab):
    assert max_caption_words(vocab, 80) == 12
    captions = [vocab.encode_text("a " * 12)] * 2
    inputs, targets = make_training_batch(vocab, captions, np.zeros((2, 8, 8), int),
                                          np.random.default_rng(0), p_caption_layout=1.0)
    assert (inputs != PAD).all() and (targets != IGNORE_INDEX).all()
    assert (targets[:, -1] == EOS).all()


# ----------------------------------------------------------------------------------------
# Prompts, masks and reading model output

def test_prompts(vocab):
    words = vocab.encode_text(EXAMPLE)
    assert image_prompt(vocab, EXAMPLE).tolist() == [BOS, *words, IMAGE]
    assert unconditional_prompt(vocab).tolist() == [BOS, IMAGE]
    codes = grid()
    seq = image_to_text_sequence(vocab, words, codes)
    assert caption_prompt(vocab, codes).tolist() == seq[:68].tolist()


def test_too_long_prompt_states_the_limit(vocab):
    image_prompt(vocab, "a " * 12)
    with pytest.raises(PromptError, match="has 13 words but at most 12 fit a context of 80"):
        image_prompt(vocab, "a " * 13)
    with pytest.raises(PromptError, match="at most 2 fit a context of 70"):
        image_prompt(vocab, EXAMPLE, context=70)
    with pytest.raises(ConfigError, match="needs at least 69"):
        image_prompt(vocab, "a", context=60)
    with pytest.raises(PromptError, match="empty"):
        image_prompt(vocab, "")


def test_masks(vocab):
    image, text = image_token_mask(vocab), text_token_mask(vocab)
    assert image.shape == text.shape == (vocab.size,) and image.dtype == bool
    assert np.flatnonzero(image).tolist() == list(range(vocab.image_offset, vocab.size))
    assert np.flatnonzero(text).tolist() == [EOS, *range(8, vocab.image_offset)]


def test_image_codes_from_tokens(vocab):
    codes = grid()
    seq = text_to_image_sequence(vocab, vocab.encode_text(EXAMPLE), codes)
    got = image_codes_from_tokens(vocab, seq)                   # a whole sequence
    assert got.shape == (8, 8) and np.array_equal(got, codes)
    generated = codes.ravel() + vocab.image_offset              # just the generated part
    assert np.array_equal(image_codes_from_tokens(vocab, generated), codes)
    batch = np.stack([seq, seq])
    assert np.array_equal(image_codes_from_tokens(vocab, batch), np.stack([codes, codes]))
    bad = seq.copy()
    bad[10 + 5] = vocab.encode_text("red")[0]
    with pytest.raises(ShapeError, match=r"image token 5 is 17 \('red'\).*image_token_mask"):
        image_codes_from_tokens(vocab, bad)
    with pytest.raises(ShapeError, match="needs 64 tokens after <image>, only 10"):
        image_codes_from_tokens(vocab, seq[:20])


def test_caption_from_tokens(vocab):
    words = vocab.encode_text(EXAMPLE)
    seq = image_to_text_sequence(vocab, words, grid())
    assert caption_from_tokens(vocab, seq) == EXAMPLE
    generated = [*words, EOS, *vocab.encode_text("blue square")]  # stops at <eos>
    assert caption_from_tokens(vocab, generated) == EXAMPLE
    assert caption_from_tokens(vocab, [words[0], BOS, vocab.image_offset, words[1], PAD,
                                       words[2]]) == "a large"
    assert caption_from_tokens(vocab, np.stack([seq, seq])) == [EXAMPLE, EXAMPLE]
    assert caption_from_tokens(vocab, [EOS]) == ""


# ----------------------------------------------------------------------------------------
# Token caches

def test_encode_dataset_tokens_batches_and_stacks():
    images = np.random.default_rng(0).integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    sizes = []

    def encode(batch):                       # a stand-in tokenizer: 4x4 grid of block means
        sizes.append(len(batch))
        assert batch.dtype == np.uint8
        return batch.reshape(len(batch), 4, 8, 4, 8, 3).mean(axis=(2, 4, 5)).astype(np.int32)

    codes = encode_dataset_tokens(encode, images, batch_size=4)
    assert sizes == [4, 4, 2] and codes.shape == (10, 4, 4) and codes.dtype == np.int64
    assert np.array_equal(codes, encode(images))
    with pytest.raises(ShapeError, match="codes \\(b, g, g\\) or maps \\(b, L\\) for a "
                                         "batch of 4"):
        encode_dataset_tokens(lambda b: np.zeros(len(b)), images, batch_size=4)
    maps = encode_dataset_tokens(lambda b: np.zeros((len(b), 21)), images, batch_size=4)
    assert maps.shape == (10, 21)                        # a multi-scale tokenizer's maps
    with pytest.raises(ConfigError, match="batch_size"):
        encode_dataset_tokens(encode, images, batch_size=0)


def test_token_cache_round_trip(tmp_path):
    path = tmp_path / "tokens.npz"
    codes = np.random.default_rng(0).integers(0, K, size=(5, 8, 8))
    labels = np.arange(20).reshape(5, 4)
    captions = CAPTIONS[:4] + ["un café très «spécial»"]
    save_token_cache(path, codes, captions, labels)
    cache = load_token_cache(path)
    assert np.array_equal(cache.codes, codes) and cache.codes.dtype == np.int64
    assert cache.captions == captions and np.array_equal(cache.labels, labels)
    with np.load(path, allow_pickle=False) as npz:             # plain arrays, no pickle
        assert {npz[k].dtype.kind for k in npz.files} <= {"i", "u"}
    assert os.listdir(tmp_path) == ["tokens.npz"]              # no temp file left behind
    save_token_cache(path, codes)                              # photos: no captions, labels
    codes2, captions2, labels2 = load_token_cache(path)
    assert np.array_equal(codes2, codes) and captions2 is None and labels2 is None


def test_token_cache_errors(tmp_path):
    codes = np.zeros((2, 8, 8), np.int64)
    with pytest.raises(ShapeError, match="1 captions for 2 code grids"):
        save_token_cache(tmp_path / "a.npz", codes, ["a"])
    with pytest.raises(ShapeError, match="integer array"):
        save_token_cache(tmp_path / "a.npz", codes.astype(float))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_token_cache(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a tinytok token cache"):
        load_token_cache(tmp_path / "other.npz")


def test_word_noise_changes_only_caption_inputs_of_captioning_examples():
    """Targets stay true; only input words after <caption> are swapped, never image tokens."""
    vocab = Vocab.from_captions(CAPTIONS, K)
    ids = [vocab.encode_text(c) for c in CAPTIONS] * 8
    codes = np.random.default_rng(1).integers(0, K, (len(ids), 8, 8))
    clean_in, clean_t = make_training_batch(vocab, ids, codes, np.random.default_rng(5))
    noisy_in, noisy_t = make_training_batch(vocab, ids, codes, np.random.default_rng(5),
                                            p_word_noise=1.0)
    np.testing.assert_array_equal(noisy_t, clean_t)
    changed = noisy_in != clean_in
    assert changed.any()
    rows = np.flatnonzero(changed.any(axis=1))
    for r in rows:  # every changed row is a captioning example, changed only in its words
        assert CAPTION in clean_in[r].tolist()
        after_caption = np.arange(clean_in.shape[1]) > clean_in[r].tolist().index(CAPTION)
        assert not (changed[r] & ~after_caption).any()
    words = noisy_in[changed]
    assert ((words >= len(SPECIALS)) & (words < vocab.image_offset)).all()


def test_inputs_and_targets_shift_mask_and_noise(vocab):
    """The one step from sequences to (inputs, targets) that every layout goes through."""
    w = [vocab.encode_text(c)[0] for c in CAPTIONS[:3]]
    seq = np.array([[BOS, w[0], w[1], w[2], EOS, PAD],
                    [BOS, IMAGE, w[2], w[0], EOS, PAD]], dtype=np.int64)
    scored = seq != PAD
    inputs, targets = inputs_and_targets(vocab, seq, scored)
    np.testing.assert_array_equal(inputs, seq[:, :-1])
    np.testing.assert_array_equal(targets, np.where(scored[:, 1:], seq[:, 1:], IGNORE_INDEX))
    noisy_in, noisy_t = inputs_and_targets(vocab, seq, scored, np.random.default_rng(0), 1.0,
                                           may_noise=np.array([[False], [True]]))
    np.testing.assert_array_equal(noisy_t, targets)          # targets stay true
    np.testing.assert_array_equal(noisy_in[0], inputs[0])     # row 0 may not be noised
    is_word = (inputs[1] >= len(SPECIALS)) & (inputs[1] < vocab.image_offset)
    np.testing.assert_array_equal(noisy_in[1][~is_word], inputs[1][~is_word])
    assert all(vocab.is_word(i) for i in noisy_in[1][is_word])
