"""tinytok.parallel: blocks of rows on threads give exactly the one-thread results.

Every op that cuts its work into blocks is run on the same inputs with one thread and with
three (an odd count, so blocks are uneven), with the size threshold lowered so that even
these small test arrays are split. Element-wise and row-wise work must give the same bits;
a matrix product cut into blocks may differ in the last bit (BLAS rounds the edges of its
tiles differently), so outputs that pass through a product are compared to a few float32
ulps. The same thread count twice must give the same bits (reproducible training).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinytok import parallel
from tinytok.errors import ConfigError
from tinytok.ops.activations import gelu_backward, gelu_forward, relu_backward, relu_forward
from tinytok.ops.attention import causal_self_attention_backward, causal_self_attention_forward
from tinytok.ops.conv import (conv2d_backward, conv2d_forward, conv_transpose2d_backward,
                              conv_transpose2d_forward)
from tinytok.ops.linear import linear_backward, linear_forward
from tinytok.ops.losses import cross_entropy_backward, cross_entropy_forward
from tinytok.ops.norm import layer_norm_backward, layer_norm_forward
from tinytok.tokenizer.quantize import nearest_codes


@pytest.fixture
def split_everything(monkeypatch):
    """Split even tiny arrays; restore one thread afterwards."""
    monkeypatch.setattr(parallel, "MIN_PARALLEL_SIZE", 1)
    yield
    parallel.use_cores(1)


def normal(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def chwn(x):
    """x (N, C, H, W) as the convolutions keep activations: an NCHW view of CHWN memory."""
    return np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)


def pair_cases(rng):
    """name -> a function running one forward and backward, returning every array out."""
    x3, dy3 = normal(rng, 5, 30, 12), normal(rng, 5, 30, 12)   # 150 rows: 3 product blocks
    g, b = normal(rng, 12), normal(rng, 12)
    w, bias = normal(rng, 12, 9), normal(rng, 9)
    w_qkv, b_qkv = normal(rng, 12, 36) * 0.3, normal(rng, 36)
    w_proj, b_proj = normal(rng, 12, 12) * 0.3, normal(rng, 12)
    img = chwn(normal(rng, 6, 4, 9, 9))
    w_conv, b_conv = normal(rng, 5, 4, 3, 3), normal(rng, 5)
    w_up, b_up = normal(rng, 4, 3, 4, 4), normal(rng, 3)
    logits = normal(rng, 5, 7, 11)
    targets = rng.integers(0, 11, (5, 7))
    targets[0, :3] = -1                                   # some ignored positions
    latents, codebook = normal(rng, 4, 150), normal(rng, 7, 4)

    def gelu():
        y, c = gelu_forward(x3)
        return y, gelu_backward(dy3, c)

    def relu():
        y, c = relu_forward(img)
        return y, relu_backward(chwn(np.asarray(img) * 2 - 1), c)

    def layer_norm():
        y, c = layer_norm_forward(x3, g, b)
        return (y, *layer_norm_backward(dy3, c))

    def linear():
        y, c = linear_forward(x3, w, bias)
        return (y, *linear_backward(normal(np.random.default_rng(1), *y.shape), c))

    def linear_no_bias():
        y, c = linear_forward(x3, w, None)
        return (y, *linear_backward(normal(np.random.default_rng(1), *y.shape), c)[:2])

    def attention():
        y, c = causal_self_attention_forward(x3, w_qkv, b_qkv, w_proj, b_proj, 3)
        return (y, *causal_self_attention_backward(dy3, c))

    def conv():
        y, c = conv2d_forward(img, w_conv, b_conv, stride=2, padding=1)
        return (y, *conv2d_backward(chwn(np.ones(y.shape, np.float32) * 0.5 + y), c))

    def conv_narrowing():  # F < C at stride 1: runs as a transposed convolution
        y, c = conv2d_forward(img, w_conv[:3], b_conv[:3], stride=1, padding=1)
        return (y, *conv2d_backward(chwn(y * 0.5), c))

    def nearest():  # one id per latent: the second array is 1-D
        return (nearest_codes(latents, codebook),)

    def conv_transpose():
        y, c = conv_transpose2d_forward(img, w_up, b_up, stride=2, padding=1)
        return (y, *conv_transpose2d_backward(chwn(y * 0.5), c))

    def cross_entropy():
        loss, c = cross_entropy_forward(logits, targets)
        return loss, cross_entropy_backward(1.0, c)

    return {f.__name__: f for f in (gelu, relu, layer_norm, linear, linear_no_bias, attention,
                                    conv, conv_narrowing, conv_transpose, cross_entropy,
                                    nearest)}


NO_PRODUCT = {"gelu", "relu", "layer_norm", "cross_entropy"}


@pytest.mark.parametrize("name", list(pair_cases(np.random.default_rng(0))))
def test_ops_agree_on_one_and_three_threads(split_everything, name):
    run = pair_cases(np.random.default_rng(0))[name]
    parallel.use_cores(1)
    want = run()
    parallel.use_cores(3)
    got, again = run(), run()
    assert len(got) == len(want)
    for i, (a, b, c) in enumerate(zip(want, got, again)):
        what = f"{name} output {i}"
        np.testing.assert_array_equal(np.asarray(c), np.asarray(b), err_msg=what + " rerun")
        if name in NO_PRODUCT:
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=what)
        else:
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5,
                                       err_msg=what)


def test_ops_really_split_when_asked(split_everything, monkeypatch):
    """The equality above means something only if the blocks did run on the pool."""
    calls = []
    real = parallel.row_blocks
    monkeypatch.setattr(parallel, "row_blocks",
                        lambda n, k: calls.append(len(real(n, k))) or real(n, k))
    parallel.use_cores(3)
    for name in ("attention", "conv", "conv_transpose"):
        pair_cases(np.random.default_rng(0))[name]()
    assert calls.count(3) >= 10           # products, attention rows and conv channels split
    calls.clear()
    pair_cases(np.random.default_rng(0))["nearest"]()
    assert calls == [3]                   # 150 latents, one id each, in three blocks


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


def test_a_worker_exception_reaches_the_caller(split_everything):
    parallel.use_cores(2)

    def fails(block):
        raise RuntimeError(f"boom in a block of {len(block)} rows")

    with pytest.raises(RuntimeError, match="boom"):
        parallel.for_row_blocks(fails, np.zeros((4, 3)))


def test_mismatched_first_axes_are_refused(split_everything):
    parallel.use_cores(2)
    with pytest.raises(ValueError, match="first axis"):
        parallel.for_row_blocks(lambda a, b: None, np.zeros((4, 3)), np.zeros((5, 3)))


def test_elementwise_blocks_follow_memory_order(split_everything):
    """On a CHWN view the blocks are cut along C (the outermost axis in memory)."""
    parallel.use_cores(2)
    x = chwn(np.zeros((6, 4, 3, 3), np.float32))          # shape (N, C, H, W)
    seen = []
    parallel.for_elementwise_blocks(lambda block: seen.append(block.shape), x)
    assert sorted(seen) == [(2, 3, 3, 6), (2, 3, 3, 6)]


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_bad_thread_counts_are_clear_errors(monkeypatch, bad):
    monkeypatch.setenv("TINYTOK_THREADS", bad)
    with pytest.raises(ConfigError, match="TINYTOK_THREADS must be a positive integer"):
        parallel.use_cores()
    for n in (0, -1, 2.0, True, "3"):
        with pytest.raises(ConfigError, match="positive integer"):
            parallel.use_cores(n)


def test_thread_count_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TINYTOK_THREADS", "3")
    try:
        parallel.use_cores()
        assert parallel.threads() == 3
    finally:
        parallel.use_cores(1)


def test_batch_parts_cover_the_batch_in_order_and_add_the_gradients(split_everything):
    parallel.use_cores(3)
    grads = {"w": np.zeros((2, 2)), "b": np.zeros(3)}

    def part(lo, hi, part_grads):
        part_grads["w"] += hi - lo           # each part adds its size: the sum is the batch
        part_grads["b"][0] += lo
        return lo, hi

    assert parallel.for_batch_parts(part, 7, grads) == [(0, 2), (2, 4), (4, 7)]
    np.testing.assert_array_equal(grads["w"], np.full((2, 2), 7.0))
    assert grads["b"][0] == 0 + 2 + 4


def test_nothing_is_split_inside_a_batch_part(split_everything):
    parallel.use_cores(3)
    big = np.zeros((8, 8))
    seen = []

    def part(lo, hi, part_grads):
        seen.append((parallel._worth_splitting([big]),
                     len(parallel.for_batch_parts(lambda *a: None, 4, part_grads))))

    parallel.for_batch_parts(part, 3, {"w": np.zeros(1)})
    assert seen == [(False, 1)] * 3
    assert parallel._worth_splitting([big])       # and splitting is back on afterwards


def test_a_batch_part_exception_reaches_the_caller(split_everything):
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


def test_encoding_in_batch_parts_gives_the_one_thread_ids(split_everything):
    """Tokenizer.encode runs each batch in parts (one per thread): the same ids."""
    from tinytok.data.datasets import make_shapes
    from tinytok.pipeline import Tokenizer
    from tinytok.tokenizer.vqvae import init_tokenizer_params, tokenizer_config
    config = tokenizer_config("vqvae-tiny")
    tokenizer = Tokenizer(init_tokenizer_params(config, seed=3), config)
    images = make_shapes(10, seed=4).images
    parallel.use_cores(1)
    want = tokenizer.encode(images, batch_size=7)
    parallel.use_cores(3)
    np.testing.assert_array_equal(tokenizer.encode(images, batch_size=7), want)


def test_blas_threads_for_small_products_switch_and_come_back():
    from threadpoolctl import threadpool_info
    parallel.use_cores(2)
    try:
        with parallel.blas_threads_for_small_products():
            assert parallel.threads() == 1                       # tinytok's blocks off
            inside = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        assert parallel.threads() == 2
        after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        assert inside == [parallel.available_cores()] * len(inside)
        assert after == [1] * len(after)                         # use_cores' setting again
    finally:
        parallel.use_cores(1)
