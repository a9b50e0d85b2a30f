"""The pairs the checker knows: their signatures, small inputs, and each op's own hints.

Inputs are float64 (central differences in float32 drown in rounding), small (every
element is finite-differenced), drawn from fixed seeds, and kept away from the places a
derivative does not exist: relu's inputs are at least 0.1 from 0, the quantizer's vectors
clearly nearer one code than any other, a hinge loss's scores at least 0.1 from their
margins.
"""
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tinytok.check.diagnose import Hint, close, like
from tinytok.gradcheck import numerical_gradient
from tinytok.ops import PAIRS
from tinytok.tokenizer.quantize import vector_quantize_backward, vector_quantize_forward


def no_hints(name, case, want, upstream):
    return []


@dataclass(frozen=True)
class Op:
    """One pair as the learner sees it: names, signatures, where its inputs come from."""
    name: str
    inputs: str               # the forward's arguments as its signature spells them
    outputs: tuple            # the forward's results before the cache
    grads: tuple              # the backward's results, one per argument in wrt
    wrt: tuple                # which forward arguments get a gradient
    cases: Callable           # numpy Generator -> list of Case
    hints: Callable = no_hints  # (result's name, case, right value, upstream) -> [Hint]
    upstream: str = "dout"    # the backward's first argument: "dout", "dloss" or "dz_q"
    pair: tuple = None        # the package's (forward, backward); None: ops.PAIRS[name]
    straight_through: bool = False  # an argmin inside: the backward takes dloss after the
                                    # cache, and the definition is differenced, ids fixed

    def forward_signature(self):
        return f"{self.name}_forward({self.inputs}) -> ({', '.join(self.outputs)}, cache)"

    def backward_signature(self):
        grads = self.grads[0] if len(self.grads) == 1 else f"({', '.join(self.grads)})"
        more = ", dloss=1.0" if self.straight_through else ""
        return f"{self.name}_backward({self.upstream}, cache{more}) -> {grads}"

    def package_pair(self):
        return self.pair or PAIRS[self.name]


@dataclass
class Case:
    """One call: forward(*args, **kwargs); a loss's backward gets dloss."""
    args: list                                   # the forward's positional arguments
    kwargs: dict = field(default_factory=dict)   # stride, padding, n_head, beta
    dloss: float = None                          # a loss's upstream gradient (and vq's)


