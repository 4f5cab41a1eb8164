"""Training data analysis without the engine: metrics against hand-computed values, the
power-law fitter, the synthetic generator's known answers, splits and subsets, and plan files
that must fail before any trial starts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from candle.errors import ConfigError
from candle.tda import metrics as M
from candle.tda._splits import split_groups, training_subset
from candle.tda.fit import fit_power_law, flattening_point, power_law, repeat_spread
from candle.tda.synthetic import make_multistudy

ROOT = Path(__file__).parent.parent

# --------------------------------------------------------------------------- metrics


def test_regression_metrics_match_hand_computed_values():
    y, pred = [1, 2, 3, 4], [1, 3, 2, 6]  # errors 0, 1, -1, 2
    got = M.score("regression", y, pred)
    assert got["mse"] == pytest.approx(6 / 4)
    assert got["rmse"] == pytest.approx(math.sqrt(1.5))
    assert got["mae"] == pytest.approx(4 / 4)
    assert got["r2"] == pytest.approx(1 - 6 / 5)  # SS_tot = 2.25 + 0.25 + 0.25 + 2.25
    assert got["pearson"] == pytest.approx(7 / math.sqrt(5 * 14))
    assert got["spearman"] == pytest.approx(1 - 6 * 2 / (4 * (16 - 1)))  # ranks 1,3,2,4
    assert math.isnan(M.r2([2, 2], [1, 3])) and math.isnan(M.pearson([1, 2], [3, 3]))
    assert M.mse(np.ones((3, 2)), np.zeros((3, 2))) == 1.0  # n x o: flattened together


def test_classification_metrics_match_hand_computed_values():
    y = [0, 0, 1, 1, 1]
    p1 = np.array([0.1, 0.6, 0.7, 0.4, 0.9])  # guesses 0, 1, 1, 0, 1
    got = M.score("classification", y, np.stack([1 - p1, p1], 1))
    assert got["accuracy"] == pytest.approx(3 / 5)
    assert got["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert got["auroc"] == pytest.approx(5 / 6)  # 5 of 6 positive-negative pairs ordered
    expected = -np.mean(np.log([0.9, 0.4, 0.7, 0.4, 0.9]))
    assert got["log_loss"] == pytest.approx(expected)
    assert M.score("classification", y, p1) == got  # 1-d: the probability of class 1
    three = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    assert M.accuracy([0, 1, 2, 1], three) == pytest.approx(3 / 4)
    assert M.log_loss([0, 1, 2, 1], three) == pytest.approx(-np.mean(np.log([0.7, 0.8, 0.4, 0.4])))
    # one-vs-rest macro AUROC: classes 0 and 2 are ranked perfectly, class 1 with 1 of 2 pairs
    # 1-vs-rest: positives rows 1, 3 (0.8, 0.4) vs negatives rows 0, 2 (0.2, 0.3): 4/4
    assert M.auroc([0, 1, 2, 1], three) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="task must be one of"):
        M.score("ranking", y, p1)


def test_agreement_between_models():
    a = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    b = np.array([[0.7, 0.3], [0.4, 0.6], [0.3, 0.7]])
    assert M.agreement("classification", a, b) == pytest.approx(2 / 3)
    assert M.agreement("regression", [1, 2, 3], [2, 4, 6.5]) == pytest.approx(
        np.corrcoef([1, 2, 3], [2, 4, 6.5])[0, 1]
    )


# --------------------------------------------------------------------------- power law


@pytest.mark.parametrize("method", ["covariance", "bootstrap"])
def test_power_law_fit_recovers_a_planted_exponent(method):
    """On noisy exact power laws, the 95 % interval holds the true exponent in most draws."""
    n = np.repeat([16, 32, 64, 128, 256, 512], 4)
    covered, widths = 0, []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        errors = power_law(n, 3.0, 0.7, 0.2) * (1 + 0.01 * rng.normal(size=n.size))
        fit = fit_power_law(n, errors, method=method, resamples=40, seed=seed)
        covered += fit.contains(0.7)
        widths.append(fit.b_high - fit.b_low)
        assert fit.method == method and fit.c == pytest.approx(0.2, abs=0.02)
    assert covered >= 16 and np.median(widths) < 0.15, (covered, widths)
    # the flattening point: doubling it gains exactly `gain` of the error
    f = fit.predict
    gain = (f(fit.n_flat) - f(2 * fit.n_flat)) / f(fit.n_flat)
    assert gain == pytest.approx(fit.gain, rel=1e-6) and fit.n_flat > fit.n_max


def test_flattening_point_edge_cases_and_bad_input():
    assert flattening_point(1.0, 1.0, 0.0) == math.inf  # a pure power law never flattens
    assert flattening_point(0.0, 1.0, 1.0) == 0.0
    assert flattening_point(1.0, 0.001, 1.0, gain=0.01) == 0.0  # too shallow: flat already
    with pytest.raises(ValueError, match="3 distinct sizes"):
        fit_power_law([10, 10, 20, 20], [1, 1, 0.5, 0.5])
    with pytest.raises(ValueError, match="repeats"):
        fit_power_law([10, 20, 40, 80], [1, 0.5, 0.3, 0.2], method="bootstrap")


# --------------------------------------------------------------------------- generator


def _ols_test_mse(x, y, xt, yt):
    design = np.c_[x, np.ones(len(x))]
    w, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(np.mean((np.c_[xt, np.ones(len(xt))] @ w - yt) ** 2))


def test_generator_learning_curve_has_the_known_exponent():
    """Least squares on the generator's data follows its known curve, and the fitter recovers
    that curve's exponent (1 asymptotically; a bit above 1 at small n / d)."""
    study = make_multistudy(groups=1, rows_per_group=6000, features=4, noise=0.5, seed=1)
    x, y = study.x.astype(np.float64), study.y
    xt, yt = x[4000:], y[4000:]
    rng = np.random.default_rng(0)
    sizes = np.array([24, 48, 96, 192, 384, 768])
    points = []
    for n in sizes:
        for _ in range(200):
            rows = rng.choice(4000, size=n, replace=False)
            points.append((n, _ols_test_mse(x[rows], y[rows], xt, yt)))
    n_obs, e_obs = np.array(points).T
    means = [e_obs[n_obs == n].mean() for n in sizes]
    # the test set's own noise shifts every size alike: compare the excess over the floor
    floor = _ols_test_mse(x[:4000], y[:4000], xt, yt)
    expected = study.expected_mse(sizes) - study.noise**2
    assert np.array(means) - floor == pytest.approx(expected, rel=0.25)
    fit = fit_power_law(n_obs, e_obs)
    # the known curve is a power law only as n grows: its exponent over these sizes, fitted
    # with the weights the measured points got, is what the measured fit estimates
    known = fit_power_law(n_obs, study.expected_mse(n_obs), sigma=repeat_spread(n_obs, e_obs))
    assert fit.contains(known.b), (fit, known.b)
    assert 1.0 <= known.b <= 1.3 and study.exponent == 1.0


