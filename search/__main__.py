"""``python -m candle.search``: hyperparameter search.

    python -m candle.search STUDY.yaml [--resume] [--slots N] [--executor local|parsl]
                                       [--site local|slurm|pbs] [--parsl-config FILE.py]
    python -m candle.search status DIR      trials by status, best so far
    python -m candle.search report DIR      tables, plots, best config, HTML, TensorBoard HParams

Exit status: 0 done (some trial finished or was pruned), 1 every trial failed, 2 bad
configuration.
"""

from __future__ import annotations

import argparse
import sys

from candle.errors import ConfigError


def _run(argv: list[str]) -> int:
    from candle.search.driver import load_search_config, run_search
    from candle.workflow.executors import add_executor_arguments, executor_from_arguments

    ap = argparse.ArgumentParser(prog="python -m candle.search", description="Run a search.")
    ap.add_argument("study", help="search study file (YAML, JSON or TOML)")
    ap.add_argument("--resume", action="store_true", help="continue the study in its directory")
    add_executor_arguments(ap)
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    executor = executor_from_arguments(args, load_search_config(args.study).study.executor)
    summary = run_search(
        args.study, resume=args.resume, progress=not args.quiet, executor_override=executor
    )
    counts = ", ".join(f"{n} {status}" for status, n in summary.counts.items() if n)
    print(f"search: {counts or 'no trials'} in {summary.wall_s:.1f} s")
    if summary.best is not None:
        print(
            f"best: trial {summary.best.trial_id} objective {summary.best.objective:.6g} "
            f"params {summary.best.params}"
        )
    print(f"report: python -m candle.search report {summary.directory}")
    # ASHA may end a small study with every trial pruned: that is a result, not a failure
    return 0 if summary.counts.get("done", 0) + summary.counts.get("pruned", 0) else 1


def _status(argv: list[str]) -> int:
    from pathlib import Path

    from candle.workflow.store import Store

    ap = argparse.ArgumentParser(prog="python -m candle.search status")
    ap.add_argument("directory")
    args = ap.parse_args(argv)
    db = Path(args.directory) / "study.db"
    if not db.exists():
        raise ConfigError(f"no study store at {db}")
    with Store(db, readonly=True) as store:
        study_id = store.study_id()
        study = store.study(study_id)
        counts = store.counts(study_id)
        mode = (study["config"].get("objective") or {}).get("mode", "min")
        done = [t for t in store.trials(study_id, status="done") if t.objective is not None]
    print(f"study {study['name']}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if done:
        best = (min if mode == "min" else max)(done, key=lambda t: t.objective)
        print(f"best: trial {best.trial_id} objective {best.objective:.6g} params {best.params}")
    return 0


def _report(argv: list[str]) -> int:
    from candle.search.report import write_report

    ap = argparse.ArgumentParser(prog="python -m candle.search report")
    ap.add_argument("directory")
    ap.add_argument("--out", help="output folder (default: DIR/report)")
    args = ap.parse_args(argv)
    html = write_report(args.directory, args.out)
    print(f"report: {html}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from candle.workflow._cli import workflow_main

    return workflow_main(
        argv,
        prog="candle.search",
        doc=__doc__,
        run=_run,
        commands={"status": _status, "report": _report},
    )


if __name__ == "__main__":
    sys.exit(main())
