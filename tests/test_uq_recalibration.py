"""Recalibration: variance scaling, isotonic CDF maps, split conformal, temperature scaling."""

import math

import numpy as np
import pytest
import torch

from candle.errors import ConfigError
from candle.uq import metrics
from candle.uq.posterior import ClassificationPosterior, GaussianMixturePosterior
from candle.uq.recalibration import (
    IsotonicRecalibration,
    SplitConformal,
    TemperatureScaling,
    VarianceScaling,
)

F64 = torch.float64


def _heteroscedastic(n, seed, variance_factor=1.0):
    """Targets y ~ N(mu(x), sd(x)^2) and a one-member posterior whose variance is
    ``variance_factor`` times the truth (< 1: overconfident)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g, dtype=F64) * 4 - 2
    mu, sd = torch.sin(x), 0.2 + 0.5 * x.abs()
    y = mu + sd * torch.randn(n, 1, generator=g, dtype=F64)
    return GaussianMixturePosterior(mu, variance_factor * sd**2), y


def _true_mixture(n, seed):
    """A 3-member mixture and targets drawn from it."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(3, n, 1, generator=g, dtype=F64) * 1.5
    variances = 0.2 + torch.rand(3, n, 1, generator=g, dtype=F64)
    post = GaussianMixturePosterior(means, variances)
    member = torch.randint(0, 3, (n,), generator=g)
    rows = torch.arange(n)
    y = means[member, rows] + variances[member, rows].sqrt() * torch.randn(
        n, 1, generator=g, dtype=F64
    )
    return post, y


# -- variance scaling ---------------------------------------------------------------------------


def test_variance_scaling_of_one_gaussian_is_the_mean_squared_z_score():
    post, y = _heteroscedastic(500, seed=0, variance_factor=0.3)
    before = post.variance.clone()
    scaler = VarianceScaling().fit(post, y)
    expected = float(((y - post.mean) ** 2 / post.variance).mean())
    assert scaler.factor == pytest.approx(expected, rel=1e-12)
    assert scaler.factor == pytest.approx(1 / 0.3, rel=0.15)
    scaled = scaler.apply(post)
    torch.testing.assert_close(scaled.variance, scaler.factor * post.variance)
    assert metrics.mixture_nll(scaled, y) < metrics.mixture_nll(post, y)
    # the input is left as it was ("before" stays available)
    assert torch.equal(post.variance, before)


def test_variance_scaling_of_a_mixture_minimises_the_exact_nll():
    truth, y = _true_mixture(4000, seed=1)
    overconfident = truth.scale(0.25)
    scaler = VarianceScaling().fit(overconfident, y)
    assert scaler.factor == pytest.approx(4.0, rel=0.1)

    def nll(f):
        return metrics.mixture_nll(overconfident.scale(f), y)

    best = nll(scaler.factor)
    assert best <= nll(scaler.factor * 1.001) and best <= nll(scaler.factor / 1.001)
    # the mixture optimum differs from the moment-matched closed form
    z2 = float(((y - overconfident.mean) ** 2 / overconfident.variance).mean())
    assert scaler.factor != pytest.approx(z2, rel=1e-6)


def test_variance_scaling_per_output():
    g = torch.Generator().manual_seed(2)
    mean, var = torch.zeros(300, 2, dtype=F64), torch.ones(300, 2, dtype=F64)
    y = torch.randn(300, 2, generator=g, dtype=F64) * torch.tensor([1.0, 3.0], dtype=F64)
    scaler = VarianceScaling(per_output=True).fit(GaussianMixturePosterior(mean, var), y)
    torch.testing.assert_close(scaler.factor, (y**2).mean(0))
    with pytest.raises(ConfigError, match="fitted per output on 2 outputs"):
        scaler.apply(GaussianMixturePosterior(torch.zeros(3, 1), torch.ones(3, 1)))
    with pytest.raises(ConfigError, match="not fitted"):
        VarianceScaling().apply(GaussianMixturePosterior(mean, var))


# -- isotonic recalibration ---------------------------------------------------------------------


def test_isotonic_recalibration_restores_coverage_of_an_overconfident_model():
    val, y_val = _heteroscedastic(2000, seed=3, variance_factor=0.25)
    test, y_test = _heteroscedastic(4000, seed=4, variance_factor=0.25)
    before = metrics.coverage_at_levels(test, y_test, (0.9,))[0.9]
    assert before < 0.65  # 2 Phi(0.5 * 1.645) - 1 = 0.59
    recal = IsotonicRecalibration().fit(val, y_val)
    after = recal.apply(test)
    assert metrics.coverage_at_levels(after, y_test, (0.5, 0.9))[0.9] == pytest.approx(
        0.9, abs=0.02
    )
    assert metrics.miscalibration_area(after, y_test) < 0.3 * metrics.miscalibration_area(
        test, y_test
    )
    # moments are the base posterior's; the quantiles invert the recalibrated CDF
    torch.testing.assert_close(after.mean, test.mean)
    torch.testing.assert_close(after.variance, test.variance)
    q = after.quantile(torch.tensor([0.05, 0.5, 0.95], dtype=F64))
    for level, values in zip((0.05, 0.5, 0.95), q, strict=True):
        torch.testing.assert_close(
            after.cdf(values), torch.full_like(values, level), atol=1e-6, rtol=0
        )


