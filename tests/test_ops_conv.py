"""conv2d, conv_transpose2d and conv2d_as_transposed: gradients, naive-loop and SciPy
references, the two conv2d pairs against each other, errors."""
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import reference as ref
from tinytok.backend import to_numpy
from tinytok.errors import ConfigError, DTypeError, ShapeError
from tinytok.gradcheck import assert_gradients_close
from tinytok.ops import (conv2d_as_transposed_backward, conv2d_as_transposed_forward,
                         conv2d_backward, conv2d_forward, conv_transpose2d_backward,
                         conv_transpose2d_forward, narrowing_conv_is_faster)
from tinytok.ops.conv import Conv2dAsTransposedCache, Conv2dCache

FEW = settings(max_examples=30, deadline=None)


@dataclass
class ConvConfig:
    C: int
    F: int
    H: int
    W: int
    kh: int
    kw: int
    stride: int
    padding: int
    seed: int

    def inputs(self, xp, transposed=False, bias=True):
        """x (1, C, H, W), w (F, C, kh, kw) or (C, F, kh, kw), b (F,) in float64 on xp."""
        rng = np.random.default_rng(self.seed)
        w_shape = (self.C, self.F) if transposed else (self.F, self.C)
        x = rng.standard_normal((1, self.C, self.H, self.W))
        w = rng.standard_normal(w_shape + (self.kh, self.kw))
        b = rng.standard_normal(self.F)
        return xp.asarray(x), xp.asarray(w), (xp.asarray(b) if bias else None)

    @property
    def hyper(self):
        return {"stride": self.stride, "padding": self.padding}


@st.composite
def conv_configs(draw, transposed=False):
    """Kernels 1-5 (not always square), strides 1-3, paddings 0-2, odd sizes, output >= 1."""
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride, padding = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    if transposed:
        H, W = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        assume((H - 1) * stride + kh - 2 * padding >= 1)
        assume((W - 1) * stride + kw - 2 * padding >= 1)
    else:  # the padded input must hold the kernel at least once
        H = max(1, kh - 2 * padding) + draw(st.integers(0, 5))
        W = max(1, kw - 2 * padding) + draw(st.integers(0, 5))
    C, F = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return ConvConfig(C, F, H, W, kh, kw, stride, padding, draw(st.integers(0, 2 ** 16)))


# --- gradients ----------------------------------------------------------------------------

@FEW
@given(cfg=conv_configs())
def test_conv2d_gradients_match_finite_differences(xp, cfg):
    x, w, b = cfg.inputs(xp)
    assert_gradients_close(conv2d_forward, conv2d_backward, [x, w, b], cfg.hyper,
                           seed=cfg.seed)


@FEW
@given(cfg=conv_configs(transposed=True))
def test_conv_transpose2d_gradients_match_finite_differences(xp, cfg):
    x, w, b = cfg.inputs(xp, transposed=True)
    assert_gradients_close(conv_transpose2d_forward, conv_transpose2d_backward, [x, w, b],
                           cfg.hyper, seed=cfg.seed)


@pytest.mark.parametrize("forward, backward, transposed", [
    (conv2d_forward, conv2d_backward, False),
    (conv_transpose2d_forward, conv_transpose2d_backward, True),
])
def test_conv_without_bias_gradients_match_finite_differences(xp, forward, backward,
                                                              transposed):
    """b=None: no bias is added and the backward's db is None."""
    cfg = ConvConfig(C=2, F=3, H=5, W=4, kh=3, kw=2, stride=2, padding=1, seed=1)
    x, w, _ = cfg.inputs(xp, transposed=transposed, bias=False)
    out, cache = forward(x, w, None, **cfg.hyper)
    assert backward(xp.ones_like(out), cache)[2] is None

    def forward_xw(x, w, **hyper):
        return forward(x, w, None, **hyper)

    def backward_xw(dout, cache):
        return backward(dout, cache)[:2]

    assert_gradients_close(forward_xw, backward_xw, [x, w], cfg.hyper)


# --- forward and backward against naive loops ---------------------------------------------

