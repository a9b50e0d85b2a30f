"""`tinytok check OP FILE`: grade a learner's own forward and backward of one op pair.

FILE defines OP_forward and OP_backward with the package's signatures and return order
(the cache is the learner's own: anything). The checker runs them on a few small float64
inputs beside the package's pair and prints a line per output and gradient:

      dw     vs package 4.2e-01   vs your forward's differences 4.2e-01   WRONG  transposed: ...

the relative error against the package, against central differences of the learner's own
forward (so a wrong forward does not hide whether the backward matches it), and, where a
test can tell, what kind of wrong it is (diagnose.py). Exit code 0: all right; 1: something
is wrong, or not written yet; 2: the op or the file is unusable (a ConfigError, one line).

    learner.py   import the file, call its functions, report where they raised
    cases.py     the ops: signatures, inputs, op-specific hints
    run.py       one case: run both pairs, compare, difference
    diagnose.py  what kind of wrong
"""
import math
import os
import sys

import numpy as np

from tinytok.check.cases import OPS
from tinytok.check.diagnose import NOT_WRITTEN
from tinytok.check.learner import load_pair
from tinytok.check.run import merge, run_case
from tinytok.errors import ConfigError

SEED = 0


def check(op_name, path, out=None):
    """Check the pair OP_forward, OP_backward in the file at path; print; return 0 or 1."""
    op = find_op(op_name)
    pair = load_pair(path, op)
    cases = op.cases(np.random.default_rng(SEED))
    findings = merge(run_case(op, pair, case, seed=SEED + i) for i, case in enumerate(cases))
    return report(op, os.path.basename(path), len(cases), findings, out or sys.stdout)


def report(op, name, n_cases, findings, out):
    """The table, one line per finding, and a last line naming what is wrong: 0 or 1."""
    fd = ("the straight-through definition, differenced with the ids fixed"
          if op.straight_through else "central differences of your own forward")
    print(f"{op.name}: checking {name} on {n_cases} float64 cases (relative errors; vs fd: "
          f"{fd})", file=out)
    print(f"  {'':<10} {'vs package':>10}  {'vs fd':>8}", file=out)
    for finding in findings:
        print(format_line(finding), file=out)
    unwritten = [f.name for f in findings if f.problem == NOT_WRITTEN]
    wrong = [f.name for f in findings if f.problem and f.problem != NOT_WRITTEN]
    if not (wrong or unwritten):
        print(f"{op.name}: all {len(findings)} right", file=out)
        return 0
    parts = ([f"WRONG: {', '.join(wrong)}"] if wrong else []) + (
        [f"not written yet: {', '.join(unwritten)}"] if unwritten else [])
    print(f"{op.name}: {'; '.join(parts)} ({len(wrong) + len(unwritten)} of {len(findings)})",
          file=out)
    return 1


def find_op(name):
    if name not in OPS:
        raise ConfigError(f"unknown op {name!r}; choose one of: {', '.join(OPS)}")
    return OPS[name]


def format_line(finding):
    def number(x):
        return "-" if math.isnan(x) else f"{x:.1e}"
    status = "OK" if finding.problem is None else f"WRONG  {finding.problem}"
    if finding.problem == NOT_WRITTEN:
        status = NOT_WRITTEN
    return (f"  {finding.name:<10} {number(finding.vs_package):>10}  "
            f"{number(finding.vs_fd):>8}  {status}")
