"""``python -m candle.tda report DIR``: CSV tables and PNG plots of a plan's results.

Written to ``DIR/report/`` (or ``out``), for the sections the plan has:

- ``scores.csv``: every score (one row per trained model and test set);
- learning curve: ``learning_curve.csv`` (mean, std, count per size), ``learning_curve_fit.csv``
  (a, b and its interval, c, where it flattens), ``learning_curve.png`` (means with +-1 std
  bands, the fit, log-log axes);
- cross-study: ``cross_study_mean_<metric>.csv`` and ``cross_study_std_<metric>.csv`` (N x N,
  rows: training group, columns: test group), ``cross_study_summary.csv`` (on- vs off-diagonal),
  ``cross_study.png`` (heatmap of the fitted metric's means);
- ``logo.csv``;
- transfer: ``transfer.csv``, ``transfer_fit.csv``, ``transfer.png`` (fine-tuned vs from scratch,
  with bands; the pretrained model alone as a line);
- compare: ``agreement.csv``, ``compare_scores.csv``, ``agreement.png``;
- ``summary.json``: the fits, the cross-study summary, trial counts and missing predictions.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter

from candle.tda.analysis import (
    Results,
    agreement_matrix,
    cross_study_tables,
    fit_curve,
    learning_curve_table,
    load_results,
    logo_table,
    transfer_table,
)
from candle.tda.fit import PowerLawFit

__all__ = ["write_report"]


def _finite(value: float) -> float | None:
    return value if isinstance(value, float) and math.isfinite(value) else None


def _fit_record(fit: PowerLawFit | None, why: str) -> dict[str, Any]:
    if fit is None:
        return {"fitted": False, "reason": why}
    record = {k: (_finite(v) if isinstance(v, float) else v) for k, v in fit.to_dict().items()}
    record["n_flat_extrapolated"] = bool(fit.n_flat > fit.n_max)
    return {"fitted": True, **record}


def _curve_plot(ax: Any, sizes: np.ndarray, frame: pd.DataFrame, metric: str, label: str) -> str:
    """Means with a +-1 std band; -> the line's colour."""
    mean = frame[f"{metric}_mean"].to_numpy(dtype=float)
    std = np.nan_to_num(frame[f"{metric}_std"].to_numpy(dtype=float))
    (line,) = ax.plot(sizes, mean, "o-", label=label)
    ax.fill_between(sizes, mean - std, mean + std, alpha=0.2, color=line.get_color())
    return line.get_color()


def _fit_line(
    ax: Any, fit: PowerLawFit | None, sizes: np.ndarray, label: str, color: str | None = None
) -> None:
    if fit is None:
        return
    grid = np.geomspace(sizes.min(), sizes.max(), 100)
    ax.plot(
        grid,
        fit.predict(grid),
        "--",
        color=color,
        label=f"{label}: b={fit.b:.2f} [{fit.b_low:.2f}, {fit.b_high:.2f}]",
    )


def _learning_curve(results: Results, out: Path, summary: dict[str, Any]) -> None:
    table = learning_curve_table(results)
    if table.empty:
        return
    spec = results.resolved["learning_curve"]
    metric = spec["metric"]
    table.to_csv(out / "learning_curve.csv", index=False)
    lc = results.scores[results.scores["section"] == "learning_curve"]
    fit, why = fit_curve(lc["size"].to_numpy(float), lc[metric].to_numpy(float), spec)
    record = {"metric": metric, **_fit_record(fit, why)}
    pd.DataFrame([record]).to_csv(out / "learning_curve_fit.csv", index=False)
    summary["learning_curve"] = record
    sizes = table["size"].to_numpy(float)
    fig, ax = plt.subplots(figsize=(6, 4))
    _curve_plot(ax, sizes, table, metric, "mean +- std")
    _fit_line(ax, fit, sizes, "a n^-b + c")
    ax.set(xscale="log", yscale="log", xlabel="training rows", ylabel=f"test {metric}")
    ax.xaxis.set_minor_formatter(NullFormatter())  # labels at every minor tick overlap
    ax.set_title(f"{results.name}: learning curve")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=100)
    plt.close(fig)


