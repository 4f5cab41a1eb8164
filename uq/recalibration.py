"""Post-hoc recalibration: fit on held-out validation data, apply to test data.

Four methods, each an object with ``fit(prediction, targets)`` (returns itself) and
``apply(prediction)`` (returns a new predictive object; the input is never modified, so the
prediction "before" stays at hand for before/after reports):

- :class:`VarianceScaling`: one scalar multiplies the predictive variance, fitted by the
  exact mixture NLL.
- :class:`IsotonicRecalibration`: an isotonic map of the predictive CDF (Kuleshov, Fenner and
  Ermon 2018).
- :class:`SplitConformal`: intervals from held-out (normalised) residuals with the
  finite-sample correction (Vovk et al. 2005; Lei et al. 2018).
- :class:`TemperatureScaling`: one temperature divides every member's logits (Guo et al. 2017).

Shapes as in :mod:`candle.uq.posterior`: `n x o` targets, `n` labels.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression

from candle.errors import ConfigError
from candle.uq.posterior import (
    ClassificationPosterior,
    GaussianMixturePosterior,
    _interval_level,
    _labels,
    _levels,
    _targets,
)

__all__ = [
    "ConformalPrediction",
    "IsotonicRecalibrated",
    "IsotonicRecalibration",
    "SplitConformal",
    "TemperatureScaling",
    "VarianceScaling",
]

log = logging.getLogger("candle.uq")

_LOG_RANGE = 12.0  # variance factors are searched within e^-12 .. e^12 of a first guess
_TEMPERATURE_RANGE = (0.01, 100.0)
_XATOL = 1e-10  # on the log scale: relative precision of the fitted scalar


def _not_fitted(name: str) -> ConfigError:
    return ConfigError(
        f"{name} is not fitted yet; call .fit(prediction, targets) on validation data"
    )


def _bounded_log_minimum(objective: Any, low: float, high: float) -> float:
    """``exp(argmin objective(t))`` for ``t`` in [low, high] (a 1-D bounded Brent search)."""
    result = minimize_scalar(
        objective, bounds=(low, high), method="bounded", options={"xatol": _XATOL}
    )
    return math.exp(float(result.x))


# -- variance scaling ---------------------------------------------------------------------------


class VarianceScaling:
    """Multiply the predictive variance by one fitted factor ``s`` (one per output with
    ``per_output=True``).

    ``fit`` minimises the exact mixture NLL of ``posterior.scale(s)`` on validation targets.
    For a single Gaussian (``m = 1``) the minimiser is ``mean((y - mu)^2 / var)`` and is used
    directly; for a mixture it is found by a bounded Brent search over ``log s`` within
    ``e^+-12`` of that moment-matched value (a local minimum if the NLL has several).
    ``apply`` returns ``posterior.scale(s)``: mixture shape kept, aleatoric and epistemic
    variance both multiplied by ``s``.

    Attributes:
        factor: the fitted ``s`` (a float, or a tensor `o` with ``per_output``); ``None``
            before ``fit``.
    """

    def __init__(self, per_output: bool = False) -> None:
        self.per_output = per_output
        self.factor: float | torch.Tensor | None = None

    def fit(self, posterior: GaussianMixturePosterior, y: Any) -> VarianceScaling:
        """Fit ``s`` on validation predictions and targets `n x o`; returns ``self``."""
        n, o = posterior.shape
        y = _targets(y, n, o)
        if n == 0:
            raise ConfigError("VarianceScaling.fit needs at least one validation sample, got 0")
        z2 = (y - posterior.mean) ** 2 / posterior.variance  # moment-matched closed form
        if not self.per_output:
            self.factor = self._fit_one(posterior, y, float(z2.mean()))
            return self
        factors = []
        for j in range(o):
            column = GaussianMixturePosterior(
                posterior.means[..., j : j + 1],
                posterior.variances[..., j : j + 1],
                posterior.weights,
            )
            factors.append(self._fit_one(column, y[:, j : j + 1], float(z2[:, j].mean())))
        self.factor = torch.tensor(factors, dtype=torch.float64)
        return self

    @staticmethod
    def _fit_one(posterior: GaussianMixturePosterior, y: torch.Tensor, guess: float) -> float:
        if posterior.num_members == 1:
            return guess
        if guess <= 0:  # every target exactly at the mean
            guess = 1e-12

        def nll(log_s: float) -> float:
            return float(-posterior.scale(math.exp(log_s)).log_prob(y).mean())

        center = math.log(guess)
        return _bounded_log_minimum(nll, center - _LOG_RANGE, center + _LOG_RANGE)

    def apply(self, posterior: GaussianMixturePosterior) -> GaussianMixturePosterior:
        """``posterior`` with its variance scaled by the fitted factor (a new object)."""
        if self.factor is None:
            raise _not_fitted("VarianceScaling")
        if isinstance(self.factor, torch.Tensor) and posterior.shape[1] != len(self.factor):
            raise ConfigError(
                f"this VarianceScaling was fitted per output on {len(self.factor)} outputs, "
                f"got a prediction with {posterior.shape[1]}"
            )
        return posterior.scale(self.factor)


# -- isotonic recalibration ---------------------------------------------------------------------


class IsotonicRecalibration:
    """Recalibrate the predictive CDF with an isotonic map (Kuleshov et al. 2018).

    ``fit`` computes the PIT values ``p_t = F_t(y_t)`` of the validation targets (pooled over
    all ``n x o`` entries: one map for all outputs) and their empirical frequencies
    ``P(p_t) = #{s : p_s <= p_t} / T``, and fits an increasing isotonic regression
    ``R: p -> P(p)`` clipped to [0, 1] (scikit-learn). ``R`` is the piecewise-linear
    interpolation of the fitted points, with (0, 0) and (1, 1) added so that it maps [0, 1]
    onto [0, 1]. ``apply`` returns an :class:`IsotonicRecalibrated` with CDF ``R(F(y))``.
    """

    def __init__(self) -> None:
        self.isotonic: IsotonicRegression | None = None
        self._x: np.ndarray | None = None
        self._r: np.ndarray | None = None

    def fit(self, prediction: Any, y: Any) -> IsotonicRecalibration:
        """Fit ``R`` on a validation prediction (anything with ``cdf``) and targets `n x o`."""
        pit = torch.as_tensor(prediction.cdf(y), dtype=torch.float64).reshape(-1).numpy()
        if len(pit) < 2:
            raise ConfigError(
                f"IsotonicRecalibration.fit needs at least 2 validation values, got {len(pit)}"
            )
        empirical = np.searchsorted(np.sort(pit), pit, side="right") / len(pit)
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(pit, empirical)
        x, r = np.asarray(iso.X_thresholds_, float), np.asarray(iso.y_thresholds_, float)
        if x[0] > 0:
            x, r = np.concatenate([[0.0], x]), np.concatenate([[0.0], r])
        if x[-1] < 1:
            x, r = np.concatenate([x, [1.0]]), np.concatenate([r, [1.0]])
        self.isotonic, self._x, self._r = iso, x, r
        return self

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self._x is None or self._r is None:
            raise _not_fitted("IsotonicRecalibration")
        return self._x, self._r

    def calibrate(self, p: Any) -> torch.Tensor:
        """``R(p)`` for predicted CDF values ``p`` (any shape)."""
        x, r = self._fitted()
        p = torch.as_tensor(p, dtype=torch.float64)
        return torch.from_numpy(np.interp(p.numpy(), x, r)).reshape(p.shape)

    def inverse(self, q: Any) -> torch.Tensor:
        """Generalised inverse ``R^-1(q) = min{p : R(p) >= q}`` (any shape), by linear
        interpolation on the fitted points; flat stretches of ``R`` map to their left end."""
        x, r = self._fitted()
        q = torch.as_tensor(q, dtype=torch.float64)
        qs = q.reshape(-1).numpy()
        j = np.clip(np.searchsorted(r, qs, side="left"), 1, len(r) - 1)
        r0, r1, x0, x1 = r[j - 1], r[j], x[j - 1], x[j]
        frac = np.where(r1 > r0, (qs - r0) / np.where(r1 > r0, r1 - r0, 1.0), 1.0)
        return torch.from_numpy(x0 + np.clip(frac, 0.0, 1.0) * (x1 - x0)).reshape(q.shape)

    def apply(self, prediction: Any) -> IsotonicRecalibrated:
        """The recalibrated predictive distribution of ``prediction`` (a new object)."""
        self._fitted()
        return IsotonicRecalibrated(prediction, self)


class _Recalibrated:
    """What a recalibrated prediction keeps of its base: shape and moments, unchanged."""

    base: Any

    @property
    def shape(self) -> tuple[int, int]:
        return self.base.shape

    def __len__(self) -> int:
        return len(self.base)

    @property
    def mean(self) -> torch.Tensor:
        return self.base.mean

    @property
    def variance(self) -> torch.Tensor:
        return self.base.variance

    @property
    def stddev(self) -> torch.Tensor:
        return self.base.stddev


class IsotonicRecalibrated(_Recalibrated):
    """A predictive distribution with CDF ``R(F(y))``: ``F`` the base posterior's CDF and ``R``
    a fitted :class:`IsotonicRecalibration`.

    ``cdf``, ``quantile`` and ``interval`` are recalibrated (``quantile(q) =
    F^-1(R^-1(q))``). ``mean``, ``variance``, ``stddev``, ``aleatoric`` and ``epistemic`` are
    the base posterior's, unchanged: the recalibration corrects probabilities and intervals,
    it does not re-estimate moments. There is no density, so metrics that need one (NLL,
    CRPS) are computed on the base posterior.
    """

    def __init__(self, base: Any, recalibration: IsotonicRecalibration) -> None:
        self.base = base
        self.recalibration = recalibration

    @property
    def aleatoric(self) -> torch.Tensor:
        return self.base.aleatoric

    @property
    def epistemic(self) -> torch.Tensor:
        return self.base.epistemic

    def cdf(self, y: Any) -> torch.Tensor:
        """Recalibrated CDF ``R(F(y))`` at ``y`` `n x o` -> `n x o`."""
        return self.recalibration.calibrate(self.base.cdf(y))

    def quantile(self, q: Any) -> torch.Tensor:
        """``F^-1(R^-1(q))``: `n x o` for a scalar level, `k x n x o` for ``k`` levels."""
        levels, scalar = _levels(q)
        inner = self.recalibration.inverse(levels).clamp(1e-15, 1 - 1e-15)
        values = self.base.quantile(inner)
        return values[0] if scalar else values

    def interval(self, level: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
        """Central interval from the recalibrated ``(1 -+ level) / 2`` quantiles, each `n x o`."""
        level = _interval_level(level)
        bounds = self.quantile(
            torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
        )
        return bounds[0], bounds[1]

    def __repr__(self) -> str:
        return f"IsotonicRecalibrated({self.base!r})"


# -- split conformal ----------------------------------------------------------------------------


class SplitConformal:
    """Split-conformal intervals ``mean -+ q * stddev`` (or ``mean -+ q`` with
    ``normalized=False``).

    ``fit`` stores the calibration scores ``|y - mean| / stddev`` (``|y - mean|``
    unnormalised) of held-out data, per output. For a level ``a`` with ``n`` calibration
    samples, ``q`` is the ``k``-th smallest score with ``k = ceil((n + 1) a)``; if ``k > n``
    there are too few samples for that level and the interval is infinite. With exchangeable
    calibration and test data, each output's interval then covers a new target with
    probability at least ``a`` (and at most ``a + 1 / (n + 1)`` for continuous scores).
    Several levels can be read from one fit.

    Args:
        level: the default level for :meth:`interval`.
        normalized: divide residuals by the predicted ``stddev`` (adaptive widths).
    """

    def __init__(self, level: float = 0.9, normalized: bool = True) -> None:
        self.level = _interval_level(level)
        self.normalized = normalized
        self.scores: torch.Tensor | None = None  # n x o, sorted along n

    def fit(self, prediction: Any, y: Any) -> SplitConformal:
        """Store the scores of calibration predictions (``mean``/``stddev``) and targets
        `n x o`; returns ``self``."""
        scores = self._scores(prediction, y)
        if scores.shape[0] == 0:
            raise ConfigError("SplitConformal.fit needs at least one calibration sample, got 0")
        self.scores = scores.sort(dim=0).values
        return self

    def _scores(self, prediction: Any, y: Any) -> torch.Tensor:
        mean = torch.as_tensor(prediction.mean, dtype=torch.float64)
        y = _targets(y, *mean.shape)
        residual = (y - mean).abs()
        return residual / prediction.stddev if self.normalized else residual

    def rank(self, level: float | None = None) -> int:
        """``k = ceil((n + 1) level)``, the rank of the score used at ``level`` (1-based).

        A tolerance of 1e-9 keeps float products like ``5 * 0.6 = 3.0000000000000004`` at 3.
        """
        if self.scores is None:
            raise _not_fitted("SplitConformal")
        level = self.level if level is None else _interval_level(level)
        return math.ceil((self.scores.shape[0] + 1) * level - 1e-9)

    def score_quantile(self, level: float | None = None) -> torch.Tensor:
        """The corrected score quantile per output `o` (inf where ``k > n``)."""
        k = self.rank(level)
        assert self.scores is not None
        n, o = self.scores.shape
        if k > n:
            return torch.full((o,), math.inf, dtype=torch.float64)
        return self.scores[k - 1].clone()

    def interval(
        self, prediction: Any, level: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conformal interval for test predictions at ``level`` (default: the constructor's):
        lower and upper, each `n x o`; infinite when the calibration set is too small."""
        q = self.score_quantile(level)
        mean = torch.as_tensor(prediction.mean, dtype=torch.float64)
        if mean.shape[-1] != len(q):
            raise ConfigError(
                f"this SplitConformal was fitted on {len(q)} outputs, got a prediction with "
                f"{mean.shape[-1]}"
            )
        half = q * prediction.stddev if self.normalized else q.expand_as(mean)
        return mean - half, mean + half

    def apply(self, prediction: Any) -> ConformalPrediction:
        """Wrap a test prediction so ``interval(level)`` gives conformal intervals (a new
        object; usable with :func:`candle.uq.metrics.coverage_at_levels`)."""
        if self.scores is None:
            raise _not_fitted("SplitConformal")
        return ConformalPrediction(prediction, self)