def test_generator_cross_study_gap_is_the_planted_excess():
    study = make_multistudy(groups=3, rows_per_group=1500, features=5, noise=0.5, seed=2)
    names = study.names
    for g in names:
        for h in names:
            if g != h:
                assert study.excess(g, h) == pytest.approx(2 * 1.0**2)  # orthogonal shifts
    x, y = study.x.astype(np.float64), study.y
    table = np.zeros((3, 3))
    for i, g in enumerate(names):
        rows = np.flatnonzero(study.groups == g)
        for j, h in enumerate(names):
            test = np.flatnonzero(study.groups == h)[1000:]
            table[i, j] = _ols_test_mse(x[rows[:1000]], y[rows[:1000]], x[test], y[test])
    on, off = np.diag(table).mean(), table[~np.eye(3, dtype=bool)].mean()
    assert off - on == pytest.approx(study.mean_off_diagonal_excess(), rel=0.1)
    assert on == pytest.approx(study.noise**2, rel=0.15)


# --------------------------------------------------------------------------- splits


def test_splits_are_fixed_disjoint_per_group_and_subsets_nested():
    groups = np.array(["a"] * 50 + ["b"] * 30)
    s = split_groups(groups, 0, 0.2, 0.1)
    assert [len(s["a"].test), len(s["a"].val), len(s["a"].train)] == [10, 5, 35]
    for part in s.values():
        assert not set(part.train) & set(part.test) and not set(part.val) & set(part.test)
    again = split_groups(np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20), 0, 0.2, 0.1)
    assert np.array_equal(again["a"].test, s["a"].test)  # another group does not move it
    assert not np.array_equal(split_groups(groups, 1, 0.2, 0.1)["a"].test, s["a"].test)
    small = training_subset(s, ["a", "b"], 10, subset_seed=3)
    large = training_subset(s, ["a", "b"], 40, subset_seed=3)
    assert set(small) <= set(large) and len(large) == 40
    assert not np.array_equal(training_subset(s, ["a", "b"], 10, subset_seed=4), small)
    with pytest.raises(ConfigError, match="train_size=99 is more than the 35"):
        training_subset(s, ["a"], 99, 0)
    with pytest.raises(ConfigError, match="group 'x' has 2 rows: too few to split"):
        split_groups(np.array(["x", "x"]), 0, 0.2, 0.1)
    with pytest.raises(ConfigError, match=r"need test > 0, val >= 0 and test \+ val < 1"):
        split_groups(groups, 0, 0.5, 0.5)
    # classification: every group's parts keep its class balance (stratified)
    labels = np.array([0, 1] * 25 + [0] * 20 + [1] * 10)
    strat = split_groups(groups, 0, 0.2, 0.1, labels)
    assert np.mean(labels[strat["a"].test]) == 0.5 and len(strat["b"].test) == 6
    assert np.mean(labels[strat["b"].test]) == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- bad plans


