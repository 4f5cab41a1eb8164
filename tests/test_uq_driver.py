"""UQ studies end to end: members as trials, analysis, report, resume, search ensembles."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from candle.errors import ConfigError
from candle.uq.analysis import Ensemble, analyze, combine, greedy_selection
from candle.uq.driver import load_uq_config, run_uq
from candle.workflow.store import Store

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOY = f"{HERE / '_uq_trainers.py'}:ToyRegression"
TOY_CLASSES = f"{HERE / '_uq_trainers.py'}:ToyClasses"


def _config(tmp_path, **extra):
    cfg = {
        "name": "toy-uq",
        "trainer": TOY,
        "directory": str(tmp_path / "study"),
        "params": {"epochs": 15},
        "ensemble": {"kind": "seeds", "members": 3},
        "executor": {"kind": "local", "slots": 2},
        "retries": 0,
    }
    cfg.update(extra)
    return cfg


def _cli(*args, cwd, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "candle.uq", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ensemble": {"kind": "seeds", "members": 0}}, "ensemble.members must be an integer"),
        ({"ensemble": {"kind": "snapshots"}}, "ensemble.kind must be one of"),
        ({"ensemble": {"kind": "seeds", "size": 3}}, "ensemble: unknown key\\(s\\) size"),
        ({"ensemble": {"kind": "search"}}, "needs ensemble.search.study"),
        ({"ensemble": {"kind": "seeds", "search": {"study": "x"}}}, "only read with kind: search"),
        ({"ensemble": {"kind": "mc_dropout", "samples": 1}}, "samples must be >= 2"),
        ({"levels": [0.5, 1.2]}, "every level must be in \\(0, 1\\), got 1.2"),
        ({"interval": 95}, "interval must be in \\(0, 1\\), got 95"),
        ({"recalibration": ["platt"]}, "unknown method 'platt'"),
        ({"sensitivity": {"label_noise": [-1]}}, "sensitivity.label_noise: levels must be"),
        ({"sensitivity": {"subsample": [0]}}, "subsample: 0 keeps no data"),
        ({"sensitivity": {"dropout": [0.1]}}, "sensitivity: unknown key\\(s\\) dropout"),
        ({"grid": {"seed": [1, 2]}}, "`grid` belongs to plain studies"),
    ],
)
def test_bad_uq_config_names_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_uq_config(_config(tmp_path, **change))
    assert not (tmp_path / "study").exists()  # nothing written


def test_bad_study_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"not a candle\.uq\.UQTrainer"):
        run_uq(_config(tmp_path, trainer=f"{HERE / '_uq_trainers.py'}:NotUQ"), progress=False)
    with pytest.raises(ConfigError, match="label_flip applies to classification"):
        run_uq(_config(tmp_path, sensitivity={"label_flip": [0.1]}), progress=False)
    with pytest.raises(ConfigError, match="label_noise applies to regression"):
        cfg = _config(tmp_path, trainer=TOY_CLASSES, sensitivity={"label_noise": [0.1]})
        run_uq(cfg, progress=False)
    with pytest.raises(ConfigError, match="no study store"):
        cfg = _config(tmp_path, ensemble={"kind": "search", "search": {"study": tmp_path / "x"}})
        run_uq(cfg, progress=False)
    with pytest.raises(ConfigError, match="hidden"):  # a member's params are checked up front
        run_uq(_config(tmp_path, params={"hidden": "wide"}), progress=False)
    assert not (tmp_path / "study" / "study.db").exists()
    with pytest.raises(ConfigError, match="no UQ study store"):
        analyze(tmp_path / "nowhere")


# --------------------------------------------------------------------------- analysis units


def _pred(mean, var, target, head="gaussian"):
    return {
        "head": head,
        "val_mean": np.asarray(mean)[None],
        "val_var": np.asarray(var)[None],
        "val_target": np.asarray(target),
        "test_mean": np.asarray(mean)[None],
        "test_var": np.asarray(var)[None],
        "test_target": np.asarray(target),
        "quantile_levels": np.array([0.5]),
    }


def test_combine_gives_the_mixture_moments():
    y = np.zeros((4, 1))
    a = _pred(np.full((4, 1), 1.0), np.full((4, 1), 2.0), y)
    b = _pred(np.full((4, 1), 3.0), np.full((4, 1), 4.0), y)
    ens = combine([a, b], "test")
    post = ens.posterior
    assert torch.allclose(post.mean, torch.full((4, 1), 2.0, dtype=torch.float64))
    assert torch.allclose(post.aleatoric, torch.full((4, 1), 3.0, dtype=torch.float64))
    assert torch.allclose(post.epistemic, torch.full((4, 1), 1.0, dtype=torch.float64))
    # weights 3:1 -> mean 1.5, aleatoric 2.5, epistemic 0.75 (population variance of means)
    post = combine([a, b], "test", weights=[3, 1]).posterior
    assert torch.allclose(post.mean, torch.full((4, 1), 1.5, dtype=torch.float64))
    assert torch.allclose(post.aleatoric, torch.full((4, 1), 2.5, dtype=torch.float64))
    assert torch.allclose(post.epistemic, torch.full((4, 1), 0.75, dtype=torch.float64))
    with pytest.raises(ConfigError, match="disagree on the test targets"):
        combine([a, _pred(np.ones((4, 1)), np.ones((4, 1)), np.ones((4, 1)))], "test")
    with pytest.raises(ConfigError, match="different heads"):
        combine([a, {**a, "head": "quantile"}], "test")


def test_greedy_selection_picks_the_member_that_lowers_the_nll():
    rng = np.random.default_rng(0)
    y = rng.normal(0.0, 1.0, (400, 1))
    right = _pred(np.zeros((400, 1)), np.ones((400, 1)), y)  # the true distribution
    wrong = _pred(np.full((400, 1), 2.0), np.full((400, 1), 0.1), y)
    wide = _pred(np.zeros((400, 1)), np.full((400, 1), 9.0), y)
    cands = [combine([p], "val") for p in (wrong, wide, right)]
    picks = greedy_selection(cands, 3)
    assert picks[0] == 2  # the true model alone is best
    assert 0 not in picks  # the confidently wrong one never helps
    assert isinstance(cands[0], Ensemble)


# --------------------------------------------------------------------------- end to end


def test_uq_study_end_to_end_with_sensitivity_and_report(tmp_path):
    cfg = _config(
        tmp_path,
        sensitivity={"members": 2, "label_noise": [0.0, 2.0]},
        levels=[0.5, 0.9],
        interval=0.9,
    )
    path = tmp_path / "uq.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = _cli(path, "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    study = tmp_path / "study"
    with Store(study / "study.db", readonly=True) as store:
        trials = store.trials()
    noise = [f"label_noise={level}/m{i}" for level in (0, 2) for i in (0, 1)]
    assert sorted(t.key for t in trials) == sorted(["m0", "m1", "m2", *noise])
    assert {t.status for t in trials} == {"done"}
    assert sorted(t.params["seed"] for t in trials if t.key.startswith("m")) == [0, 1, 2]
    metrics = json.loads((study / "metrics.json").read_text())
    assert metrics["members"] == ["m0", "m1", "m2"] and metrics["n_test"] == 60
    for key in ("nll", "rmse", "crps", "coverage_90", "miscalibration_area", "sharpness"):
        assert metrics["ensemble"][key] is not None, key
    assert set(metrics["recalibrated"]) == {"variance", "isotonic", "conformal"}
    # in original units: the targets are 1000 + 50 * (...), the error is tens, not thousandths
    assert 3 < metrics["ensemble"]["rmse"] < 40
    frame = pd.read_csv(study / "predictions.csv")
    for col in ("target", "mean", "std", "aleatoric", "epistemic", "lower_90", "upper_90"):
        assert col in frame.columns
    assert "lower_90_conformal" in frame.columns and len(frame) == 60
    assert np.allclose(frame["std"] ** 2, frame["aleatoric"] + frame["epistemic"], rtol=1e-6)
    parquet = pd.read_parquet(study / "predictions.parquet").reset_index()
    assert parquet.shape == frame.shape and list(parquet.columns) == list(frame.columns)
    sens = pd.read_csv(study / "sensitivity.csv")
    assert list(sens["level"]) == [0.0, 2.0]
    # training on labels with noise of 2 target sds: the ensemble's aleatoric sigma grows
    clean, noisy = sens.iloc[0], sens.iloc[1]
    assert noisy["mean_aleatoric_std"] > 1.5 * clean["mean_aleatoric_std"]
    plots = ["calibration.png", "coverage.png", "sigma_vs_error.png", "sensitivity.png"]
    for name in plots:
        assert (study / name).stat().st_size > 1000, name
        (study / name).unlink()
    r = _cli("report", study, cwd=tmp_path)  # regenerates everything
    assert r.returncode == 0, r.stderr
    assert all((study / name).exists() for name in plots)
    assert json.loads((study / "metrics.json").read_text())["ensemble"] == metrics["ensemble"]


def test_classification_study_with_temperature_scaling(tmp_path):
    cfg = _config(
        tmp_path,
        trainer=TOY_CLASSES,
        params={"epochs": 10},
        ensemble={"kind": "bootstrap", "members": 2},
        sensitivity={"members": 1, "label_flip": [0.4]},
    )
    summary = run_uq(cfg, progress=False)
    assert summary.counts["done"] == 3
    report = analyze(tmp_path / "study")
    assert report["head"] == "classification"
    for key in ("nll", "brier", "accuracy", "ece"):
        assert report["ensemble"][key] is not None
    temp = report["recalibrated"]["temperature"]
    assert temp["temperature"] > 0 and temp["nll"] <= report["ensemble"]["nll"] + 0.05
    with Store(tmp_path / "study" / "study.db", readonly=True) as store:
        members = [t for t in store.trials() if t.key.startswith("m")]
    assert all(t.params["bootstrap"] for t in members)
    assert sorted(t.params["data_seed"] for t in members) == [0, 1]
    frame = pd.read_csv(tmp_path / "study" / "predictions.csv")
    assert {"p_0", "p_1", "p_2", "mutual_information", "p_0_calibrated"} <= set(frame.columns)
    assert (tmp_path / "study" / "reliability.png").exists()


@pytest.mark.slow
def test_driver_killed_and_resumed_trains_every_member_once(tmp_path):
    cfg = _config(tmp_path, params={"epochs": 40}, ensemble={"kind": "seeds", "members": 4})
    path = tmp_path / "uq.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "candle.uq", str(path), "--quiet"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    db = tmp_path / "study" / "study.db"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill it once the first member is done
        if db.exists():
            with Store(db, readonly=True) as store:
                if store.trials(status="done"):
                    break
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    r = _cli(path, "--resume", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    with Store(db, readonly=True) as store:
        trials = store.trials()
        attempts = {t.key: len(store.attempts(t.trial_id)) for t in trials}
    assert sorted(t.key for t in trials) == ["m0", "m1", "m2", "m3"]
    assert {t.status for t in trials} == {"done"}
    done_first = [k for k, n in attempts.items() if n == 1]
    assert done_first  # the member finished before the kill was not run again
    assert json.loads((tmp_path / "study" / "metrics.json").read_text())["n_members"] == 4


@pytest.mark.slow
def test_hyper_ensemble_from_a_search_store_with_greedy_selection(tmp_path):
    from candle.search.driver import run_search

    search = {
        "name": "toy-search",
        "trainer": TOY,
        "directory": str(tmp_path / "search"),
        "params": {"epochs": 8},
        "space": {"hidden": {"type": "int", "low": 4, "high": 64, "log": True}},
        "sampler": {"type": "random", "seed": 0},
        "budget": {"trials": 4},
        "objective": {"metric": "val_loss", "mode": "min"},
        "executor": {"kind": "local", "slots": 2},
    }
    run_search(search, progress=False)
    with Store(tmp_path / "search" / "study.db", readonly=True) as store:
        ranked = sorted(store.trials(status="done"), key=lambda t: t.objective)
    cfg = _config(
        tmp_path,
        params={"epochs": 8},
        ensemble={
            "kind": "search",
            "members": 3,
            "search": {"study": str(tmp_path / "search"), "top": 3, "select": "greedy"},
        },
    )
    summary = run_uq(cfg, progress=False)
    assert summary.counts["done"] == 3
    with Store(tmp_path / "study" / "study.db", readonly=True) as store:
        cands = sorted(store.trials(), key=lambda t: t.extra["rank"])
    # the top 3 of the search, best first, with their configurations
    assert [t.key for t in cands] == [f"c{t.trial_id}" for t in ranked[:3]]
    assert [t.params["hidden"] for t in cands] == [t.params["hidden"] for t in ranked[:3]]
    report = analyze(tmp_path / "study")
    assert sum(report["selection"].values()) == 3  # 3 picks, with replacement
    assert set(report["selection"]) <= {t.key for t in cands}


def test_the_example_uq_study_runs_as_written_at_a_smaller_size(tmp_path):
    """examples/uq.yaml on the diabetes data, shrunk: 2 members, 1 sensitivity level."""
    cfg = yaml.safe_load((ROOT / "examples" / "uq.yaml").read_text())
    load_uq_config(dict(cfg))  # valid as written
    cfg["trainer"] = str(ROOT / cfg["trainer"])
    cfg["directory"] = str(tmp_path / "diabetes-uq")
    cfg["params"]["epochs"] = 5
    cfg["ensemble"]["members"] = 2
    cfg["sensitivity"] = {"members": 1, "label_noise": [1.0]}
    summary = run_uq(cfg, progress=False)
    assert summary.counts["done"] == 3 and sum(summary.counts.values()) == 3
    report = analyze(summary.directory, plots=False)
    assert report["n_test"] == 44 and report["n_members"] == 2
    assert 30 < report["ensemble"]["rmse"] < 120  # disease progression units (sd ~77)


def test_cli_bad_config_exits_2_naming_the_key(tmp_path):
    path = tmp_path / "uq.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, ensemble={"kind": "seeds", "members": -1})))
    r = _cli(path, cwd=tmp_path)
    assert r.returncode == 2
    assert "ensemble.members must be an integer >= 1, got -1" in r.stderr
    r = _cli("report", tmp_path / "missing", cwd=tmp_path)
    assert r.returncode == 2 and "no UQ study store" in r.stderr


def test_quantile_head_study(tmp_path):
    cfg = _config(
        tmp_path,
        params={"epochs": 10, "head": "quantile", "quantile_levels": [0.05, 0.5, 0.95]},
        ensemble={"kind": "seeds", "members": 2},
        levels=[0.5, 0.9],
        interval=0.9,
    )
    assert run_uq(cfg, progress=False).counts["done"] == 2
    report = analyze(tmp_path / "study")
    assert report["head"] == "quantile" and report["recalibrated"] == {}
    assert "coverage_90" in report["ensemble"] and "coverage_50" not in report["ensemble"]
    assert 3 < report["ensemble"]["rmse"] < 40  # the median, in original units
    frame = pd.read_csv(tmp_path / "study" / "predictions.csv")
    assert {"median", "q_5", "q_50", "q_95"} <= set(frame.columns)
    assert (frame["q_5"] <= frame["q_95"]).all()
    assert (tmp_path / "study" / "coverage.png").exists()
