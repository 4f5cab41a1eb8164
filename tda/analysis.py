"""From a plan's finished trials to its tables: every score is computed here, from the
trials' ``predictions.npz`` (see :mod:`candle.tda.trainer`), never from training logs.

:func:`load_results` reads a study directory; the functions below turn its long table of
scores (one row per trained model and test set) into each section's results:

- :func:`learning_curve_table` / :func:`fit_curve`: mean, std and count per size; the power law
  fit (:mod:`candle.tda.fit`);
- :func:`cross_study_tables`: IMPROVE's cross-study outputs: all scores, N x N mean and std
  tables per metric (rows: the training group, columns: the test group) over splits and
  repeats, and the on- vs off-diagonal summary;
- :func:`logo_table`: per held-out group, its score next to the same models' score on the
  groups they were trained on;
- :func:`transfer_table`: fine-tuned vs from-scratch curves on the target group (size 0 is the
  pretrained model with no fine-tuning);
- :func:`agreement_matrix`: how alike the compared models' predictions are on their common test
  rows (Pearson correlation, or the fraction of equal classes).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from candle.errors import ConfigError
from candle.tda.fit import PowerLawFit, fit_power_law
from candle.tda.metrics import agreement, metric_names, score
from candle.tda.trainer import read_predictions
from candle.workflow.store import Store

__all__ = [
    "Results",
    "agreement_matrix",
    "cross_study_tables",
    "fit_curve",
    "learning_curve_table",
    "load_results",
    "logo_table",
    "transfer_table",
]


@dataclass
class Results:
    directory: Path
    name: str
    task: str
    resolved: dict[str, Any]  # the plan as run (groups, sizes, metrics; see plan_trials)
    scores: pd.DataFrame  # one row per (trial, test set): section, key, ..., metric columns
    predictions: dict[int, dict[str, np.ndarray]] = field(repr=False, default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # done trials without predictions

    @property
    def metrics(self) -> tuple[str, ...]:
        return metric_names(self.task)


def _rows_of(pred: dict[str, np.ndarray], groups: list[str]) -> np.ndarray:
    return np.isin(pred["group"], groups)


def load_results(directory: str | os.PathLike) -> Results:
    """Scores of every done trial of a plan's study directory."""
    directory = Path(directory)
    db = directory / "study.db"
    if not db.exists():
        raise ConfigError(f"no study store at {db}; run the plan first")
    with Store(db, readonly=True) as store:
        study_id = store.study_id()
        study = store.study(study_id)
        resolved = (study["config"].get("tda")) or {}
        if not resolved:
            raise ConfigError(f"{directory} holds a study that is not a training data analysis")
        trials = store.trials(study_id)
        counts = store.counts(study_id)
    task = resolved["task"]
    rows: list[dict[str, Any]] = []
    predictions: dict[int, dict[str, np.ndarray]] = {}
    missing = []
    for t in trials:
        if t.status != "done":
            continue
        pred = read_predictions(t.trial_dir)
        if pred is None:
            missing.append(t.key or str(t.trial_id))
            continue
        predictions[t.trial_id] = pred
        base = {"trial_id": t.trial_id, "key": t.key, **t.extra}
        for test, groups in _test_sets(t.extra, resolved):
            mask = _rows_of(pred, groups)
            if not mask.any():
                continue
            rows.append({**base, "test": test, **score(task, pred["y"][mask], pred["pred"][mask])})
    columns = ["trial_id", "key", "section", "split", "repeat", "size", "arm", "group", "model"]
    scores = pd.DataFrame(rows)
    for c in [*columns, "test"]:
        if c not in scores:
            scores[c] = np.nan if c in ("size",) else None
    keep = [c for c in scores.columns if c not in ("stop", "waiting", "faults", "data")]
    return Results(
        directory=directory,
        name=study["name"],
        task=task,
        resolved=resolved,
        scores=scores[keep],
        predictions=predictions,
        counts=counts,
        missing=missing,
    )


