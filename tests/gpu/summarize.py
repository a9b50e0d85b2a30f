"""Summarize a tests/gpu/run.sh output folder into summary.json (and print it).

    python tests/gpu/summarize.py OUTDIR

Reads steps.tsv (exit code and seconds per step), the pytest JUnit XML files (counts and
the names of failing tests) and the two benchmark JSON files (every median time "*_ms" in
both gives a speed-up, CPU time / GPU time). Standard library only.
"""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def steps(out):
    rows = []
    path = out / "steps.tsv"
    if path.exists():
        for line in path.read_text().splitlines():
            name, rc, seconds = (line.split("\t") + ["", ""])[:3]
            rows.append({"step": name, "exit": rc, "seconds": int(seconds or 0)})
    return rows


def junit(path):
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        return {"error": f"unreadable JUnit XML: {e}"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites)
              for k in ("tests", "failures", "errors", "skipped")}
    failing, skip_reasons = [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                failing.append({"test": name, tag: (node.get("message") or "")[:300]})
        node = case.find("skipped")
        if node is not None:
            reason = (node.get("message") or "")[:200]
            skip_reasons[reason] = skip_reasons.get(reason, 0) + 1
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failing": failing, "skip_reasons": skip_reasons}


def bench(path):
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        return {"error": f"not JSON: {e}"}


def speedups(cpu, gpu):
    """{part: {measurement: {"numpy_ms", "cupy_ms", "speedup"}}} for medians in both."""
    if not cpu or not gpu or "error" in cpu or "error" in gpu:
        return None
    table = {}
    for part, figures in gpu.items():
        if part == "meta" or not isinstance(figures, dict) or part not in cpu:
            continue
        for key, value in figures.items():
            other = cpu[part].get(key)
            if key.endswith("_ms") and isinstance(value, (int, float)) and value > 0 \
                    and isinstance(other, (int, float)):
                table.setdefault(part, {})[key] = {"numpy_ms": other, "cupy_ms": value,
                                                   "speedup": other / value}
    return table


def main(out):
    out = Path(out)
    cpu, gpu = bench(out / "bench_numpy.json"), bench(out / "bench_cupy.json")
    summary = {
        "env": (out / "env.txt").read_text() if (out / "env.txt").exists() else None,
        "steps": steps(out),
        "tests": {name: junit(out / f"{name}.xml")
                  for name in ("parity", "cupy_tests", "lessons")},
        "speedup_numpy_over_cupy": speedups(cpu, gpu),
        "bench_meta": {"numpy": (cpu or {}).get("meta"), "cupy": (gpu or {}).get("meta")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for row in summary["steps"]:
        print(f"{row['step']:>12}: exit {row['exit']:>7}  {row['seconds']:>4}s")
    for name, result in summary["tests"].items():
        if result and "error" not in result:
            print(f"{name:>12}: {result['passed']} passed, {result['failures']} failed, "
                  f"{result['errors']} errors, {result['skipped']} skipped")
            for f in result["failing"][:20]:
                print(f"{'':>14}FAILED {f['test']}")
    for part, rows in (summary["speedup_numpy_over_cupy"] or {}).items():
        for key, row in rows.items():
            print(f"{part:>12} {key:<22} numpy {row['numpy_ms']:9.2f} ms  cupy "
                  f"{row['cupy_ms']:9.2f} ms  x{row['speedup']:.1f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/gpu/summarize.py OUTDIR")
    sys.exit(main(sys.argv[1]))
