"""The masked prior (MaskGIT, prior/masked.py): its training batches, its schedule, decoding
by fill_in against an independent loop, the loss with full attention against a slow
reference and finite differences, training it, its checkpoints, and the pipeline with it
(drawing, inpainting, the refusals)."""
import io
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fake_cupy
import reference
import reference_models as ref
from device_helpers import active
from tinytok.conversation import Conversation
from tinytok.data.datasets import make_shapes
from tinytok.errors import CheckpointError, ConfigError, PromptError, ShapeError
from tinytok.gradcheck import relative_error
from tinytok.pipeline import Pipeline, Prior, Tokenizer, region_cells
from tinytok.prior.gpt import config_dict, gpt_config, gpt_forward, gpt_loss_backward, \
    gpt_loss_forward, init_gpt_params
from tinytok.prior.masked import (cosine_schedule, fill_in, inpaint_codes, lowest, mask_id,
                                  masked_batch, masked_prefix, random_subset,
                                  sample_masked_codes, still_masked)
from tinytok.prior.settings import PLAIN, Sampling
from tinytok.prior.vocab import BOS, IMAGE, PAD, Vocab
from tinytok.training import PriorData, TrainSettings, train_prior
from tinytok.training.checkpoint import load_checkpoint, save_checkpoint
from tinytok.training.optim import zeros_like_params
from tinytok.training.prior_data import shapes_vocab

FEW = settings(max_examples=20, deadline=None)
WORDS = ("a", "small", "large", "red", "blue", "circle", "square")
VOCAB = Vocab(WORDS, num_codes=8, grid_size=4)          # 16 image tokens, 24 model tokens
SLOTS = 5
CONTEXT = VOCAB.image_len + 2 + SLOTS                    # <bos> 5 words <image> 16 codes
CFG = gpt_config("gpt-tiny", vocab_size=VOCAB.size + 1, context=CONTEXT)
SHAPES = shapes_vocab(256)                               # the shipped layout: context 80


def one_line(excinfo):
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


def scaled_params(config, seed=0, scale=8.0, dtype="float64"):
    """A random prior whose logits are far from uniform (its matrices scaled up), so that
    which codes are drawn and kept depends on the caption and the grid."""
    params = init_gpt_params(config, seed=seed, dtype="float64")
    return {k: (v * scale if v.ndim == 2 else v).astype(dtype) for k, v in params.items()}


def ids_of(vocab, text):
    return vocab.encode_text(text)


def prefixes(vocab, texts, context):
    return np.stack([masked_prefix(vocab, None if t is None else ids_of(vocab, t), context)
                     for t in texts])


# ---------------------------------------------------------------- masked_batch

def check_batch(vocab, captions, codes, inputs, targets, context):
    """Every promise of masked_batch about one batch; returns which rows lost their
    caption."""
    n, L = len(captions), vocab.image_len
    P = context - L                                      # the prefix: <bos> slots <image>
    assert inputs.shape == targets.shape == (n, context)
    assert inputs.dtype == targets.dtype == np.int64
    assert (inputs[:, 0] == BOS).all() and (inputs[:, P - 1] == IMAGE).all()
    hidden = targets[:, P:] != -1
    assert (targets[:, :P] == -1).all()                  # the caption is never a target
    np.testing.assert_array_equal(inputs[:, P:] == mask_id(vocab), hidden)
    image = codes.reshape(n, L) + vocab.image_offset
    np.testing.assert_array_equal(targets[:, P:][hidden], image[hidden])
    np.testing.assert_array_equal(inputs[:, P:][~hidden], image[~hidden])
    assert hidden.sum(axis=1).min() >= 1                 # at least one masked per row
    dropped = np.zeros(n, dtype=bool)
    for i, caption in enumerate(captions):
        words = inputs[i, 1:P - 1]
        if (words == PAD).all():
            dropped[i] = True
        else:
            np.testing.assert_array_equal(words[:len(caption)], caption)
            assert (words[len(caption):] == PAD).all()
    return dropped