def test_isotonic_map_and_its_inverse():
    val, y_val = _heteroscedastic(500, seed=5, variance_factor=2.0)
    recal = IsotonicRecalibration().fit(val, y_val)
    grid = torch.linspace(0, 1, 201, dtype=F64)
    r = recal.calibrate(grid)
    assert r[0] == 0 and r[-1] == 1 and torch.all(r.diff() >= 0)
    q = torch.linspace(0.01, 0.99, 99, dtype=F64)
    torch.testing.assert_close(recal.calibrate(recal.inverse(q)), q, atol=1e-12, rtol=0)
    with pytest.raises(ConfigError, match="not fitted"):
        IsotonicRecalibration().apply(val)


# -- split conformal ----------------------------------------------------------------------------


def test_conformal_rank_and_quantile_by_hand():
    # unit-variance predictions at 0: scores are |y| = 3, 1, 4, 2 (n = 4)
    post = GaussianMixturePosterior(torch.zeros(4, 1), torch.ones(4, 1))
    conformal = SplitConformal(level=0.5).fit(post, [[3.0], [-1.0], [4.0], [2.0]])
    # k = ceil(5 a): a = 0.5 -> 3 (2.5), a = 0.6 -> 3 (5 * 0.6 = 3.0000000000000004), a = 0.8 -> 4
    assert [conformal.rank(a) for a in (0.5, 0.6, 0.8, 0.81)] == [3, 3, 4, 5]
    assert conformal.score_quantile().item() == 3.0
    assert conformal.score_quantile(0.8).item() == 4.0
    assert math.isinf(conformal.score_quantile(0.81).item())  # k = 5 > n: too few samples
    test = GaussianMixturePosterior(_t_col([1.0, -1.0]), _t_col([4.0, 0.25]))
    lower, upper = conformal.interval(test)  # mean -+ 3 sd
    torch.testing.assert_close(lower, _t_col([-5.0, -2.5]))
    torch.testing.assert_close(upper, _t_col([7.0, 0.5]))
    lower, upper = conformal.interval(test, 0.9)
    assert torch.all(torch.isinf(lower)) and torch.all(torch.isinf(upper))
    raw = SplitConformal(level=0.5, normalized=False).fit(test.select([0, 1]), [[0.0], [0.0]])
    # scores |0 - 1| = 1, |0 + 1| = 1 -> k = ceil(1.5) = 2 -> q = 1
    torch.testing.assert_close(raw.interval(test)[1], _t_col([2.0, 0.0]))


def _t_col(values):
    return torch.tensor(values, dtype=F64)[:, None]


def test_conformal_coverage_over_repetitions_meets_the_guarantee():
    n_cal, n_test, level, reps = 50, 200, 0.9, 400
    k = math.ceil((n_cal + 1) * level)
    coverages = []
    for rep in range(reps):
        # a misspecified model (too narrow): conformal still covers
        val, y_val = _heteroscedastic(n_cal, seed=10_000 + rep, variance_factor=0.3)
        test, y_test = _heteroscedastic(n_test, seed=20_000 + rep, variance_factor=0.3)
        conformal = SplitConformal(level=level).fit(val, y_val)
        coverages.append(metrics.interval_coverage(*conformal.apply(test).interval(), y_test))
    mean = float(np.mean(coverages))
    # E[coverage] = k / (n + 1) = 46/51 = 0.902 exactly for continuous scores; the standard
    # error of the mean over 400 repetitions is about 0.0023
    assert mean == pytest.approx(k / (n_cal + 1), abs=0.008)
    assert mean >= level - 0.005


# -- temperature scaling ------------------------------------------------------------------------


def test_temperature_scaling_undoes_overconfident_logits():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(20000, 5, generator=g, dtype=F64)
    true_logits = x @ torch.randn(5, 3, generator=g, dtype=F64)
    labels = torch.multinomial(torch.softmax(true_logits, -1), 1, generator=g)[:, 0]
    overconfident = ClassificationPosterior.from_logits(3 * true_logits)
    scaler = TemperatureScaling().fit(overconfident, labels)
    assert scaler.temperature == pytest.approx(3.0, rel=0.05)
    calibrated = scaler.apply(overconfident)
    assert calibrated.temperature == scaler.temperature
    assert metrics.classification_nll(calibrated, labels) < metrics.classification_nll(
        overconfident, labels
    )
    assert metrics.expected_calibration_error(calibrated, labels) < 0.02
    with pytest.raises(ConfigError, match="from_logits"):
        TemperatureScaling().fit(ClassificationPosterior(calibrated.probs), labels)


def test_temperature_scaling_of_an_ensemble_applies_to_each_member():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 1000, 4, generator=g, dtype=F64) * 4
    labels = torch.randint(0, 4, (1000,), generator=g)
    post = ClassificationPosterior.from_logits(logits)
    scaler = TemperatureScaling().fit(post, labels)
    scaled = scaler.apply(post)
    expected = torch.softmax(logits / scaler.temperature, -1).mean(0)
    torch.testing.assert_close(scaled.probs, expected)
    assert scaler.temperature > 3  # random labels: the fit flattens the logits


def test_temperature_on_error_free_validation_data_keeps_t_1(caplog):
    """No validation error: the NLL falls as T -> 0, so no temperature is identified."""
    labels = torch.arange(40) % 2
    logits = torch.zeros(1, 40, 2)
    logits[0, torch.arange(40), labels] = 3.0  # every prediction right, with margin 3
    post = ClassificationPosterior.from_logits(logits)
    with caplog.at_level("WARNING", logger="candle.uq"):
        ts = TemperatureScaling().fit(post, labels)
    assert ts.degenerate and ts.temperature == 1.0
    assert "keeping T=1" in caplog.text
    # one error in the data: an interior optimum, fitted as usual
    labels[0] = 1 - labels[0]
    ts = TemperatureScaling().fit(post, labels)
    assert not ts.degenerate and ts.temperature != 1.0
