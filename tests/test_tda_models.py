"""The reference models under training data analysis (candle.tda.models): each adapter trains on
TDA's split of its whole data set and writes predictions that beat chance on the planted
signal; plans name them (`trainer: uno`); dict inputs and class counts are checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from _models_small import NT3_SMALL, RESPONSE_SMALL

from candle.errors import CandleError, ConfigError
from candle.tda import GroupedData, read_predictions, score
from candle.tda.driver import run_tda
from candle.tda.models import NT3TDA, P1B1TDA, TC1TDA, ComboTDA, UnoTDA
from candle.tda.report import write_report
from candle.workflow.store import Store

QUIET = {"progress_bar": False, "metrics_log": "off"}
P1B1_SMALL = {
    "activation": "tanh",
    "dense": [64, 16],
    "feature_subsample": 300,
    "synthetic_samples": 800,
    "batch_size": 50,
    "learning_rate": 0.003,
}


def _fit(cls, tmp_path: Path, **params):
    """Train in this process; -> (trainer, predictions.npz arrays, scores)."""
    trainer = cls(output_dir=str(tmp_path / "runs"), **QUIET, **params)
    result = trainer.fit()
    assert result.status == "completed"
    pred = read_predictions(result.run_dir)
    # every group's test rows, each once, and nothing else
    splits = trainer.splits()
    expected = np.sort(np.concatenate([s.test for s in splits.values()]))
    assert np.array_equal(np.sort(pred["row"]), expected)
    assert set(pred["group"]) == set(splits)
    assert str(pred["task"]) == cls.task
    return trainer, pred, score(cls.task, pred["y"], pred["pred"])


# --------------------------------------------------------------------------- in process


def test_nt3_and_tc1_classify_the_planted_signal(tmp_path):
    _, pred, got = _fit(NT3TDA, tmp_path / "nt3", epochs=8, **NT3_SMALL)
    assert pred["pred"].shape == (80, 2) and np.allclose(pred["pred"].sum(1), 1.0)
    assert got["accuracy"] >= 0.75  # chance: 0.5; measured 0.88-0.98 over 10 seeds and splits
    small = {**NT3_SMALL, "conv": [16, 5, 1], "pool": [5], "synthetic_samples": 600}
    _, pred, got = _fit(TC1TDA, tmp_path / "tc1", classes=6, epochs=5, **small)
    assert pred["pred"].shape == (120, 6)
    assert got["accuracy"] >= 0.6  # chance: 1/6; measured 0.74-0.93


def test_tc1_on_nci60_splits_the_64_cell_lines_by_type(tmp_path):
    pytest.importorskip("ISLP")
    trainer, pred, got = _fit(
        TC1TDA, tmp_path, data="nci60", classes=14, conv=[], pool=[1], dense=[16], epochs=3
    )
    assert len(trainer.data.y) == 64 and trainer.data.y.max() == 13
    # stratified: each of the 14 labels keeps its share; singletons stay in the training pool
    assert pred["pred"].shape == (13, 14) and np.isfinite(got["log_loss"])
    with pytest.raises(CandleError, match=r"set classes to the number .* \(found 14\)"):
        _ = TC1TDA(data="nci60", classes=12, **QUIET).data


@pytest.mark.parametrize(("model", "noise"), [("ae", 0.0), ("vae", 0.1)])
def test_p1b1_reconstructs_test_profiles_better_than_their_mean(tmp_path, model, noise):
    trainer, pred, got = _fit(
        P1B1TDA, tmp_path, model=model, noise_factor=noise, epochs=8, **P1B1_SMALL
    )
    y = pred["y"]
    assert pred["pred"].shape == y.shape == (160, 300)
    assert np.array_equal(y, trainer.data.x[pred["row"]])  # the targets are the inputs
    baseline = np.mean((y - y.mean(0)) ** 2)  # every profile predicted by the test mean
    assert got["mse"] <= 0.5 * baseline  # measured 0.31-0.36 of it over 10 seeds and splits


def test_p1b1_refuses_a_loss_for_unscaled_profiles():
    with pytest.raises(ConfigError, match="set loss=mse"):
        P1B1TDA(loss="binary_crossentropy", **QUIET)


@pytest.mark.parametrize(("cls", "floor"), [(UnoTDA, 0.5), (ComboTDA, 0.6)])
def test_drug_response_models_predict_every_study(tmp_path, cls, floor):
    trainer, pred, got = _fit(cls, tmp_path, synthetic_sources=2, epochs=4, **RESPONSE_SMALL)
    assert set(trainer.data.x) == set(trainer.dataset.inputs)  # one array per model input
    # n x 1 outputs (not n, which mse_loss would broadcast against the n x 1 targets)
    assert set(pred["group"]) == {"study1", "study2"} and pred["pred"].shape == (300, 1)
    assert got["r2"] >= floor  # measured 0.66-0.73 (Uno), 0.78-0.84 (Combo) over 10 seeds


# --------------------------------------------------------------------------- through plans


def _run(tmp_path: Path, name: str, plan: dict, trials: int) -> Path:
    directory = tmp_path / name
    plan = {
        "name": name,
        "directory": str(directory),
        "executor": {"kind": "local", "slots": 2},
        "grace": 2,
        **plan,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(plan))
    summary = run_tda(path, progress=False)
    assert summary.counts["done"] == trials and summary.counts["failed"] == 0
    return write_report(directory)


def test_uno_cross_study_plan_by_its_registered_name(tmp_path):
    params = {**RESPONSE_SMALL, "synthetic_sources": 2, "epochs": 4}
    out = _run(tmp_path, "uno", {"trainer": "uno", "params": params, "cross_study": {}}, 2)
    mean = pd.read_csv(out / "cross_study_mean_r2.csv", index_col=0)
    assert list(mean.index) == list(mean.columns) == ["study1", "study2"]
    assert (mean.to_numpy() > 0.1).all()  # > 0: beats the mean; measured 0.24-0.55 (3 seeds)
    assert (out / "cross_study_summary.csv").is_file()
    with Store(tmp_path / "uno" / "study.db", readonly=True) as store:
        trial_dir = Path(store.trials()[0].trial_dir)
    result = json.loads((trial_dir / "result.json").read_text())
    assert result["trainer"] == "candle.tda.models:UnoTDA"  # `uno` in a plan: the TDA variant


def test_p1b1_learning_curve_plan_improves_with_data(tmp_path):
    params = {**P1B1_SMALL, "epochs": 8}
    plan = {"trainer": "p1b1", "params": params, "learning_curve": {"sizes": [40, 160, 560]}}
    out = _run(tmp_path, "p1b1", plan, 3)
    table = pd.read_csv(out / "learning_curve.csv")
    assert list(table["size"]) == [40, 160, 560]
    mse = table["mse_mean"].to_numpy()
    assert np.all(np.diff(mse) < 0) and mse[0] > 1.5 * mse[-1]  # measured 0.020, 0.010, 0.009


# --------------------------------------------------------------------------- bad input


def test_dict_inputs_must_have_one_row_per_target():
    y = np.zeros(6)
    with pytest.raises(ConfigError) as info:
        GroupedData({"cell": np.ones((6, 3)), "drug": np.ones((5, 2))}, y)
    assert "input 'drug' of x has 5 rows but y has 6" in str(info.value)
    assert "{'cell': 6, 'drug': 5}" in str(info.value)
    with pytest.raises(ConfigError, match="input 'cell' of x must be n x d, got shape"):
        GroupedData({"cell": np.ones(6)}, y)
    data = GroupedData({"cell": np.ones((6, 3), np.float64)}, y, ["a", "b"] * 3)
    assert data.x["cell"].dtype == np.float32 and list(data.groups[:2]) == ["a", "b"]


def test_nt3_with_fewer_classes_than_its_data_is_a_config_error(tmp_path):
    class ThreeClasses(NT3TDA):
        def read_files(self):  # a user's data: class ids 0..2
            x = np.random.default_rng(0).normal(size=(30, 20)).astype(np.float32)
            y = np.arange(30) % 3
            return x[:20], y[:20], x[20:], y[20:]

    with pytest.raises(ConfigError, match=r"ids up to 2 .* classes=2 outputs; set classes >= 3"):
        _ = ThreeClasses(data=str(tmp_path), classes=2, **QUIET).data
    # NT3's own files: the labels are checked as they are read
    rows = "\n".join(f"{i % 3},{i},{i + 1}" for i in range(9))
    for name in ("nt_train2.csv", "nt_test2.csv"):
        (tmp_path / name).write_text(rows)
    with pytest.raises(CandleError, match="set classes to the number of classes"):
        _ = NT3TDA(data=str(tmp_path), classes=2, **QUIET).data


def test_tda_trainers_keep_the_models_defaults():
    import dataclasses

    nt3, tc1, p1b1 = NT3TDA().params, TC1TDA().params, P1B1TDA().params
    assert (nt3.optimizer, nt3.batch_size, nt3.epochs) == ("sgd", 20, 400)  # the original's
    assert (tc1.learning_rate, tc1.classes, p1b1.batch_size) == (0.01, 36, 100)
    assert not nt3.tensorboard  # a plan runs many small trials
    (split_seed,) = (f for f in dataclasses.fields(UnoTDA.params_class) if f.name == "split_seed")
    assert "every group" in split_seed.metadata["help"]  # TDA's meaning of the shared name