def shapes_rows(n, seed=0):
    """n captions of the shapes data (word ids) and random 8 x 8 grids of 256 codes."""
    captions = [ids_of(SHAPES, c) for c in make_shapes(min(n, 32), seed=seed).captions]
    captions = [captions[i % len(captions)] for i in range(n)]
    codes = np.random.default_rng(seed).integers(0, 256, (n, 8, 8))
    return captions, codes


def test_a_shapes_batch_has_the_fixed_layout():
    captions, codes = shapes_rows(12)
    inputs, targets = masked_batch(SHAPES, captions, codes, np.random.default_rng(0), 80)
    check_batch(SHAPES, captions, codes, inputs, targets, 80)
    assert (inputs[:, 80 - 64 - 1] == IMAGE).all() and mask_id(SHAPES) == SHAPES.size
    assert inputs.max() <= SHAPES.size


@FEW
@given(n=st.integers(1, 6), grid=st.integers(1, 4), num_codes=st.integers(1, 12),
       slots=st.integers(1, 4), p_drop=st.sampled_from([0.0, 0.5, 1.0]),
       seed=st.integers(0, 2 ** 16), data=st.data())
def test_masked_batch_keeps_its_promises(n, grid, num_codes, slots, p_drop, seed, data):
    vocab = Vocab(WORDS, num_codes, grid)
    context = grid * grid + 2 + slots
    word_ids = st.sampled_from([ids_of(vocab, w)[0] for w in WORDS])
    captions = [data.draw(st.lists(word_ids, max_size=slots)) for _ in range(n)]
    codes = np.random.default_rng(seed).integers(0, num_codes, (n, grid, grid))
    rng = np.random.default_rng(seed)
    inputs, targets = masked_batch(vocab, captions, codes, rng, context, p_drop)
    dropped = check_batch(vocab, captions, codes, inputs, targets, context)
    has_words = np.array([len(c) > 0 for c in captions])
    if p_drop == 0.0:
        assert not dropped[has_words].any()
    if p_drop == 1.0:
        assert dropped.all()
    again = np.random.default_rng(seed)                  # same rng state, same batch
    inputs2, targets2 = masked_batch(vocab, captions, codes, again, context, p_drop)
    np.testing.assert_array_equal(inputs2, inputs)
    np.testing.assert_array_equal(targets2, targets)
    assert rng.random() == again.random()                # and the rng advanced alike


def test_the_share_masked_follows_the_cosine_schedule():
    """Over 4000 rows (fixed seed): the mean share masked is E[ceil(64 cos(pi r / 2))] / 64,
    2/pi rounded up to whole tokens; two rows in three have more than half masked (cos
    (pi r / 2) > 1/2 for r < 2/3); every position is masked as often; one caption in ten is
    dropped. Tolerances are 4 standard errors or more (uniform shares would miss by 0.13)."""
    n = 4000
    captions, codes = shapes_rows(n, seed=1)
    inputs, targets = masked_batch(SHAPES, captions, codes, np.random.default_rng(2), 80)
    hidden = targets[:, 16:] != -1
    share = hidden.mean(axis=1)
    r = (np.arange(1_000_000) + 0.5) / 1_000_000
    expected = np.mean(np.ceil(64 * np.cos(0.5 * np.pi * r))) / 64
    assert abs(expected - 2 / np.pi) < 1 / 64
    assert abs(share.mean() - expected) < 0.02, (share.mean(), expected)
    assert abs((share > 0.5).mean() - 2 / 3) < 0.03
    assert np.abs(hidden.mean(axis=0) - share.mean()).max() < 0.04
    dropped = (inputs[:, 1:15] == PAD).all(axis=1)
    assert abs(dropped.mean() - 0.1) < 0.02


def test_masked_batch_bad_input():
    captions, codes = shapes_rows(3)
    rng = np.random.default_rng(0)
    with pytest.raises(ShapeError) as e:
        masked_batch(SHAPES, captions, codes[:2], rng, 80)
    one_line(e)
    with pytest.raises(PromptError) as e:                # 14 slots at context 80
        masked_batch(SHAPES, [[ids_of(SHAPES, "red")[0]] * 15] * 3, codes, rng, 80, 0.0)
    one_line(e)
    with pytest.raises(ConfigError) as e:                # no room for a word
        masked_batch(SHAPES, captions, codes, rng, 66)
    assert "67" in one_line(e)


