"""UQ: deep ensembles on scikit-learn's diabetes data, and on breast cancer for classification.

Regression (the deep-ensembles recipe, ../shared/FACTS.md): for each of 20 random 90/10
splits (``split`` = 0..19), a UQ study (``candle.uq.driver.run_uq``, 5 seed members trained
as parallel trials on 2 slots, examples/uq_models.py:Diabetes: 1 hidden layer of 50 ReLU
units, 40 epochs, batch 100, Adam, variance softplus + 1e-6, the last epoch's weights;
learning rate 0.001, not the recipe's 0.01, which overfits here: see examples/uq_models.py)
and ``candle.uq.analysis.analyze``. A fifth of each training part is held out as the
validation split, on which variance scaling, isotonic recalibration and split-conformal
intervals are fitted; the members train on the rest. Metrics on the test split, in the
target's original units, for M = 1 (the first member) and M = 5, before and after each
recalibration. The peer: a linear model (least squares) with constant Gaussian noise (the
residual variance), fitted on the same training parts.

Classification: 10 splits of breast cancer, examples/uq_models.py:BreastCancer (same network,
softmax head), NLL, Brier and ECE (15 bins) for M = 1 and M = 5, before and after temperature
scaling fitted on the validation split.

Every figure is the mean over splits with the standard deviation over splits (sd) and the
standard error of the mean (se = sd / sqrt(splits)). Targets: M = 5 NLL < M = 1 NLL;
M = 5 NLL < the linear model's; 95% coverage after conformal recalibration within
0.95 +/- 0.02; the whole benchmark under 10 minutes.

    python benchmarks/uq_diabetes.py [--splits 20] [--members 5] [--slots 2]
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_result

ROOT = Path(__file__).resolve().parents[1]
NAME = "uq_diabetes"


def study_config(trainer: str, split: int, members: int, slots: int, directory: Path) -> dict:
    return {
        "name": f"split{split}",
        "trainer": str(ROOT / "examples" / f"uq_models.py:{trainer}"),
        "directory": str(directory),
        "params": {
            "split": split,
            "predict_checkpoint": "last",
            "tensorboard": False,
            "progress_bar": False,
            "checkpoint_every": 0,
            "threads": 1,
        },
        "ensemble": {"kind": "seeds", "members": members},
        "executor": {"kind": "local", "slots": slots},
        "resources": {"threads": 1},
        "retries": 0,
    }


def linear_baseline(split: int) -> dict[str, float]:
    """Least squares with constant Gaussian noise on the same training part as the members."""
    import torch

    from candle.uq import metrics as M

    sys.path.insert(0, str(ROOT / "examples"))
    from sklearn.datasets import load_diabetes
    from uq_models import TabularParams, _splits

    x, y = load_diabetes(return_X_y=True)
    (xtr, ytr), _, (xte, yte) = _splits(x, y, TabularParams(split=split))
    a = np.c_[xtr, np.ones(len(xtr))]
    coef, *_ = np.linalg.lstsq(a, ytr, rcond=None)
    var = float(np.mean((a @ coef - ytr) ** 2))  # the maximum-likelihood noise variance
    mean = torch.tensor(np.c_[xte, np.ones(len(xte))] @ coef)[:, None]
    var_t = torch.full_like(mean, var)
    target = torch.tensor(yte)[:, None]
    lo, hi = mean - 1.959964 * var**0.5, mean + 1.959964 * var**0.5
    return {
        "nll": M.gaussian_nll(mean, var_t, target),
        "rmse": M.rmse(mean, target),
        "crps": M.crps_gaussian(mean, var_t, target),
        "coverage_95": M.interval_coverage(lo, hi, target),
    }


def run_splits(
    trainer: str, splits: int, members: int, slots: int, work: Path, lr: float | None
) -> list[dict]:
    from candle.uq.analysis import analyze
    from candle.uq.driver import run_uq

    reports = []
    for split in range(splits):
        directory = work / f"{trainer}-{split}"
        cfg = study_config(trainer, split, members, slots, directory)
        if lr is not None:
            cfg["params"]["learning_rate"] = lr
        summary = run_uq(cfg, progress=False)
        if summary.counts.get("done", 0) != members:
            raise SystemExit(f"{trainer} split {split}: members ended {summary.counts}")
        reports.append(analyze(directory, plots=False))
        shutil.rmtree(directory / "trials", ignore_errors=True)
    return reports


def stats(values: list[float]) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=float)
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return float(v.mean()), sd, sd / math.sqrt(len(v))


def table(rows: dict[str, list[dict]], metrics: list[str]) -> list[str]:
    """mean +- sd (se) over splits, one row per method."""
    lines = [f"{'':24}" + "".join(f"{m:>30}" for m in metrics)]
    for name, per_split in rows.items():
        cells = []
        for m in metrics:
            mean, sd, se = stats([r[m] for r in per_split])
            cells.append(f"{mean:.4g} +- {sd:.3g} ({se:.2g})".rjust(30))
        lines.append(f"{name:24}" + "".join(cells))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--splits", type=int, default=20, help="diabetes splits")
    ap.add_argument("--class-splits", type=int, default=10, help="breast cancer splits")
    ap.add_argument("--learning-rate", type=float, default=None, help="override the members'")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--slots", type=int, default=2)
    args = ap.parse_args()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="uq-bench-"))
    try:
        lr = args.learning_rate
        reg = run_splits("Diabetes", args.splits, args.members, args.slots, work, lr)
        reg_s = time.monotonic() - started
        cls = run_splits("BreastCancer", args.class_splits, args.members, args.slots, work, lr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = time.monotonic() - started
    linear = [linear_baseline(s) for s in range(args.splits)]

    m = args.members
    regression = {
        "M=1": [r["single"] for r in reg],
        f"M={m}": [r["ensemble"] for r in reg],
        f"M={m} variance scaling": [r["recalibrated"]["variance"] for r in reg],
        "linear, constant noise": linear,
    }
    coverage = {
        f"M={m}": [r["ensemble"] for r in reg],
        f"M={m} variance scaling": [r["recalibrated"]["variance"] for r in reg],
        f"M={m} isotonic": [r["recalibrated"]["isotonic"] for r in reg],
        f"M={m} conformal": [r["recalibrated"]["conformal"] for r in reg],
    }
    classification = {
        "M=1": [r["single"] for r in cls],
        f"M={m}": [r["ensemble"] for r in cls],
        "M=1 temperature": [r["single_recalibrated"]["temperature"] for r in cls],
        f"M={m} temperature": [r["recalibrated"]["temperature"] for r in cls],
    }
    n_test = reg[0]["n_test"]
    print(
        f"diabetes: {args.splits} splits, {n_test} test samples each; mean, sd and se over splits"
    )
    print("\n".join(table(regression, ["nll", "rmse", "crps", "coverage_95"])))
    print("\n".join(table(coverage, ["coverage_95", "width_95"])))
    print(f"breast cancer: {args.class_splits} splits, {cls[0]['n_test']} test samples each")
    print("\n".join(table(classification, ["nll", "brier", "ece", "accuracy"])))
    print(f"wall: {wall:.0f} s (regression {reg_s:.0f} s)")

    nll1 = stats([r["nll"] for r in regression["M=1"]])[0]
    nll5 = stats([r["nll"] for r in regression[f"M={m}"]])[0]
    nll_lin = stats([r["nll"] for r in linear])[0]
    cov = stats([r["coverage_95"] for r in coverage[f"M={m} conformal"]])[0]
    print(
        format_result(
            NAME,
            "nll_m5_vs_m1",
            nll5 - nll1,
            target="<0",
            status="PASS" if nll5 < nll1 else "FAIL",
            nll_m5=nll5,
            nll_m1=nll1,
        )
    )
    print(
        format_result(
            NAME,
            "nll_m5_vs_linear",
            nll5 - nll_lin,
            target="<0",
            status="PASS" if nll5 < nll_lin else "FAIL",
            nll_m5=nll5,
            nll_linear=nll_lin,
        )
    )
    print(
        format_result(
            NAME,
            "coverage95_conformal",
            cov,
            target="=0.95+-0.02",
            status="PASS" if abs(cov - 0.95) <= 0.02 else "FAIL",
        )
    )
    print(
        format_result(
            NAME, "wall_s", wall, target="<=600", status="PASS" if wall <= 600 else "FAIL"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