@settings(max_examples=25, deadline=None)
@given(cfg=conv_configs())
def test_conv2d_matches_naive_loops_and_scipy(xp, cfg):
    x, w, b = cfg.inputs(xp)
    out = to_numpy(conv2d_forward(x, w, b, **cfg.hyper)[0])
    x, w, b = to_numpy(x), to_numpy(w), to_numpy(b)
    np.testing.assert_allclose(out, ref.conv2d(x, w, b, **cfg.hyper), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out, ref.conv2d_scipy(x, w, b, **cfg.hyper),
                               rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(cfg=conv_configs(transposed=True))
def test_conv_transpose2d_matches_naive_loops(xp, cfg):
    x, w, b = cfg.inputs(xp, transposed=True)
    out = to_numpy(conv_transpose2d_forward(x, w, b, **cfg.hyper)[0])
    expected = ref.conv_transpose2d(to_numpy(x), to_numpy(w), to_numpy(b), **cfg.hyper)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


SMALL_CASES = [  # C, F, H, W, kh, kw, stride, padding
    (2, 3, 5, 5, 3, 3, 1, 1),
    (1, 2, 7, 6, 4, 4, 2, 1),
    (3, 2, 6, 7, 2, 3, 3, 0),
    (2, 2, 4, 4, 1, 1, 2, 2),
    (3, 2, 5, 6, 3, 3, 1, 1),  # F < C, stride 1: what conv2d_as_transposed is for
    (4, 1, 5, 5, 3, 3, 1, 2),
]


@pytest.mark.parametrize("shape", SMALL_CASES)
def test_conv2d_backward_matches_naive_loops(xp, shape):
    C, F, H, W, kh, kw, stride, padding = shape
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((2, C, H, W)), rng.standard_normal((F, C, kh, kw)), \
        rng.standard_normal(F)
    out, cache = conv2d_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), stride, padding)
    dout = rng.standard_normal(out.shape)
    grads = conv2d_backward(xp.asarray(dout), cache)
    for got, expected in zip(grads, ref.conv2d_backward(dout, x, w, stride, padding)):
        np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", SMALL_CASES)
def test_conv_transpose2d_backward_matches_naive_loops(xp, shape):
    C, F, H, W, kh, kw, stride, padding = shape
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, C, H, W)), rng.standard_normal((C, F, kh, kw)), \
        rng.standard_normal(F)
    out, cache = conv_transpose2d_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b),
                                          stride, padding)
    dout = rng.standard_normal(out.shape)
    grads = conv_transpose2d_backward(xp.asarray(dout), cache)
    for got, expected in zip(grads, ref.conv_transpose2d_backward(dout, x, w, stride, padding)):
        np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-10, atol=1e-12)


def test_conv_transpose2d_is_the_adjoint_of_conv2d(xp):
    """<conv2d(x), y> == <x, conv_transpose2d(y)> for the same weights: mirror images."""
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 3, 7, 7)), rng.standard_normal((4, 3, 3, 3))
    y = conv2d_forward(xp.asarray(x), xp.asarray(w), None, stride=2, padding=1)[0]
    g = rng.standard_normal(y.shape)
    back = conv_transpose2d_forward(xp.asarray(g), xp.asarray(w), None, stride=2, padding=1)[0]
    assert back.shape == x.shape
    np.testing.assert_allclose(float((to_numpy(y) * g).sum()),
                               float((x * to_numpy(back)).sum()), rtol=1e-12)


@pytest.mark.parametrize("forward, backward, transposed, stride", [
    (conv2d_forward, conv2d_backward, False, 2),
    (conv2d_forward, conv2d_backward, False, 1),
    (conv2d_as_transposed_forward, conv2d_as_transposed_backward, False, 1),
    (conv_transpose2d_forward, conv_transpose2d_backward, True, 2),
])
def test_backward_without_dx_gives_the_same_weight_gradients(xp, forward, backward,
                                                             transposed, stride):
    """need_dx=False (a first layer, whose input is data) returns dx None, dw and db as usual."""
    cfg = ConvConfig(C=3, F=2, H=6, W=5, kh=3, kw=3, stride=stride, padding=1, seed=6)
    x, w, b = cfg.inputs(xp, transposed=transposed)
    out, cache = forward(x, w, b, **cfg.hyper)
    dout = xp.asarray(np.random.default_rng(7).standard_normal(out.shape))
    dx, dw, db = backward(dout, cache)
    none, dw_alone, db_alone = backward(dout, cache, need_dx=False)
    assert dx is not None and none is None
    np.testing.assert_array_equal(to_numpy(dw_alone), to_numpy(dw))
    np.testing.assert_array_equal(to_numpy(db_alone), to_numpy(db))


# --- conv2d_as_transposed: conv2d by the transposed convolution of the flipped kernel ------

