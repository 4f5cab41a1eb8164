"""Power-law learning curves: ``error(n) = a * n^(-b) + c``, the exponent's interval, and where
the curve flattens.

The fit is least squares over every (size, error) point (repeats are separate points), by
``scipy.optimize.curve_fit`` with ``a, b, c >= 0``. When every size has >= 2 repeats, each
point is weighted by 1 / (the standard deviation of the repeats at its size, smoothed over the
sizes: :func:`repeat_spread`): the small sizes scatter most, and an unweighted fit lets them
decide the exponent. The exponent's confidence
interval comes from one of:

- ``"covariance"`` (default): ``b +- t(level, points - 3) * sqrt(cov[b, b])`` from the fit's
  covariance matrix (residual variance estimated from the points), clipped at 0;
- ``"bootstrap"``: the percentile interval of ``b`` refitted on resamples that draw, at each
  size, the repeats of that size with replacement (needs >= 2 repeats at some size).

The curve *flattens* at the smallest ``n`` where doubling the data lowers the fitted error by
less than ``gain`` (default 1 %) of its value: ``f(n) - f(2n) < gain * f(n)``. Solved in closed
form: ``n_flat = (a * (1 - 2^-b - gain) / (gain * c))^(1/b)``; infinite when ``c = 0`` and
``1 - 2^-b > gain`` (a pure power law never flattens by this rule).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize
from scipy import stats as sps

__all__ = ["PowerLawFit", "fit_power_law", "flattening_point", "power_law", "repeat_spread"]

CI_METHODS = ("covariance", "bootstrap")


def power_law(n: Any, a: float, b: float, c: float) -> np.ndarray:
    """``a * n^(-b) + c`` elementwise."""
    return a * np.power(np.asarray(n, dtype=np.float64), -b) + c


@dataclass
class PowerLawFit:
    a: float
    b: float
    c: float
    b_low: float  # the exponent's confidence interval
    b_high: float
    level: float
    method: str  # "covariance" or "bootstrap"
    points: int
    rmse: float  # of the fit over the points
    n_flat: float  # where the curve flattens (see the module docstring); inf: never
    gain: float
    n_max: float  # the largest size fitted (n_flat beyond it is an extrapolation)

    def predict(self, n: Any) -> np.ndarray:
        return power_law(n, self.a, self.b, self.c)

    def contains(self, b: float) -> bool:
        return self.b_low <= b <= self.b_high

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _initial(n: np.ndarray, e: np.ndarray) -> tuple[float, float, float]:
    """A starting point: c a bit under the smallest error, then a line in log-log space."""
    c0 = max(float(e.min()) * 0.9, 0.0)
    rest = np.clip(e - c0, 1e-12, None)
    slope, intercept = np.polyfit(np.log(n), np.log(rest), 1)
    b0 = float(np.clip(-slope, 0.05, 4.0))
    return float(math.exp(intercept)), b0, c0


def repeat_spread(n: Any, e: Any) -> np.ndarray | None:
    """Per point, the standard deviation of the errors at its size, smoothed across sizes (the
    fit's weights are its inverse); None (an unweighted fit) when some size has one point.

    The per-size standard deviations of a few repeats are noisy, and weights from them make the
    interval too narrow; a straight line through them in log-log space (``log sd = k log n +
    m``) keeps their trend over the sizes without their noise.
    """
    n, e = np.asarray(n, dtype=np.float64), np.asarray(e, dtype=np.float64)
    sizes = np.unique(n)
    if any((n == size).sum() < 2 for size in sizes):
        return None
    floor = 1e-3 * float(np.abs(e).mean()) + 1e-12  # equal repeats must not get all the weight
    spread = np.array([max(float(e[n == size].std(ddof=1)), floor) for size in sizes])
    slope, intercept = np.polyfit(np.log(sizes), np.log(spread), 1)
    return np.exp(intercept + slope * np.log(n))


def _fit(n: np.ndarray, e: np.ndarray, sigma: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    # Sizes are scaled to the smallest one so that `a` stays near the errors' scale.
    scale = float(n.min())
    x = n / scale
    p0 = _initial(x, e)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        popt, pcov = optimize.curve_fit(
            power_law,
            x,
            e,
            p0=p0,
            sigma=sigma,
            bounds=([0.0, 0.0, 0.0], [np.inf, 10.0, np.inf]),
            maxfev=20000,
        )
    a, b, c = popt
    # back to unscaled sizes: a * (n / s)^-b = (a * s^b) * n^-b; b and c are unchanged
    factor = scale**b
    popt = np.array([a * factor, b, c])
    jac = np.diag([factor, 1.0, 1.0])
    return popt, jac @ pcov @ jac.T


def flattening_point(a: float, b: float, c: float, gain: float = 0.01) -> float:
    """The smallest n where doubling n lowers ``a n^-b + c`` by less than ``gain`` of it."""
    if not 0 < gain < 1:
        raise ValueError(f"gain must be in (0, 1), got {gain}")
    drop = 1.0 - 2.0**-b  # relative drop of the power-law part per doubling
    if a <= 0 or drop <= gain:
        return 0.0  # flat from the start
    if c <= 0:
        return math.inf
    return float((a * (drop - gain) / (gain * c)) ** (1.0 / b))


def fit_power_law(
    sizes: Sequence[float],
    errors: Sequence[float],
    *,
    level: float = 0.95,
    method: str = "covariance",
    gain: float = 0.01,
    resamples: int = 300,
    seed: int = 0,
    sigma: Sequence[float] | None = None,
) -> PowerLawFit:
    """Fit ``error = a * n^(-b) + c`` to (size, error) points; see the module docstring.

    ``sizes`` and ``errors`` are ``m`` each (one point per trained model; repeated sizes are
    repeats). Needs at least 3 distinct sizes and 4 points. ``sigma`` (``m``): each point's
    standard deviation, instead of :func:`repeat_spread` (e.g. to fit a known curve with the
    weights a measured one got).
    """
    if method not in CI_METHODS:
        raise ValueError(f"method must be one of {', '.join(CI_METHODS)}, got {method!r}")
    n = np.asarray(sizes, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    keep = np.isfinite(n) & np.isfinite(e) & (n > 0)
    n, e = n[keep], e[keep]
    if np.unique(n).size < 3 or n.size < 4:
        raise ValueError(
            f"a power-law fit needs >= 3 distinct sizes and >= 4 points, got "
            f"{np.unique(n).size} sizes and {n.size} points"
        )
    sigma = repeat_spread(n, e) if sigma is None else np.asarray(sigma, dtype=np.float64)[keep]
    popt, pcov = _fit(n, e, sigma)
    a, b, c = (float(v) for v in popt)
    residual = e - power_law(n, a, b, c)
    alpha = 1.0 - level
    if method == "covariance":
        dof = max(n.size - 3, 1)
        sd = math.sqrt(max(float(pcov[1, 1]), 0.0)) if np.all(np.isfinite(pcov)) else math.inf
        half = float(sps.t.ppf(1 - alpha / 2, dof)) * sd
        low, high = max(b - half, 0.0), b + half
    else:
        low, high = _bootstrap(n, e, sigma, alpha, resamples, seed)
    return PowerLawFit(
        a=a,
        b=b,
        c=c,
        b_low=low,
        b_high=high,
        level=level,
        method=method,
        points=int(n.size),
        rmse=float(np.sqrt(np.mean(residual**2))),
        n_flat=flattening_point(a, b, c, gain),
        gain=gain,
        n_max=float(n.max()),
    )


def _bootstrap(
    n: np.ndarray,
    e: np.ndarray,
    sigma: np.ndarray | None,
    alpha: float,
    resamples: int,
    seed: int,
) -> tuple[float, float]:
    """Percentile interval of b over resamples of the repeats at each size; every point keeps
    the weight it has in the fit (a resample's own spread is 0 where a repeat is drawn twice)."""
    rng = np.random.default_rng(seed)
    by_size = [np.flatnonzero(n == s) for s in np.unique(n)]
    if max(len(idx) for idx in by_size) < 2:
        raise ValueError("the bootstrap interval needs >= 2 repeats at some size")
    exponents = []
    for _ in range(resamples):
        pick = np.concatenate([rng.choice(idx, size=len(idx), replace=True) for idx in by_size])
        try:
            weights = None if sigma is None else sigma[pick]
            exponents.append(_fit(n[pick], e[pick], weights)[0][1])
        except (RuntimeError, ValueError):  # a resample the optimizer cannot fit
            continue
    if len(exponents) < resamples // 2:
        raise ValueError("most bootstrap refits failed; use method='covariance'")
    low, high = np.quantile(exponents, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
