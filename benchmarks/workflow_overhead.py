"""Workflow engine: the driver's own cost per trial, and how busy it keeps the worker slots.

- driver overhead: a study of 1,000 trials on the local executor (2 slots) whose runner returns
  at once with a finished outcome (a 3-epoch history and a result.json), so the driver is the
  bottleneck and everything it does per trial is measured: asking the source, recording the
  trial, submitting it, collecting and recording its outcome (attempt, metrics, artifacts), in
  SQLite with one transaction per batch. Per-trial times are booked by the driver itself
  (``Study.driver_s_by_trial``); target p50 <= 50 ms, p99 reported. Peer: Optuna's
  ``study.optimize`` with SQLite storage over as many no-op trials (INFO, if optuna is installed).
- worker utilization: trials of exactly 2 s (a sleep in the executor, no process), then real
  trials (``python -m candle train`` of ``candle.testing:TinyTrainer``,
  ~2 s each with the Python and torch start-up) on 2 slots: busy time / (slots x wall), where
  busy time is the sum of the attempts' wall times (process start to exit) and wall runs from the
  first trial's start to the last one's end. Target >= 0.90 on the local executor; the same
  study on the Parsl local site (HighThroughputExecutor, 2 workers on 127.0.0.1) is reported
  beside it, its start-up shown separately.

    python benchmarks/workflow_overhead.py [--quick] [--no-parsl]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_result

from candle.workflow import LocalExecutor, Study, load_study_config
from candle.workflow.store import Store

NAME = "workflow_overhead"
OVERHEAD_TARGET_MS = 50.0
UTILIZATION_TARGET = 0.90


def fake_runner(spec: dict, gpus: list[int], seconds: float = 0.0) -> dict:
    """A trial that finishes after ``seconds``: what a real one returns, without the process."""
    started = time.time()
    if seconds:
        time.sleep(seconds)
    trial_dir = Path(spec["trial_dir"])
    trial_dir.mkdir(parents=True, exist_ok=True)
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "lr": 0.01} for e in (1, 2, 3)
    ]
    (trial_dir / "result.json").write_text(json.dumps({"status": "completed", "history": history}))
    now = time.time()
    return {
        "trial_id": spec["trial_id"],
        "attempt": spec["attempt"],
        "status": "done",
        "reason": "epochs",
        "returncode": 0,
        "objective": 0.4,
        "metrics": history[-1],
        "history": history,
        "epoch": 3,
        "error": "",
        "log_tail": "",
        "host": "bench",
        "started_at": started,
        "ended_at": now,
        "checkpoint": None,
    }


def bench_overhead(root: Path, n: int) -> list[str]:
    cfg = load_study_config(
        {
            "name": "overhead",
            "trainer": "candle.testing:TinyTrainer",
            "directory": str(root / "overhead"),
            "grid": {"seed": list(range(n))},
        }
    )
    study = Study(cfg, executor=LocalExecutor(2, runner=fake_runner), progress=False)
    w0 = time.perf_counter()
    summary = study.run()
    wall = time.perf_counter() - w0
    assert summary.counts["done"] == n, summary.counts
    per = sorted(1000 * v for v in study.driver_s_by_trial.values())
    assert len(per) == n
    p50, p99 = statistics.median(per), per[int(0.99 * (n - 1))]
    mean = 1000 * summary.driver_s / n
    with Store(root / "overhead" / "study.db", readonly=True) as store:
        rows = len(store.trials())
        metrics = len(store.metrics(store.trials()[0].trial_id))
    print(
        f"driver overhead, {n} trials, local executor, 2 slots, no-op trials: per trial p50 "
        f"{p50:.2f} ms, p99 {p99:.2f} ms, mean {mean:.2f} ms; {n / wall:,.0f} trials/s "
        f"({wall:.1f} s); store: {rows} trials, {metrics} metric rows per trial",
        flush=True,
    )
    status = "PASS" if p50 <= OVERHEAD_TARGET_MS else "FAIL"
    return [
        format_result(
            NAME,
            "driver_ms_per_trial_p50",
            p50,
            target=f"<={OVERHEAD_TARGET_MS:g}",
            status=status,
            p99_ms=round(p99, 2),
            mean_ms=round(mean, 2),
            trials=n,
            trials_per_s=round(n / wall),
        )
    ]


def bench_optuna(root: Path, n: int, candle_p50_ms: float) -> list[str]:
    """The peer: Optuna's ``study.optimize`` with SQLite storage (what a study that must survive
    a restart uses) over the same number of no-op trials, each reporting 3 intermediate values
    as our trials report 3 epochs. Per-trial time = wall / trials (Optuna does the driving and
    the recording in that loop; the objective takes no time)."""
    try:
        import optuna
    except ImportError:
        print("optuna is not installed: no peer figure", flush=True)
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{root / 'optuna.db'}"
    study = optuna.create_study(
        storage=storage, sampler=optuna.samplers.RandomSampler(seed=0), study_name="peer"
    )

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_int("seed", 0, n)
        for epoch in (1, 2, 3):
            trial.report(1.2 / epoch, epoch)
        return 0.4

    w0 = time.perf_counter()
    study.optimize(objective, n_trials=n, n_jobs=1)
    wall = time.perf_counter() - w0
    per_ms = 1000 * wall / n
    ratio = candle_p50_ms / per_ms
    print(
        f"peer: Optuna {optuna.__version__} study.optimize, SQLite storage, {n} no-op trials: "
        f"{per_ms:.2f} ms per trial ({n / wall:,.0f} trials/s); candle p50 / Optuna = {ratio:.3f}",
        flush=True,
    )
    return [
        format_result(
            NAME,
            "driver_ms_vs_optuna_sqlite",
            ratio,
            target=None,
            status="INFO",
            optuna_ms=round(per_ms, 2),
            optuna=optuna.__version__,
        )
    ]


def utilization(db: Path, slots: int) -> tuple[float, float, float, int]:
    """(busy / (slots x window), mean trial seconds, window seconds, attempts) from a store."""
    with Store(db, readonly=True) as store:
        attempts = [a for t in store.trials() for a in store.attempts(t.trial_id)]
    busy = sum(a["ended_at"] - a["started_at"] for a in attempts)
    window = max(a["ended_at"] for a in attempts) - min(a["started_at"] for a in attempts)
    return busy / (slots * window), busy / len(attempts), window, len(attempts)


def study_config(root: Path, name: str, n: int, executor: dict) -> dict:
    return {
        "name": name,
        "trainer": "candle.testing:TinyTrainer",
        "directory": str(root / name),
        "params": {
            "epochs": 2,
            "n_samples": 64,
            "hidden": 4,
            "tensorboard": False,
            "metrics_log": "off",
        },
        "grid": {"seed": list(range(n))},
        "executor": executor,
    }


def bench_sleep_utilization(root: Path, n: int) -> list[str]:
    """Trials of exactly 2 s (a sleep in the executor's thread): the driver's gaps alone."""
    cfg = load_study_config(study_config(root, "util-sleep", n, {"kind": "local", "slots": 2}))

    def runner(spec: dict, gpus: list[int]) -> dict:
        return fake_runner(spec, gpus, seconds=2.0)

    summary = Study(cfg, executor=LocalExecutor(2, runner=runner), progress=False).run()
    assert summary.counts["done"] == n, summary.counts
    util, mean_s, window, _ = utilization(root / "util-sleep" / "study.db", 2)
    print(
        f"utilization, local executor, 2 slots, {n} trials of exactly {mean_s:.2f} s (sleep, no "
        f"process): {util:.4f} ({window:.1f} s)",
        flush=True,
    )
    status = "PASS" if util >= UTILIZATION_TARGET else "FAIL"
    return [
        format_result(
            NAME,
            "utilization_local_2s",
            util,
            target=f">={UTILIZATION_TARGET}",
            status=status,
            trial_s=round(mean_s, 2),
            trials=n,
        )
    ]


def bench_utilization(root: Path, n: int, parsl: bool) -> list[str]:
    results = []
    runs = [("local", {"kind": "local", "slots": 2})]
    if parsl:
        parsl = {"kind": "parsl", "site": "local", "slots": 2, "run_dir": str(root / "parsl-runs")}
        runs.append(("parsl", parsl))
    for name, executor in runs:
        cfg = load_study_config(study_config(root, f"util-{name}", n, executor))
        w0 = time.perf_counter()
        summary = Study(cfg, progress=False).run()
        wall = time.perf_counter() - w0
        assert summary.counts["done"] == n, summary.counts
        util, mean_s, window, attempts = utilization(root / f"util-{name}" / "study.db", 2)
        util_wall = mean_s * attempts / (2 * wall)
        print(
            f"utilization, {name} executor, 2 slots, {n} trials of {mean_s:.2f} s (mean): "
            f"{util:.3f} of the window from first start to last end ({window:.1f} s); "
            f"{util_wall:.3f} of the whole run ({wall:.1f} s: {wall - window:.1f} s before the "
            "first trial started and after the last ended, executor start-up included)",
            flush=True,
        )
        if name == "local":
            status = "PASS" if util >= UTILIZATION_TARGET else "FAIL"
            target = f">={UTILIZATION_TARGET}"
        else:
            status, target = "INFO", None
        results.append(
            format_result(
                NAME,
                f"utilization_{name}",
                util,
                target=target,
                status=status,
                trial_s=round(mean_s, 2),
                trials=n,
                whole_run=round(util_wall, 3),
                outside_s=round(wall - window, 1),
            )
        )
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    ap.add_argument("--no-parsl", action="store_true", help="skip the Parsl executor")
    args = ap.parse_args()
    n_overhead, n_util = (100, 4) if args.quick else (1000, 20)
    try:
        import parsl  # noqa: F401

        parsl_ok = not args.no_parsl
    except ImportError:
        parsl_ok = False
        print("parsl is not installed: the Parsl executor is skipped", flush=True)
    print(
        f"{NAME}: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    root = Path(tempfile.mkdtemp(prefix="candle-wf-bench-"))
    start = time.perf_counter()
    try:
        results = bench_overhead(root, n_overhead)
        p50 = float(results[0].split("driver_ms_per_trial_p50=")[1].split()[0])
        results += bench_optuna(root, n_overhead, p50)
        results += bench_sleep_utilization(root, n_util)
        results += bench_utilization(root, n_util, parsl_ok)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{NAME}: {time.perf_counter() - start:.0f} s", flush=True)
    for line in results:
        print(line, flush=True)
    return 1 if any(" FAIL" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
