"""Accuracy and calibration metrics for regression and classification predictions.

Regression metrics take a :class:`~candle.uq.posterior.GaussianMixturePosterior` (or plain
mean and variance tensors) and targets `n x o` in the same units — report in original
target units, so undo any target standardization first. Classification metrics take a
:class:`~candle.uq.posterior.ClassificationPosterior` (or probabilities `n x c`) and integer
labels `n`.

Unless a docstring says otherwise a metric returns a python float: the mean over all
``n`` samples and ``o`` outputs. Curves (calibration curve, reliability diagram) are returned
as numpy arrays, ready for plotting and for JSON.

Interval metrics (:func:`coverage_at_levels`, :func:`calibration_curve`, ...) work with any
predictive object that has ``interval(level)`` or ``cdf(y)``: posteriors, the isotonic and
conformal predictions of :mod:`candle.uq.recalibration`, and quantile predictions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch.special import ndtr

from candle.errors import ConfigError
from candle.uq.posterior import (
    ClassificationPosterior,
    GaussianMixturePosterior,
    _as_float64,
    _interval_level,
    _labels,
    _targets,
)

__all__ = [
    "accuracy",
    "brier_score",
    "calibration_curve",
    "classification_nll",
    "classification_report",
    "coverage_at_levels",
    "crps_gaussian",
    "crps_mixture",
    "expected_calibration_error",
    "gaussian_nll",
    "interval_coverage",
    "interval_width",
    "level_key",
    "mae",
    "miscalibration_area",
    "mixture_nll",
    "regression_report",
    "reliability_diagram",
    "rmse",
    "sharpness",
    "sigma_error_correlation",
]

_LOG_2PI = math.log(2 * math.pi)
_INV_SQRT_PI = 1 / math.sqrt(math.pi)


def _mean_or(x: torch.Tensor, reduce: bool) -> float | torch.Tensor:
    return float(x.mean()) if reduce else x


def _point(prediction: Any, name: str = "prediction") -> torch.Tensor:
    """The point prediction `n x o` of a posterior-like object, or the tensor itself."""
    if hasattr(prediction, "mean") and not isinstance(prediction, (torch.Tensor, np.ndarray)):
        return _as_float64(prediction.mean, f"{name}.mean")
    t = _as_float64(prediction, name)
    return t[:, None] if t.dim() == 1 else t


def _same_shape(mean: torch.Tensor, var: torch.Tensor) -> None:
    if mean.shape != var.shape:
        raise ConfigError(
            f"mean and var must have the same shape n x o, got {tuple(mean.shape)} and "
            f"{tuple(var.shape)}"
        )
    if (var <= 0).any():
        raise ConfigError(f"var must be > 0, got minimum {float(var.min())}")


def _mean_var(mean: Any, var: Any) -> tuple[torch.Tensor, torch.Tensor]:
    mu, v = _as_float64(mean, "mean"), _as_float64(var, "var")
    if mu.dim() == 1 and v.dim() == 1:
        mu, v = mu[:, None], v[:, None]
    _same_shape(mu, v)
    return mu, v


# -- regression: proper scoring rules and point errors ----------------------------------------


def gaussian_nll(mean: Any, var: Any, y: Any, reduce: bool = True) -> float | torch.Tensor:
    """Negative log-likelihood of ``y`` under ``N(mean, var)``, constant included.

    ``mean``, ``var``, ``y``: `n x o`. With ``reduce=False`` returns the `n x o` values.
    """
    mu, v = _mean_var(mean, var)
    y = _targets(y, *mu.shape)
    return _mean_or(0.5 * (_LOG_2PI + v.log() + (y - mu) ** 2 / v), reduce)


def mixture_nll(
    posterior: GaussianMixturePosterior, y: Any, reduce: bool = True
) -> float | torch.Tensor:
    """Negative log-likelihood of ``y`` `n x o` under the exact mixture density."""
    return _mean_or(-posterior.log_prob(y), reduce)


def rmse(prediction: Any, y: Any) -> float:
    """Root mean squared error of the point prediction (a posterior's mean, or `n x o`)."""
    mu = _point(prediction)
    return math.sqrt(float(((_targets(y, *mu.shape) - mu) ** 2).mean()))


def mae(prediction: Any, y: Any) -> float:
    """Mean absolute error of the point prediction (a posterior's mean, or `n x o`)."""
    mu = _point(prediction)
    return float((_targets(y, *mu.shape) - mu).abs().mean())


def _mean_abs_normal(mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``E|X|`` for ``X ~ N(mu, var)``: ``mu (2 Phi(mu/s) - 1) + 2 s phi(mu/s)``."""
    s = var.sqrt()
    z = mu / s
    phi = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return mu * (2 * ndtr(z) - 1) + 2 * s * phi


def crps_gaussian(mean: Any, var: Any, y: Any, reduce: bool = True) -> float | torch.Tensor:
    """Continuous ranked probability score of ``N(mean, var)`` at ``y`` (closed form,
    Gneiting and Raftery 2007): ``s (z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi))`` with
    ``z = (y - mean) / s``. Same units as ``y``; lower is better. All `n x o`."""
    mu, v = _mean_var(mean, var)
    y = _targets(y, *mu.shape)
    return _mean_or(_mean_abs_normal(y - mu, v) - v.sqrt() * _INV_SQRT_PI, reduce)


def crps_mixture(
    posterior: GaussianMixturePosterior, y: Any, reduce: bool = True
) -> float | torch.Tensor:
    """Exact CRPS of the Gaussian mixture at ``y`` `n x o`.

    ``CRPS = E|X - y| - E|X - X'| / 2`` with ``X, X'`` independent draws of the mixture.
    Both terms are sums of ``E|N(a, b)|`` over members (``X_i - y ~ N(mu_i - y, var_i)``,
    ``X_i - X_j ~ N(mu_i - mu_j, var_i + var_j)``), so this costs ``m^2`` evaluations per
    entry; members are looped over one at a time to keep memory at `m x n x o`.
    """
    y = _targets(y, *posterior.shape)
    w = posterior.weights[:, None, None]
    mu, var = posterior.means, posterior.variances
    to_target = (w * _mean_abs_normal(mu - y, var)).sum(0)
    spread = torch.zeros_like(to_target)
    for i in range(posterior.num_members):
        pair = _mean_abs_normal(mu[i] - mu, var[i] + var)
        spread += posterior.weights[i] * (w * pair).sum(0)
    return _mean_or(to_target - 0.5 * spread, reduce)


# -- regression: intervals and calibration -----------------------------------------------------


def level_key(level: float) -> str:
    """Percent label of an interval level for report keys: 0.95 -> ``"95"``, 0.995 ->
    ``"99_5"`` (no dot, so the keys are safe column names)."""
    return f"{100 * level:.10g}".replace(".", "_")


def interval_coverage(lower: Any, upper: Any, y: Any) -> float:
    """Fraction of targets with ``lower <= y <= upper`` (all `n x o`; infinite bounds are
    allowed)."""
    lo = torch.as_tensor(lower, dtype=torch.float64).cpu()
    hi = torch.as_tensor(upper, dtype=torch.float64).cpu()
    if lo.shape != hi.shape or lo.dim() not in (1, 2):
        raise ConfigError(
            f"lower and upper must both be n x o, got {tuple(lo.shape)} and {tuple(hi.shape)}"
        )
    if lo.dim() == 1:
        lo, hi = lo[:, None], hi[:, None]
    y = _targets(y, *lo.shape)
    return float(((lo <= y) & (y <= hi)).double().mean())


def interval_width(lower: Any, upper: Any) -> float:
    """Mean width ``upper - lower`` of intervals `n x o` (inf if any bound is infinite)."""
    lo = torch.as_tensor(lower, dtype=torch.float64).cpu()
    hi = torch.as_tensor(upper, dtype=torch.float64).cpu()
    if lo.shape != hi.shape:
        raise ConfigError(
            f"lower and upper must have the same shape, got {tuple(lo.shape)} and {tuple(hi.shape)}"
        )
    return float((hi - lo).mean())


def coverage_at_levels(
    prediction: Any, y: Any, levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95, 0.99)
) -> dict[float, float]:
    """Observed coverage of the central interval at each nominal level: ``{level: fraction of
    y inside prediction.interval(level)}``."""
    out = {}
    for level in levels:
        lo, hi = prediction.interval(_interval_level(level))
        out[float(level)] = interval_coverage(lo, hi, y)
    return out


def calibration_curve(
    prediction: Any, y: Any, num_levels: int = 101
) -> tuple[np.ndarray, np.ndarray]:
    """Calibration curve of central intervals: expected vs observed proportions.

    Convention: for ``num_levels`` equally spaced nominal levels ``p`` in [0, 1] (endpoints
    included), the observed proportion is the fraction of the ``n x o`` targets that lie in
    the central ``p`` interval ``[F^-1((1-p)/2), F^-1((1+p)/2)]`` of their predictive CDF
    ``F``. It is computed from the PIT values ``u = F(y)``: ``y`` is inside exactly when
    ``|2u - 1| <= p``, so no quantiles are solved and ``p = 0`` and ``p = 1`` need no special
    case. ``prediction`` is anything with ``cdf(y)`` (a posterior, or an isotonic
    recalibration). A calibrated model gives the diagonal; an overconfident one lies below it.

    Returns:
        (expected, observed): two numpy arrays of ``num_levels`` proportions.
    """
    if not isinstance(num_levels, int) or num_levels < 2:
        raise ConfigError(f"num_levels must be an int >= 2, got {num_levels!r}")
    pit = _as_float64(prediction.cdf(y), "cdf(y)").reshape(-1)
    distance = np.sort((2 * pit - 1).abs().numpy())
    expected = np.linspace(0.0, 1.0, num_levels)
    observed = np.searchsorted(distance, expected, side="right") / max(len(distance), 1)
    return expected, observed


def miscalibration_area(prediction: Any, y: Any, num_levels: int = 101) -> float:
    """Area between the :func:`calibration_curve` and the diagonal: the trapezoid integral of
    ``|observed(p) - p|`` over ``p`` in [0, 1]. 0 is perfect; at most 0.5. A Gaussian
    predictive with standard deviation ``s`` times the true one scores
    ``|1/2 - (2/pi) arctan(s)|`` in the limit of many samples and levels (see the tests)."""
    expected, observed = calibration_curve(prediction, y, num_levels)
    gap = np.abs(observed - expected)
    return float(np.sum(0.5 * (gap[1:] + gap[:-1]) * np.diff(expected)))


def sharpness(prediction: Any) -> float:
    """Root mean predictive variance ``sqrt(mean(var))`` (a posterior, or a variance tensor
    `n x o`). Smaller is sharper; only meaningful next to a calibration measure."""
    var = prediction.variance if hasattr(prediction, "variance") else prediction
    return math.sqrt(float(_as_float64(var, "variance").mean()))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def sigma_error_correlation(prediction: Any, y: Any) -> dict[str, float]:
    """Correlation between the predicted standard deviation and the absolute error, pooled over
    all `n x o` entries: ``{"pearson": ..., "spearman": ...}`` (Spearman with average ranks
    for ties). NaN when either is constant (e.g. a homoscedastic model)."""
    sd = _as_float64(prediction.stddev, "stddev").reshape(-1).numpy()
    mu = _point(prediction)
    err = (_targets(y, *mu.shape) - mu).abs().reshape(-1).numpy()
    return {
        "pearson": _pearson(sd, err),
        "spearman": _pearson(rankdata(sd), rankdata(err)),
    }


def regression_report(
    prediction: Any, y: Any, levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95, 0.99)
) -> dict[str, float]:
    """All regression metrics in one dict, in the units of ``y``.

    Keys: ``nll`` (exact mixture), ``nll_gaussian`` (the moment-matched Gaussian), ``rmse``,
    ``mae``, ``crps`` (exact mixture), ``coverage_<pct>`` and ``width_<pct>`` for each level
    (``coverage_95``, ``width_99_5``, see :func:`level_key`), ``miscalibration_area``,
    ``sharpness``, ``sigma_error_pearson``, ``sigma_error_spearman``, ``mean_aleatoric`` and
    ``mean_epistemic`` (mean variances).

    ``prediction`` is usually a :class:`GaussianMixturePosterior`. Other predictive objects
    (an isotonic recalibration) get the keys they support: the density-based ``nll``,
    ``nll_gaussian``, ``crps`` and the variance split are left out when the object is not a
    Gaussian mixture, and ``miscalibration_area`` when it has no ``cdf`` (a conformal
    prediction).
    """
    out: dict[str, float] = {}
    is_mixture = isinstance(prediction, GaussianMixturePosterior)
    if is_mixture:
        out["nll"] = mixture_nll(prediction, y)
        out["nll_gaussian"] = gaussian_nll(prediction.mean, prediction.variance, y)
    out["rmse"] = rmse(prediction, y)
    out["mae"] = mae(prediction, y)
    if is_mixture:
        out["crps"] = crps_mixture(prediction, y)
    for level in levels:
        lo, hi = prediction.interval(_interval_level(level))
        out[f"coverage_{level_key(level)}"] = interval_coverage(lo, hi, y)
        out[f"width_{level_key(level)}"] = interval_width(lo, hi)
    if hasattr(prediction, "cdf"):
        out["miscalibration_area"] = miscalibration_area(prediction, y)
    out["sharpness"] = sharpness(prediction)
    corr = sigma_error_correlation(prediction, y)
    out["sigma_error_pearson"] = corr["pearson"]
    out["sigma_error_spearman"] = corr["spearman"]
    if is_mixture:
        out["mean_aleatoric"] = float(prediction.aleatoric.mean())
        out["mean_epistemic"] = float(prediction.epistemic.mean())
    return out


# -- classification -----------------------------------------------------------------------------


def _probs(prediction: Any) -> torch.Tensor:
    if isinstance(prediction, ClassificationPosterior):
        return prediction.probs
    return ClassificationPosterior(prediction).probs


def classification_nll(prediction: Any, labels: Any) -> float:
    """Mean negative log probability of the true labels `n` (nats). From a posterior built
    from logits it is computed in log space; from probabilities a zero probability on a true
    label gives inf."""
    post = prediction if isinstance(prediction, ClassificationPosterior) else None
    if post is None:
        post = ClassificationPosterior(prediction)
    return float(-post.log_prob(labels).mean())


def brier_score(prediction: Any, labels: Any) -> float:
    """Multi-class Brier score: the mean over samples of ``sum_c (p_c - 1{c = label})^2``.

    In [0, 2]; for two classes it is twice the binary Brier score ``(p_1 - y)^2``.
    """
    p = _probs(prediction)
    t = _labels(labels, *p.shape)
    onehot = torch.nn.functional.one_hot(t, p.shape[1]).double()
    return float(((p - onehot) ** 2).sum(-1).mean())


def accuracy(prediction: Any, labels: Any) -> float:
    """Fraction of samples whose most probable class is the label (ties: lowest index)."""
    p = _probs(prediction)
    t = _labels(labels, *p.shape)
    return float((p.argmax(-1) == t).double().mean())


def reliability_diagram(prediction: Any, labels: Any, num_bins: int = 15) -> dict[str, np.ndarray]:
    """Top-label reliability diagram data on ``num_bins`` equal-width confidence bins.

    Bin ``k`` holds the samples whose confidence (largest class probability) lies in
    ``(k/B, (k+1)/B]``: right-closed, so a confidence of exactly 0.6 with B = 5 falls in
    (0.4, 0.6]; confidence is never 0, so every sample has a bin.

    Returns:
        numpy arrays: ``edges`` (B + 1), ``confidence`` (mean confidence per bin, NaN when
        empty), ``accuracy`` (fraction correct per bin, NaN when empty), ``counts`` (int, B).
    """
    if not isinstance(num_bins, int) or num_bins < 1:
        raise ConfigError(f"num_bins must be a positive int, got {num_bins!r}")
    p = _probs(prediction)
    t = _labels(labels, *p.shape)
    conf, pred = p.max(-1)
    edges = torch.arange(num_bins + 1, dtype=torch.float64) / num_bins  # k / B, exactly rounded
    # bucketize(right=False) returns i with edges[i] < conf <= edges[i + 1] for interior edges
    bins = torch.bucketize(conf, edges[1:-1], right=False)
    counts = torch.bincount(bins, minlength=num_bins).double()
    conf_sum = torch.bincount(bins, weights=conf, minlength=num_bins)
    correct = torch.bincount(bins, weights=(pred == t).double(), minlength=num_bins)
    empty = counts == 0
    safe = counts.clamp_min(1)
    nan = torch.full_like(counts, float("nan"))
    return {
        "edges": edges.numpy(),
        "confidence": torch.where(empty, nan, conf_sum / safe).numpy(),
        "accuracy": torch.where(empty, nan, correct / safe).numpy(),
        "counts": counts.long().numpy(),
    }


def expected_calibration_error(prediction: Any, labels: Any, num_bins: int = 15) -> float:
    """Top-label expected calibration error: ``sum_k (n_k / n) |accuracy_k - confidence_k|``
    over the fixed equal-width bins of :func:`reliability_diagram` (empty bins count 0)."""
    diagram = reliability_diagram(prediction, labels, num_bins)
    counts = diagram["counts"]
    full = counts > 0
    gap = np.abs(diagram["accuracy"][full] - diagram["confidence"][full])
    return float((counts[full] * gap).sum() / max(counts.sum(), 1))


def classification_report(prediction: Any, labels: Any, num_bins: int = 15) -> dict[str, float]:
    """All classification metrics in one dict: ``nll``, ``brier``, ``accuracy``, ``ece``,
    ``mean_entropy`` (of the mean prediction), ``mean_expected_entropy`` (aleatoric) and
    ``mean_mutual_information`` (epistemic), entropies in nats."""
    post = prediction
    if not isinstance(post, ClassificationPosterior):
        post = ClassificationPosterior(prediction)
    return {
        "nll": classification_nll(post, labels),
        "brier": brier_score(post, labels),
        "accuracy": accuracy(post, labels),
        "ece": expected_calibration_error(post, labels, num_bins),
        "mean_entropy": float(post.total_entropy.mean()),
        "mean_expected_entropy": float(post.expected_entropy.mean()),
        "mean_mutual_information": float(post.mutual_information.mean()),
    }
