"""The PNG plots of a UQ study (called by :func:`candle.uq.analysis.analyze`).

Regression: ``calibration.png`` (observed vs expected proportion inside central intervals,
before and after each recalibration), ``coverage.png`` (coverage at the study's levels),
``sigma_vs_error.png`` (predicted standard deviation against the absolute error, with the
aleatoric/epistemic split). Classification: ``reliability.png`` (accuracy against confidence
per bin, before and after temperature scaling). Sensitivity sweeps: ``sensitivity.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from candle.uq import metrics as M

__all__ = ["write_plots"]

_GRID = np.linspace(0.05, 0.95, 19)


def _figure(width: float, height: float) -> Any:
    # A bare Figure, not pyplot: no global figure list to leak, no GUI backend; PNG via Agg.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def write_plots(
    out: Path, test: Any, fitted: dict[str, Any], sensitivity: list[dict], levels: list[float]
) -> list[Path]:
    """Write the plots for the test split's :class:`~candle.uq.analysis.Ensemble`; -> paths."""
    paths = []
    if test.head == "classification":
        paths.append(_reliability(out / "reliability.png", test, fitted.get("temperature")))
    elif test.head == "quantile":  # only the intervals its levels give
        from candle.uq.analysis import central_levels

        available = central_levels(test.posterior)
        if available:
            predictives = {"quantile members": test.posterior}
            paths.append(_coverage(out / "coverage.png", predictives, test.target, available))
    else:
        predictives = {"ensemble": test.posterior, **fitted}
        paths.append(_calibration(out / "calibration.png", predictives, test.target))
        paths.append(_coverage(out / "coverage.png", predictives, test.target, levels))
        paths.append(_sigma_vs_error(out / "sigma_vs_error.png", test))
    if sensitivity:
        paths.append(_sensitivity(out / "sensitivity.png", sensitivity, test.head))
    return paths


def _observed(pred: Any, y: Any, grid: np.ndarray) -> np.ndarray:
    """Observed coverage of the central intervals at each level of ``grid``."""
    return np.array([M.interval_coverage(*pred.interval(float(p)), y) for p in grid])


def _calibration(path: Path, predictives: dict[str, Any], y: Any) -> Path:
    fig = _figure(4.8, 4.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="ideal")
    for name, pred in predictives.items():
        ax.plot(_GRID, _observed(pred, y, _GRID), marker=".", label=name)
    ax.set(
        xlabel="expected proportion in central interval",
        ylabel="observed proportion",
        title="Calibration (test split)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def _coverage(path: Path, predictives: dict[str, Any], y: Any, levels: list[float]) -> Path:
    fig = _figure(5.6, 3.8)
    ax = fig.add_subplot()
    lv = np.asarray(levels)
    width = 0.8 / len(predictives)
    x = np.arange(len(lv))
    for i, (name, pred) in enumerate(predictives.items()):
        ax.bar(
            x + (i - (len(predictives) - 1) / 2) * width, _observed(pred, y, lv), width, label=name
        )
    ax.scatter(x, lv, color="black", marker="_", s=400, zorder=3, label="nominal")
    ax.set_xticks(x, [f"{v:g}" for v in lv])
    ax.set(xlabel="nominal level", ylabel="observed coverage", title="Interval coverage (test)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def _sigma_vs_error(path: Path, test: Any) -> Path:
    post, y = test.posterior, test.target
    err = (post.mean - y).abs().flatten().numpy()
    fig = _figure(9.0, 4.0)
    ax, ax2 = fig.subplots(1, 2)
    ax.scatter(post.stddev.flatten().numpy(), err, s=10, alpha=0.7)
    top = float(max(err.max(), post.stddev.max())) if len(err) else 1.0
    ax.plot([0, top], [0, top], color="0.6", linestyle="--", label="|error| = sigma")
    ax.set(xlabel="predicted sigma", ylabel="|error|", title="Sigma vs error (test)")
    ax.legend(fontsize=8)
    order = np.argsort(post.stddev.flatten().numpy())
    ale = post.aleatoric.flatten().numpy()[order]
    epi = post.epistemic.flatten().numpy()[order]
    ax2.stackplot(np.arange(len(order)), ale, epi, labels=["aleatoric", "epistemic"])
    ax2.set(xlabel="test samples, by predicted sigma", ylabel="variance", title="Decomposition")
    ax2.legend(fontsize=8, loc="upper left")
    fig.savefig(path)
    return path


def _reliability(path: Path, test: Any, calibrated: Any | None) -> Path:
    fig = _figure(4.8, 4.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="ideal")
    for name, post in (("ensemble", test.posterior), ("temperature", calibrated)):
        if post is None:
            continue
        d = M.reliability_diagram(post.probs, test.target)
        conf, acc = np.asarray(d["confidence"]), np.asarray(d["accuracy"])
        filled = np.asarray(d["counts"]) > 0
        ax.plot(conf[filled], acc[filled], marker="o", label=name)
    ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability (test split)")
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def _sensitivity(path: Path, rows: list[dict], head: str) -> Path:
    names = sorted({r["perturbation"] for r in rows})
    if head == "classification":
        metrics = ["nll", "accuracy", "ece", "mean_mutual_information"]
    else:
        metrics = ["nll", "rmse", "coverage_95", "mean_std"]
    fig = _figure(3.2 * len(metrics), 3.4)
    axes = fig.subplots(1, len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        for name in names:
            pts = sorted((r["level"], r.get(metric)) for r in rows if r["perturbation"] == name)
            pts = [(lv, v) for lv, v in pts if v is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=name)
        if metric == "mean_std":
            for name in names:
                pts = sorted(
                    (r["level"], r.get("mean_epistemic_std"))
                    for r in rows
                    if r["perturbation"] == name and r.get("mean_epistemic_std") is not None
                )
                if pts:
                    ax.plot(*zip(*pts, strict=True), linestyle=":", label=f"{name} (epistemic)")
        ax.set(xlabel="perturbation level", title=metric)
        ax.legend(fontsize=7)
    fig.savefig(path)
    return path