@st.composite
def as_transposed_configs(draw):
    """What conv2d_as_transposed computes: stride 1, square kernels 1-5, padding <= k - 1,
    any channel counts (narrowing or not), output >= 1."""
    k = draw(st.integers(1, 5))
    padding = draw(st.integers(0, k - 1))
    H = max(1, k - 2 * padding) + draw(st.integers(0, 4))
    W = max(1, k - 2 * padding) + draw(st.integers(0, 4))
    C, F = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return ConvConfig(C, F, H, W, k, k, 1, padding, draw(st.integers(0, 2 ** 16)))


@FEW
@given(cfg=as_transposed_configs())
def test_conv2d_as_transposed_gradients_match_finite_differences(xp, cfg):
    x, w, b = cfg.inputs(xp)
    assert_gradients_close(conv2d_as_transposed_forward, conv2d_as_transposed_backward,
                           [x, w, b], cfg.hyper, seed=cfg.seed)


@settings(max_examples=40, deadline=None)
@given(cfg=as_transposed_configs(), N=st.integers(1, 3), bias=st.booleans())
def test_conv2d_as_transposed_gives_conv2d_numbers(xp, cfg, N, bias):
    """The fast pair against the plain one: the output and every gradient (dx, dw, db), and
    need_dx=False, on the same random upstream gradient."""
    rng = np.random.default_rng(cfg.seed)
    x = xp.asarray(rng.standard_normal((N, cfg.C, cfg.H, cfg.W)))
    w = xp.asarray(rng.standard_normal((cfg.F, cfg.C, cfg.kh, cfg.kw)))
    b = xp.asarray(rng.standard_normal(cfg.F)) if bias else None
    out, cache = conv2d_forward(x, w, b, **cfg.hyper)
    fast_out, fast_cache = conv2d_as_transposed_forward(x, w, b, **cfg.hyper)
    assert isinstance(cache, Conv2dCache) and isinstance(fast_cache, Conv2dAsTransposedCache)
    assert fast_out.shape == out.shape
    np.testing.assert_allclose(to_numpy(fast_out), to_numpy(out), rtol=1e-10, atol=1e-12)
    dout = xp.asarray(rng.standard_normal(out.shape))
    for need_dx in (True, False):
        grads = conv2d_backward(dout, cache, need_dx)
        fast_grads = conv2d_as_transposed_backward(dout, fast_cache, need_dx)
        for got, expected in zip(fast_grads, grads):
            if expected is None:
                assert got is None
                continue
            assert got.shape == expected.shape and got.dtype == expected.dtype
            np.testing.assert_allclose(to_numpy(got), to_numpy(expected), rtol=1e-10,
                                       atol=1e-12)


