"""The study report from a hand-built store: files, best-trial order for min and max, the best
config, planted parameter importance, TensorBoard HParams runs, the HTML's counts."""

from __future__ import annotations

import csv
import math
import re

import numpy as np
import pytest
import yaml

from candle.search.report import _importance, _param_kinds, _ranked, write_report
from candle.workflow.store import Store

TRAINER = "examples/quickstart.py:BreastCancer"
FIXED = {"epochs": 9, "batch_size": 32}
SPACE = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
    "hidden": {"type": "int", "low": 8, "high": 256, "log": True},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "momentum": {"type": "float", "low": 0.0, "high": 0.99, "when": {"optimizer": ["sgd"]}},
    "batch_norm": {"type": "categorical", "choices": [True, False]},
    "dropout": 0.1,  # fixed
}


def _loss(lr: float) -> float:
    """The planted objective: only the learning rate matters (best at 10**-2.5)."""
    return (math.log10(lr) + 2.5) ** 2 + 0.1


def _build(study_dir, mode="min", n_done=20, seed=0):
    """A study: ``n_done`` done trials, 3 pruned (2 with an objective better than any done
    one, which must not be ranked), 2 failed, 1 done with a NaN objective, 1 running, 1
    queued. Objectives are the raw metric: ``_loss`` for min, ``-_loss`` for max."""
    rng = np.random.default_rng(seed)
    sign = 1.0 if mode == "min" else -1.0
    cfg = {
        "name": "s",
        "trainer": TRAINER,
        "params": FIXED,
        "space": SPACE,
        "objective": {"metric": "val_loss", "mode": mode},
    }
    store = Store(study_dir / "study.db")
    sid = store.create_study("s", cfg, {}, study_dir)
    t0 = 1_700_000_000.0
    plan = ["done"] * n_done + ["pruned"] * 3 + ["failed"] * 2 + ["nan", "running", "queued"]
    ids = {}
    for i, status in enumerate(plan):
        params = {
            "learning_rate": float(10 ** rng.uniform(-4, -1)),
            "hidden": int(rng.integers(8, 257)),
            "optimizer": ["sgd", "adam"][i % 2],
            "batch_norm": bool(rng.integers(2)),
            "dropout": 0.1,
        }
        if params["optimizer"] == "sgd":
            params["momentum"] = float(rng.uniform(0, 0.99))
        tid = store.add_trial(sid, params, trial_dir=study_dir / f"t{i}", resources={})
        ids.setdefault(status, []).append(tid)
        value = _loss(params["learning_rate"])
        fields = {"started_at": t0 + 10 * i, "busy_s": 5.0 + i}
        if status in ("done", "nan"):
            fields.update(status="done", segment=9, ended_at=t0 + 10 * i + 30)
            fields["objective"] = sign * value if status == "done" else float("nan")
            fields["metrics"] = {"val_loss": value, "accuracy": 1 - value / 10, "epoch": 9}
            store.add_metrics(tid, [{"epoch": e, "val_loss": value + 1 / e} for e in (1, 3, 9)])
        elif status == "pruned":
            better = len(ids["pruned"]) <= 2
            fields.update(status="pruned", segment=3, ended_at=t0 + 10 * i + 12)
            fields["objective"] = sign * (0.0 if better else value + 1)
            fields["reason"] = "asha: not promoted"
            store.add_metrics(tid, [{"epoch": 1, "val_loss": 9.9}, {"epoch": 3, "val_loss": 9.0}])
        elif status == "failed":
            fields.update(status="failed", ended_at=t0 + 10 * i + 3, reason="killed by SIGKILL")
        else:
            fields = {"status": status} if status == "running" else {}
        if fields:
            store.update_trial(tid, **fields)
    trials = store.trials(sid)
    store.close()
    return trials, ids