def _plan(tmp_path, **changes) -> Path:
    plan = {
        "name": "bad",
        "trainer": "candle.tda.synthetic:SyntheticTrainer",
        "directory": str(tmp_path / "study"),
        "params": {"epochs": 1, "groups": 3, "rows_per_group": 100},
        "data": {"test_fraction": 0.2, "val_fraction": 0.1},
        "learning_curve": {"sizes": {"min": 10, "count": 3}},
    }
    for key, value in changes.items():
        if value is None:
            plan.pop(key, None)
        else:
            plan[key] = value
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"learning_curve": {"size": [10]}}, "learning_curve: unknown key(s) size"),
        ({"learning_curve": {"sizes": {"min": 50, "max": 20}}}, "min (50) must be < max (20)"),
        ({"learning_curve": {"sizes": [10, 500]}}, "size 500 is more than the 210 training"),
        ({"learning_curve": {"sizes": [10, 0]}}, "must be an integer >= 1, got 0"),
        ({"learning_curve": {"sizes": [10], "groups": ["g9"]}}, "unknown group 'g9'"),
        ({"cross_study": {"groups": ["g0", "g1x"]}}, "unknown group 'g1x' (did you mean 'g1'?)"),
        ({"learning_curve": {"sizes": [10], "metric": "r2"}}, "lower-is-better"),
        ({"learning_curve": None}, "a plan needs at least one of"),
        ({"grid": {"hidden": [1, 2]}}, "`grid` belongs to plain studies"),
        ({"params": {"train_size": 5}}, "params.train_size is set by the plan"),
        ({"data": {"test_fraction": 0.6, "val_fraction": 0.5}}, "must be < 1"),
        ({"transfer": {"source": ["g0"], "target": "g0", "sizes": [5]}}, "also a source group"),
        ({"transfer": {"source": ["g0"], "target": "g1"}}, "transfer.sizes is required"),
        ({"compare": {"models": []}}, "compare.models must map model names"),
        ({"trainer": "candle.testing:TinyTrainer"}, "needs a candle.tda.TDATrainer subclass"),
    ],
)
def test_bad_plans_fail_before_any_trial_naming_key_file_and_value(tmp_path, change, message):
    from candle.tda.__main__ import main
    from candle.tda.driver import prepare

    path = _plan(tmp_path, **change)
    with pytest.raises(ConfigError) as info:
        prepare(path)
    assert message in str(info.value)
    assert str(path) in str(info.value) or "trainer" in change
    assert main([str(path), "--quiet"]) == 2
    assert not (tmp_path / "study").exists()


def test_missing_group_column_is_a_config_error(tmp_path):
    from candle.tda.driver import prepare

    path = _plan(
        tmp_path,
        trainer=f"{ROOT / 'examples' / 'tda_models.py'}:Diabetes",
        params={"epochs": 1, "group_column": "gender"},
        learning_curve={"sizes": [10, 20, 40]},
    )
    with pytest.raises(ConfigError, match="group column 'gender' is not in the data; columns: age"):
        prepare(path)


def test_plan_source_holds_fine_tuning_until_pretraining_and_drops_it_on_failure():
    from types import SimpleNamespace

    from candle.tda.driver import PlanSource
    from candle.tda.plan import PlannedTrial

    def planned():
        return [
            PlannedTrial("pre", {"train_groups": ["a"]}, {}),
            PlannedTrial("ft", {"init_from": ""}, {}, after="pre"),
            PlannedTrial("other", {}, {}),
        ]

    source = PlanSource(planned())
    assert [p.key for p in source.ask(5)] == ["pre", "other"]  # ft waits
    assert source.ask(5) == [] and not source.exhausted()
    source.tell(SimpleNamespace(key="pre", status="done", trial_dir="/x/00001"), None)
    (ft,) = source.ask(5)
    assert ft.key == "ft" and ft.params["init_from"] == "/x/00001" and source.exhausted()

    failed = PlanSource(planned())
    failed.restore([SimpleNamespace(key="pre", status="failed", trial_dir="/x/00001")])
    assert [p.key for p in failed.ask(5)] == ["other"]  # after a restart: pre is not asked
    assert failed.skipped == ["ft"] and failed.exhausted()
