"""Training data analysis through the real engine: plans of tiny trials (local executor, 2
slots), the report's files, the example plan, and a driver killed and resumed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from candle.errors import ConfigError
from candle.tda.analysis import cross_study_tables, fit_curve, load_results
from candle.tda.driver import run_tda
from candle.tda.fit import fit_power_law, repeat_spread
from candle.tda.report import write_report
from candle.tda.synthetic import make_multistudy
from candle.workflow.store import Store

ROOT = Path(__file__).parent.parent
SYNTHETIC = "candle.tda.synthetic:SyntheticTrainer"


def _write(tmp_path: Path, plan: dict) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def _trials(directory: Path):
    with Store(directory / "study.db", readonly=True) as store:
        return store.trials()


def test_logo_transfer_and_compare_through_the_engine(tmp_path):
    """One plan with three sections: 7 trials; fine-tuning starts from the pretrained trial once
    it is done; the report writes their tables and plots. (The cross-study section runs in the
    slow test below.)"""
    plan = {
        "name": "sections",
        "trainer": SYNTHETIC,
        "directory": str(tmp_path / "study"),
        "params": {"epochs": 4, "groups": 2, "rows_per_group": 120, "features": 3},
        "executor": {"kind": "local", "slots": 2},
        "data": {"test_fraction": 0.25, "val_fraction": 0.1},
        "logo": {},
        "transfer": {
            "source": ["g0"],
            "target": "g1",
            "sizes": [20],
            "finetune": {"learning_rate": 0.01},
        },
        "compare": {"models": {"linear": {"hidden": 0}, "mlp": {"hidden": 4}}, "groups": "g0"},
        "grace": 2,
    }
    summary = run_tda(_write(tmp_path, plan), progress=False)
    assert summary.counts["done"] == 7 and summary.counts["failed"] == 0
    trials = {t.key: t for t in _trials(tmp_path / "study")}
    pre, ft = trials["tf/s0/pre"], trials["tf/s0/ft/n20/r0"]
    assert ft.params["init_from"] == pre.trial_dir and ft.params["learning_rate"] == 0.01
    assert ft.started_at >= pre.ended_at  # held back until the pretraining was done
    assert "init_from" not in trials["tf/s0/scratch/n20/r0"].params
    assert trials["logo/s0/g0/r0"].params["train_groups"] == ["g1"]

    out = write_report(tmp_path / "study")
    names = {p.name for p in out.iterdir()}
    for name in [
        "scores.csv",
        "logo.csv",
        "transfer.csv",
        "transfer.png",
        "agreement.csv",
        "agreement.png",
        "compare_scores.csv",
        "summary.json",
    ]:
        assert name in names, name
    agreement = pd.read_csv(out / "agreement.csv", index_col=0)
    assert agreement.loc["linear", "linear"] == pytest.approx(1.0)
    assert 0.5 < agreement.loc["linear", "mlp"] <= 1.0
    transfer = pd.read_csv(out / "transfer.csv")
    assert set(transfer["arm"]) == {"pretrained", "finetune", "scratch"}
    logo = pd.read_csv(out / "logo.csv")
    assert set(logo["test"]) == {"heldout", "seen"}
    held = logo.set_index(["held_out", "test"])["mse_mean"]
    assert held["g0", "heldout"] > held["g0", "seen"]  # the planted shift hurts the left-out
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 2 * 2 + 3 + 2  # logo (held out, seen) x 2, transfer, compare
    rc = subprocess.run(
        [sys.executable, "-m", "candle.tda", "report", str(tmp_path / "study")],
        capture_output=True,
        text=True,
    )
    assert rc.returncode == 0 and "report:" in rc.stdout
    # a finished plan resumed runs nothing again; run again without --resume it refuses
    again = run_tda(tmp_path / "plan.yaml", resume=True, progress=False)
    assert again.counts["done"] == 7 and len(_trials(tmp_path / "study")) == 7
    with pytest.raises(ConfigError, match="pass --resume"):
        run_tda(tmp_path / "plan.yaml", progress=False)


def test_example_plan_runs_shrunk_through_the_cli(tmp_path):
    """examples/tda.yaml as written, shrunk (fewer sizes, epochs and sections), through the
    command line."""
    plan = yaml.safe_load((ROOT / "examples" / "tda.yaml").read_text())
    plan.update(
        trainer=f"{ROOT / 'examples' / 'tda_models.py'}:Diabetes",
        directory=str(tmp_path / "diabetes"),
        data={"splits": 1, "test_fraction": 0.2, "val_fraction": 0.1},
        learning_curve={"sizes": {"min": 40, "count": 4}, "repeats": 1},
        grace=2,
    )
    plan["params"]["epochs"] = 8
    for section in ("cross_study", "compare"):
        plan.pop(section)
    path = _write(tmp_path, plan)
    run = subprocess.run(
        [sys.executable, "-m", "candle.tda", str(path), "--quiet"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = write_report(tmp_path / "diabetes")
    table = pd.read_csv(out / "learning_curve.csv")
    assert list(table["size"]) == [40, 79, 157, 310]  # log spaced up to the training pool
    assert (out / "learning_curve.png").stat().st_size > 1000
    fit = json.loads((out / "summary.json").read_text())["learning_curve"]
    assert fit["fitted"] and fit["metric"] == "mse"


def test_classifier_compare_plan_scores_and_class_agreement(tmp_path):
    """The breast cancer classifier (examples/tda_models.py) in a compare plan: classification
    metrics and the fraction of test rows two models put in the same class."""
    cancer = {
        "name": "cancer",
        "trainer": f"{ROOT / 'examples' / 'tda_models.py'}:BreastCancer",
        "directory": str(tmp_path / "cancer"),
        "params": {"epochs": 3},
        "compare": {"models": {"linear": {"hidden": 0}, "mlp": {"hidden": 8}}},
        "executor": {"kind": "local", "slots": 2},
    }
    run_tda(_write(tmp_path, cancer), progress=False)
    results = load_results(tmp_path / "cancer")
    assert results.task == "classification"
    assert results.scores["accuracy"].min() > 0.85 and results.scores["auroc"].min() > 0.9
    out = write_report(tmp_path / "cancer")
    agreement = pd.read_csv(out / "agreement.csv", index_col=0)
    assert agreement.loc["linear", "mlp"] > 0.85  # the fraction of test rows given one class


@pytest.mark.slow
def test_synthetic_plan_recovers_exponent_and_gap_through_a_killed_and_resumed_driver(tmp_path):
    """A learning curve (6 sizes x 2 repeats) and a 3 x 3 cross-study on the generator; the
    driver is SIGKILLed after 4 trials and resumed: every trial exactly once, and the analysis
    recovers the known exponent and the planted off-diagonal gap."""
    params = {
        "groups": 3,
        "rows_per_group": 1200,
        "features": 4,
        "noise": 0.5,
        "label_shift": 0.5,
    }
    plan = {
        "name": "recovery",
        "trainer": SYNTHETIC,
        "directory": str(tmp_path / "study"),
        "params": {**params, "epochs": 30},
        "executor": {"kind": "local", "slots": 2},
        "data": {"test_fraction": 0.5, "val_fraction": 0.1},
        "learning_curve": {
            "groups": ["g0"],
            "sizes": {"min": 24, "max": 384, "count": 5},
            "repeats": 2,
        },
        "cross_study": {"train_size": 300},
        "grace": 2,
    }
    path = _write(tmp_path, plan)
    cmd = [sys.executable, "-m", "candle.tda", str(path), "--quiet"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while sum(t.status == "done" for t in _safe_trials(tmp_path / "study")) < 4:
        assert time.monotonic() < deadline and driver.poll() is None
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = _trials(tmp_path / "study")
    keys = sorted(t.key for t in trials)
    assert len(keys) == len(set(keys)) == 5 * 2 + 3
    assert all(t.status == "done" for t in trials)

    results = load_results(tmp_path / "study")
    study = make_multistudy(3, 1200, 4, 0.5, label_shift=0.5)
    lc = results.scores[results.scores["section"] == "learning_curve"]
    n, errors = lc["size"].to_numpy(float), lc["mse"].to_numpy(float)
    fit, why = fit_curve(n, errors)
    assert fit is not None, why
    known = fit_power_law(n, study.expected_mse(n), sigma=repeat_spread(n, errors))
    assert fit.contains(known.b), (fit, known.b)
    _, _, summary = cross_study_tables(results)
    gap = summary.set_index("metric").loc["mse", "off_minus_on"]
    assert gap == pytest.approx(study.mean_off_diagonal_excess(), rel=0.25)
    out = write_report(tmp_path / "study")
    mean = pd.read_csv(out / "cross_study_mean_mse.csv", index_col=0)
    assert list(mean.index) == list(mean.columns) == ["g0", "g1", "g2"]
    assert np.all(np.diag(mean.to_numpy()) < mean.to_numpy()[~np.eye(3, dtype=bool)].min())
    for name in ("cross_study_std_r2.csv", "cross_study_summary.csv", "cross_study.png"):
        assert (out / name).is_file(), name
    fit_table = pd.read_csv(out / "learning_curve_fit.csv")
    assert fit_table["b"].iloc[0] == pytest.approx(fit.b) and (out / "learning_curve.png").is_file()


def _safe_trials(directory: Path):
    try:
        return _trials(directory)
    except Exception:
        return []
