"""UQ metrics against closed forms, numerical integrals and hand-computed examples."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from candle.errors import ConfigError
from candle.uq import metrics
from candle.uq.posterior import ClassificationPosterior, GaussianMixturePosterior

F64 = torch.float64


def _t(x):
    return torch.tensor(x, dtype=F64)


def _standard_normal_grid(n):
    """n 'perfect' N(0, 1) draws: the quantiles at (i + 1/2) / n (no sampling noise)."""
    return _t(stats.norm.ppf((np.arange(n) + 0.5) / n))[:, None]


def _two_component():
    means = _t([[[-1.0], [0.5]], [[2.0], [0.0]]])  # m=2 x n=2 x o=1
    variances = _t([[[0.5], [1.0]], [[1.5], [0.04]]])
    return GaussianMixturePosterior(means, variances, weights=[0.3, 0.7])


# -- regression scores --------------------------------------------------------------------------


def test_gaussian_nll_closed_form():
    assert metrics.gaussian_nll(_t([[0.0]]), _t([[1.0]]), _t([[0.0]])) == pytest.approx(
        0.5 * math.log(2 * math.pi)
    )
    # N(1, 4) at y = 3: z^2 = 1
    expected = 0.5 * (math.log(2 * math.pi) + math.log(4.0) + 1.0)
    assert metrics.gaussian_nll(_t([1.0]), _t([4.0]), _t([3.0])) == pytest.approx(expected)
    per_sample = metrics.gaussian_nll(_t([[0.0], [1.0]]), _t([[1.0], [4.0]]), [0.0, 3.0], False)
    assert per_sample.shape == (2, 1)


def test_mixture_nll_matches_scipy_and_reduces_to_gaussian():
    post = _two_component()
    y = _t([[0.3], [-0.2]])
    pdf = 0.3 * stats.norm.pdf(y[:, 0], [-1.0, 0.5], np.sqrt([0.5, 1.0])) + 0.7 * stats.norm.pdf(
        y[:, 0], [2.0, 0.0], np.sqrt([1.5, 0.04])
    )
    assert metrics.mixture_nll(post, y) == pytest.approx(float(-np.log(pdf).mean()), rel=1e-12)
    single = GaussianMixturePosterior(_t([[1.0], [2.0]]), _t([[2.0], [0.5]]))
    assert metrics.mixture_nll(single, y) == pytest.approx(
        metrics.gaussian_nll(single.mean, single.variance, y), rel=1e-12
    )


def test_rmse_and_mae_by_hand():
    pred = _t([[1.0, 0.0], [2.0, 4.0]])
    y = _t([[0.0, 0.0], [4.0, 1.0]])  # errors 1, 0, 2, 3
    assert metrics.rmse(pred, y) == pytest.approx(math.sqrt((1 + 0 + 4 + 9) / 4))
    assert metrics.mae(pred, y) == pytest.approx(6 / 4)
    post = GaussianMixturePosterior(pred, torch.ones(2, 2))
    assert metrics.rmse(post, y) == metrics.rmse(pred, y)


def _crps_by_integration(cdf, y, lo, hi):
    left = integrate.quad(lambda x: cdf(x) ** 2, lo, y, epsabs=1e-13, limit=200)[0]
    right = integrate.quad(lambda x: (1 - cdf(x)) ** 2, y, hi, epsabs=1e-13, limit=200)[0]
    return left + right


def test_crps_gaussian_closed_form_and_integral():
    assert metrics.crps_gaussian(_t([[0.0]]), _t([[1.0]]), _t([[0.0]])) == pytest.approx(
        (math.sqrt(2) - 1) / math.sqrt(math.pi), rel=1e-12
    )
    mu, var, y = 0.7, 2.25, -1.3
    expected = _crps_by_integration(lambda x: stats.norm.cdf(x, mu, 1.5), y, -30, 30)
    assert metrics.crps_gaussian([mu], [var], [y]) == pytest.approx(expected, rel=1e-8)


def test_crps_mixture_is_exact():
    single = GaussianMixturePosterior(_t([[0.7], [-2.0]]), _t([[2.25], [0.3]]))
    y = _t([[-1.3], [0.4]])
    assert metrics.crps_mixture(single, y) == pytest.approx(
        metrics.crps_gaussian(single.mean, single.variance, y), rel=1e-12
    )
    post = _two_component()
    y = _t([[0.3], [1.7]])
    per_sample = metrics.crps_mixture(post, y, reduce=False)
    for i in range(2):
        mus = post.means[:, i, 0].numpy()
        sds = post.variances[:, i, 0].sqrt().numpy()

        def cdf(x, mus=mus, sds=sds):
            return float(np.dot([0.3, 0.7], stats.norm.cdf(x, mus, sds)))

        expected = _crps_by_integration(cdf, float(y[i, 0]), -30, 30)
        assert per_sample[i, 0].item() == pytest.approx(expected, rel=1e-8)


# -- intervals and calibration ------------------------------------------------------------------


def test_interval_coverage_and_width_by_hand():
    lower, upper = _t([[0.0], [0.0], [0.0], [0.0]]), _t([[1.0], [1.0], [2.0], [2.0]])
    y = _t([[0.5], [1.0], [2.5], [-0.1]])  # inside (incl. boundary), inside, above, below
    assert metrics.interval_coverage(lower, upper, y) == 0.5
    assert metrics.interval_width(lower, upper) == 1.5


def test_coverage_of_exact_normal_draws_is_nominal():
    y = _standard_normal_grid(10000)
    post = GaussianMixturePosterior(torch.zeros(10000, 1), torch.ones(10000, 1))
    coverage = metrics.coverage_at_levels(post, y, (0.5, 0.9, 0.95))
    for level, observed in coverage.items():
        assert observed == pytest.approx(level, abs=2e-4)
    # random draws: within 4 binomial standard errors
    y = torch.randn(10000, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    for level, observed in metrics.coverage_at_levels(post, y, (0.8, 0.95)).items():
        assert abs(observed - level) < 4 * math.sqrt(level * (1 - level) / 10000)


def test_calibration_curve_convention():
    post = GaussianMixturePosterior(torch.zeros(4, 1), torch.ones(4, 1))
    # PIT values 0.5, 0.8413, 0.0228, 0.9987 -> |2u - 1| = 0, 0.683, 0.954, 0.997
    y = _t([[0.0], [1.0], [-2.0], [3.0]])
    expected, observed = metrics.calibration_curve(post, y, num_levels=11)
    np.testing.assert_allclose(expected, np.linspace(0, 1, 11))
    assert observed[0] == 0.25  # only y at the median is inside the empty 0-interval
    assert observed[7] == 0.5  # central 70%: 0 and 1 (0.683 <= 0.7)
    assert observed[-1] == 1.0
    assert np.all(np.diff(observed) >= 0)


def test_miscalibration_area_of_calibrated_and_misscaled_models():
    n = 20000
    y = _standard_normal_grid(n)
    calibrated = GaussianMixturePosterior(torch.zeros(n, 1), torch.ones(n, 1))
    assert metrics.miscalibration_area(calibrated, y) < 1e-3
    # predictive sd s times the truth: observed(p) = 2 Phi(s z_p) - 1 with z_p = Phi^-1((1+p)/2);
    # integral_0^1 observed(p) dp = (2/pi) arctan(s), so the area is |1/2 - (2/pi) arctan(s)|
    for s in (0.5, 2.0):
        post = GaussianMixturePosterior(torch.zeros(n, 1), torch.full((n, 1), s**2))
        expected = abs(0.5 - 2 / math.pi * math.atan(s))
        area = metrics.miscalibration_area(post, y, num_levels=1001)
        assert area == pytest.approx(expected, abs=1e-3)


def test_sharpness_and_sigma_error_correlation():
    post = GaussianMixturePosterior(torch.zeros(4, 1), _t([[1.0], [4.0], [9.0], [2.0]]))
    assert metrics.sharpness(post) == pytest.approx(math.sqrt(4.0))
    y = _t([[0.1], [0.3], [2.0], [0.2]])  # |error| increases with sigma: same ranks
    corr = metrics.sigma_error_correlation(post, y)
    assert corr["spearman"] == pytest.approx(1.0)
    sd, err = np.sqrt([1.0, 4.0, 9.0, 2.0]), np.array([0.1, 0.3, 2.0, 0.2])
    assert corr["pearson"] == pytest.approx(stats.pearsonr(sd, err)[0])
    constant = GaussianMixturePosterior(torch.zeros(4, 1), torch.ones(4, 1))
    assert math.isnan(metrics.sigma_error_correlation(constant, y)["pearson"])


def test_regression_report_collects_everything():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 50, 2, generator=g, dtype=F64)
    post = GaussianMixturePosterior(means, torch.full((3, 50, 2), 0.5, dtype=F64))
    y = torch.randn(50, 2, generator=g, dtype=F64)
    report = metrics.regression_report(post, y, levels=(0.9, 0.995))
    assert report["nll"] == metrics.mixture_nll(post, y)
    assert report["crps"] == metrics.crps_mixture(post, y)
    assert report["nll_gaussian"] == metrics.gaussian_nll(post.mean, post.variance, y)
    lo, hi = post.interval(0.9)
    assert report["coverage_90"] == metrics.interval_coverage(lo, hi, y)
    assert report["width_90"] == metrics.interval_width(lo, hi)
    assert {"coverage_99_5", "width_99_5", "miscalibration_area", "sharpness"} <= set(report)
    assert {"sigma_error_pearson", "sigma_error_spearman", "rmse", "mae"} <= set(report)
    assert report["mean_aleatoric"] == pytest.approx(0.5)


def test_regression_shape_errors_name_both_shapes():
    post = GaussianMixturePosterior(torch.zeros(5, 2), torch.ones(5, 2))
    with pytest.raises(ConfigError, match=r"5 x 2 .* got \(4, 2\)"):
        metrics.mixture_nll(post, torch.zeros(4, 2))
    with pytest.raises(ConfigError, match=r"\(5, 2\) and \(5, 1\)"):
        metrics.gaussian_nll(torch.zeros(5, 2), torch.ones(5, 1), torch.zeros(5, 2))


# -- classification -----------------------------------------------------------------------------

# six binary predictions for the ECE example; bins of width 0.2, right-closed
ECE_PROBS = [[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.55, 0.45], [1.0, 0.0]]
ECE_LABELS = [0, 0, 0, 1, 1, 0]


def test_reliability_diagram_and_ece_by_hand():
    # confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (right), 0.55 (wrong), 1.0 (right)
    # bin (0.4, 0.6]: 0.6, 0.55 -> conf 0.575, acc 0.5
    # bin (0.6, 0.8]: 0.8, 0.7  -> conf 0.75,  acc 0.5
    # bin (0.8, 1.0]: 0.9, 1.0  -> conf 0.95,  acc 1.0
    diagram = metrics.reliability_diagram(_t(ECE_PROBS), ECE_LABELS, num_bins=5)
    np.testing.assert_allclose(diagram["edges"], [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert diagram["counts"].tolist() == [0, 0, 2, 2, 2]
    np.testing.assert_allclose(diagram["confidence"][2:], [0.575, 0.75, 0.95])
    np.testing.assert_allclose(diagram["accuracy"][2:], [0.5, 0.5, 1.0])
    assert np.isnan(diagram["confidence"][:2]).all()
    ece = metrics.expected_calibration_error(_t(ECE_PROBS), ECE_LABELS, num_bins=5)
    assert ece == pytest.approx((2 * 0.075 + 2 * 0.25 + 2 * 0.05) / 6)


def test_brier_accuracy_and_nll_by_hand():
    probs = _t([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    labels = [0, 2]
    # (0.3^2 + 0.2^2 + 0.1^2) = 0.14 and (0.1^2 + 0.8^2 + 0.9^2) = 1.46
    assert metrics.brier_score(probs, labels) == pytest.approx((0.14 + 1.46) / 2)
    assert metrics.accuracy(probs, labels) == 0.5
    assert metrics.classification_nll(probs, labels) == pytest.approx(
        -(math.log(0.7) + math.log(0.1)) / 2
    )


def test_classification_report_of_an_ensemble():
    post = ClassificationPosterior(_t([[[1.0, 0.0], [0.6, 0.4]], [[0.0, 1.0], [0.6, 0.4]]]))
    report = metrics.classification_report(post, [0, 0])
    assert report["accuracy"] == 1.0  # ties go to the lowest class index
    assert report["nll"] == pytest.approx(-(math.log(0.5) + math.log(0.6)) / 2)
    assert report["mean_mutual_information"] == pytest.approx(math.log(2) / 2)
    assert report["mean_entropy"] == pytest.approx(
        report["mean_expected_entropy"] + report["mean_mutual_information"]
    )
    assert set(report) >= {"brier", "ece"}
