"""Run every benchmark script in this folder and print one table of their ``RESULT`` lines.

A benchmark is any ``benchmarks/*.py`` whose name does not start with ``_`` (other than this
file). Each runs in its own subprocess with this Python; its output is shown as it runs, and
the ``RESULT`` lines it prints (format: ``_common.py``) are collected. The exit status is
non-zero if any result says FAIL, a script exits non-zero, or a script prints no ``RESULT``.

    python benchmarks/run_all.py                    # everything (what `make bench` runs)
    python benchmarks/run_all.py --quick            # pass --quick to each: smoke test sizes
    python benchmarks/run_all.py trainer_overhead   # only the named benchmarks
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import Result, parse_result

HERE = Path(__file__).resolve().parent


def discover() -> list[Path]:
    me = Path(__file__).resolve().name
    return sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.name != me)


def run_one(script: Path, extra: list[str], timeout: float) -> tuple[int, list[Result], float]:
    """Run ``script``, echoing its output; return (exit code, its results, seconds)."""
    cmd = [sys.executable, str(script), *extra]
    print(f"\n=== {script.name}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    results: list[Result] = []
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE.parent
    )
    assert proc.stdout is not None
    watchdog = threading.Timer(timeout, proc.kill)  # also catches a script gone silent
    watchdog.start()
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
            result = parse_result(line)
            if result is not None:
                results.append(result)
        rc = proc.wait()
    finally:
        watchdog.cancel()
    if time.perf_counter() - start >= timeout:
        print(f"--- {script.name}: killed after {timeout:g} s", flush=True)
    return rc, results, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="benchmarks to run (file stems); default: all")
    ap.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    ap.add_argument(
        "--timeout", type=float, default=1800, help="seconds per benchmark (default 1800)"
    )
    args = ap.parse_args()
    scripts = discover()
    if args.names:
        known = {p.stem: p for p in scripts}
        unknown = [n for n in args.names if n not in known]
        if unknown:
            print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(known)}")
            return 2
        scripts = [known[n] for n in args.names]
    if not scripts:
        print(f"no benchmark scripts in {HERE}")
        return 2
    extra = ["--quick"] if args.quick else []

    rows: list[tuple[str, str, str, str, str]] = []
    failed: list[str] = []
    for script in scripts:
        rc, results, seconds = run_one(script, extra, args.timeout)
        for r in results:
            rows.append((r.benchmark, r.metric, r.value, r.target, r.status))
        problems = [r.metric for r in results if r.status == "FAIL"]
        if rc != 0:
            problems.append(f"exit code {rc}")
        if not results:
            problems.append("no RESULT line")
            rows.append((script.stem, "-", "-", "-", "ERROR"))
        elif rc != 0 and not any(r.status == "FAIL" for r in results):
            rows.append((script.stem, f"(exit code {rc})", "-", "-", "ERROR"))
        if problems:
            failed.append(f"{script.stem} ({', '.join(problems)})")
        print(f"--- {script.name}: {seconds:.1f} s, exit code {rc}", flush=True)

    headers = ("benchmark", "metric", "value", "target", "status")
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print()
    if failed:
        print(f"FAILED: {'; '.join(failed)}")
        return 1
    print(f"all {len(scripts)} benchmark(s) passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