def normal(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


# ---------------------------------------------------------------- inputs per op

def linear_cases(rng):
    return [Case([normal(rng, 4, 5), normal(rng, 5, 3), normal(rng, 3)]),
            Case([normal(rng, 2, 3, 5), normal(rng, 5, 3), normal(rng, 3)])]


def conv2d_cases(rng):
    return [Case([normal(rng, 2, 3, 5, 5), normal(rng, 4, 3, 3, 3), normal(rng, 4)]),
            Case([normal(rng, 2, 2, 6, 5), normal(rng, 3, 2, 3, 2), normal(rng, 3)],
                 {"stride": 2, "padding": 1})]


def conv_transpose2d_cases(rng):
    return [Case([normal(rng, 2, 3, 3, 3), normal(rng, 3, 2, 3, 3), normal(rng, 2)]),
            Case([normal(rng, 2, 2, 3, 4), normal(rng, 2, 3, 3, 2), normal(rng, 3)],
                 {"stride": 2, "padding": 1})]


def away_from_zero(x):  # |x| >= 0.1: no probe of h = 1e-5 crosses a kink at 0
    return np.sign(x) * (0.1 + np.abs(x))


def relu_cases(rng):
    return [Case([away_from_zero(normal(rng, 3, 4))]),
            Case([away_from_zero(normal(rng, 2, 3, 2))])]


def leaky_relu_cases(rng):  # the second slope is not the default: 0.2 must not be built in
    return [Case([away_from_zero(normal(rng, 3, 4))]),
            Case([away_from_zero(normal(rng, 2, 3, 2))], {"slope": 0.1})]


def gelu_cases(rng):
    return [Case([normal(rng, 3, 4, scale=2.0)]), Case([normal(rng, 2, 3, 2, scale=2.0)])]


def layer_norm_cases(rng):
    return [Case([normal(rng, 3, 6), 1 + normal(rng, 6, scale=0.3), normal(rng, 6, scale=0.3)]),
            Case([normal(rng, 2, 3, 5), 1 + normal(rng, 5, scale=0.3), normal(rng, 5, scale=0.3)])]


def embedding_cases(rng):
    ids = np.array([[0, 3, 3, 5], [1, 3, 0, 2]])  # 0 and 3 repeat, 4 and 6 unused
    return [Case([ids, normal(rng, 7, 3)]), Case([rng.integers(0, 4, size=5), normal(rng, 4, 2)])]


def attention_cases(rng):
    def weights(C):
        return [normal(rng, C, 3 * C, scale=0.5), normal(rng, 3 * C, scale=0.1),
                normal(rng, C, C, scale=0.5), normal(rng, C, scale=0.1)]
    return [Case([normal(rng, 2, 4, 6)] + weights(6), {"n_head": 2}),
            Case([normal(rng, 1, 3, 4)] + weights(4), {"n_head": 1})]


def cross_entropy_cases(rng):
    targets = rng.integers(0, 6, size=(2, 4))
    targets[0, 1] = targets[1, 3] = -1  # two positions ignored
    few = rng.integers(0, 3, size=5)
    few[2] = -1
    return [Case([normal(rng, 2, 4, 6, scale=2.0), targets], dloss=0.7),
            Case([normal(rng, 5, 3, scale=2.0), few], dloss=1.3)]


def mse_cases(rng):
    return [Case([normal(rng, 3, 4), normal(rng, 3, 4)], dloss=0.7),
            Case([normal(rng, 2, 3, 2), normal(rng, 2, 3, 2)], dloss=1.3)]


def amplitude_loss_cases(rng):
    """Pictures' channels with odd and even sides: the DFT of a real picture pairs each
    coefficient with its mirror, except along the middle rows of even sides."""
    return [Case([normal(rng, 2, 3, 4, 4), normal(rng, 2, 3, 4, 4)], dloss=0.7),
            Case([normal(rng, 5, 3), normal(rng, 5, 3)], dloss=1.3)]


def hinge_d_loss_cases(rng):
    """Patch scores on both sides of their margins (real: +1, fake: -1), real and fake of
    different sizes, so that a mean over both together is caught."""
    def scores(margin, *shape):
        return margin + away_from_zero(normal(rng, *shape, scale=1.5))
    return [Case([scores(1, 2, 1, 3, 3), scores(-1, 3, 1, 2, 2)], dloss=0.7),
            Case([scores(1, 5), scores(-1, 5)], dloss=1.3)]


def hinge_g_loss_cases(rng):
    return [Case([normal(rng, 2, 1, 3, 3, scale=1.5)], dloss=0.7),
            Case([normal(rng, 5, scale=1.5)], dloss=1.3)]


def vq_cases(rng):
    cases = []
    for beta, dloss in ((0.25, 0.8), (0.6, 1.0)):
        while True:  # redraw until every vector is clearly nearest one code: no argmin ties
            z, codebook = normal(rng, 2, 3, 2, 3), normal(rng, 5, 3)
            d = ((z.transpose(0, 2, 3, 1)[..., None, :] - codebook) ** 2).sum(-1)
            d.sort(axis=-1)
            if (d[..., 1] - d[..., 0]).min() > 0.05:
                break
        cases.append(Case([z, codebook], {"beta": beta}, dloss=dloss))
    return cases


# ---------------------------------------------------------------- op-specific hints

def loss_hints(name, case, want, upstream):
    if not name.startswith("d"):
        return []  # the loss itself does not depend on dloss
    return [like(want / case.dloss, f"dloss ({case.dloss} here) is not multiplied in")]


def leaky_relu_hints(name, case, want, upstream):
    x, slope = case.args[0], case.kwargs.get("slope", 0.2)
    positive = x > 0
    if name == "out":
        return [like(np.where(positive, slope * x, x), "the slope on the wrong side: y = x "
                                                        "where x > 0, slope * x elsewhere"),
                like(np.where(positive, x, 0.2 * x), f"slope 0.2 built in: use the slope "
                                                     f"argument ({slope} here)")]
    return [like(upstream * positive, "0 where x <= 0: that is ReLU's backward; leaky ReLU "
                                      "passes slope * dout there"),
            like(np.where(positive, upstream, slope), "slope alone where x <= 0: multiply "
                                                      "it by dout"),
            like(np.where(positive, upstream, 0.2 * upstream), f"slope 0.2 built in: use the "
                                                               f"slope ({slope} here)")]


def hinge_d_loss_hints(name, case, want, upstream):
    real, fake = case.args
    n_real, n_fake, dloss = real.size, fake.size, case.dloss
    if name == "loss":
        both = np.concatenate([np.maximum(1 - real, 0).ravel(), np.maximum(1 + fake, 0).ravel()])
        return [like(np.maximum(1 + real, 0).mean() + np.maximum(1 - fake, 0).mean(),
                     "real and fake swapped: D wants real scores >= 1 and fake ones <= -1"),
                like((1 - real).mean() + (1 + fake).mean(), "no hinge: a score beyond its "
                     "margin costs 0 (take max(., 0) before the mean)"),
                like(both.mean(), "one mean over real and fake together: average each over "
                                  "its own scores"),
                like(np.maximum(1 - real, 0).sum() + np.maximum(1 + fake, 0).sum(),
                     "sums where means belong: divide each side by its number of scores")]
    scores, n, sign, short = ((real, n_real, -1, real < 1) if name == "dreal" else
                              (fake, n_fake, 1, fake > -1))
    return loss_hints(name, case, want, upstream) + [
        like(np.full(scores.shape, sign * dloss / n), "a gradient beyond the margin: a score "
             "that already costs 0 gets 0"),
        like(want * n / (n_real + n_fake), "divided by all the scores, real and fake "
             f"together: divide by this side's {n}"),
        like(want * n / max(int(short.sum()), 1), "divided by the scores short of the "
             f"margin only: divide by all {n}")]


def amplitude_loss_hints(name, case, want, upstream):
    pred, target = case.args
    if name == "loss":
        H, W = pred.shape[-2:]
        return [like(want * H * W, "the DFT unnormalized: np.fft.fft2(x, norm='ortho') keeps "
                                   "sums of squares, so the loss is on mse's scale"),
                like(np.mean((pred - target) ** 2), "that is mse: compare the amplitudes "
                                                    "|F(pred)| and |F(target)| alone")]
    spectrum = np.fft.fft2(pred, norm="ortho")
    gap = np.abs(spectrum) - np.abs(np.fft.fft2(target, norm="ortho"))
    phase = spectrum / np.abs(spectrum)
    return loss_hints(name, case, want, upstream) + [
        like(np.fft.ifft2(2 * case.dloss * gap / gap.size, norm="ortho").real,
             "the phase left out: each coefficient's gradient points along F(pred) / |F(pred)|"),
        like(np.fft.ifft2(2 * case.dloss * gap / gap.size * phase).real,
             "the plain ifft2 (1 / (H W)) carries it back: use norm='ortho' both ways, "
             "F's adjoint is its inverse")]


def hinge_g_loss_hints(name, case, want, upstream):
    fake = case.args[0]
    if name == "loss":
        return [like(np.maximum(1 - fake, 0).mean(), "a hinge: that is D's loss on real "
                     "pictures; the generator's is just -mean(fake)")]
    return loss_hints(name, case, want, upstream) + [
        like(-case.dloss * (fake < 1) / fake.size, "0 beyond a margin: the generator's loss "
             "has none, every score gets -dloss / n")]


def cross_entropy_hints(name, case, want, upstream):
    targets = case.args[1]
    ignored = targets == -1                        # targets' shape: logits without V
    kept = int((~ignored).sum())
    by_all = like(want * kept / targets.size, f"divided by all {targets.size} positions: "
                                              f"divide by the {kept} kept (targets != -1)")
    if name == "loss":
        return [by_all]
    return loss_hints(name, case, want, upstream) + [by_all, Hint(
        lambda got: got.shape == want.shape and bool(np.any(got[ignored])),
        "a gradient at ignored positions (targets == -1): they must get 0")]


def embedding_hints(name, case, want, upstream):
    ids = case.args[0].reshape(-1)
    counts = np.bincount(ids, minlength=want.shape[0])
    once, repeated = counts == 1, counts > 1

    def right_only_where_used_once(got):
        return (got.shape == want.shape and repeated.any() and close(got[once], want[once])
                and not close(got[repeated], want[repeated]))
    return [Hint(right_only_where_used_once, "right for ids used once, wrong where an id "
                 "repeats: add the rows' gradients up (np.add.at), do not assign")]


def conv_hints(op_name):
    """Hints for a convolution pair: a kernel turned by 180 degrees too often or too few."""
    def hints(name, case, want, upstream):
        x, w, b = case.args
        turned = "turned by 180 degrees"
        if name == "dw":
            return [like(want[:, :, ::-1, ::-1], f"the kernel gradient is {turned}: flip it "
                                                 "back")]
        if name != "dx":
            return []
        forward, backward = PAIRS[op_name]
        flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1])
        dx_flipped = backward(upstream, forward(x, flipped, b, **case.kwargs)[1])[0]
        return [like(dx_flipped, f"right for the kernel {turned}: a flip missing in dx, or "
                                 "one too many")]
    return hints