# ---------------------------------------------------------------- the schedule

def test_cosine_schedule():
    assert cosine_schedule(0.0) == 1.0
    assert abs(cosine_schedule(1.0)) < 1e-15
    assert cosine_schedule(0.5) == pytest.approx(math.sqrt(0.5), rel=1e-15)
    values = cosine_schedule(np.linspace(0, 1, 101))
    assert values.shape == (101,) and (np.diff(values) < 0).all()


@pytest.mark.parametrize("steps", range(1, 13))
def test_still_masked_falls_to_zero_at_the_last_step(steps):
    for n_unknown in range(0, 65):
        left = [still_masked(n_unknown, t, steps) for t in range(steps)]
        assert left[-1] == 0 and left[0] <= n_unknown
        assert all(a >= b for a, b in zip(left, left[1:]))
        assert left == [math.floor(n_unknown * math.cos(math.pi / 2 * (t + 1) / steps))
                        for t in range(steps)]


@FEW
@given(n=st.integers(1, 5), L=st.integers(1, 12), seed=st.integers(0, 2 ** 16))
def test_lowest_picks_the_least_confident_unknowns_and_commits_at_least_one(n, L, seed):
    rng = np.random.default_rng(seed)
    confidence = rng.standard_normal((n, L))
    known = rng.random((n, L)) < 0.3
    confidence[known] = np.inf
    n_unknown = (~known).sum(axis=1)
    counts = rng.integers(0, L + 1, n)
    chosen = lowest(confidence, counts, n_unknown)
    assert chosen.shape == (n, L) and chosen.dtype == bool
    assert not chosen[known].any()
    np.testing.assert_array_equal(chosen.sum(axis=1),
                                  np.minimum(counts, np.maximum(n_unknown - 1, 0)))
    for i in range(n):
        if chosen[i].any() and (~chosen[i] & ~known[i]).any():
            assert confidence[i][chosen[i]].max() < confidence[i][~chosen[i] & ~known[i]].min()


@FEW
@given(n=st.integers(1, 6), L=st.integers(1, 20), seed=st.integers(0, 2 ** 16))
def test_random_subset_has_exact_counts(n, L, seed):
    counts = np.random.default_rng(seed).integers(0, L + 1, n)
    subset = random_subset(np.random.default_rng(seed + 1), n, L, counts)
    assert subset.shape == (n, L) and subset.dtype == bool
    np.testing.assert_array_equal(subset.sum(axis=1), counts)
    np.testing.assert_array_equal(random_subset(np.random.default_rng(seed + 1), n, L, counts),
                                  subset)


# ---------------------------------------------------------------- fill_in

def unknown_counts_expected(start, steps):
    """The count of unknown cells after each step of a decoding that began with start
    unknown: the schedule's still_masked, but at least one fewer than before (lowest), and
    the decoding stops once nothing is unknown."""
    counts, now = [], start
    for t in range(steps):
        if now == 0:
            break
        now = min(math.floor(start * math.cos(math.pi / 2 * (t + 1) / steps)), now - 1)
        counts.append(now)
    return counts


def draw_grids(params, codes, seed, sampling, texts=("a red circle",), guide=True,
               on_step=None, vocab=VOCAB, config=CFG):
    n = len(codes)
    cond = prefixes(vocab, [texts[i % len(texts)] for i in range(n)], config.context)
    uncond = prefixes(vocab, [None] * n, config.context) if guide else None
    return fill_in(params, config, vocab, cond, codes, np.random.default_rng(seed),
                   sampling, uncond, on_step)


@FEW
@given(steps=st.integers(1, 8), n=st.integers(1, 3), seed=st.integers(0, 2 ** 16),
       cfg_scale=st.sampled_from([1.0, 2.0]), choice=st.sampled_from([0.0, 4.5]),
       share_known=st.sampled_from([0.0, 0.5]))