def test_conv2d_as_transposed_leaves_inputs_unchanged_and_replays_its_cache(xp):
    """The op contract, for the pair that is not in PAIRS."""
    cfg = ConvConfig(C=4, F=2, H=6, W=5, kh=3, kw=3, stride=1, padding=1, seed=8)
    x, w, b = cfg.inputs(xp)
    kept = [to_numpy(a).copy() for a in (x, w, b)]
    out, cache = conv2d_as_transposed_forward(x, w, b, **cfg.hyper)
    dout = xp.asarray(np.random.default_rng(9).standard_normal(out.shape))
    dout_kept = to_numpy(dout).copy()
    first = [to_numpy(g).copy() for g in conv2d_as_transposed_backward(dout, cache)]
    second = [to_numpy(g) for g in conv2d_as_transposed_backward(dout, cache)]
    for a, c in zip(first, second):
        np.testing.assert_array_equal(a, c)
    for a, c in zip((x, w, b, dout), kept + [dout_kept]):
        np.testing.assert_array_equal(to_numpy(a), c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_as_transposed_keeps_the_input_dtype(dtype):
    cfg = ConvConfig(C=3, F=2, H=5, W=5, kh=3, kw=3, stride=1, padding=1, seed=3)
    x, w, b = (a.astype(dtype) for a in cfg.inputs(np))
    out, cache = conv2d_as_transposed_forward(x, w, b, padding=1)
    assert out.dtype == dtype
    assert all(g.dtype == dtype for g in conv2d_as_transposed_backward(np.ones_like(out), cache))


@pytest.mark.parametrize("w_shape, stride, padding, faster", [
    ((32, 128, 3, 3), 1, 1, True),     # a residual block's narrowing 3x3
    ((64, 128, 1, 1), 1, 0, True),     # the encoder's last 1x1
    ((128, 32, 1, 1), 1, 0, False),    # widening: im2col of a 1x1 is free
    ((128, 64, 4, 4), 2, 1, False),    # strided
    ((2, 4, 3, 2), 1, 1, False),       # not square
    ((2, 4, 3, 3), 1, 3, False),       # padding > kh - 1
])
def test_narrowing_conv_is_faster_only_where_the_transposed_way_applies(w_shape, stride,
                                                                        padding, faster):
    assert narrowing_conv_is_faster(w_shape, stride, padding) is faster


@pytest.mark.parametrize("w_shape, stride, padding", [((2, 3, 3, 3), 2, 1),
                                                      ((2, 3, 3, 2), 1, 1),
                                                      ((2, 3, 3, 3), 1, 3)])
def test_conv2d_as_transposed_refuses_what_it_cannot_compute(w_shape, stride, padding):
    x, w = np.ones((1, 3, 8, 8)), np.ones(w_shape)
    with pytest.raises(ConfigError, match="conv2d_as_transposed needs stride 1, a square "
                                          "kernel and padding <= kh - 1"):
        conv2d_as_transposed_forward(x, w, None, stride=stride, padding=padding)


def test_conv2d_as_transposed_has_conv2d_checks():
    x, w = np.ones((1, 3, 4, 4)), np.ones((2, 3, 7, 7))
    with pytest.raises(ShapeError, match="7x7 kernel with padding 1 does not fit in a 4x4"):
        conv2d_as_transposed_forward(x, w, None, padding=1)
    with pytest.raises(ShapeError, match="expects C = 3 input channels"):
        conv2d_as_transposed_forward(x[:, :2], w, None)


@pytest.mark.parametrize("H, k, stride, padding, Ho", [(32, 4, 2, 1, 16), (8, 3, 1, 1, 8),
                                                       (7, 3, 2, 0, 3), (5, 5, 3, 2, 2)])
def test_conv2d_output_size_follows_the_formula(H, k, stride, padding, Ho):
    x, w = np.zeros((1, 1, H, H + 1)), np.zeros((2, 1, k, k))
    out, _ = conv2d_forward(x, w, None, stride=stride, padding=padding)
    assert out.shape == (1, 2, Ho, (H + 1 + 2 * padding - k) // stride + 1)


def test_conv_transpose2d_upsamples_by_the_stride():
    """The decoder's 4x4/2 transposed conv with padding 1 doubles the size exactly."""
    out, _ = conv_transpose2d_forward(np.zeros((1, 5, 8, 8)), np.zeros((5, 3, 4, 4)), None,
                                      stride=2, padding=1)
    assert out.shape == (1, 3, 16, 16)


# --- errors -------------------------------------------------------------------------------

CONV_FORWARDS = pytest.mark.parametrize("forward", [conv2d_forward, conv_transpose2d_forward])


def _xw(forward, C=3, F=4, k=3, dtype=np.float64):
    """Valid x (2, C, 6, 6) and w for the given forward (w's layout depends on it)."""
    w_shape = (F, C, k, k) if forward is conv2d_forward else (C, F, k, k)
    return np.ones((2, C, 6, 6), dtype), np.ones(w_shape, dtype)


@CONV_FORWARDS
def test_conv_rejects_x_without_four_axes(forward):
    x, w = _xw(forward)
    with pytest.raises(ShapeError, match=r"x must have shape \(N, C, H, W\), got shape"):
        forward(x[0], w, None)


@CONV_FORWARDS
def test_conv_rejects_w_without_four_axes(forward):
    x, w = _xw(forward)
    with pytest.raises(ShapeError, match=r"w must have shape .*kh, kw\)"):
        forward(x, w[0], None)


@CONV_FORWARDS
def test_conv_rejects_channel_mismatch_between_x_and_w(forward):
    x, w = _xw(forward, C=3)
    with pytest.raises(ShapeError, match="expects C = 3 input channels, x .* has 2"):
        forward(x[:, :2], w, None)


@CONV_FORWARDS
def test_conv_rejects_mixed_float32_and_float64(forward):
    x, w = _xw(forward)
    with pytest.raises(DTypeError, match="w is float32 but x is float64"):
        forward(x, w.astype(np.float32), None)
    with pytest.raises(DTypeError, match="b is float32 but x is float64"):
        forward(x, w, np.zeros(4, np.float32))


@CONV_FORWARDS
def test_conv_rejects_integer_input(forward):
    x, w = _xw(forward)
    with pytest.raises(DTypeError, match="x must be float32 or float64, got int64"):
        forward(x.astype(np.int64), w, None)


@CONV_FORWARDS
def test_conv_rejects_bias_of_wrong_shape(forward):
    x, w = _xw(forward, F=4)
    with pytest.raises(ShapeError, match=r"b must have shape \(F,\) = \(4,\), got \(3,\)"):
        forward(x, w, np.zeros(3))
    with pytest.raises(ShapeError, match=r"b must have shape \(F,\)"):
        forward(x, w, np.zeros((4, 1)))


@CONV_FORWARDS
@pytest.mark.parametrize("stride, padding, bad", [(0, 0, "stride"), (-1, 0, "stride"),
                                                  (1, -1, "padding"), (1.5, 0, "stride"),
                                                  (True, 0, "stride")])
def test_conv_rejects_bad_stride_or_padding(forward, stride, padding, bad):
    x, w = _xw(forward)
    with pytest.raises(ConfigError, match=f"{bad} must be a whole number >= "):
        forward(x, w, None, stride=stride, padding=padding)


def test_conv2d_rejects_kernel_larger_than_padded_input():
    x, w = np.ones((1, 1, 4, 6)), np.ones((1, 1, 7, 3))
    with pytest.raises(ShapeError, match="7x3 kernel with padding 1 does not fit in a 4x6"):
        conv2d_forward(x, w, None, padding=1)
    conv2d_forward(x, w, None, padding=2)  # 4 + 2*2 = 8 rows hold it


def test_conv_transpose2d_rejects_padding_that_crops_everything():
    x, w = np.ones((1, 1, 1, 1)), np.ones((1, 1, 2, 2))
    with pytest.raises(ShapeError, match="padding 1 crops away"):
        conv_transpose2d_forward(x, w, None, padding=1)


def test_conv_errors_are_value_and_type_errors():
    """Callers catching the built-in exceptions keep working."""
    x, w = _xw(conv2d_forward)
    with pytest.raises(ValueError):
        conv2d_forward(x[:, :2], w, None)
    with pytest.raises(TypeError):
        conv2d_forward(x.astype(np.int32), w, None)
    with pytest.raises(ValueError):
        conv2d_forward(x, w, None, stride=0)


@pytest.mark.parametrize("forward, backward, w_shape", [
    (conv2d_forward, conv2d_backward, (4, 3, 3, 3)),
    (conv_transpose2d_forward, conv_transpose2d_backward, (3, 4, 3, 3)),
])
def test_conv_accepts_non_contiguous_inputs_and_upstream_gradients(xp, forward, backward,
                                                                  w_shape):
    """A channel-major view (what a previous conv returns) gives the same results as a copy."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 6, 5)).transpose(1, 0, 2, 3)  # (2, 3, 6, 5), a view
    w, b = rng.standard_normal(w_shape), rng.standard_normal(4)
    out_view, cache_view = forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), 2, 1)
    out_copy, cache_copy = forward(xp.asarray(np.ascontiguousarray(x)), xp.asarray(w),
                                   xp.asarray(b), 2, 1)
    np.testing.assert_allclose(to_numpy(out_view), to_numpy(out_copy), rtol=1e-12)
    dout = rng.standard_normal(out_copy.shape[::-1]).T  # same shape, reversed memory order
    for a, c in zip(backward(xp.asarray(dout), cache_view),
                    backward(xp.asarray(np.ascontiguousarray(dout)), cache_copy)):
        np.testing.assert_allclose(to_numpy(a), to_numpy(c), rtol=1e-12, atol=1e-14)


def test_stacked_convolutions_pass_a_gradient_check(xp):
    """conv2d -> conv2d on the first one's channel-major output, checked end to end."""
    rng = np.random.default_rng(6)
    w2 = xp.asarray(rng.standard_normal((2, 3, 3, 3)))

    def forward(x, w1):
        h, c1 = conv2d_forward(x, w1, None, stride=2, padding=1)
        y, c2 = conv2d_forward(h, w2, None, padding=1)
        return y, (c1, c2)

    def backward(dy, cache):
        dh, _, _ = conv2d_backward(dy, cache[1])
        dx, dw1, _ = conv2d_backward(dh, cache[0])
        return dx, dw1

    x, w1 = rng.standard_normal((1, 2, 7, 6)), rng.standard_normal((3, 2, 3, 3))
    assert_gradients_close(forward, backward, [xp.asarray(x), xp.asarray(w1)])
