"""From the members' predictions to the study's numbers: ensemble, metrics, recalibration.

:func:`analyze` reads a UQ study's store and each done member's ``predictions.npz``, combines
the members into one predictive distribution per split, computes the metrics on the test split
(in original target units) for the first member alone and for the ensemble, fits each
recalibration on the validation split and reports the test metrics after it, and does the same
for every sensitivity level. It writes into the study directory (or ``out``):

- ``metrics.json``: everything below, plus which members were used;
- ``predictions.csv`` and ``predictions.parquet``: one row per test sample;
- ``sensitivity.csv``: one row per (perturbation, level), when the study has a sweep;
- the PNG plots of :mod:`candle.uq.report`.

Recalibration fits on validation data the members never trained on; the same split chooses
each member's best epoch, so a separate calibration split is the stricter choice when data
allow (return it as ``val`` and keep model selection out of it, e.g. with ``epochs`` fixed).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from candle.errors import ConfigError
from candle.uq import metrics as M
from candle.uq.member import PREDICTIONS, read_predictions
from candle.uq.posterior import (
    ClassificationPosterior,
    GaussianMixturePosterior,
    QuantilePrediction,
)
from candle.uq.recalibration import (
    IsotonicRecalibration,
    SplitConformal,
    TemperatureScaling,
    VarianceScaling,
)
from candle.workflow.store import Store, TrialRecord

__all__ = [
    "Ensemble",
    "analyze",
    "central_levels",
    "combine",
    "greedy_selection",
    "recalibrate",
    "split_metrics",
]


class Ensemble:
    """The members' predictions of one split, combined.

    ``posterior`` is a :class:`GaussianMixturePosterior` (gaussian head),
    :class:`ClassificationPosterior` or :class:`QuantilePrediction`; ``target`` is ``n x o``
    (regression) or ``n`` (class indices).
    """

    def __init__(self, head: str, posterior: Any, target: torch.Tensor):
        self.head, self.posterior, self.target = head, posterior, target


def combine(
    predictions: list[dict[str, Any]], split: str, weights: list[float] | None = None
) -> Ensemble:
    """One :class:`Ensemble` from members' :func:`~candle.uq.member.read_predictions` dicts.

    Each member contributes its ``k`` components (``k`` > 1 with MC dropout); ``weights``
    (one per member, e.g. counts from greedy selection) are split evenly over them.
    """
    if not predictions:
        raise ConfigError("no member predictions to combine (did every member fail?)")
    heads = {p["head"] for p in predictions}
    if len(heads) != 1:
        raise ConfigError(f"members predict with different heads {sorted(heads)}")
    head = heads.pop()
    target = torch.as_tensor(predictions[0][f"{split}_target"])
    for p in predictions[1:]:
        if not np.array_equal(p[f"{split}_target"], predictions[0][f"{split}_target"]):
            raise ConfigError(
                f"members disagree on the {split} targets: every member must see the same "
                "validation and test splits (perturb only the training split)"
            )
    name = {"gaussian": "mean", "quantile": "quantiles", "classification": "logits"}[head]
    parts = [torch.as_tensor(p[f"{split}_{name}"], dtype=torch.float64) for p in predictions]
    w = None
    if weights is not None:
        w = torch.cat(
            [
                torch.full((len(t),), wt / len(t), dtype=torch.float64)
                for t, wt in zip(parts, weights, strict=True)
            ]
        )
        w = w / w.sum()
    stacked = torch.cat(parts)
    if head == "gaussian":
        var = torch.cat(
            [torch.as_tensor(p[f"{split}_var"], dtype=torch.float64) for p in predictions]
        )
        return Ensemble(head, GaussianMixturePosterior(stacked, var, weights=w), target.double())
    if head == "classification":
        return Ensemble(head, ClassificationPosterior.from_logits(stacked), target.long())
    levels = [float(q) for q in predictions[0]["quantile_levels"]]
    return Ensemble(head, QuantilePrediction(levels, stacked), target.double())


def greedy_selection(candidates: list[Ensemble], size: int) -> list[int]:
    """Caruana-style forward selection with replacement: ``size`` picks (indices into
    ``candidates``, single-member ensembles of one split) that minimize the NLL of their
    equally weighted mixture at each step. Ties go to the earlier (better ranked) candidate."""
    picks: list[int] = []
    for _ in range(size):
        best: tuple[float, int] | None = None
        for i in range(len(candidates)):
            nll = _nll(candidates, [*picks, i])
            if best is None or nll < best[0] - 1e-12:
                best = (nll, i)
        assert best is not None
        picks.append(best[1])
    return picks


def _nll(candidates: list[Ensemble], picks: list[int]) -> float:
    first = candidates[picks[0]]
    if first.head == "gaussian":
        means = torch.cat([candidates[i].posterior.means for i in picks])
        variances = torch.cat([candidates[i].posterior.variances for i in picks])
        return M.mixture_nll(GaussianMixturePosterior(means, variances), first.target)
    if first.head == "classification":
        probs = torch.cat([candidates[i].posterior.member_probs for i in picks])
        return M.classification_nll(ClassificationPosterior(probs), first.target)
    raise ConfigError("greedy selection needs a gaussian or classification head")


# --------------------------------------------------------------------------- metrics


def split_metrics(ens: Ensemble, levels: list[float]) -> dict[str, float]:
    """The head's metric set on one split."""
    if ens.head == "gaussian":
        return M.regression_report(ens.posterior, ens.target, levels=tuple(levels))
    if ens.head == "classification":
        return M.classification_report(ens.posterior, ens.target)
    return _quantile_metrics(ens.posterior, ens.target, levels)