def test_fill_in_fills_every_cell_in_steps_passes_on_the_schedule(steps, n, seed, cfg_scale,
                                                                  choice, share_known):
    params = scaled_params(CFG, seed=1, dtype="float32")
    rng = np.random.default_rng(seed)
    start = rng.integers(0, VOCAB.num_codes, (n, VOCAB.image_len))
    start[rng.random(start.shape) >= share_known] = -1   # an inpainting start, or all masked
    seen = []
    out = draw_grids(params, start, seed, Sampling(steps=steps, cfg_scale=cfg_scale,
                                                   choice_temperature=choice),
                     texts=("a red circle", "a large blue square"),
                     on_step=lambda step, codes: seen.append((step, codes)))
    assert out.shape == (n, 4, 4) and out.dtype == np.int64
    flat = out.reshape(n, -1)
    assert (flat >= 0).all() and (flat < VOCAB.num_codes).all()
    known = start >= 0
    np.testing.assert_array_equal(flat[known], start[known])      # known cells never change
    assert len(seen) <= steps and [s for s, _ in seen] == list(range(len(seen)))
    for i in range(n):
        expected = unknown_counts_expected(int((start[i] < 0).sum()), steps)
        got = [int((codes[i] < 0).sum()) for _, codes in seen]
        assert got[:len(expected)] == expected and set(got[len(expected):]) <= {0}
    for _, codes in seen:                                # committed codes stay committed
        np.testing.assert_array_equal(flat[codes >= 0], codes[codes >= 0])


def test_a_full_grid_follows_still_masked_exactly():
    """An 8 x 8 grid from all masked in 8 steps: 62, 59, 53, 45, 35, 24, 12, 0 unknown."""
    vocab = Vocab(WORDS, 8, 8)
    config = gpt_config("gpt-tiny", vocab_size=vocab.size + 1, context=64 + 2 + SLOTS)
    seen = []
    draw_grids(init_gpt_params(config), np.full((2, 64), -1), 0, Sampling(),
               on_step=lambda step, codes: seen.append((codes < 0).sum(axis=1)),
               vocab=vocab, config=config)
    want = [still_masked(64, t, 8) for t in range(8)]
    assert want == [62, 59, 53, 45, 35, 24, 12, 0]
    np.testing.assert_array_equal(seen, np.array([want, want]).T)


def test_same_seed_same_codes_another_seed_other_codes():
    params = scaled_params(CFG, dtype="float32")
    start = np.full((3, VOCAB.image_len), -1)
    a = draw_grids(params, start, 5, Sampling(steps=4))
    np.testing.assert_array_equal(draw_grids(params, start, 5, Sampling(steps=4)), a)
    assert (draw_grids(params, start, 6, Sampling(steps=4)) != a).any()


def test_one_allowed_code_and_no_choice_noise_leave_nothing_to_chance():
    params = scaled_params(CFG, dtype="float32")
    start = np.full((2, VOCAB.image_len), -1)
    greedy = Sampling(steps=4, top_k=1, choice_temperature=0.0)
    np.testing.assert_array_equal(draw_grids(params, start, 1, greedy),
                                  draw_grids(params, start, 2, greedy))


def test_guidance_at_scale_one_is_no_guidance_and_other_scales_matter():
    params = scaled_params(CFG, dtype="float32")
    start = np.full((3, VOCAB.image_len), -1)
    plain = draw_grids(params, start, 3, Sampling(steps=4, cfg_scale=1.0), guide=False)
    np.testing.assert_array_equal(draw_grids(params, start, 3, Sampling(steps=4, cfg_scale=1.0)),
                                  plain)
    assert (draw_grids(params, start, 3, Sampling(steps=4, cfg_scale=3.0)) != plain).any()


