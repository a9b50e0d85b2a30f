"""One case: the learner's pair and the package's on the same inputs, every result compared.

Each output and each gradient is held against two references: the package's pair, and
central differences of the learner's own forward with the same random upstream gradient.
The second tells a learner whose forward is wrong whether the backward at least matches it.
(For vector_quantize, whose argmin has no derivative, it is the straight-through
definition instead, differenced with the ids fixed: see cases.vq_surrogate_gradients.)
"""
import math
from typing import NamedTuple

import numpy as np

from tinytok.check.cases import vq_surrogate_gradients
from tinytok.check.diagnose import NOT_WRITTEN, TOL, as_array, close, cosine, diagnose
from tinytok.check.learner import LearnerError, call
from tinytok.gradcheck import numerical_gradient, relative_error

NAN = float("nan")


class Finding(NamedTuple):
    name: str          # "out", "dx", ... or an argument changed in place
    vs_package: float  # relative error; nan where the two cannot be compared
    vs_fd: float       # relative error against the finite differences; nan where none
    problem: str       # None when right


class Right(NamedTuple):
    """The package's results for one case, and the upstream gradient both backwards get."""
    outs: list
    grads: tuple
    upstream: object   # dout (an array like the output) or a loss's dloss
    extra: tuple       # what comes after the cache: vector_quantize's dloss


def package_results(op, case, seed):
    forward, backward = op.package_pair()
    *outs, cache = forward(*case.args, **case.kwargs)
    rng = np.random.default_rng(seed)
    upstream = case.dloss if op.upstream == "dloss" else rng.standard_normal(outs[0].shape)
    extra = (case.dloss,) if op.straight_through else ()
    return Right(outs, as_tuple(backward(copy(upstream), cache, *extra)), upstream, extra)


def run_case(op, pair, case, seed):
    """Findings for one case: a line per output and gradient, then one per changed input."""
    right = package_results(op, case, seed)
    args = [copy(a) for a in case.args]
    try:
        outs, cache = unpack_forward(call(pair.forward, pair.path, *args, **case.kwargs),
                                     op.outputs)
    except LearnerError as e:
        return ([Finding(name, NAN, NAN, str(e)) for name in op.outputs]
                + unchecked_backward(op, pair, right)
                + changed_in_place(op, args, case.args, f"{op.name}_forward"))
    changed = changed_in_place(op, args, case.args, f"{op.name}_forward")
    findings = [compare_output(name, out, want, op.hints(name, case, want, right.upstream))
                for name, out, want in zip(op.outputs, outs, right.outs)]
    dout = copy(right.upstream)
    try:
        grads = unpack_grads(call(pair.backward, pair.path, dout, cache, *right.extra),
                             op.grads)
    except LearnerError as e:
        return findings + [Finding(name, NAN, NAN, str(e)) for name in op.grads] + changed
    if not equal(dout, right.upstream):
        changed.append(Finding(op.upstream, NAN, NAN, f"changed in place by {op.name}_backward"
                               f": work on a copy (CS231n's trap: {op.upstream}[mask] = 0)"))
    changed += changed_in_place(op, args, case.args, f"{op.name}_backward")
    fds, label = reference_gradients(op, pair, case, outs, right)
    return findings + [compare_gradient(name, got, want, fd, label,
                                        op.hints(name, case, want, right.upstream))
                       for name, got, want, fd in zip(op.grads, grads, right.grads, fds)] + changed


def copy(value):
    return value.copy() if hasattr(value, "copy") else value


def as_tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)


def equal(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)


def unpack_forward(result, outputs):
    """(outs, cache) from what the learner's forward returned; LearnerError if unusable."""
    if result is None:
        raise LearnerError(NOT_WRITTEN)
    wanted = f"({', '.join(outputs)}, cache)"
    if not isinstance(result, (tuple, list)) or len(result) != len(outputs) + 1:
        got = (f"{len(result)} values" if isinstance(result, (tuple, list)) else
               type(result).__name__)
        raise LearnerError(f"the forward must return {wanted}, got {got}")
    return result[:-1], result[-1]


def unpack_grads(result, names):
    """The learner's gradients, one per name (a lone array where one is expected)."""
    if result is None:
        return [None] * len(names)
    if len(names) == 1 and not isinstance(result, (tuple, list)):
        return [result]
    if not isinstance(result, (tuple, list)) or len(result) != len(names):
        got = (f"{len(result)} values" if isinstance(result, (tuple, list)) else
               type(result).__name__)
        raise LearnerError(f"the backward must return {', '.join(names)}, got {got}")
    return list(result)


