"""``python -m candle.tda``: training data analysis.

    python -m candle.tda PLAN.yaml [--resume] [--slots N] [--executor local|parsl]
                                   [--site local|slurm|pbs] [--parsl-config FILE.py]
    python -m candle.tda report DIR [--out FOLDER]    CSV tables and PNG plots

Exit status: 0 done (some trial finished), 1 every trial failed, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import sys


def _run(argv: list[str]) -> int:
    from candle.tda.driver import run_tda
    from candle.tda.plan import load_plan
    from candle.workflow.executors import add_executor_arguments, executor_from_arguments

    ap = argparse.ArgumentParser(prog="python -m candle.tda", description="Run a plan.")
    ap.add_argument("plan", help="plan file (YAML, JSON or TOML)")
    ap.add_argument("--resume", action="store_true", help="continue the plan in its directory")
    add_executor_arguments(ap)
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    executor = executor_from_arguments(args, load_plan(args.plan).study.executor)
    summary = run_tda(
        args.plan, resume=args.resume, progress=not args.quiet, executor_override=executor
    )
    counts = ", ".join(f"{n} {status}" for status, n in summary.counts.items() if n)
    print(f"tda: {counts or 'no trials'} in {summary.wall_s:.1f} s")
    print(f"report: python -m candle.tda report {summary.directory}")
    return 0 if summary.counts.get("done", 0) else 1


def _report(argv: list[str]) -> int:
    from candle.tda.report import write_report

    ap = argparse.ArgumentParser(prog="python -m candle.tda report")
    ap.add_argument("directory")
    ap.add_argument("--out", help="output folder (default: DIR/report)")
    args = ap.parse_args(argv)
    out = write_report(args.directory, args.out)
    print(f"report: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from candle.workflow._cli import workflow_main

    return workflow_main(
        argv, prog="candle.tda", doc=__doc__, run=_run, commands={"report": _report}
    )


if __name__ == "__main__":
    sys.exit(main())
