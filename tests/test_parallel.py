"""tinytok.parallel, the speed layer: batch parts on threads give the one-thread results.

Work split into parts of the batch must cover the batch once, in order, add the parts'
gradients, pass exceptions up, and never split again inside a part. Results through a
matrix product may differ from one thread's in the last bits (BLAS may round a product of
16 rows differently from one of 32), so they are compared to rounding; the same thread count
twice must give the same bits (reproducible training).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinytok import parallel
from tinytok.errors import ConfigError


@pytest.fixture
def one_thread_after():
    """Whatever a test sets, one thread again afterwards."""
    yield
    parallel.use_cores(1)


@settings(max_examples=60, deadline=None)
@given(n_rows=st.integers(1, 300), n_blocks=st.integers(1, 9))
def test_row_blocks_cover_every_row_once_in_order(n_rows, n_blocks):
    blocks = parallel.row_blocks(n_rows, n_blocks)
    assert 1 <= len(blocks) <= min(n_rows, n_blocks)
    assert blocks[0][0] == 0 and blocks[-1][1] == n_rows
    assert all(a < b for a, b in blocks)
    assert all(blocks[i][1] == blocks[i + 1][0] for i in range(len(blocks) - 1))
    sizes = [b - a for a, b in blocks]
    assert max(sizes) - min(sizes) <= 1                  # as even as integers allow


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_bad_thread_counts_are_clear_errors(monkeypatch, bad):
    monkeypatch.setenv("TINYTOK_THREADS", bad)
    with pytest.raises(ConfigError, match="TINYTOK_THREADS must be a positive integer"):
        parallel.use_cores()
    for n in (0, -1, 2.0, True, "3"):
        with pytest.raises(ConfigError, match="the thread count must be a whole number >= 1"):
            parallel.use_cores(n)


def test_thread_count_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TINYTOK_THREADS", "3")
    try:
        parallel.use_cores()
        assert parallel.threads() == 3
    finally:
        parallel.use_cores(1)


def test_batch_parts_cover_the_batch_in_order_and_add_the_gradients(one_thread_after):
    parallel.use_cores(3)
    grads = {"w": np.zeros((2, 2)), "b": np.zeros(3)}

    def part(lo, hi, part_grads):
        part_grads["w"] += hi - lo           # each part adds its size: the sum is the batch
        part_grads["b"][0] += lo
        return lo, hi

    assert parallel.for_batch_parts(part, 7, grads) == [(0, 2), (2, 4), (4, 7)]
    np.testing.assert_array_equal(grads["w"], np.full((2, 2), 7.0))
    assert grads["b"][0] == 0 + 2 + 4


def test_nothing_is_split_inside_a_batch_part(one_thread_after):
    parallel.use_cores(3)
    seen = []

    def part(lo, hi, part_grads):
        seen.append(len(parallel.for_batch_parts(lambda *a: None, 4, part_grads)))

    parallel.for_batch_parts(part, 3, {"w": np.zeros(1)})
    assert seen == [1] * 3                          # a part inside a part is the whole part
    assert len(parallel.for_batch_parts(lambda *a: None, 4, {"w": np.zeros(1)})) == 3


def test_a_batch_part_exception_reaches_the_caller(one_thread_after):
    parallel.use_cores(2)

    def part(lo, hi, part_grads):
        if lo > 0:
            raise RuntimeError("boom in the second part")

    with pytest.raises(RuntimeError, match="second part"):
        parallel.for_batch_parts(part, 4, {"w": np.zeros(1)})
    assert not getattr(parallel._this_thread, "in_part", False)


def test_one_thread_runs_the_whole_batch_on_the_given_grads():
    parallel.use_cores(1)
    grads = {"w": np.zeros(1)}
    assert parallel.for_batch_parts(lambda lo, hi, g: (lo, hi, g is grads), 5, grads) \
        == [(0, 5, True)]


def test_encoding_in_batch_parts_gives_the_one_thread_ids(one_thread_after):
    """Tokenizer.encode runs each batch in parts (one per thread): the same ids."""
    from tinytok.data.datasets import make_shapes
    from tinytok.pipeline import Tokenizer
    from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_config
    config = tokenizer_config("vqvae-tiny")
    tokenizer = Tokenizer(init_tokenizer_params(config, seed=3), config)
    images = make_shapes(10, seed=4).images
    parallel.use_cores(1)
    want = tokenizer.encode(images, batch_size=7)
    pictures = tokenizer.decode(want, batch_size=7)
    parallel.use_cores(3)
    got = tokenizer.encode(images, batch_size=7)
    # ids are discrete, but a latent almost halfway between two codes may flip when BLAS
    # rounds its part's product differently: nearly all agree, and decoding agrees to a level
    assert (got == want).mean() > 0.98
    np.testing.assert_array_equal(tokenizer.encode(images, batch_size=7), got)  # rerun: same
    again = tokenizer.decode(want, batch_size=7)
    assert np.abs(again.astype(int) - pictures).max() <= 1


def test_blas_threads_for_small_products_switch_and_come_back():
    from threadpoolctl import threadpool_info
    parallel.use_cores(2)
    try:
        with parallel.blas_threads_for_small_products():
            assert parallel.threads() == 1                       # batch parts off
            inside = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        assert parallel.threads() == 2
        after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        assert inside == [parallel.available_cores()] * len(inside)
        assert after == [1] * len(after)                         # use_cores' setting again
    finally:
        parallel.use_cores(1)
