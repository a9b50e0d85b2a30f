"""Running the benchmark: each section in a fresh Python process (its peak memory its own),
the whole of it (run_bench), and its command line (`tinytok bench`, python -m tinytok.bench).
"""
import argparse
import json
import os
import platform
import subprocess
import sys

import numpy as np

import tinytok
from tinytok.bench.options import add_arguments, parse_only
from tinytok.bench.report import format_table
from tinytok.bench.sections import SECTIONS, run_section
from tinytok.errors import ConfigError

_MARK = "@@tinytok-bench@@"


def _child(spec):
    """Entry point of a section's fresh process: print its figures as one marked JSON line."""
    print(_MARK + json.dumps(run_section(**spec)), flush=True)


def run_isolated(spec):
    """run_section in a fresh Python process, so that its peak RSS is its own."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(tinytok.__file__)))  # this tinytok
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    code = "import json, sys; from tinytok.bench.run import _child; _child(json.loads(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK) and proc.returncode == 0:
            return json.loads(line[len(_MARK):])
    raise RuntimeError(f"benchmark section {spec['part']}/{spec['section']} failed "
                       f"(exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def run_bench(backend="numpy", only=None, repeats=None, quick=False, warmup=None, isolate=True,
              batch=None):
    """Run the selected parts; returns {"meta": ..., part: {figures}, ...} (see module doc).

    repeats / warmup override the per-measurement defaults (REPEATS). quick shrinks every
    size (QUICK) for tests: its figures say nothing about speed. isolate=False runs the
    sections in this process (faster; peak RSS is then cumulative, not per part).
    """
    if backend not in ("numpy", "cupy"):
        raise ConfigError(f"unknown backend {backend!r}; choose numpy or cupy")
    parts = parse_only(only)
    result = {"meta": _meta(backend, quick, isolate)}
    for part in parts:
        figures = {"peak_rss_mb_by_section": {}}
        for section in SECTIONS[part]:
            spec = dict(part=part, section=section, backend_name=backend, quick=quick,
                        repeats=repeats, warmup=warmup, batch=batch)
            got = run_isolated(spec) if isolate else run_section(**spec)
            figures["peak_rss_mb_by_section"][section] = got.pop("peak_rss_mb")
            figures.update(got)
        figures["peak_rss_mb"] = max(figures["peak_rss_mb_by_section"].values())
        result[part] = figures
    ceiling = result.get("sgemm", {}).get("ceiling_gflops")
    for figures in result.values():
        if "train_gflops" in figures:  # share of the sgemm ceiling; None without sgemm
            figures["train_share_of_sgemm"] = (figures["train_gflops"] / ceiling if ceiling
                                               else None)
    return result


def _meta(backend_name, quick, isolate):
    return {"backend": backend_name, "quick": quick, "per_section_process": isolate,
            "python": platform.python_version(), "numpy": np.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "flops": "multiply-add = 2; train step = 3x forward, less the first conv's dx "
                     "(VQ distance product once)"}


def run(args):
    """Execute parsed arguments; returns the exit status."""
    try:
        result = run_bench(backend=args.backend, only=args.only, repeats=args.repeats,
                           quick=args.quick, warmup=args.warmup, isolate=not args.in_process,
                           batch=args.batch)
    except ConfigError as e:
        print(f"tinytok bench: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def main(argv=None):
    """python -m tinytok.bench: the same flags as `tinytok bench`."""
    from tinytok import bench
    parser = add_arguments(argparse.ArgumentParser(prog="tinytok bench", description=bench
                                                   .__doc__.split("\n")[0]))
    return run(parser.parse_args(argv))