def reference_fill_in(params, config, vocab, cond, uncond, codes, seed, steps, cfg_scale,
                      temperature, choice_temperature):
    """One decoding written out from its description (prior/masked.py's docstring), one
    cell at a time: each step runs the model on the captioned rows and on the captionless
    ones, mixes their logits over the image codes (uncond + s (cond - uncond)), draws every
    cell by the inverse CDF of softmax(logits / temperature) from rng.random(N L), scores
    it by its log-probability plus choice_temperature (1 - (t + 1) / T) Gumbel noise from
    rng.random((N, L)), and leaves masked the floor(k cos(pi/2 (t + 1) / T)) least
    confident of a row's unknown cells (k: those it began with), at least one fewer than
    before."""
    rng = np.random.default_rng(seed)
    codes = np.array(codes)
    n, L = codes.shape
    lo, K = vocab.image_offset, vocab.num_codes
    start = [int((row < 0).sum()) for row in codes]
    for t in range(steps):
        unknown = codes < 0
        if not unknown.any():
            break
        tokens = np.where(unknown, vocab.size, codes + lo)        # <mask> is vocab.size
        c = gpt_forward(np.concatenate([cond, tokens], 1), params, config, mask="full")[0]
        u = gpt_forward(np.concatenate([uncond, tokens], 1), params, config, mask="full")[0]
        c, u = c[:, -L:, lo:lo + K], u[:, -L:, lo:lo + K]
        logits = u + cfg_scale * (c - u)
        draws, gumbels = rng.random(n * L).reshape(n, L), rng.random((n, L))
        new = codes.copy()
        for i in range(n):
            confidence = {}
            for j in np.flatnonzero(unknown[i]):
                z = logits[i, j] / temperature
                p = np.exp(z - z.max())
                p /= p.sum()
                cdf = np.cumsum(p)
                k = next(k for k in range(K) if cdf[k] >= draws[i, j] * cdf[-1])
                new[i, j] = k
                confidence[j] = (math.log(p[k]) + choice_temperature * (1 - (t + 1) / steps)
                                 * -math.log(-math.log(gumbels[i, j])))
            keep_masked = min(math.floor(start[i] * math.cos(math.pi / 2 * (t + 1) / steps)),
                              len(confidence) - 1)
            for j in sorted(confidence, key=lambda j: confidence[j])[:keep_masked]:
                new[i, j] = -1
        codes = new
    return codes.reshape(n, vocab.grid_size, vocab.grid_size)


@pytest.mark.parametrize("cfg_scale, temperature, choice", [(2.5, 1.0, 4.5), (1.5, 0.7, 1.0)])
def test_fill_in_equals_an_independent_decoding_loop(cfg_scale, temperature, choice):
    params = scaled_params(CFG, seed=2)                           # float64
    n = 3
    cond = prefixes(VOCAB, ["a red circle", "a large blue square", "square"], CONTEXT)
    uncond = prefixes(VOCAB, [None] * n, CONTEXT)
    start = np.full((n, VOCAB.image_len), -1)
    start[2, :5] = [1, 2, 3, 4, 5]                                # one row inpaints
    sampling = Sampling(steps=5, cfg_scale=cfg_scale, temperature=temperature,
                        choice_temperature=choice)
    got = fill_in(params, CFG, VOCAB, cond, start, np.random.default_rng(9), sampling, uncond)
    want = reference_fill_in(params, CFG, VOCAB, cond, uncond, start, 9, 5, cfg_scale,
                             temperature, choice)
    np.testing.assert_array_equal(got, want)


def test_fill_in_on_the_fake_cupy_draws_what_numpy_draws():
    params = scaled_params(CFG, dtype="float32")
    start = np.full((3, VOCAB.image_len), -1)
    start[1, 3:9] = 2
    sampling = Sampling(steps=4, cfg_scale=2.0, top_p=0.9)
    want = draw_grids(params, start, 4, sampling)
    with active(fake_cupy.cupy) as xp:
        got = draw_grids({k: xp.asarray(v) for k, v in params.items()}, start, 4, sampling)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, want)


def test_fill_in_bad_shapes():
    params = init_gpt_params(CFG)
    with pytest.raises(ShapeError) as e:
        draw_grids(params, np.full((1, 15), -1), 0, PLAIN)
    one_line(e)
    with pytest.raises(ShapeError) as e:
        inpaint_codes(params, CFG, VOCAB, np.zeros((2, 4, 4), int), np.zeros((1, 4, 4), bool),
                      "a red circle", np.random.default_rng(0), PLAIN)
    one_line(e)


