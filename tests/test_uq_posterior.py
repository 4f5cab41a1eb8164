"""Ensemble posteriors: moments, exact mixture CDF / density / quantiles, entropy split."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from candle.errors import ConfigError
from candle.uq.posterior import (
    ClassificationPosterior,
    GaussianMixturePosterior,
    QuantilePrediction,
)


def _random_mixture(m=4, n=30, o=2, seed=0, weights=None):
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(m, n, o, generator=g, dtype=torch.float64)
    variances = 0.05 + torch.rand(m, n, o, generator=g, dtype=torch.float64) ** 2
    return GaussianMixturePosterior(means, variances, weights)


def _scipy_mixture_cdf(post, y):
    w = post.weights.numpy()[:, None, None]
    sd = post.variances.sqrt().numpy()
    return (w * stats.norm.cdf(np.asarray(y)[None], post.means.numpy(), sd)).sum(0)


# -- Gaussian mixture ---------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [None, [0.1, 0.2, 0.3, 0.4]])
def test_variance_splits_into_aleatoric_plus_epistemic(weights):
    post = _random_mixture(weights=weights)
    w = post.weights[:, None, None]
    mean = (w * post.means).sum(0)
    second_moment = (w * (post.variances + post.means**2)).sum(0)
    torch.testing.assert_close(post.mean, mean)
    torch.testing.assert_close(post.variance, second_moment - mean**2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(post.aleatoric, (w * post.variances).sum(0))
    torch.testing.assert_close(post.variance, post.aleatoric + post.epistemic)
    assert post.stddev.shape == (30, 2) and post.num_members == 4


def test_population_form_of_epistemic_variance():
    # two members at -1 and +1: population variance of the means is 1 (not 2 with m - 1)
    post = GaussianMixturePosterior(torch.tensor([[[-1.0]], [[1.0]]]), torch.full((2, 1, 1), 0.5))
    assert post.epistemic.item() == pytest.approx(1.0)
    assert post.aleatoric.item() == pytest.approx(0.5)
    assert post.variance.item() == pytest.approx(1.5)


def test_two_and_one_dimensional_inputs_are_one_member():
    post = GaussianMixturePosterior(np.zeros((5, 3), np.float32), np.ones((5, 3)))
    assert post.num_members == 1 and post.shape == (5, 3) and post.means.dtype == torch.float64
    assert torch.all(post.epistemic == 0)
    assert GaussianMixturePosterior(torch.zeros(5), torch.ones(5)).shape == (5, 1)


def test_cdf_and_log_prob_match_scipy():
    post = _random_mixture(weights=[1.0, 2.0, 3.0, 4.0])
    y = post.mean + torch.randn(post.shape, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(post.cdf(y).numpy(), _scipy_mixture_cdf(post, y), rtol=1e-12)
    w = post.weights.numpy()[:, None, None]
    pdf = (w * stats.norm.pdf(y.numpy()[None], post.means, post.variances.sqrt())).sum(0)
    np.testing.assert_allclose(post.log_prob(y).numpy(), np.log(pdf), rtol=1e-10)


def test_log_prob_stays_finite_far_in_the_tail():
    post = GaussianMixturePosterior(torch.tensor([[[0.0]], [[1.0]]]), torch.ones(2, 1, 1))
    y = torch.tensor([[60.0]])
    # density of the member at 1 dominates: log(0.5 N(60; 1, 1)) up to exp(-59.5) relative terms
    expected = math.log(0.5) + stats.norm.logpdf(60.0, 1.0, 1.0)
    assert post.log_prob(y).item() == pytest.approx(expected, rel=1e-12)


def test_quantile_of_one_gaussian_is_the_normal_quantile():
    post = GaussianMixturePosterior(torch.tensor([[1.0, -2.0]]), torch.tensor([[4.0, 0.25]]))
    q = torch.tensor([1e-6, 0.025, 0.5, 0.9, 1 - 1e-6], dtype=torch.float64)
    expected = stats.norm.ppf(q.numpy()[:, None, None], [1.0, -2.0], [2.0, 0.5])
    np.testing.assert_allclose(post.quantile(q).numpy(), expected, rtol=1e-10, atol=1e-12)
    assert post.quantile(0.5).shape == (1, 2)
    lower, upper = post.interval(0.95)
    z = stats.norm.ppf(0.975)
    np.testing.assert_allclose(upper.numpy(), [[1 + 2 * z, -2 + 0.5 * z]], rtol=1e-12)
    torch.testing.assert_close(post.mean - lower, upper - post.mean)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixture_quantile_inverts_the_exact_cdf(seed):
    post = _random_mixture(m=5, n=40, o=2, seed=seed)
    levels = torch.tensor(
        [1e-6, 0.001, 0.05, 0.3, 0.5, 0.77, 0.95, 0.999, 1 - 1e-6], dtype=torch.float64
    )
    x = post.quantile(levels)
    assert x.shape == (9, 40, 2)
    cdf = torch.stack([post.cdf(xk) for xk in x])
    torch.testing.assert_close(cdf, levels[:, None, None].expand_as(cdf), rtol=0, atol=1e-10)
    assert torch.all(x.diff(dim=0) > 0)


def test_quantile_of_a_well_separated_bimodal_mixture():
    # components at -50 and +50 with sd 1 and weights 0.3 / 0.7: the 0.3 quantile lies between
    # the modes where the density is ~0 (Newton alone would fail); P(X <= 0) = 0.3 to 1e-300
    post = GaussianMixturePosterior(
        torch.tensor([[[-50.0]], [[50.0]]]), torch.ones(2, 1, 1), weights=[0.3, 0.7]
    )
    q = post.quantile(torch.tensor([0.15, 0.3 + 1e-9, 0.65], dtype=torch.float64))
    assert q[0].item() == pytest.approx(-50 + stats.norm.ppf(0.5), abs=1e-9)
    assert q[2].item() == pytest.approx(50 + stats.norm.ppf(0.5), abs=1e-9)
    assert -50 < q[1].item() < 50


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1])
def test_quantile_levels_outside_zero_one_are_refused(bad):
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        _random_mixture().quantile(bad)
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        _random_mixture().interval(bad)


def test_samples_follow_the_mixture_and_are_reproducible():
    post = _random_mixture(m=3, n=4, o=2)
    draws = post.sample(40000, generator=torch.Generator().manual_seed(3))
    assert draws.shape == (40000, 4, 2)
    torch.testing.assert_close(draws.mean(0), post.mean, atol=0.1, rtol=0)
    torch.testing.assert_close(draws.var(0), post.variance, rtol=0.05, atol=0.01)
    again = post.sample(40000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, draws)
    with pytest.raises(ConfigError, match="positive int"):
        post.sample(0)


def test_moment_matched_keeps_mean_and_variance():
    post = _random_mixture()
    mm = post.moment_matched()
    assert mm.num_members == 1
    torch.testing.assert_close(mm.mean, post.mean)
    torch.testing.assert_close(mm.variance, post.variance)
    torch.testing.assert_close(mm.aleatoric, post.variance)


def test_scale_multiplies_both_variance_parts_and_keeps_the_shape():
    post = _random_mixture(weights=[0.4, 0.3, 0.2, 0.1])
    scaled = post.scale(2.5)
    torch.testing.assert_close(scaled.mean, post.mean)
    torch.testing.assert_close(scaled.aleatoric, 2.5 * post.aleatoric)
    torch.testing.assert_close(scaled.epistemic, 2.5 * post.epistemic)
    torch.testing.assert_close(scaled.variance, 2.5 * post.variance)
    # an affine map about the mean: quantiles move by the same map
    q = torch.tensor([0.1, 0.5, 0.9])
    expected = post.mean + math.sqrt(2.5) * (post.quantile(q) - post.mean)
    torch.testing.assert_close(scaled.quantile(q), expected, rtol=1e-9, atol=1e-9)
    per_output = post.scale(torch.tensor([1.0, 4.0]))
    torch.testing.assert_close(per_output.variance[:, 1], 4 * post.variance[:, 1])
    with pytest.raises(ConfigError, match="> 0"):
        post.scale(0.0)


def test_select_over_samples():
    post = _random_mixture()
    sub = post[2:5]
    assert sub.shape == (3, 2) and sub.num_members == 4
    torch.testing.assert_close(sub.mean, post.mean[2:5])
    torch.testing.assert_close(post.select(-1).variance, post.variance[-1:])
    mask = torch.zeros(30, dtype=torch.bool)
    mask[[0, 7]] = True
    torch.testing.assert_close(post[mask].mean, post.mean[[0, 7]])


def test_errors_state_the_rule_and_the_values():
    with pytest.raises(ConfigError, match=r"means \(3, 2\) and variances \(3, 1\)"):
        GaussianMixturePosterior(torch.zeros(3, 2), torch.ones(3, 1))
    with pytest.raises(ConfigError, match="variances must be > 0"):
        GaussianMixturePosterior(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ConfigError, match=r"shape \(4,\)"):
        _random_mixture(weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match=r"30 x 2 .* got \(30, 3\)"):
        _random_mixture().cdf(torch.zeros(30, 3))
    with pytest.raises(ConfigError, match="finite"):
        GaussianMixturePosterior(torch.tensor([[float("nan")]]), torch.ones(1, 1))


# -- classification -------------------------------------------------------------------------------


def test_entropy_splits_into_expected_entropy_plus_mutual_information():
    g = torch.Generator().manual_seed(0)
    post = ClassificationPosterior.from_logits(torch.randn(5, 20, 4, generator=g))
    torch.testing.assert_close(
        post.total_entropy, post.expected_entropy + post.mutual_information, rtol=0, atol=1e-12
    )
    assert torch.all(post.mutual_information >= 0)
    assert torch.all(post.total_entropy <= math.log(4) + 1e-12)


def test_disagreeing_confident_members_are_purely_epistemic():
    probs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # 2 members, 1 sample, 2 classes
    post = ClassificationPosterior(probs)
    torch.testing.assert_close(post.probs, torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    assert post.expected_entropy.item() == pytest.approx(0.0)
    assert post.mutual_information.item() == pytest.approx(math.log(2))
    agree = ClassificationPosterior(torch.tensor([[[0.5, 0.5]], [[0.5, 0.5]]]))
    assert agree.mutual_information.item() == 0.0
    assert agree.expected_entropy.item() == pytest.approx(math.log(2))


def test_from_logits_temperature_and_log_prob():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 3.0]]])
    post = ClassificationPosterior.from_logits(logits)
    torch.testing.assert_close(post.probs, torch.softmax(logits[0].double(), -1))
    assert post.predicted.tolist() == [0, 2]
    torch.testing.assert_close(post.confidence, post.probs.max(-1).values)
    hot = post.with_temperature(2.0)
    torch.testing.assert_close(hot.probs, torch.softmax(logits[0].double() / 2, -1))
    # the temperature replaces, it does not compound
    torch.testing.assert_close(hot.with_temperature(2.0).probs, hot.probs)
    labels = torch.tensor([1, 2])
    torch.testing.assert_close(hot.log_prob(labels), hot.probs[[0, 1], [1, 2]].log())
    extreme = ClassificationPosterior.from_logits(torch.tensor([[0.0, 2000.0]]))
    assert extreme.log_prob(torch.tensor([0])).item() == pytest.approx(-2000.0)


def test_classification_errors():
    with pytest.raises(ConfigError, match="from_logits"):
        ClassificationPosterior(torch.tensor([[0.5, 0.5]])).with_temperature(2.0)
    with pytest.raises(ConfigError, match="summing to 1"):
        ClassificationPosterior(torch.tensor([[0.5, 0.6]]))
    with pytest.raises(ConfigError, match=r"\[0, 2\)"):
        ClassificationPosterior(torch.tensor([[0.5, 0.5]])).log_prob(torch.tensor([2]))


# -- quantile regression --------------------------------------------------------------------------


def test_quantile_prediction_averages_members_and_finds_intervals():
    levels = [0.05, 0.5, 0.95]
    member_a = torch.tensor([[[-2.0], [0.0], [2.0]]])  # n=1 x q=3 x o=1
    member_b = torch.tensor([[[-4.0], [1.0], [4.0]]])
    pred = QuantilePrediction(levels, torch.stack([member_a, member_b]))
    lower, upper = pred.interval(0.9)
    assert lower.item() == -3.0 and upper.item() == 3.0
    assert pred.median.item() == 0.5
    with pytest.raises(ConfigError, match=r"available levels: 0\.05, 0\.5, 0\.95"):
        pred.interval(0.8)
    crossing = QuantilePrediction(levels, torch.tensor([[[1.0], [0.0], [2.0]]]))
    assert crossing.values[0, :, 0].tolist() == [0.0, 1.0, 2.0]
