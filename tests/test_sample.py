"""Sampling: the KV cache gives the same logits as recomputing, the logit filters keep what
they promise, draws follow the probabilities, guidance and argument checks."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import reference_models as ref
from tinytok.backend import to_numpy
from tinytok.errors import ConfigError, TinytokError
from tinytok.prior.gpt import GPTConfig, gpt_forward, init_gpt_params, new_kv_cache
from tinytok.prior.settings import PLAIN, Sampling
from tinytok.prior.sample import (NextTokenLogits, continue_sequences, draw, filter_logits,
                                  guided)

CFG = GPTConfig("test-sample", vocab_size=17, context=12, n_layer=2, n_head=2, n_embd=16)
FEW = settings(max_examples=30, deadline=None)


def params_of(dtype, seed=0, scale=10.0):
    """Init params with the weights scaled up, so that the logits are far from uniform."""
    p = init_gpt_params(CFG, seed=seed, dtype="float64")
    p = {k: (v * scale if v.ndim == 2 else v) for k, v in p.items()}
    return {k: v.astype(dtype) for k, v in p.items()}


def tokens(seed, B, T):
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, (B, T))


# --- the KV cache ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float64", 1e-10)])
def test_cached_and_uncached_next_token_logits_agree(dtype, tol):
    params = params_of(dtype)
    B, prompt_len = 3, 4
    cached = NextTokenLogits(params, CFG, B, use_cache=True)
    plain = NextTokenLogits(params, CFG, B, use_cache=False)
    ids = tokens(1, B, CFG.context)  # run right up to the end of the context
    steps = [ids[:, :prompt_len]] + [ids[:, t:t + 1] for t in range(prompt_len, CFG.context)]
    spread = 0.0
    for new in steps:
        a, b = cached.step(new), plain.step(new)
        assert a.shape == b.shape == (B, CFG.vocab_size)
        assert a.dtype == np.dtype(dtype)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
        spread = max(spread, float(np.ptp(to_numpy(b))))
    assert spread > 1.0  # the logits are not trivially flat


def test_cached_forward_of_a_full_sequence_equals_the_plain_forward():
    params = params_of("float64")
    ids = tokens(2, 2, 9)
    want, _ = gpt_forward(ids, params, CFG)
    kv = new_kv_cache(params, CFG, 2)
    got, _ = gpt_forward(ids, params, CFG, kv)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert [layer.length for layer in kv] == [9] * CFG.n_layer


def test_cached_forward_in_chunks_equals_the_plain_forward():
    params = params_of("float64")
    ids = tokens(3, 2, 10)
    want, _ = gpt_forward(ids, params, CFG)
    kv = new_kv_cache(params, CFG, 2)
    parts = [gpt_forward(ids[:, a:b], params, CFG, kv)[0]
             for a, b in [(0, 3), (3, 5), (5, 6), (6, 10)]]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), want, rtol=1e-12, atol=1e-12)


def test_running_past_the_context_is_an_error_on_both_paths():
    params = params_of("float64")
    for use_cache in (True, False):
        model = NextTokenLogits(params, CFG, 1, use_cache=use_cache)
        model.step(tokens(0, 1, CFG.context))
        with pytest.raises(TinytokError, match="context"):
            model.step(tokens(0, 1, 1))


def test_cached_path_on_backend(xp):
    params = {k: xp.asarray(v) for k, v in params_of("float32").items()}
    cached = NextTokenLogits(params, CFG, 2, use_cache=True)
    plain = NextTokenLogits(params, CFG, 2, use_cache=False)
    ids = tokens(4, 2, 6)
    for new in (ids[:, :3], ids[:, 3:4], ids[:, 4:5], ids[:, 5:6]):
        np.testing.assert_allclose(to_numpy(cached.step(new)), to_numpy(plain.step(new)),
                                   rtol=1e-5, atol=1e-5)


# --- filters --------------------------------------------------------------------------------

def logits_of(seed, B=3, V=9, scale=2.0):
    return np.random.default_rng(seed).standard_normal((B, V)) * scale


def test_temperature_divides_the_logits():
    logits = logits_of(0)
    np.testing.assert_allclose(filter_logits(logits, temperature=2.5), logits / 2.5)
    np.testing.assert_array_equal(filter_logits(logits), logits)


def test_allowed_mask_sets_the_rest_to_minus_infinity(xp):
    logits = logits_of(1)
    allowed = np.zeros(9, dtype=bool)
    allowed[[2, 3, 7]] = True
    out = to_numpy(filter_logits(xp.asarray(logits), allowed=allowed))
    assert np.all(np.isneginf(out[:, ~allowed]))
    np.testing.assert_array_equal(out[:, allowed], logits[:, allowed])


@FEW
@given(V=st.integers(1, 12), k=st.integers(1, 14), seed=st.integers(0, 2 ** 16))
def test_top_k_keeps_the_k_largest(V, k, seed):
    logits = logits_of(seed, V=V)
    out = filter_logits(logits, top_k=k)
    kept = np.isfinite(out)
    assert np.all(kept.sum(axis=1) == min(k, V))
    for row, keep in zip(logits, kept):
        np.testing.assert_array_equal(np.sort(np.argsort(-row)[:min(k, V)]), np.flatnonzero(keep))
    np.testing.assert_array_equal(out[kept], logits[kept])


def test_top_k_one_is_greedy():
    logits = logits_of(2, B=5)
    out = filter_logits(logits, top_k=1)
    assert np.all(np.isfinite(out).sum(axis=1) == 1)
    for seed in range(5):
        np.testing.assert_array_equal(draw(out, np.random.default_rng(seed)),
                                      logits.argmax(axis=1))


@FEW
@given(V=st.integers(1, 12), p=st.floats(0.01, 1.0), temperature=st.floats(0.3, 3.0),
       seed=st.integers(0, 2 ** 16))
def test_top_p_keeps_the_smallest_set_with_enough_mass(V, p, temperature, seed):
    logits = logits_of(seed, V=V)
    scaled = logits / temperature
    for row in scaled:  # stay away from rounding at the boundary of the nucleus
        probs = np.sort(np.exp(row - row.max()) / np.exp(row - row.max()).sum())[::-1]
        assume(np.abs(np.cumsum(probs) - p).min() > 1e-9)
    out = filter_logits(logits, temperature=temperature, top_p=p)
    for row, got in zip(scaled, out):
        keep = ref.top_p_keep(row, p)
        np.testing.assert_array_equal(np.isfinite(got), keep)
        assert np.isfinite(got[row.argmax()])  # the best token always survives
        np.testing.assert_allclose(got[keep], row[keep])


def test_top_p_small_keeps_only_the_best_and_one_keeps_all():
    logits = logits_of(3)
    only_best = filter_logits(logits, top_p=1e-6)
    assert np.all(np.isfinite(only_best).sum(axis=1) == 1)
    assert np.all(np.isfinite(only_best[np.arange(3), logits.argmax(1)]))
    np.testing.assert_array_equal(filter_logits(logits, top_p=1.0), logits)


def test_top_p_known_example():
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    logits = np.log(probs)
    kept = lambda p: np.isfinite(filter_logits(logits, top_p=p))[0].tolist()
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.51) == [True, True, False, False]
    assert kept(0.81) == [True, True, True, False]
    assert kept(0.96) == [True, True, True, True]


# --- drawing --------------------------------------------------------------------------------

def test_greedy_is_argmax(xp):
    logits = logits_of(4, B=6)
    got = draw(xp.asarray(logits), np.random.default_rng(0), greedy=True)
    np.testing.assert_array_equal(to_numpy(got), logits.argmax(axis=1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sample_frequencies_follow_the_softmax(dtype):
    row = np.array([1.0, 0.0, -1.0, 2.0, 0.5, -np.inf, 0.2])
    probs = np.exp(row - row.max())
    probs /= probs.sum()
    n = 40000
    got = draw(np.tile(row, (n, 1)).astype(dtype), np.random.default_rng(123))
    counts = np.bincount(got, minlength=7)
    assert counts[5] == 0  # a -inf logit is never drawn
    live = probs > 0
    chi2 = (((counts - n * probs) ** 2)[live] / (n * probs[live])).sum()
    assert chi2 < 25, (counts, n * probs)  # 5 degrees of freedom: P(chi2 > 25) ~ 1e-4


def test_same_seed_same_draws():
    logits = logits_of(5, B=50)
    a = draw(logits, np.random.default_rng(9))
    b = draw(logits, np.random.default_rng(9))
    c = draw(logits, np.random.default_rng(10))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (50,) and a.min() >= 0 and a.max() < 9


# --- guidance and argument checks -----------------------------------------------------------

def test_guidance():
    cond, uncond = logits_of(6), logits_of(7)
    np.testing.assert_allclose(guided(cond, uncond, 1.0), cond, rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(guided(cond, uncond, 0.0), uncond)
    np.testing.assert_allclose(guided(cond, uncond, 3.0), uncond + 3 * (cond - uncond))


@pytest.mark.parametrize("kwargs", [
    dict(temperature=0.0), dict(temperature=-1.0), dict(temperature=float("nan")),
    dict(top_p=0.0), dict(top_p=1.5), dict(top_p=-0.2),
    dict(top_k=0), dict(top_k=-3), dict(top_k=2.5),
    dict(cfg_scale=-0.5),
])
def test_bad_sampling_args_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        Sampling(**kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(), dict(temperature=0.1, top_k=1, top_p=1.0), dict(top_p=0.01, cfg_scale=0.0),
    dict(top_k=100, cfg_scale=7.5),
])
def test_good_sampling_args_pass(kwargs):
    assert Sampling(**kwargs) == Sampling().but(**kwargs)


@pytest.mark.parametrize("top_k", [float("nan"), float("inf")])
def test_non_finite_top_k_is_a_config_error(top_k):
    """Not a whole number, so the same clear ConfigError as top_k=2.5 (not a bare ValueError
    or OverflowError from int())."""
    with pytest.raises(ConfigError):
        Sampling(top_k=top_k)


# --- the one sampling loop ------------------------------------------------------------------

def test_the_loop_writes_what_step_by_step_drawing_writes():
    """continue_sequences is the loop of NextTokenLogits, filter_logits and draw, no more."""
    params, prompt = params_of("float64"), tokens(2, 3, 4)
    got = continue_sequences(prompt, params, CFG, 5, np.random.default_rng(7),
                             PLAIN.but(top_k=6))
    rng, state, want = np.random.default_rng(7), NextTokenLogits(params, CFG, 3), []
    logits = state.step(prompt)
    for _ in range(5):
        token = draw(filter_logits(logits, top_k=6), rng)
        want.append(token)
        logits = state.step(token[:, None])
    np.testing.assert_array_equal(got, np.stack(want, axis=1))
    assert got.dtype == np.int64 and got.shape == (3, 5)


def test_the_loop_without_the_cache_writes_the_same_tokens():
    params, prompt = params_of("float64"), tokens(3, 2, 3)
    a = continue_sequences(prompt, params, CFG, 6, np.random.default_rng(1), use_cache=True)
    b = continue_sequences(prompt, params, CFG, 6, np.random.default_rng(1), use_cache=False)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_fork_continues_its_history_as_a_fresh_state_fed_everything(use_cache):
    """fork(n): n copies of a one-sequence stream, each continuing it as if fed from the
    start (to rounding: the prefix went through the model in other pieces)."""
    params, ids = params_of("float64"), tokens(4, 3, 9)
    history = NextTokenLogits(params, CFG, 1, use_cache)
    history.step(ids[:1, :5])
    forked = history.fork(3)
    assert forked.length == history.length == 5
    got = forked.step(ids[:, 5:])
    fresh = NextTokenLogits(params, CFG, 3, use_cache)
    want = fresh.step(np.concatenate([np.repeat(ids[:1, :5], 3, axis=0), ids[:, 5:]], axis=1))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    history.step(ids[:1, 5:6])                      # the original goes on unchanged by forks
    assert history.length == 6 and forked.length == 9
    with pytest.raises(TinytokError, match="one sequence"):
        forked.fork(2)


def test_the_loop_after_a_history_writes_what_the_whole_prompt_writes():
    params, prompt = params_of("float64"), tokens(5, 1, 6)
    history = NextTokenLogits(params, CFG, 1)
    history.step(prompt[:, :4])
    uncond = tokens(6, 1, 2)
    kw = dict(uncond_prompt=np.tile(uncond, (2, 1)), sampling=PLAIN.but(cfg_scale=2.0, top_k=5))
    a = continue_sequences(np.tile(prompt[:, 4:], (2, 1)), params, CFG, 5,
                           np.random.default_rng(3), history=history, **kw)
    kw["uncond_prompt"] = np.tile(np.concatenate([prompt[:, :4], uncond], 1), (2, 1))
    b = continue_sequences(np.tile(prompt, (2, 1)), params, CFG, 5, np.random.default_rng(3),
                           **kw)
    np.testing.assert_array_equal(a, b)
    assert history.length == 4                      # the loop drew on forks of it


def test_a_row_that_wrote_the_stop_token_keeps_writing_it_and_the_loop_ends_early():
    params, prompt = params_of("float64"), tokens(4, 4, 2)
    free = continue_sequences(prompt, params, CFG, 8, np.random.default_rng(0), greedy=True)
    stop = int(free[0, 1])                       # a token row 0 writes second, greedily
    got = continue_sequences(prompt, params, CFG, 8, np.random.default_rng(0), greedy=True,
                             stop=stop)
    firsts = [list(r).index(stop) if stop in r else len(r) for r in free]
    for row, free_row, first in zip(got, free, firsts):
        np.testing.assert_array_equal(row[:first + 1], free_row[:len(row)][:first + 1])
        assert (row[first:] == stop).all()        # after the stop token: only stop tokens
    assert got.shape[1] == min(8, max(firsts) + 1)  # it ends when every row has stopped


def test_guidance_at_scale_one_is_plain_sampling():
    params, prompt = params_of("float64"), tokens(5, 2, 3)
    plain = continue_sequences(prompt, params, CFG, 4, np.random.default_rng(2))
    same = continue_sequences(prompt, params, CFG, 4, np.random.default_rng(2),
                              uncond_prompt=tokens(6, 2, 1), sampling=PLAIN)
    other = continue_sequences(prompt, params, CFG, 4, np.random.default_rng(2),
                               uncond_prompt=tokens(6, 2, 1),
                               sampling=PLAIN.but(cfg_scale=3.0))
    np.testing.assert_array_equal(plain, same)
    assert not np.array_equal(plain, other)