def _heatmap(ax: Any, frame: pd.DataFrame, title: str, fmt: str = "{:.3g}") -> None:
    values = frame.to_numpy(dtype=float)
    image = ax.imshow(values, cmap="viridis")
    ax.figure.colorbar(image, ax=ax)
    ax.set_xticks(range(len(frame.columns)), [str(c) for c in frame.columns], rotation=45)
    ax.set_yticks(range(len(frame.index)), [str(i) for i in frame.index])
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if math.isfinite(values[i, j]):
                ax.text(
                    j, i, fmt.format(values[i, j]), ha="center", va="center", color="w", fontsize=8
                )
    ax.set_xlabel(frame.columns.name or "")
    ax.set_ylabel(frame.index.name or "")
    ax.set_title(title)


def _cross_study(results: Results, out: Path, summary: dict[str, Any]) -> None:
    means, stds, table = cross_study_tables(results)
    if not means:
        return
    for metric in means:
        means[metric].to_csv(out / f"cross_study_mean_{metric}.csv")
        stds[metric].to_csv(out / f"cross_study_std_{metric}.csv")
    table.to_csv(out / "cross_study_summary.csv", index=False)
    summary["cross_study"] = table.to_dict(orient="records")
    metric = "mse" if results.task == "regression" else "accuracy"
    fig, ax = plt.subplots(figsize=(5, 4))
    _heatmap(ax, means[metric], f"cross-study test {metric} (mean)")
    fig.tight_layout()
    fig.savefig(out / "cross_study.png", dpi=100)
    plt.close(fig)


def _transfer(results: Results, out: Path, summary: dict[str, Any]) -> None:
    table = transfer_table(results)
    if table.empty:
        return
    spec = results.resolved["transfer"]
    metric = spec["metric"]
    table.to_csv(out / "transfer.csv", index=False)
    tf = results.scores[results.scores["section"] == "transfer"]
    fig, ax = plt.subplots(figsize=(6, 4))
    fits = []
    for arm in ("finetune", "scratch"):
        part = table[table["arm"] == arm].sort_values("size")
        if part.empty:
            continue
        sizes = part["size"].to_numpy(float)
        color = _curve_plot(ax, sizes, part, metric, arm)
        rows = tf[tf["arm"] == arm]
        fit, why = fit_curve(rows["size"].to_numpy(float), rows[metric].to_numpy(float), {})
        _fit_line(ax, fit, sizes, arm, color)
        fits.append({"arm": arm, "metric": metric, **_fit_record(fit, why)})
    pre = table[table["arm"] == "pretrained"]
    if not pre.empty:
        ax.axhline(float(pre[f"{metric}_mean"].iloc[0]), color="gray", ls=":", label="pretrained")
    pd.DataFrame(fits).to_csv(out / "transfer_fit.csv", index=False)
    summary["transfer"] = fits
    ax.set(xscale="log", xlabel=f"target rows ({spec['target']})", ylabel=f"test {metric}")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_title(f"{results.name}: transfer from {', '.join(spec['source'])}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "transfer.png", dpi=100)
    plt.close(fig)


def _compare(results: Results, out: Path, summary: dict[str, Any]) -> None:
    matrix, scores = agreement_matrix(results)
    if matrix.empty:
        return
    matrix.to_csv(out / "agreement.csv")
    scores.to_csv(out / "compare_scores.csv", index=False)
    what = "prediction correlation" if results.task == "regression" else "class agreement"
    summary["compare"] = {"measure": what, "matrix": matrix.to_dict()}
    fig, ax = plt.subplots(figsize=(5, 4))
    _heatmap(ax, matrix, f"model agreement ({what})")
    fig.tight_layout()
    fig.savefig(out / "agreement.png", dpi=100)
    plt.close(fig)


def write_report(directory: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write every table and plot of a plan's study directory; -> the output folder."""
    results = load_results(directory)
    out = Path(out) if out else Path(directory) / "report"
    out.mkdir(parents=True, exist_ok=True)
    results.scores.to_csv(out / "scores.csv", index=False)
    summary: dict[str, Any] = {
        "name": results.name,
        "task": results.task,
        "trials": results.counts,
        "missing_predictions": results.missing,
    }
    _learning_curve(results, out, summary)
    _cross_study(results, out, summary)
    table = logo_table(results)
    if not table.empty:
        table.to_csv(out / "logo.csv", index=False)
    _transfer(results, out, summary)
    _compare(results, out, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return out