def central_levels(pred: QuantilePrediction) -> list[float]:
    """The central interval levels a quantile head can give: 1 - 2q for each predicted level
    q < 0.5 whose partner 1 - q was predicted too."""
    qs = [float(q) for q in pred.levels]
    return sorted(
        round(1 - 2 * q, 12) for q in qs if q < 0.5 and any(abs(1 - q - r) < 1e-9 for r in qs)
    )


def _quantile_metrics(pred: QuantilePrediction, y: torch.Tensor, levels: list[float]) -> dict:
    out: dict[str, float] = {}
    if any(abs(float(q) - 0.5) < 1e-9 for q in pred.levels):
        median = pred.median
        out["rmse"] = float(((median - y) ** 2).mean().sqrt())
        out["mae"] = float((median - y).abs().mean())
    available = central_levels(pred)
    for level in levels:
        if not any(abs(level - a) < 1e-9 for a in available):
            continue  # the members did not predict this level's quantiles
        lo, hi = pred.interval(level)
        out[f"coverage_{_pct(level)}"] = M.interval_coverage(lo, hi, y)
        out[f"width_{_pct(level)}"] = M.interval_width(lo, hi)
    return out


def _pct(level: float) -> str:
    return M.level_key(level)


def recalibrate(
    val: Ensemble, test: Ensemble, methods: list[str] | None, levels: list[float]
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Fit each method on ``val``, report ``test`` after it -> (metrics by method, fitted)."""
    if methods is None:
        methods = {
            "gaussian": ["variance", "isotonic", "conformal"],
            "classification": ["temperature"],
        }.get(test.head, [])
    allowed = {
        "gaussian": {"variance", "isotonic", "conformal"},
        "classification": {"temperature"},
        "quantile": set(),
    }[test.head]
    bad = [m for m in methods if m not in allowed]
    if bad:
        raise ConfigError(
            f"recalibration {bad} does not apply to a {test.head} head (choose from "
            f"{sorted(allowed) or 'none'})"
        )
    y = test.target
    out: dict[str, dict[str, float]] = {}
    fitted: dict[str, Any] = {}
    for method in methods:
        if method == "variance":
            vs = VarianceScaling().fit(val.posterior, val.target)
            scaled = vs.apply(test.posterior)
            out[method] = {
                "factor": float(vs.factor),
                **split_metrics(Ensemble("gaussian", scaled, y), levels),
            }
            fitted[method] = scaled
        elif method == "isotonic":
            recal = IsotonicRecalibration().fit(val.posterior, val.target).apply(test.posterior)
            out[method] = _interval_metrics(recal, y, levels)
            fitted[method] = recal
        elif method == "conformal":
            conf = SplitConformal().fit(val.posterior, val.target).apply(test.posterior)
            out[method] = _interval_metrics(conf, y, levels)
            fitted[method] = conf
        elif method == "temperature":
            ts = TemperatureScaling().fit(val.posterior, val.target)
            cal = ts.apply(test.posterior)
            out[method] = {
                "temperature": float(ts.temperature),
                "temperature_degenerate": ts.degenerate,
                **M.classification_report(cal, test.target),
            }
            fitted[method] = cal
    return out, fitted


def _interval_metrics(pred: Any, y: torch.Tensor, levels: list[float]) -> dict[str, float]:
    """Coverage and width at ``levels`` and the miscalibration area of a recalibrated
    predictive, measured as :func:`candle.uq.metrics.miscalibration_area` measures the
    ensemble: 101 central-interval levels over [0, 1] (from intervals when it has no CDF)."""
    out: dict[str, float] = {}
    for level in levels:
        lo, hi = pred.interval(level)
        out[f"coverage_{_pct(level)}"] = M.interval_coverage(lo, hi, y)
        out[f"width_{_pct(level)}"] = M.interval_width(lo, hi)
    if hasattr(pred, "cdf"):
        out["miscalibration_area"] = M.miscalibration_area(pred, y)
    else:
        grid = np.linspace(0.0, 1.0, 101)
        observed = [0.0] + [M.interval_coverage(*pred.interval(p), y) for p in grid[1:-1]] + [1.0]
        gap = np.abs(np.asarray(observed) - grid)
        out["miscalibration_area"] = float(np.sum(0.5 * (gap[1:] + gap[:-1]) * np.diff(grid)))
    return out


# --------------------------------------------------------------------------- the study


def _load(trials: list[TrialRecord]) -> dict[str, dict[str, Any]]:
    out = {}
    for t in trials:
        if t.status == "done":
            out[t.key or str(t.trial_id)] = read_predictions(Path(t.trial_dir) / PREDICTIONS)
    return out


def analyze(directory: str | Path, out: str | Path | None = None, plots: bool = True) -> dict:
    """Metrics of a UQ study from its store and members' predictions; writes the files listed
    in the module docstring and returns what ``metrics.json`` holds."""
    directory = Path(directory)
    db = directory / "study.db"
    if not db.exists():
        raise ConfigError(f"no UQ study store at {db}")
    out = Path(out) if out else directory
    out.mkdir(parents=True, exist_ok=True)
    with Store(db, readonly=True) as store:
        study = store.study(store.study_id())
        trials = store.trials(study["study_id"])
    uq = (study.get("config") or {}).get("uq")
    if not uq:
        raise ConfigError(f"{db} is not a UQ study (its config has no `uq` section)")
    levels = [float(v) for v in uq["levels"]]
    interval = float(uq["interval"])
    preds = _load(trials)
    roles: dict[str, list[TrialRecord]] = defaultdict(list)
    for t in trials:
        roles[t.extra.get("role", "member")].append(t)
    failed = sorted(t.key or str(t.trial_id) for t in trials if t.status != "done")

    report: dict[str, Any] = {"study": study["name"], "failed_members": failed}
    kind = uq["ensemble"]["kind"]
    size = int(uq["ensemble"]["members"])
    if kind == "search":
        cands = sorted(roles["candidate"], key=lambda t: t.extra.get("rank", 0))
        cands = [t for t in cands if t.key in preds]
        if not cands:
            raise ConfigError("no search candidate finished; nothing to analyze")
        if uq["ensemble"]["search"]["select"] == "greedy":
            singles = [combine([preds[t.key]], "val") for t in cands]
            picks = greedy_selection(singles, size)
        else:
            picks = list(range(min(size, len(cands))))
        counts = np.bincount(picks, minlength=len(cands))
        chosen = [(cands[i], float(c)) for i, c in enumerate(counts) if c]
        member_preds = [preds[t.key] for t, _ in chosen]
        weights = [c for _, c in chosen]
        report["selection"] = {t.key: c for t, c in chosen}
    else:
        members = sorted(
            (t for t in roles["member"] if t.key in preds), key=lambda t: int(t.key[1:])
        )
        member_preds = [preds[t.key] for t in members]
        weights = None
        report["members"] = [t.key for t in members]
    if not member_preds:
        raise ConfigError(f"no member of {study['name']} finished; nothing to analyze")

    head = member_preds[0]["head"]
    report["head"] = head
    test = combine(member_preds, "test", weights)
    val = combine(member_preds, "val", weights)
    report["n_test"] = len(test.target)
    report["n_members"] = len(member_preds)
    methods = uq.get("recalibration")
    single_test, single_val = combine(member_preds[:1], "test"), combine(member_preds[:1], "val")
    report["single"] = split_metrics(single_test, levels)
    report["single_recalibrated"], _ = recalibrate(single_val, single_test, methods, levels)
    report["ensemble"] = split_metrics(test, levels)
    report["recalibrated"], fitted = recalibrate(val, test, methods, levels)

    sens_rows = _sensitivity(roles["sensitivity"], preds, levels, interval)
    if sens_rows:
        pd.DataFrame(sens_rows).to_csv(out / "sensitivity.csv", index=False)
        report["sensitivity"] = sens_rows
    frame = _prediction_frame(test, interval, fitted)
    frame.index.name = "sample"
    frame.to_csv(out / "predictions.csv")
    frame.to_parquet(out / "predictions.parquet")
    (out / "metrics.json").write_text(json.dumps(_finite(report), indent=2) + "\n")
    if plots:
        from candle.uq.report import write_plots

        report["plots"] = [str(p) for p in write_plots(out, test, fitted, sens_rows, levels)]
    return report


def _sensitivity(
    trials: list[TrialRecord], preds: dict[str, dict], levels: list[float], interval: float
) -> list[dict[str, Any]]:
    groups: dict[tuple[str, float], list[TrialRecord]] = defaultdict(list)
    for t in trials:
        groups[(t.extra["perturbation"], float(t.extra["level"]))].append(t)
    rows = []
    for (name, level), ts in sorted(groups.items()):
        done = [preds[t.key] for t in ts if t.key in preds]
        row: dict[str, Any] = {"perturbation": name, "level": level, "members": len(done)}
        if done:
            ens = combine(done, "test")
            row.update(split_metrics(ens, levels))
            if ens.head == "gaussian":
                row["mean_aleatoric_std"] = float(ens.posterior.aleatoric.sqrt().mean())
                row["mean_epistemic_std"] = float(ens.posterior.epistemic.sqrt().mean())
                row["mean_std"] = float(ens.posterior.stddev.mean())
        rows.append(row)
    return rows


def _prediction_frame(test: Ensemble, interval: float, fitted: dict[str, Any]) -> pd.DataFrame:
    cols: dict[str, np.ndarray] = {}
    post, y = test.posterior, test.target
    if test.head == "classification":
        cols["target"] = y.numpy()
        cols["predicted"] = post.predicted.numpy()
        for c in range(post.probs.shape[-1]):
            cols[f"p_{c}"] = post.probs[:, c].numpy()
        cols["entropy"] = post.total_entropy.numpy()
        cols["expected_entropy"] = post.expected_entropy.numpy()
        cols["mutual_information"] = post.mutual_information.numpy()
        if "temperature" in fitted:
            for c in range(post.probs.shape[-1]):
                cols[f"p_{c}_calibrated"] = fitted["temperature"].probs[:, c].numpy()
        return pd.DataFrame(cols)
    o = y.shape[-1]

    def put(name: str, t: torch.Tensor) -> None:
        for j in range(o):
            cols[name if o == 1 else f"{name}_{j}"] = t[:, j].numpy()

    put("target", y)
    pct = _pct(interval)
    if test.head == "quantile":
        if any(abs(float(q) - 0.5) < 1e-9 for q in post.levels):
            put("median", post.median)
        for q in post.levels.tolist():
            put(f"q_{_pct(q)}", post.quantile(q))
        return pd.DataFrame(cols)
    else:
        put("mean", post.mean)
        put("std", post.stddev)
        put("aleatoric", post.aleatoric)
        put("epistemic", post.epistemic)
    lo, hi = post.interval(interval)
    put(f"lower_{pct}", lo)
    put(f"upper_{pct}", hi)
    for method in ("variance", "isotonic", "conformal"):
        if method in fitted:
            lo, hi = fitted[method].interval(interval)
            put(f"lower_{pct}_{method}", lo)
            put(f"upper_{pct}_{method}", hi)
    return pd.DataFrame(cols)


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