# ---------------------------------------------------------------- the masked loss

LOSS_VOCAB = Vocab(("a", "red", "circle"), num_codes=4, grid_size=2)
LOSS_CFG = gpt_config("gpt-tiny", vocab_size=LOSS_VOCAB.size + 1, context=4 + 2 + 3,
                      n_layer=2, n_head=2, n_embd=8)


def loss_batch(seed=0, n=3):
    captions = [ids_of(LOSS_VOCAB, "a red circle"), ids_of(LOSS_VOCAB, "circle"), []][:n]
    codes = np.random.default_rng(seed).integers(0, 4, (n, 2, 2))
    return masked_batch(LOSS_VOCAB, captions, codes, np.random.default_rng(seed),
                        LOSS_CFG.context, 0.0)


def test_the_masked_loss_equals_a_slow_reference_with_full_attention():
    params = scaled_params(LOSS_CFG, scale=20.0)                  # ~N(0, 0.4) weights
    inputs, targets = loss_batch()
    assert (inputs == mask_id(LOSS_VOCAB)).any()
    T = inputs.shape[1]
    full = ref.gpt_logits(inputs, params, 2, 2, np.ones((T, T), bool))
    causal = ref.gpt_logits(inputs, params, 2, 2, np.tril(np.ones((T, T), bool)))
    loss, cache = gpt_loss_forward(inputs, targets, params, LOSS_CFG, mask="full")
    np.testing.assert_allclose(cache.logits, full, rtol=1e-9, atol=1e-12)
    assert float(loss) == pytest.approx(reference.cross_entropy(full, targets), rel=1e-10)
    np.testing.assert_allclose(gpt_forward(inputs, params, LOSS_CFG)[0], causal, rtol=1e-9,
                               atol=1e-12)                        # the reference's own check
    assert abs(float(loss) - reference.cross_entropy(causal, targets)) > 1e-3


def test_the_masked_loss_gradients_match_finite_differences():
    params = scaled_params(LOSS_CFG, scale=20.0)
    inputs, targets = loss_batch(seed=1)
    loss, cache = gpt_loss_forward(inputs, targets, params, LOSS_CFG, mask="full")
    grads = zeros_like_params(params)
    gpt_loss_backward(cache, grads, LOSS_CFG)
    assert np.abs(grads["gpt.wte"][mask_id(LOSS_VOCAB)]).max() > 1e-6   # <mask> is learned
    rng = np.random.default_rng(0)

    def loss_of(p):
        return float(gpt_loss_forward(inputs, targets, p, LOSS_CFG, mask="full")[0])

    errors = {}
    for key in params:
        idx = ref.sample_indices(params[key].size, 15, rng)
        num = ref.numerical_param_gradient(loss_of, params, key, idx)
        errors[key] = relative_error(grads[key].reshape(-1)[idx], num)
    bad = {k: v for k, v in errors.items() if not v < 1e-6}
    assert not bad, f"{bad}; all: {errors}"


# ---------------------------------------------------------------- training

