"""`tinytok check OP FILE`: the package's own pairs pass, the classic mistakes are caught
and named, the exercise files are checkable, and unusable input is one line with exit 2."""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from tinytok.check.cases import OPS
from tinytok.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "lessons" / "exercises"


def check(op, path, capsys):
    """Run the command in this process; return (exit code, stdout, stderr)."""
    code = main(["check", op, str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write(tmp_path, source, name="attempt.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def line_of(name, out):
    """The printed line of one output or gradient."""
    lines = [line for line in out.splitlines() if line.split()[:1] == [name]]
    assert len(lines) == 1, out
    return lines[0]


# ---------------------------------------------------------------- the package passes

def package_source(op):
    home = "tinytok.tokenizer.quantize" if op == "vector_quantize" else "tinytok.ops"
    return f"from {home} import {op}_forward, {op}_backward\n"


@pytest.mark.parametrize("op", list(OPS))
def test_the_packages_own_pairs_pass(op, tmp_path, capsys):
    code, out, err = check(op, write(tmp_path, package_source(op)), capsys)
    assert code == 0, out + err
    assert "WRONG" not in out and f"{op}: all" in out
    for name in OPS[op].outputs + OPS[op].grads:
        assert line_of(name, out).endswith("OK")


# ---------------------------------------------------------------- realistic mistakes

LINEAR = """
    import numpy as np

    def linear_forward(x, w, b):
        return x @ w + b, (x, w)

    def linear_backward(dout, cache):
        x, w = cache
        x2, d2 = x.reshape(-1, x.shape[-1]), dout.reshape(-1, dout.shape[-1])
        dx, dw, db = (d2 @ w.T).reshape(x.shape), x2.T @ d2, d2.sum(0)
        {mistake}
        return dx, dw, db
"""

LAYER_NORM = """
    import numpy as np

    def layer_norm_forward(x, gamma, beta, eps=1e-5):
        mean = x.mean(-1, keepdims=True)
        rstd = 1 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
        xhat = (x - mean) * rstd
        return xhat * gamma + beta, (xhat, gamma, rstd)

    def layer_norm_backward(dout, cache):
        xhat, gamma, rstd = cache
        g = dout * gamma
        dx = rstd * (g - g.mean(-1, keepdims=True))   # - xhat * mean(g * xhat) forgotten
        rows = tuple(range(dout.ndim - 1))
        return dx, (dout * xhat).sum(rows), dout.sum(rows)
"""

CROSS_ENTROPY = """
    import numpy as np

    def cross_entropy_forward(logits, targets, ignore_index=-1):
        V = logits.shape[-1]
        z, t = logits.reshape(-1, V), targets.reshape(-1)
        keep = t != ignore_index
        t = np.where(keep, t, 0)
        z = z - z.max(-1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
        count = max(keep.sum(), 1)
        loss = -(log_p[np.arange(len(t)), t] * keep).sum() / count
        return loss, (log_p, t, keep, logits.shape)

    def cross_entropy_backward(dloss, cache):
        log_p, t, keep, shape = cache
        d = np.exp(log_p)
        d[np.arange(len(t)), t] -= 1
        return (d * keep[:, None] * dloss).reshape(shape)   # no division by the count
"""

MSE = """
    def mse_forward(pred, target):
        diff = pred - target
        return (diff * diff).mean(), diff

    def mse_backward(dloss, diff):
        return diff / diff.size * dloss                     # the 2 of d(diff^2) forgotten
"""

LEAKY_RELU = """
    import numpy as np

    def leaky_relu_forward(x, slope=0.2):
        positive = x > 0
        return np.where(positive, x, slope * x), (positive, slope)

    def leaky_relu_backward(dout, cache):
        positive, slope = cache
        return np.where(positive, dout, slope * dout)
"""

HINGE_D = """
    import numpy as np

    def hinge_d_loss_forward(real, fake):
        loss = np.maximum(1 - real, 0).mean() + np.maximum(1 + fake, 0).mean()
        return loss, (1 - real > 0, 1 + fake > 0)

    def hinge_d_loss_backward(dloss, cache):
        short_real, short_fake = cache
        dreal = -dloss * short_real / short_real.size
        return dreal, dloss * short_fake / short_fake.size
"""

AMPLITUDE = """
    import numpy as np

    def amplitude_loss_forward(pred, target):
        spectrum = np.fft.fft2(pred, norm="ortho")
        gap = np.abs(spectrum) - np.abs(np.fft.fft2(target, norm="ortho"))
        return (gap * gap).mean(), (spectrum, gap)

    def amplitude_loss_backward(dloss, cache):
        spectrum, gap = cache
        phase = spectrum / np.abs(spectrum)
        return np.fft.ifft2(2 * dloss * gap / gap.size * phase, norm="ortho").real
"""

HINGE_G = """
    import numpy as np

    def hinge_g_loss_forward(fake):
        return -fake.mean(), fake.shape

    def hinge_g_loss_backward(dloss, shape):
        return np.full(shape, -dloss / np.prod(shape))
"""

EMBEDDING = """
    import numpy as np

    def embedding_forward(ids, table):
        return table[ids], (ids, table.shape)

    def embedding_backward(dout, cache):
        ids, shape = cache
        dtable = np.zeros(shape)
        dtable[ids.reshape(-1)] = dout.reshape(-1, shape[1])   # assigns: repeats overwrite
        return dtable
"""

# The exercise's own forward (its cache is (x, w, stride, padding)), then a backward to test.
CONV2D = textwrap.indent(
    (EXERCISES / "conv2d.py").read_text().split("def conv2d_backward")[0], "    ") + """
    def conv2d_backward(dout, cache):
        x, w, stride, padding = cache
        N, C, H, W = x.shape
        F, _, kh, kw = w.shape
        Ho, Wo = dout.shape[2:]
        xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        dxpad, dw = np.zeros_like(xpad), np.zeros_like(w)
        for i in range(kh):
            for j in range(kw):
                at = (slice(None), slice(None), slice(i, i + stride * Ho, stride),
                      slice(j, j + stride * Wo, stride))
                dw[:, :, i, j] = np.einsum("nfhw,nchw->fc", dout, xpad[at])
                dxpad[at] += np.einsum("nfhw,fc->nchw", dout, {kernel})
        dx = dxpad[:, :, padding:padding + H, padding:padding + W]
        return dx, {dw}, dout.sum((0, 2, 3))
"""

ATTENTION = """
    import numpy as np
    from tinytok.ops.attention import causal_self_attention_forward, merge_heads, split_heads
    from tinytok.ops.linear import linear_backward

    def causal_self_attention_backward(dout, cache):
        qkv_cache, proj_cache, q, k, v, att, scale, n_head = cache
        dy, dw_proj, db_proj = linear_backward(dout, proj_cache)
        dheads = split_heads(dy, n_head)
        datt = dheads @ v.transpose(0, 1, 3, 2)
        dv = att.transpose(0, 1, 3, 2) @ dheads
        dscores = att * datt * scale           # softmax's "- sum(datt * att)" forgotten
        dq, dk = dscores @ k, dscores.transpose(0, 1, 3, 2) @ q
        dqkv = np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)
        dx, dw_qkv, db_qkv = linear_backward(dqkv, qkv_cache)
        return dx, dw_qkv, db_qkv, dw_proj, db_proj
"""

VQ_NO_STRAIGHT_THROUGH = """
    from tinytok.tokenizer.quantize import vector_quantize_forward
    from tinytok.tokenizer.quantize import vector_quantize_backward as package_backward

    def vector_quantize_backward(dz_q, cache, dloss=1.0):
        dz, dcodebook = package_backward(dz_q, cache, dloss)
        return dz - dz_q, dcodebook                  # only the commitment term reaches z
"""

VQ_NOTHING_TO_Z = """
    import numpy as np
    from tinytok.tokenizer.quantize import vector_quantize_forward
    from tinytok.tokenizer.quantize import vector_quantize_backward as package_backward

    def vector_quantize_backward(dz_q, cache, dloss=1.0):
        return np.zeros_like(dz_q), package_backward(dz_q, cache, dloss)[1]
"""

MISTAKES = {  # name: (op, source, the wrong line, what the checker must say about it)
    "linear db mean": ("linear", LINEAR.format(mistake="db = d2.mean(0)"), "db",
                       "0.25x (1/4) too small: a mean over 4 where a sum belongs?"),
    "linear dw transposed": ("linear", LINEAR.format(mistake="dw = d2.T @ x2"), "dw",
                             "transposed"),
    "linear dx sign": ("linear", LINEAR.format(mistake="dx = -dx"), "dx", "sign flipped"),
    "linear db not summed": ("linear", LINEAR.format(mistake="db = d2"), "db",
                             "not summed over the batch"),
    "linear dx summed": ("linear", LINEAR.format(mistake="dx = dx.sum(0)"), "dx",
                         "summed over the batch"),
    "linear dx flat": ("linear", LINEAR.format(mistake="dx = dx.reshape(-1)"), "dx",
                       "the right numbers in the wrong shape"),
    "layer norm missing term": ("layer_norm", LAYER_NORM, "dx", "xhat * mean(g * xhat) is "
                                "missing"),
    "cross entropy no count": ("cross_entropy", CROSS_ENTROPY, "dlogits",
                               "6x too large: a sum where a mean over 6 belongs?"),
    "cross entropy by all positions": ("cross_entropy", CROSS_ENTROPY.replace(
        "d * keep[:, None] * dloss", "d * keep[:, None] * dloss / len(t)"), "dlogits",
        "divided by all 8 positions: divide by the 6 kept"),
    "cross entropy ignored positions": ("cross_entropy", CROSS_ENTROPY.replace(
        "d * keep[:, None] * dloss", "d * dloss / keep.sum()"), "dlogits",
        "a gradient at ignored positions"),
    "mse factor 2": ("mse", MSE, "dpred", "0.5x (1/2) too small: a factor 2 missing?"),
    "mse without dloss": ("mse", MSE.replace("/ diff.size * dloss", "* 2 / diff.size"),
                          "dpred", "dloss (0.7 here) is not multiplied in"),
    "embedding assigns": ("embedding", EMBEDDING, "dtable", "wrong where an id repeats"),
    "leaky relu with relu's backward": ("leaky_relu", LEAKY_RELU.replace(
        "np.where(positive, dout, slope * dout)", "dout * positive"), "dx",
        "0 where x <= 0: that is ReLU's backward"),
    "leaky relu slope without dout": ("leaky_relu", LEAKY_RELU.replace(
        "slope * dout)", "slope)"), "dx", "slope alone where x <= 0: multiply it by dout"),
    "leaky relu slope 0.2 built in": ("leaky_relu", LEAKY_RELU.replace(
        "slope * x), (positive, slope)", "0.2 * x), (positive, 0.2)"), "out",
        "slope 0.2 built in: use the slope argument (0.1 here)"),
    "leaky relu slope on the positive side": ("leaky_relu", LEAKY_RELU.replace(
        "np.where(positive, x, slope * x)", "np.where(positive, slope * x, x)"), "out",
        "the slope on the wrong side"),
    "hinge d margins swapped": ("hinge_d_loss", HINGE_D.replace(
        "maximum(1 - real, 0).mean() + np.maximum(1 + fake",
        "maximum(1 + real, 0).mean() + np.maximum(1 - fake"), "loss",
        "real and fake swapped"),
    "hinge d one mean": ("hinge_d_loss", HINGE_D.replace(
        "np.maximum(1 - real, 0).mean() + np.maximum(1 + fake, 0).mean()",
        "np.concatenate([np.maximum(1 - real, 0).ravel(), np.maximum(1 + fake, 0).ravel()])"
        ".mean()"), "loss", "one mean over real and fake together"),
    "hinge d gradient beyond the margin": ("hinge_d_loss", HINGE_D.replace(
        "-dloss * short_real", "-dloss * np.ones(short_real.shape)"), "dreal",
        "a gradient beyond the margin"),
    "hinge d divided by both sides": ("hinge_d_loss", HINGE_D.replace(
        "short_fake.size\n", "(short_real.size + short_fake.size)\n"), "dfake",
        "divided by all the scores, real and fake together: divide by this side's 12"),
    "hinge d divided by the active scores": ("hinge_d_loss", HINGE_D.replace(
        "short_real / short_real.size", "short_real / short_real.sum()"), "dreal",
        "divided by the scores short of the margin only: divide by all 18"),
    "hinge d without dloss": ("hinge_d_loss", HINGE_D.replace(
        "-dloss * short_real", "-1.0 * short_real"), "dreal",
        "dloss (0.7 here) is not multiplied in"),
    "amplitude without the phase": ("amplitude_loss", AMPLITUDE.replace(
        "gap.size * phase", "gap.size"), "dpred", "the phase left out"),
    "amplitude back by the plain ifft2": ("amplitude_loss", AMPLITUDE.replace(
        'phase, norm="ortho")', "phase)"), "dpred", "the plain ifft2"),
    "amplitude unnormalized": ("amplitude_loss", AMPLITUDE.replace(
        'np.fft.fft2(pred, norm="ortho")', "np.fft.fft2(pred)").replace(
        'np.fft.fft2(target, norm="ortho")', "np.fft.fft2(target)"), "loss",
        "the DFT unnormalized"),
    "hinge g as a hinge": ("hinge_g_loss", HINGE_G.replace(
        "-fake.mean(), fake.shape", "np.maximum(1 - fake, 0).mean(), fake.shape"), "loss",
        "a hinge: that is D's loss on real pictures"),
    "hinge g sum": ("hinge_g_loss", HINGE_G.replace("-dloss / np.prod(shape)", "-dloss"),
                    "dfake", "18x too large: a sum where a mean over 18 belongs?"),
    "hinge g sign": ("hinge_g_loss", HINGE_G.replace("-dloss /", "dloss /"), "dfake",
                     "sign flipped"),
    "conv2d kernel not flipped": ("conv2d", CONV2D.format(
        kernel="w[:, :, kh - 1 - i, kw - 1 - j]", dw="dw"), "dx", "turned by 180 degrees"),
    "conv2d dw transposed": ("conv2d", CONV2D.format(
        kernel="w[:, :, i, j]", dw="dw.transpose(1, 0, 2, 3)"), "dw",
        "axes in the wrong order: its .transpose(1, 0, 2, 3) is right"),
    "conv2d dw turned": ("conv2d", CONV2D.format(
        kernel="w[:, :, i, j]", dw="dw[:, :, ::-1, ::-1]"), "dw", "turned by 180 degrees"),
    "attention no softmax correction": ("causal_self_attention", ATTENTION, "dx",
                                        "a term seems missing"),
    "vq no straight-through": ("vector_quantize", VQ_NO_STRAIGHT_THROUGH, "dz",
                               "no straight-through"),
    "vq nothing to z": ("vector_quantize", VQ_NOTHING_TO_Z, "dz", "all zeros"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_classic_mistakes_are_caught_and_named(mistake, tmp_path, capsys):
    op, source, wrong, diagnosis = MISTAKES[mistake]
    code, out, err = check(op, write(tmp_path, source), capsys)
    assert code == 1, out + err
    assert "WRONG" in line_of(wrong, out) and diagnosis in line_of(wrong, out), out
    assert re.search(rf"WRONG: .*\b{wrong}\b", out.splitlines()[-1]), out


def test_a_backward_that_writes_into_dout_is_caught(tmp_path, capsys):
    """CS231n's trap: the mask written into dout, which the caller still needs. The numbers
    are right, so only the in-place check can see it."""
    path = write(tmp_path, """
        def relu_forward(x):
            return x * (x > 0), x
        def relu_backward(dout, x):
            dout[x <= 0] = 0
            return dout
    """)
    code, out, _ = check("relu", path, capsys)
    assert code == 1
    assert line_of("dx", out).endswith("OK")
    assert "changed in place by relu_backward" in line_of("dout", out)
    assert out.splitlines()[-1].startswith("relu: WRONG: dout")


def test_a_forward_that_changes_its_input_is_caught(tmp_path, capsys):
    path = write(tmp_path, """
        def relu_forward(x):
            positive = x > 0
            x[~positive] = 0
            return x, positive
        def relu_backward(dout, positive):
            return dout * positive
    """)
    code, out, _ = check("relu", path, capsys)
    assert code == 1 and "changed in place by relu_forward" in line_of("x", out)


def test_a_backward_matching_a_wrong_forward_is_told_so(tmp_path, capsys):
    """Finite differences of the learner's own forward: the backward is consistent with it,
    and the message says the forward is what to fix."""
    path = write(tmp_path, """
        import numpy as np
        def gelu_forward(x):
            return np.maximum(x, 0), x
        def gelu_backward(dout, x):
            return dout * (x > 0)
    """)
    code, out, _ = check("gelu", path, capsys)
    assert code == 1 and "WRONG" in line_of("out", out)
    assert "the forward is wrong, fix it first" in line_of("dx", out)


def test_an_exception_in_the_learners_code_names_its_line(tmp_path, capsys):
    path = write(tmp_path, """
        def relu_forward(x):
            return x * (x > 0), x
        def relu_backward(dout, x):
            return dout * x.mask
    """)
    code, out, _ = check("relu", path, capsys)
    assert code == 1
    assert "relu_backward raised at line 5: AttributeError" in line_of("dx", out)


# ---------------------------------------------------------------- the exercise files

EXERCISE_FILES = sorted(EXERCISES.glob("*.py"))


def test_there_is_an_exercise_for_every_op():
    assert sorted(p.stem for p in EXERCISE_FILES) == sorted(OPS)
    listing = (EXERCISES / "README.md").read_text()
    for path in EXERCISE_FILES:
        assert f"tinytok check {path.stem} lessons/exercises/{path.name}" in listing
    for link in re.findall(r"\]\((\.\./\.\./[^)]+)\)", listing):
        assert (EXERCISES / link).resolve().is_file(), link


@pytest.mark.parametrize("path", EXERCISE_FILES, ids=lambda p: p.stem)
def test_an_unfilled_exercise_is_not_written_yet(path, tmp_path, capsys):
    """Each file imports and defines the pair; what it gives (a forward) is right, what it
    leaves to the learner is reported as not written yet, with exit code 1."""
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    code, out, err = check(path.stem, copy, capsys)
    assert code == 1, out + err
    assert "not written yet" in out and "WRONG" not in out, out
    for name in OPS[path.stem].grads:
        assert line_of(name, out).endswith("not written yet")


# ---------------------------------------------------------------- unusable input

@pytest.mark.parametrize("op, source, message", [
    ("softmax", "x = 1\n", "unknown op 'softmax'; choose one of: linear, conv2d"),
    ("gelu", None, "no such file:"),
    ("gelu", "def gelu_forward(x)\n    return x\n",
     "attempt.py does not import: line 1: SyntaxError"),
    ("gelu", "import numpy as np\n\nvalues = np.zeros(3)[5]\n",
     "attempt.py does not import: line 3: IndexError: index 5 is out of bounds"),
    ("gelu", "def gelu_forward(x):\n    return x, None\n",
     "attempt.py defines no gelu_backward(dout, cache) -> dx"),
    ("layer_norm", "x = 1\n", "attempt.py defines no layer_norm_forward(x, gamma, beta) -> "
     "(out, cache) and no layer_norm_backward(dout, cache) -> (dx, dgamma, dbeta)"),
])
def test_unusable_input_is_one_line_and_exit_2(op, source, message, tmp_path, capsys):
    path = write(tmp_path, source) if source is not None else tmp_path / "missing.py"
    code, out, err = check(op, path, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("tinytok: error: ") and message in err, err


# ---------------------------------------------------------------- through the command

def test_the_command_line_runs_it(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "TINYTOK_BACKEND": "numpy"}

    def run(op, path):
        return subprocess.run([sys.executable, "-m", "tinytok.cli", "check", op, str(path)],
                              capture_output=True, text=True, env=env, timeout=120)
    right = run("linear", write(tmp_path, package_source("linear"), "right.py"))
    assert right.returncode == 0 and "linear: all 4 right" in right.stdout, right.stderr
    wrong = run("linear", write(tmp_path, LINEAR.format(mistake="db = d2.mean(0)"), "w.py"))
    assert wrong.returncode == 1 and "linear: WRONG: db" in wrong.stdout, wrong.stderr