def _test_sets(extra: dict[str, Any], resolved: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(name, groups) of the test sets one trial is scored on."""
    section = extra.get("section")
    if section == "learning_curve":
        return [("curve", resolved["learning_curve"]["groups"])]
    if section == "cross_study":
        return [(g, [g]) for g in resolved["cross_study"]["groups"]]
    if section == "logo":
        held = extra["group"]
        seen = [g for g in resolved["logo"]["groups"] if g != held]
        return [("heldout", [held]), ("seen", seen)]
    if section == "transfer":
        return [("target", [resolved["transfer"]["target"]])]
    if section == "compare":
        return [("common", resolved["compare"]["groups"])]
    return []


def _summary(frame: pd.DataFrame, by: list[str], metrics: tuple[str, ...]) -> pd.DataFrame:
    grouped = frame.groupby(by, dropna=False)[list(metrics)]
    out = grouped.agg(["mean", "std", "count"])
    out.columns = [f"{m}_{stat}" for m, stat in out.columns]
    return out.reset_index()


def learning_curve_table(results: Results) -> pd.DataFrame:
    """Per size: mean, std and count of every metric over splits and repeats."""
    lc = results.scores[results.scores["section"] == "learning_curve"]
    if lc.empty:
        return pd.DataFrame()
    return _summary(lc, ["size"], results.metrics)


def fit_curve(
    sizes: Any, errors: Any, spec: dict[str, Any] | None = None
) -> tuple[PowerLawFit | None, str]:
    """The power-law fit of a curve, or (None, why not)."""
    spec = spec or {}
    try:
        fit = fit_power_law(
            sizes,
            errors,
            level=spec.get("level", 0.95),
            method=spec.get("ci", "covariance"),
            gain=spec.get("flatten_gain", 0.01),
        )
    except (ValueError, RuntimeError) as e:
        return None, str(e)
    return fit, ""


def cross_study_tables(
    results: Results,
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame], pd.DataFrame]:
    """Per metric: the N x N mean and std tables (training group x test group), and the
    summary: on-diagonal mean, off-diagonal mean and their difference per metric."""
    cs = results.scores[results.scores["section"] == "cross_study"]
    if cs.empty:
        return {}, {}, pd.DataFrame()
    names = results.resolved["cross_study"]["groups"]
    means, stds, summary = {}, {}, []
    for m in results.metrics:
        cells = cs.groupby(["group", "test"])[m]
        mean = cells.mean().unstack().reindex(index=names, columns=names)
        std = cells.std().unstack().reindex(index=names, columns=names)
        mean.index.name, mean.columns.name = "train", "test"
        std.index.name, std.columns.name = "train", "test"
        means[m], stds[m] = mean, std
        values = mean.to_numpy(dtype=np.float64)
        diagonal = np.eye(len(names), dtype=bool)
        on, off = _nanmean(values[diagonal]), _nanmean(values[~diagonal])
        summary.append(
            {"metric": m, "on_diagonal": on, "off_diagonal": off, "off_minus_on": off - on}
        )
    return means, stds, pd.DataFrame(summary)


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def logo_table(results: Results) -> pd.DataFrame:
    """Per held-out group: each metric on the held-out group and on the groups trained on."""
    lg = results.scores[results.scores["section"] == "logo"]
    if lg.empty:
        return pd.DataFrame()
    table = _summary(lg, ["group", "test"], results.metrics)
    return table.rename(columns={"group": "held_out"})


def transfer_table(results: Results) -> pd.DataFrame:
    """Per arm (finetune, scratch; pretrained at size 0) and size: metrics over repeats."""
    tf = results.scores[results.scores["section"] == "transfer"].copy()
    if tf.empty:
        return pd.DataFrame()
    tf["size"] = tf["size"].fillna(0)
    return _summary(tf, ["arm", "size"], results.metrics)


def agreement_matrix(results: Results) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The compared models' agreement on their common test rows, averaged over splits (one
    label per model, or ``model/r`` per repeat when there are several), and each model's test
    scores."""
    cmp = results.scores[results.scores["section"] == "compare"]
    if cmp.empty:
        return pd.DataFrame(), pd.DataFrame()
    spec = results.resolved["compare"]
    several = spec["repeats"] > 1
    labels: list[str] = []
    by_split: dict[int, dict[str, np.ndarray]] = {}
    for _, row in cmp.iterrows():
        label = f"{row['model']}/{int(row['repeat'])}" if several else str(row["model"])
        pred = results.predictions[int(row["trial_id"])]
        order = np.argsort(pred["row"])
        mask = _rows_of(pred, spec["groups"])[order]
        by_split.setdefault(int(row["split"]), {})[label] = pred["pred"][order][mask]
        if label not in labels:
            labels.append(label)
    matrix = np.full((len(labels), len(labels)), np.nan)
    for i, a in enumerate(labels):
        for j, b in enumerate(labels):
            values = [
                agreement(results.task, preds[a], preds[b])
                for preds in by_split.values()
                if a in preds and b in preds
            ]
            finite = [v for v in values if not math.isnan(v)]
            if finite:
                matrix[i, j] = float(np.mean(finite))
    frame = pd.DataFrame(matrix, index=labels, columns=labels)
    frame.index.name = "model"
    return frame, _summary(cmp, ["model"], results.metrics)