def structured_data():
    """16 pictures, each one code everywhere, the code a function of its caption: a model
    can learn a hidden code from its caption and from the visible cells."""
    captions, codes = [], []
    for i in range(16):
        size, colour, shape = ("small", "large")[i % 2], ("red", "blue")[i // 2 % 2], \
            ("circle", "square")[i // 4 % 2]
        captions.append(ids_of(VOCAB, f"a {size} {colour} {shape}"))
        codes.append(np.full((4, 4), i % 8))
    return PriorData(np.array(codes), captions, VOCAB)


QUIET = dict(log=lambda *a: None, progress_stream=io.StringIO())


def train_masked(out, config=CFG, steps=30, **options):
    settings = TrainSettings(steps=steps, batch_size=16, lr=5e-3, warmup=3, seed=1,
                             checkpoint_every=100, log_every=1)
    options = {"kind": "masked", **QUIET, **options}
    return train_prior(structured_data(), config, settings, str(out), **options)


def test_training_a_masked_prior_lowers_its_loss_and_saves_its_kind(tmp_path):
    history = train_masked(tmp_path / "m.npz")
    losses = [h["loss"] for h in history]
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.7, losses
    assert load_checkpoint(tmp_path / "m.npz").config["kind"] == "masked"
    prior = Prior.load(tmp_path / "m.npz")
    assert prior.kind.name == "masked" and prior.config.vocab_size == VOCAB.size + 1
    prior.save(tmp_path / "again.npz")
    assert Prior.load(tmp_path / "again.npz").kind.name == "masked"


def save_prior(path, vocab_size, kind=None):
    config = gpt_config("gpt-tiny", vocab_size=vocab_size, context=CONTEXT)
    meta = {"model": config_dict(config), "vocab": VOCAB.to_dict()}
    if kind is not None:
        meta["kind"] = kind
    save_checkpoint(path, kind="prior", params=init_gpt_params(config), config=meta)
    return path


def test_checkpoints_name_their_kind_and_an_old_one_is_raster(tmp_path):
    assert Prior.load(save_prior(tmp_path / "old.npz", VOCAB.size)).kind.name == "raster"
    assert Prior.load(save_prior(tmp_path / "m.npz", VOCAB.size + 1, "masked")).kind.name \
        == "masked"
    for name, size, kind in (("old_plus.npz", VOCAB.size + 1, None),
                             ("m_short.npz", VOCAB.size, "masked"),
                             ("other.npz", VOCAB.size, "diffusion")):
        with pytest.raises(CheckpointError) as e:
            Prior.load(save_prior(tmp_path / name, size, kind))
        assert name in one_line(e)


def test_a_prior_made_in_code_must_fit_its_kind():
    for kind, size in (("masked", VOCAB.size), ("raster", VOCAB.size + 1)):
        config = gpt_config(CFG, vocab_size=size)
        with pytest.raises(ConfigError) as e:
            Prior(init_gpt_params(config), config, VOCAB, kind)
        assert f"{kind} prior" in one_line(e)
    assert Prior.load().kind.name == "raster"          # the shipped prior names no kind


def test_train_prior_refuses_what_a_masked_prior_cannot_be(tmp_path):
    with pytest.raises(ConfigError) as e:                         # no row for <mask>
        train_masked(tmp_path / "a.npz", gpt_config(CFG, vocab_size=VOCAB.size), steps=1)
    assert f"vocab_size={VOCAB.size + 1}" in one_line(e)
    with pytest.raises(ConfigError) as e:
        train_masked(tmp_path / "b.npz", steps=1, p_conversation=0.5)
    assert "conversations" in one_line(e)
    with pytest.raises(ConfigError) as e:
        train_masked(tmp_path / "c.npz", steps=1, kind="diffusion")
    assert "raster, masked" in one_line(e)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- the pipeline

@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.load()


@pytest.fixture(scope="module")
def masked_pipe(tokenizer):
    config = gpt_config("gpt-tiny", vocab_size=SHAPES.size + 1, context=80)
    return Pipeline(tokenizer, Prior(scaled_params(config, scale=4.0, dtype="float32"),
                                     config, SHAPES, "masked"))


@pytest.fixture(scope="module")
def pictures():
    return make_shapes(2, seed=3).images


FAST = Sampling(steps=3)


def test_generate_with_a_masked_prior_draws_once_whatever_rerank_says(masked_pipe):
    prompts = ["a red circle", "a small blue square at the top left"]
    images = masked_pipe.generate(prompts, n=2, seed=4, sampling=FAST.but(rerank=1))
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(
        masked_pipe.generate(prompts, n=2, seed=4, sampling=FAST.but(rerank=4)), images)
    prior = masked_pipe.prior
    codes = sample_masked_codes(prior.params, prior.config, SHAPES, prompts[0], 2,
                                np.random.default_rng(4), FAST)
    np.testing.assert_array_equal(masked_pipe.tokenizer.decode(codes), images[:2])


def test_a_masked_prior_refuses_words(masked_pipe, pictures):
    codes = masked_pipe.tokenizer.encode(pictures)
    calls = [lambda: masked_pipe.caption(pictures),
             lambda: masked_pipe.caption_log_likelihood(codes, "a red circle"),
             lambda: masked_pipe.edit(pictures, "make it blue"),
             lambda: masked_pipe.converse(["a red circle"]),
             lambda: Conversation(masked_pipe)]
    for call in calls:
        with pytest.raises(ConfigError) as e:
            call()
        assert "masked prior" in one_line(e)


def test_inpaint_redraws_the_cells_of_the_region_only(masked_pipe, pictures):
    """The cells the region touches are drawn again, the others keep the original's codes,
    and the picture is the decoding of those codes: where the decoder cannot see the
    region, exactly the tokenizer's reconstruction. (Its reach: conv1 and two residual
    blocks of 3 x 3 convolutions see 3 cells around, the two upsamplings a few pixels more;
    measured, a change in the top left 8 x 8 pixels moves pixels up to row and column 22.)
    """
    tok, prior = masked_pipe.tokenizer, masked_pipe.prior
    region = (0, 0, 8, 8)
    out = masked_pipe.inpaint(pictures, region, "a large red square", seed=7, sampling=FAST)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
    codes = tok.encode(pictures)
    hidden = np.broadcast_to(region_cells(region, 32, 8), codes.shape)
    assert hidden.sum() == 2 * 4
    drawn = inpaint_codes(prior.params, prior.config, SHAPES, codes, hidden,
                          "a large red square", np.random.default_rng(7), FAST)
    np.testing.assert_array_equal(drawn[~hidden], codes[~hidden])
    assert (drawn[hidden] != codes[hidden]).any()
    np.testing.assert_array_equal(out, tok.decode(drawn))
    recon = tok.decode(codes)
    np.testing.assert_array_equal(out[:, 24:], recon[:, 24:])
    np.testing.assert_array_equal(out[:, :, 24:], recon[:, :, 24:])
    assert (out[:, :8, :8] != recon[:, :8, :8]).any()
    many = masked_pipe.inpaint(pictures, np.pad(np.ones((4, 4), bool), (14, 14)),
                               "a red circle", n=3, seed=1, sampling=FAST)
    assert many.shape == (6, 32, 32, 3)


@pytest.mark.parametrize("region, error", [
    ((5, 0, 5, 10), ConfigError),                 # empty: left == right
    (np.zeros((32, 32), bool), ConfigError),      # a mask without a pixel
    ((0, 0, 40, 8), ConfigError),                 # past the right edge
    ((-1, 0, 8, 8), ConfigError),                 # before the left edge
    ((0, 0, 8), ConfigError),                     # three numbers
    ((0, 0, 8.5, 8), ConfigError),                # not whole pixels
    (np.ones((16, 16), bool), ShapeError),        # a mask of another size
    (np.ones((32, 32), int), ConfigError),        # a mask, but not of booleans
])
def test_bad_regions_are_one_line_errors(masked_pipe, pictures, region, error):
    with pytest.raises(error) as e:
        masked_pipe.inpaint(pictures, region, "a red circle", sampling=FAST)
    assert "region" in one_line(e)


def test_inpaint_needs_a_masked_prior_and_good_settings(tokenizer, masked_pipe, pictures):
    config = gpt_config("gpt-tiny", vocab_size=SHAPES.size, context=80)
    raster = Pipeline(tokenizer, Prior(init_gpt_params(config), config, SHAPES))
    with pytest.raises(ConfigError) as e:
        raster.inpaint(pictures, (0, 0, 8, 8), "a red circle")
    assert "masked prior" in one_line(e)
    with pytest.raises(PromptError):
        masked_pipe.inpaint(pictures, (0, 0, 8, 8), "a red zebra", sampling=FAST)


@pytest.mark.parametrize("bad", [dict(steps=0), dict(steps=2.5), dict(choice_temperature=-1),
                                 dict(choice_temperature=float("nan"))])
def test_bad_masked_sampling_settings_are_config_errors(bad):
    with pytest.raises(ConfigError) as e:
        Sampling(**bad)
    assert next(iter(bad)) in one_line(e)