def changed_in_place(op, args, originals, who):
    """A finding for each input array that `who` wrote into."""
    names = [n.split("=")[0] for n in op.inputs.split(", ")]
    return [Finding(name, NAN, NAN, f"changed in place by {who}: leave the inputs as they are")
            for name, a, original in zip(names, args, originals)
            if hasattr(original, "shape") and not equal(a, original)]


def unchecked_backward(op, pair, right):
    """With no usable forward there is no cache; still say whether the backward is written."""
    try:
        written = call(pair.backward, pair.path, copy(right.upstream), None,
                       *right.extra) is not None
    except LearnerError:
        written = True
    problem = f"not checked: needs a working {op.name}_forward" if written else NOT_WRITTEN
    return [Finding(name, NAN, NAN, problem) for name in op.grads]


def compare_output(name, got, want, hints):
    a = as_array(got)
    if a is None or a.shape != np.shape(want):
        return Finding(name, NAN, NAN, diagnose(got, want, hints))
    if want.dtype.kind in "iu":  # the quantizer's ids: count the ones that differ
        wrong = int(np.sum(a != want))
        return Finding(name, wrong / want.size, NAN, None if not wrong else
                       f"{wrong} of {want.size} differ: each id is the index of the nearest "
                       "code (argmin of |z - e|^2)")
    error = relative_error(a, want)
    return Finding(name, error, NAN, None if error < TOL else
                   diagnose(a, want, hints) or "wrong values")


def compare_gradient(name, got, want, fd, label, hints):
    a = as_array(got)
    fits = a is not None and a.shape == want.shape
    vs_package = relative_error(a, want) if fits else NAN
    vs_fd = relative_error(a, fd) if fits and fd is not None else NAN
    if vs_package < TOL:
        return Finding(name, vs_package, vs_fd, None)
    problem = diagnose(got, want, hints)
    if problem is None:
        problem = compared_with_own_forward(a, want, fd, label)
    return Finding(name, vs_package, vs_fd, problem)


def compared_with_own_forward(a, want, fd, label):
    """What the finite differences say when no transform explains the error."""
    if fd is None:
        return "wrong values"
    if close(a, fd):
        return f"matches {label} but not the package: the forward is wrong, fix it first"
    if close(fd, want):  # the forward is right, the backward is not
        if cosine(a, want) > 0.5:
            return (f"a term seems missing: {label} match the package (the forward is "
                    "right), this gradient only in part")
        return f"does not match {label}, which match the package (the forward is right)"
    return f"matches neither the package nor {label}"


def reference_gradients(op, pair, case, outs, right):
    """The finite-difference gradients (None each where they cannot be had), and a label."""
    if op.straight_through:
        return definition_gradients(case, outs, right), "the definition's differences"
    label = "your forward's differences"
    if np.shape(outs[0]) != np.shape(right.outs[0]):
        return [None] * len(op.grads), label
    try:
        return [own_forward_gradient(pair, case, i, right.upstream) for i in op.wrt], label
    except (LearnerError, TypeError, ValueError):
        return [None] * len(op.grads), label


def definition_gradients(case, outs, right):
    """The quantizer's straight-through surrogate, differenced at the learner's ids (or at
    the package's, where the learner's z_q and ids cannot be used)."""
    z_q, ids = outs[0], as_array(outs[1])
    usable = (ids is not None and ids.shape == right.outs[1].shape and ids.dtype.kind in "iu"
              and np.shape(z_q) == right.outs[0].shape)
    if not usable:
        z_q, ids = right.outs[0], right.outs[1]
    try:
        return vq_surrogate_gradients(case, z_q, ids, right.upstream)
    except IndexError:  # ids outside the codebook
        return [None, None]


def own_forward_gradient(pair, case, i, upstream):
    """d sum(forward(...)[0] * upstream) / d args[i], by central differences."""
    def out_of(probe_value):
        probe = [copy(a) for a in case.args]
        probe[i] = probe_value
        out = call(pair.forward, pair.path, *probe, **case.kwargs)[0]
        return np.asarray(out, dtype=np.float64)
    x = case.args[i].copy()
    g = np.asarray(upstream, dtype=np.float64)
    return numerical_gradient(out_of, x, g, range(x.size)).reshape(x.shape)


def merge(findings_per_case):
    """One finding per name over all cases: the worst errors, the first problem seen."""
    merged = {}
    for finding in (f for findings in findings_per_case for f in findings):
        seen = merged.get(finding.name)
        if seen is None:
            merged[finding.name] = finding
            continue
        merged[finding.name] = Finding(finding.name, worst(seen.vs_package, finding.vs_package),
                                       worst(seen.vs_fd, finding.vs_fd),
                                       seen.problem or finding.problem)
    return list(merged.values())


def worst(a, b):
    return b if math.isnan(a) else a if math.isnan(b) else max(a, b)
