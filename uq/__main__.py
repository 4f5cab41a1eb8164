"""``python -m candle.uq``: uncertainty quantification with deep ensembles.

    python -m candle.uq UQ.yaml [--resume] [--slots N] [--executor local|parsl] [--site ...]
    python -m candle.uq report DIR [--out DIR2]    metrics, predictions and plots again

The first form trains the ensemble members (and sensitivity sweeps) as trials, then writes
metrics.json, predictions.csv/.parquet, sensitivity.csv and the PNG plots into the study
directory. Exit status: 0 done, 1 no member finished, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import json
import sys


def _summary_lines(report: dict) -> list[str]:
    lines = [
        f"{report['n_members']} members ({report['head']} head), {report['n_test']} test samples"
    ]
    keys = ("nll", "rmse", "crps", "coverage_95", "accuracy", "brier", "ece")
    for name in ("single", "ensemble"):
        values = {k: v for k, v in report[name].items() if k in keys and v is not None}
        lines.append(f"{name:>9}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
    for method, values in report["recalibrated"].items():
        shown = {k: v for k, v in values.items() if k in keys and v is not None}
        lines.append(f"{method:>9}: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    if report["failed_members"]:
        lines.append(f"not finished: {', '.join(report['failed_members'])}")
    return lines


def _run(argv: list[str]) -> int:
    from candle.uq.analysis import analyze
    from candle.uq.driver import load_uq_config, run_uq
    from candle.workflow.executors import add_executor_arguments, executor_from_arguments

    ap = argparse.ArgumentParser(prog="python -m candle.uq", description="Run a UQ study.")
    ap.add_argument("study", help="UQ study file (YAML, JSON or TOML)")
    ap.add_argument("--resume", action="store_true", help="continue the study in its directory")
    add_executor_arguments(ap)
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    executor = executor_from_arguments(args, load_uq_config(args.study).study.executor)
    summary = run_uq(
        args.study, resume=args.resume, progress=not args.quiet, executor_override=executor
    )
    counts = ", ".join(f"{n} {status}" for status, n in summary.counts.items() if n)
    print(f"uq: {counts or 'no trials'} in {summary.wall_s:.1f} s")
    if not summary.counts.get("done"):
        print("uq: no member finished; see the trial logs", file=sys.stderr)
        return 1
    report = analyze(summary.directory)
    print("\n".join(_summary_lines(report)))
    print(f"metrics: {summary.directory / 'metrics.json'}")
    return 0


def _report(argv: list[str]) -> int:
    from pathlib import Path

    from candle.uq.analysis import analyze

    ap = argparse.ArgumentParser(prog="python -m candle.uq report")
    ap.add_argument("directory")
    ap.add_argument("--out", help="output folder (default: DIR)")
    ap.add_argument("--json", action="store_true", help="print metrics.json")
    args = ap.parse_args(argv)
    report = analyze(args.directory, args.out)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print("\n".join(_summary_lines(report)))
    print(f"metrics: {Path(args.out or args.directory) / 'metrics.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from candle.workflow._cli import workflow_main

    return workflow_main(
        argv, prog="candle.uq", doc=__doc__, run=_run, commands={"report": _report}
    )


if __name__ == "__main__":
    sys.exit(main())