def layer_norm_hints(name, case, want, upstream):
    if name != "dx":
        return []
    x, gamma, _ = case.args
    mean = x.mean(axis=-1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + 1e-5)
    xhat, g = (x - mean) * rstd, upstream * gamma
    mean_g, mean_gx = g.mean(-1, keepdims=True), (g * xhat).mean(-1, keepdims=True)
    return [like(rstd * (g - mean_g), "the variance's term - xhat * mean(g * xhat) is missing"),
            like(rstd * (g - xhat * mean_gx), "the mean's term - mean(g) is missing")]


def vq_hints(name, case, want, upstream):
    z, codebook = case.args
    beta = case.kwargs["beta"]
    if name == "loss":
        return [like(want / (1 + beta), "the commitment term beta * mean((z - e)^2) is missing")]
    if name == "dz":
        return [like(want - upstream, "no straight-through: dz_q must reach z unchanged "
                                      "(z_q = z + sg(e - z))"),
                like(upstream, "only the straight-through part: the commitment term "
                               "dloss * beta * 2 (z - e) / n is missing")]
    if name == "dcodebook":
        ids = vector_quantize_forward(z, codebook, beta)[1]
        leaked = want.copy()
        np.add.at(leaked, ids.reshape(-1), upstream.transpose(0, 2, 3, 1).reshape(-1, z.shape[1]))
        return [like(leaked, "dz_q leaks into the codebook: z_q = z + sg(e - z) sends it "
                             "to z only"),
                like(want * beta, "beta on the codebook term: it belongs to the commitment "
                                  "term"),
                like(want / case.dloss, f"dloss ({case.dloss} here) is not multiplied in")]
    return []