class ConformalPrediction(_Recalibrated):
    """A prediction whose ``interval(level)`` comes from a fitted :class:`SplitConformal`.

    ``mean``, ``variance`` and ``stddev`` are the base prediction's. Conformal calibration
    gives intervals only, so there is no ``cdf`` (no calibration curve) and no density.
    """

    def __init__(self, base: Any, conformal: SplitConformal) -> None:
        self.base = base
        self.conformal = conformal

    def interval(self, level: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Conformal interval at ``level`` (default: the conformal object's), each `n x o`."""
        return self.conformal.interval(self.base, level)

    def __repr__(self) -> str:
        return f"ConformalPrediction({self.base!r})"


# -- temperature scaling ------------------------------------------------------------------------


class TemperatureScaling:
    """Divide every member's logits by one fitted temperature ``T`` (Guo et al. 2017).

    ``fit`` minimises the NLL of the mixture ``softmax(logits / T)`` on validation labels by a
    bounded Brent search over ``log T`` with ``T`` in [0.01, 100]. ``T > 1`` softens an
    overconfident model. The posterior must hold logits
    (:meth:`ClassificationPosterior.from_logits`); ``T`` applies to the raw logits and
    replaces any temperature the posterior already has.

    When the NLL keeps falling to an end of the range (typically a validation split that the
    model classifies without a single error, where ``T -> 0`` drives the NLL to 0), the data
    cannot identify a temperature: ``fit`` then keeps ``T = 1``, sets ``degenerate`` and logs a
    warning, rather than return a model made arbitrarily overconfident.

    Attributes:
        temperature: the fitted ``T`` (float); ``None`` before ``fit``.
        degenerate: True when the optimum was at an end of the range and ``T = 1`` was kept.
    """

    def __init__(self) -> None:
        self.temperature: float | None = None
        self.degenerate = False

    def fit(self, posterior: ClassificationPosterior, labels: Any) -> TemperatureScaling:
        """Fit ``T`` on validation predictions and labels `n`; returns ``self``."""
        logits = self._logits(posterior)
        t = _labels(labels, len(posterior), posterior.num_classes)
        if len(t) == 0:
            raise ConfigError("TemperatureScaling.fit needs at least one validation sample")
        log_w = posterior.weights.log()[:, None]
        index = t.expand(logits.shape[0], -1)[..., None]

        def nll(log_t: float) -> float:
            member = torch.log_softmax(logits / math.exp(log_t), dim=-1).gather(-1, index)
            return float(-torch.logsumexp(log_w + member[..., 0], dim=0).mean())

        low, high = (math.log(v) for v in _TEMPERATURE_RANGE)
        best = _bounded_log_minimum(nll, low, high)
        # no better than an end of the range: the NLL is monotone, T is not identified
        at_best = nll(math.log(best))
        self.degenerate = min(nll(low), nll(high)) <= at_best + 1e-12
        if self.degenerate:
            log.warning(
                "temperature scaling: the validation NLL keeps falling towards T=%.3g (e.g. no "
                "validation errors); keeping T=1",
                best,
            )
            best = 1.0
        self.temperature = best
        return self

    @staticmethod
    def _logits(posterior: ClassificationPosterior) -> torch.Tensor:
        if not isinstance(posterior, ClassificationPosterior) or posterior.logits is None:
            raise ConfigError(
                "temperature scaling needs the members' logits; build the prediction with "
                "ClassificationPosterior.from_logits(logits)"
            )
        return posterior.logits

    def apply(self, posterior: ClassificationPosterior) -> ClassificationPosterior:
        """``posterior`` with the fitted temperature (a new object)."""
        if self.temperature is None:
            raise _not_fitted("TemperatureScaling")
        self._logits(posterior)
        return posterior.with_temperature(self.temperature)
