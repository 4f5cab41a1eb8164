"""Scores of one model's predictions, and agreement between two models' predictions.

Regression: ``y`` and ``pred`` are ``n`` or ``n x o`` (``o`` outputs are flattened together).
Classification: ``y`` holds class indices ``0..C-1`` (``n``), ``proba`` the predicted class
probabilities (``n x C``; a 1-d ``proba`` is the probability of class 1 of a binary problem).

Every metric is a plain function of arrays; :func:`score` computes all of a task's metrics at
once. :data:`LOWER_IS_BETTER` says which way each one points.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from candle.tda._tasks import TASKS

__all__ = [
    "CLASSIFICATION_METRICS",
    "LOWER_IS_BETTER",
    "REGRESSION_METRICS",
    "TASKS",
    "accuracy",
    "agreement",
    "auroc",
    "balanced_accuracy",
    "log_loss",
    "mae",
    "metric_names",
    "mse",
    "pearson",
    "r2",
    "rmse",
    "score",
    "spearman",
]

REGRESSION_METRICS = ("mse", "rmse", "mae", "r2", "pearson", "spearman")
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "auroc", "log_loss")
LOWER_IS_BETTER = {
    "mse": True,
    "rmse": True,
    "mae": True,
    "r2": False,
    "pearson": False,
    "spearman": False,
    "accuracy": False,
    "balanced_accuracy": False,
    "auroc": False,
    "log_loss": True,
}


def metric_names(task: str) -> tuple[str, ...]:
    return REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS


def _pair(y: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    if y.shape != pred.shape:
        raise ValueError(f"targets ({y.size}) and predictions ({pred.size}) differ in size")
    return y, pred


# --------------------------------------------------------------------------- regression


def mse(y: Any, pred: Any) -> float:
    """Mean squared error."""
    y, pred = _pair(y, pred)
    return float(np.mean((y - pred) ** 2))


def rmse(y: Any, pred: Any) -> float:
    """Root mean squared error."""
    return math.sqrt(mse(y, pred))


def mae(y: Any, pred: Any) -> float:
    """Mean absolute error."""
    y, pred = _pair(y, pred)
    return float(np.mean(np.abs(y - pred)))


def r2(y: Any, pred: Any) -> float:
    """Coefficient of determination, 1 - SS_res / SS_tot (nan when ``y`` is constant)."""
    y, pred = _pair(y, pred)
    total = float(np.sum((y - y.mean()) ** 2))
    if total == 0.0:
        return math.nan
    return 1.0 - float(np.sum((y - pred) ** 2)) / total


def pearson(y: Any, pred: Any) -> float:
    """Pearson correlation (nan when either side is constant)."""
    y, pred = _pair(y, pred)
    if y.size < 2 or np.ptp(y) == 0 or np.ptp(pred) == 0:
        return math.nan
    return float(np.corrcoef(y, pred)[0, 1])


def spearman(y: Any, pred: Any) -> float:
    """Spearman rank correlation, ties ranked by their average (nan when a side is constant)."""
    y, pred = _pair(y, pred)
    if y.size < 2 or np.ptp(y) == 0 or np.ptp(pred) == 0:
        return math.nan
    return pearson(stats.rankdata(y), stats.rankdata(pred))


# --------------------------------------------------------------------------- classification


def _proba(proba: Any) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1:  # binary: the probability of class 1
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2:
        raise ValueError(f"class probabilities must be n x C, got shape {p.shape}")
    return p


def _labels(y: Any) -> np.ndarray:
    return np.asarray(y).reshape(-1).astype(np.int64)


def accuracy(y: Any, proba: Any) -> float:
    """Fraction of rows whose most probable class is the true one."""
    return float(np.mean(_proba(proba).argmax(1) == _labels(y)))


def balanced_accuracy(y: Any, proba: Any) -> float:
    """Mean over the classes present in ``y`` of the recall of each."""
    y, guess = _labels(y), _proba(proba).argmax(1)
    return float(np.mean([np.mean(guess[y == c] == c) for c in np.unique(y)]))


def auroc(y: Any, proba: Any) -> float:
    """Area under the ROC curve; one-vs-rest macro average for C > 2 classes (nan if ``y`` has
    one class only)."""
    y, p = _labels(y), _proba(proba)
    present = np.unique(y)
    if present.size < 2:
        return math.nan
    if p.shape[1] == 2:
        return float(skm.roc_auc_score(y, p[:, 1]))
    scores = [skm.roc_auc_score(y == c, p[:, c]) for c in present]
    return float(np.mean(scores))


def log_loss(y: Any, proba: Any, eps: float = 1e-15) -> float:
    """Mean negative log probability of the true class (probabilities clipped to ``eps``)."""
    y, p = _labels(y), _proba(proba)
    if y.max(initial=0) >= p.shape[1] or y.min(initial=0) < 0:
        raise ValueError(f"labels must be 0..{p.shape[1] - 1} for {p.shape[1]} classes")
    chosen = np.clip(p[np.arange(y.size), y], eps, 1.0)
    return float(-np.mean(np.log(chosen)))


_FUNCTIONS = {
    "mse": mse,
    "rmse": rmse,
    "mae": mae,
    "r2": r2,
    "pearson": pearson,
    "spearman": spearman,
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "auroc": auroc,
    "log_loss": log_loss,
}


def score(task: str, y: Any, pred: Any) -> dict[str, float]:
    """Every metric of ``task`` ("regression" or "classification"), by name."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return {name: _FUNCTIONS[name](y, pred) for name in metric_names(task)}


def agreement(task: str, a: Any, b: Any) -> float:
    """How alike two models' predictions on the same rows are: the Pearson correlation of the
    predictions (regression), or the fraction of rows given the same class (classification;
    disagreement is 1 minus it)."""
    if task == "regression":
        return pearson(a, b)
    return float(np.mean(_proba(a).argmax(1) == _proba(b).argmax(1)))