def vq_surrogate_gradients(case, z_q, ids, dz_q):
    """Finite differences of what the backward differentiates, the ids held fixed:

        S(z, C) = sum(dz_q * (z + e0 - z0)) + dloss * (mean((z0 - C[ids])^2)
                                                       + beta * mean((z - e0)^2))

    with z0 = z and e0 = z_q constants (the straight-through estimator z + sg(e - z) and
    the two loss terms). Returns (dz, dcodebook)."""
    z0, codebook = case.args
    beta, dloss = case.kwargs["beta"], case.dloss
    e0 = np.asarray(z_q, dtype=np.float64)

    def surrogate(z, C):
        e = C[ids].transpose(0, 3, 1, 2)  # (N, H, W, D) -> (N, D, H, W)
        return np.asarray(np.sum(dz_q * (z + e0 - z0)) + dloss * (
            np.mean((z0 - e) ** 2) + beta * np.mean((z - e0) ** 2)))
    one = np.ones(())
    dz = numerical_gradient(lambda z: surrogate(z, codebook), z0.copy(), one, range(z0.size))
    dc = numerical_gradient(lambda C: surrogate(z0, C), codebook.copy(), one,
                            range(codebook.size))
    return dz.reshape(z0.shape), dc.reshape(codebook.shape)


CONV = "x, w, b, stride=1, padding=0"
OPS = {op.name: op for op in [
    Op("linear", "x, w, b", ("out",), ("dx", "dw", "db"), (0, 1, 2), linear_cases),
    Op("conv2d", CONV, ("out",), ("dx", "dw", "db"), (0, 1, 2), conv2d_cases,
       conv_hints("conv2d")),
    Op("conv_transpose2d", CONV, ("out",), ("dx", "dw", "db"), (0, 1, 2),
       conv_transpose2d_cases, conv_hints("conv_transpose2d")),
    Op("relu", "x", ("out",), ("dx",), (0,), relu_cases),
    Op("leaky_relu", "x, slope=0.2", ("out",), ("dx",), (0,), leaky_relu_cases,
       leaky_relu_hints),
    Op("gelu", "x", ("out",), ("dx",), (0,), gelu_cases),
    Op("layer_norm", "x, gamma, beta", ("out",), ("dx", "dgamma", "dbeta"), (0, 1, 2),
       layer_norm_cases, layer_norm_hints),
    Op("embedding", "ids, table", ("out",), ("dtable",), (1,), embedding_cases,
       embedding_hints),
    Op("causal_self_attention", "x, w_qkv, b_qkv, w_proj, b_proj, n_head", ("out",),
       ("dx", "dw_qkv", "db_qkv", "dw_proj", "db_proj"), (0, 1, 2, 3, 4), attention_cases),
    Op("cross_entropy", "logits, targets", ("loss",), ("dlogits",), (0,), cross_entropy_cases,
       cross_entropy_hints, upstream="dloss"),
    Op("mse", "pred, target", ("loss",), ("dpred",), (0,), mse_cases, loss_hints,
       upstream="dloss"),
    Op("amplitude_loss", "pred, target", ("loss",), ("dpred",), (0,), amplitude_loss_cases,
       amplitude_loss_hints, upstream="dloss"),
    Op("hinge_d_loss", "real, fake", ("loss",), ("dreal", "dfake"), (0, 1),
       hinge_d_loss_cases, hinge_d_loss_hints, upstream="dloss"),
    Op("hinge_g_loss", "fake", ("loss",), ("dfake",), (0,), hinge_g_loss_cases,
       hinge_g_loss_hints, upstream="dloss"),
    Op("vector_quantize", "z, codebook, beta=0.25", ("z_q", "ids", "loss"), ("dz", "dcodebook"),
       (0, 1), vq_cases, vq_hints, upstream="dz_q",
       pair=(vector_quantize_forward, vector_quantize_backward), straight_through=True),
]}