def _read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("mode", ["min", "max"])
def test_report_files_order_and_best_config(tmp_path, mode):
    trials, ids = _build(tmp_path, mode=mode)
    page = write_report(tmp_path)
    out = tmp_path / "report"
    assert page == out / "report.html"
    for name in ("report.html", "best_trials.csv", "best_config.yaml", "convergence.png",
                 "params.png", "importance.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    done = [t for t in trials if t.trial_id in ids["done"]]
    best_first = sorted(done, key=lambda t: t.objective if mode == "min" else -t.objective)
    rows = _read_csv(out / "best_trials.csv")
    assert [int(r["trial_id"]) for r in rows] == [t.trial_id for t in best_first[:10]]
    # the searched params (by name: the store keeps JSON with sorted keys), then the others
    assert list(rows[0]) == [
        "trial_id", "objective", "batch_norm", "hidden", "learning_rate", "momentum",
        "optimizer", "dropout", "busy_s", "epochs",
    ]  # fmt: skip
    for row, t in zip(rows, best_first, strict=False):
        assert float(row["objective"]) == pytest.approx(t.objective)
        assert float(row["learning_rate"]) == pytest.approx(t.params["learning_rate"])
        assert row["momentum"] == ("" if t.params["optimizer"] == "adam" else row["momentum"])
        assert row["epochs"] == "9" and float(row["busy_s"]) == pytest.approx(t.busy_s)
    values = [float(r["objective"]) for r in rows]
    assert values == sorted(values, reverse=(mode == "max"))
    pruned_ids = set(ids["pruned"])
    assert not pruned_ids & {int(r["trial_id"]) for r in rows}  # pruned never ranked

    best = best_first[0]
    text = (out / "best_config.yaml").read_text()
    assert yaml.safe_load(text) == {**FIXED, **best.params}
    assert f"trial {best.trial_id}" in text.splitlines()[0]
    assert f"python -m candle train --trainer {TRAINER} best_config.yaml" in text

    html = page.read_text()
    for status, n in [("done", 21), ("pruned", 3), ("failed", 2), ("running", 1), ("queued", 1)]:
        assert f"<td>{status}</td><td>{n}</td>" in html
    assert "<td>done without a finite objective</td><td>1</td>" in html
    assert "failed: killed by SIGKILL" in html and "pruned: asha: not promoted" in html
    assert f"{best.objective:.6g} (trial {best.trial_id})" in html
    for img in ("convergence.png", "params.png", "importance.png"):
        assert f"src='{img}'" in html
    # the importance table lists the planted parameter first
    section = html.split("<h2>Parameter importance</h2>", 1)[1]
    first = re.search(r"<tr><td>([^<]+)</td>", section).group(1)
    assert first == "learning_rate"


def test_importance_ranks_the_planted_parameter_first(tmp_path):
    trials, _ = _build(tmp_path, n_done=30, seed=1)
    ranked = _ranked(trials, "min")
    result = _importance(ranked, _param_kinds(SPACE, trials))
    rows = result["rows"]
    assert rows[0]["param"] == "learning_rate"
    assert rows[0]["share"] > 0.7
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert {r["param"] for r in rows} == set(SPACE) - {"dropout"}
    assert result["r2"] > 0.5


def test_param_kinds_from_the_space_or_from_the_values(tmp_path):
    trials, _ = _build(tmp_path, n_done=6)
    kinds = _param_kinds(SPACE, trials)
    assert kinds == {
        "learning_rate": ("log", []),
        "hidden": ("log", []),
        "optimizer": ("categorical", ["sgd", "adam"]),
        "momentum": ("linear", []),
        "batch_norm": ("categorical", [True, False]),
    }
    guessed = _param_kinds(None, trials)  # no space: varying params, by their values
    assert guessed["optimizer"] == ("categorical", ["sgd", "adam"])
    assert guessed["learning_rate"] == ("linear", []) and "dropout" not in guessed


def test_tensorboard_hparams_one_run_per_trial(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    trials, ids = _build(tmp_path, n_done=5)
    write_report(tmp_path, tmp_path / "out")
    root = tmp_path / "out" / "tensorboard"
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    assert [p.name for p in runs] == [f"trial_{t.trial_id:05d}" for t in trials]
    for run in runs:
        assert len(list(run.glob("events.out.tfevents.*"))) == 1

    best = min((t for t in trials if t.trial_id in ids["done"]), key=lambda t: t.objective)
    acc = EventAccumulator(str(root / f"trial_{best.trial_id:05d}"))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content[metadata.SESSION_START_INFO_TAG]
    ).session_start_info
    assert start.hparams["learning_rate"].number_value == pytest.approx(
        best.params["learning_rate"]
    )
    assert start.hparams["optimizer"].string_value == best.params["optimizer"]
    assert start.hparams["status"].string_value == "done"
    assert start.hparams["batch_norm"].string_value == str(best.params["batch_norm"]).lower()
    assert acc.Scalars("val_loss")[0].value == pytest.approx(best.objective)
    assert acc.Scalars("last/accuracy")[0].step == 9

    exp_acc = EventAccumulator(str(root))
    exp_acc.Reload()
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        exp_acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG]
    ).experiment
    assert {h.name for h in experiment.hparam_infos} >= {"learning_rate", "momentum", "status"}
    assert [m.name.tag for m in experiment.metric_infos] == ["val_loss", "last/accuracy",
                                                             "last/val_loss"]  # fmt: skip

    write_report(tmp_path, tmp_path / "out")  # a second report replaces the runs
    assert len(list((root / runs[0].name).glob("events.out.tfevents.*"))) == 1


def test_report_with_few_or_no_done_trials(tmp_path):
    _build(tmp_path, n_done=3)  # 3 done (+1 NaN): too few for importance
    html = write_report(tmp_path).read_text()
    assert "Parameter importance skipped: 3 done trial(s)" in html
    assert not (tmp_path / "report" / "importance.png").exists()
    assert len(_read_csv(tmp_path / "report" / "best_trials.csv")) == 3

    empty = tmp_path / "empty"
    empty.mkdir()
    store = Store(empty / "study.db")
    store.create_study("e", {"trainer": TRAINER, "objective": {"metric": "auc", "mode": "max"}},
                       {}, empty)  # fmt: skip
    store.close()
    html = write_report(empty).read_text()
    assert "No done trial with a finite objective yet." in html
    assert not (empty / "report" / "best_config.yaml").exists()
    assert _read_csv(empty / "report" / "best_trials.csv") == []
    assert (empty / "report" / "convergence.png").exists()
