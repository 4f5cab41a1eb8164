"""Training data analysis: a learning curve on the synthetic generator, end to end.

- recovery: a learning-curve plan (one group, 6 log-spaced sizes from 24 to 768 rows, 5
  repeats, a linear model) on :func:`candle.tda.synthetic.make_multistudy` data; the fitted
  exponent of ``mse = a n^-b + c`` (covariance interval) against the known one. The
  generator's asymptotic exponent is 1; at these sizes (n / d from 5 to 150) the known expected
  curve ``noise^2 (1 + (d+1) / (n - d - 2))`` is not yet a pure power law, and fitted with the
  same weights as the measured points it gives a somewhat larger b, printed as ``known_b``.
  PASS when the fitted interval contains ``known_b``.
- wall time: the whole plan through ``python -m candle.tda``'s engine (local executor, 2 slots,
  every trial its own process) against the peer: the same trials fitted one after another in
  this one process (``SyntheticTrainer(...).fit()``, no process start per trial). The ratio
  ``sequential / parallel`` > 1 means the parallel plan is faster. INFO: on a 2-core machine
  the per-trial process start-up (~2 s of Python and torch import) outweighs these sub-second
  trials; a second, heavier plan (4 trials of an MLP with 256 hidden units on 600-1200 rows,
  seconds of training each) shows the ratio once training outweighs the start-up.

    python benchmarks/tda_learning_curve.py [--quick]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_result

from candle.tda.analysis import fit_curve, load_results
from candle.tda.driver import prepare, run_tda
from candle.tda.fit import fit_power_law, repeat_spread
from candle.tda.metrics import mse
from candle.tda.synthetic import SyntheticTrainer, make_multistudy
from candle.tda.trainer import read_predictions

NAME = "tda_learning_curve"
DATA = {"groups": 1, "rows_per_group": 3000, "features": 4, "noise": 0.5}


def plan(directory: Path, repeats: int, sizes: Any, **params: Any) -> dict:
    return {
        "name": "lc-bench",
        "trainer": "candle.tda.synthetic:SyntheticTrainer",
        "directory": str(directory),
        "params": {**DATA, "epochs": 30, "metrics_log": "off", **params},
        "executor": {"kind": "local", "slots": 2},
        "data": {"test_fraction": 0.5, "val_fraction": 0.1},
        "learning_curve": {"sizes": sizes, "repeats": repeats},
        "grace": 2,
    }


def sequential(config: dict, root: Path) -> tuple[float, list[tuple[int, float]]]:
    """The same trials, one after another, in this process."""
    _, trials, _ = prepare(config)
    level = logging.getLogger("candle").level
    logging.getLogger("candle").setLevel(logging.WARNING)
    points = []
    start = time.perf_counter()
    for i, t in enumerate(trials):
        run_dir = root / f"{i:05d}"
        params = {**config["params"], **t.params, "test_fraction": 0.5, "val_fraction": 0.1}
        SyntheticTrainer(**params, run_dir=str(run_dir), progress_bar=False).fit()
        pred = read_predictions(run_dir)
        points.append((t.extra["size"], mse(pred["y"], pred["pred"])))
    logging.getLogger("candle").setLevel(level)
    return time.perf_counter() - start, points


def measure(work: Path, repeats: int, sizes: Any, **params: Any) -> dict[str, Any]:
    """The plan through the engine, then the same trials in this process."""
    start = time.perf_counter()
    summary = run_tda(plan(work / "study", repeats, sizes, **params), progress=False)
    parallel_s = time.perf_counter() - start
    sequential_s, points = sequential(
        plan(work / "unused", repeats, sizes, **params), work / "sequential"
    )
    return {
        "parallel_s": parallel_s,
        "sequential_s": sequential_s,
        "trials": summary.counts["done"],
        "results": load_results(work / "study"),
        "points": points,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 repeats of 4 sizes; no heavy part")
    args = ap.parse_args()
    repeats, count = (2, 4) if args.quick else (5, 6)
    work = Path(tempfile.mkdtemp(prefix="tda-bench-"))
    try:
        light = measure(work / "light", repeats, {"min": 24, "max": 768, "count": count})
        # heavier trials (an MLP of 256 units on 600-1200 rows: seconds of training each)
        heavy = None if args.quick else measure(work / "heavy", 2, [600, 1200], hidden=256)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = light["results"]
    lc = results.scores[results.scores["section"] == "learning_curve"]
    n, errors = lc["size"].to_numpy(float), lc["mse"].to_numpy(float)
    fit, why = fit_curve(n, errors)
    if fit is None:
        raise SystemExit(f"no fit: {why}")
    sizes = results.resolved["learning_curve"]["sizes"]
    study = make_multistudy(**DATA)
    # the known expected curve over these sizes, fitted with the measured points' weights
    known = fit_power_law(n, study.expected_mse(n), sigma=repeat_spread(n, errors))
    seq_fit, _ = fit_curve(*np.array(light["points"]).T)
    print(f"learning curve: sizes {sizes}, {repeats} repeats, {light['trials']} trials done")
    print(
        f"fitted (engine): b = {fit.b:.3f} [{fit.b_low:.3f}, {fit.b_high:.3f}] (95 %, covariance),"
        f" a = {fit.a:.3g}, c = {fit.c:.4f} (noise^2 = {study.noise**2:.4f}), flattens at "
        f"n = {fit.n_flat:.0f}"
    )
    if seq_fit is not None:
        print(
            f"fitted (in-process): b = {seq_fit.b:.3f} [{seq_fit.b_low:.3f}, {seq_fit.b_high:.3f}]"
        )
    print(
        f"known: asymptotic b = {study.exponent}, expected curve over these sizes b = {known.b:.3f}"
    )
    for label, m in (("linear model", light), ("MLP-256, 600-1200 rows", heavy)):
        if m is None:
            continue
        k = m["trials"]
        print(
            f"wall ({label}, {k} trials): engine 2 slots {m['parallel_s']:.1f} s "
            f"({m['parallel_s'] / k:.2f} s/trial), sequential in one process "
            f"{m['sequential_s']:.1f} s ({m['sequential_s'] / k:.2f} s/trial), ratio "
            f"{m['sequential_s'] / m['parallel_s']:.2f}"
        )
    ok = fit.contains(known.b)
    print(
        format_result(
            NAME,
            "exponent_in_interval",
            int(ok),
            target=">=1",
            status="PASS" if ok else "FAIL",
            b=fit.b,
            b_low=fit.b_low,
            b_high=fit.b_high,
            known_b=known.b,
            asymptotic_b=study.exponent,
        )
    )
    for metric, m in (
        ("sequential_over_parallel", light),
        ("heavy_sequential_over_parallel", heavy),
    ):
        if m is None:
            continue
        print(
            format_result(
                NAME,
                metric,
                m["sequential_s"] / m["parallel_s"],
                target=None,
                status="INFO",
                parallel_s=m["parallel_s"],
                sequential_s=m["sequential_s"],
                trials=m["trials"],
                peer="in-process-sequential",
            )
        )


if __name__ == "__main__":
    main()
