"""Every example runs as written (at a smaller size where it would take minutes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from candle.testing.processes import find_launcher

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def test_quickstart_from_python(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    from quickstart import BreastCancer

    result = BreastCancer(epochs=3, output_dir=str(tmp_path), progress_bar=False).fit()
    assert result.status == "completed"
    assert result.last_metrics["val_accuracy"] > 0.85


def test_quickstart_trainer_is_about_30_lines():
    """The tour promises a 30-line Trainer: params dataclass and class, blank lines aside."""
    text = (EXAMPLES / "quickstart.py").read_text()
    body = text[text.index("@dataclass") :].splitlines()
    assert len([line for line in body if line.strip()]) <= 35


try:
    import horovod.torch  # noqa: F401

    _HOROVOD = ""
except ImportError as e:
    _HOROVOD = f"horovod is not importable ({e})"


@pytest.mark.distributed
@pytest.mark.skipif(
    bool(_HOROVOD) or find_launcher("horovodrun") is None,
    reason=_HOROVOD or "horovodrun is not on PATH",
)
def test_horovod_example_runs_the_quickstart_on_two_ranks(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CANDLE_", "HOROVOD_"))}
    env.update(PY=sys.executable, HOROVODRUN=find_launcher("horovodrun"))
    r = subprocess.run(
        ["bash", str(EXAMPLES / "horovod.sh"), "epochs=2", f"output_dir={tmp_path}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        start_new_session=True,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (result_file,) = (tmp_path / "quickstart-horovod").glob("*/result.json")
    result = json.loads(result_file.read_text())
    assert result["status"] == "completed"
    assert "HorovodStrategy" in (result_file.parent / "train.log").read_text()


@pytest.mark.parametrize("name", ["search_slurm.yaml", "search_pbs.yaml"])
def test_cluster_search_examples_load_and_build_their_parsl_config(name, tmp_path):
    """The site examples are valid search files whose executor builds a Parsl config (nothing is
    submitted: there is no scheduler here)."""
    pytest.importorskip("parsl")
    from candle.search.driver import load_search_config
    from candle.workflow.parsl_executor import ParslExecutor

    sc = load_search_config(EXAMPLES / name)
    section = {k: v for k, v in sc.study.executor.items() if k != "kind"}
    ex = ParslExecutor.from_config({**section, "run_dir": str(tmp_path)})
    assert ex.slots == 8
    (htex,) = ex._config.executors
    assert htex.provider.walltime in ("04:00:00", "01:00:00")
    assert sc.study.resources.gpus_per_rank == 1


def test_nt3_search_example_runs_at_a_smaller_size(tmp_path):
    """examples/search_nt3.yaml as written, with 2 trials of 1 epoch on narrower data."""
    import yaml

    from candle.search.driver import run_search

    cfg = yaml.safe_load((EXAMPLES / "search_nt3.yaml").read_text())
    cfg["directory"] = str(tmp_path / "nt3-search")
    cfg["params"].update(feature_subsample=300, synthetic_samples=80, epochs=1)
    cfg["budget"] = {"trials": 2}
    cfg["scheduler"] = None
    cfg["sampler"] = {"type": "random", "seed": 0}
    summary = run_search(cfg, progress=False)
    assert summary.counts["done"] == 2, summary.counts


def test_tc1_nci60_example_runs_at_a_smaller_size(tmp_path):
    """examples/tc1_nci60.yaml on the real NCI60 data, 1 trial of 2 epochs on 500 genes."""
    pytest.importorskip("ISLP", reason="NCI60 ships in ISLP (pip install --no-deps ISLP)")
    import yaml

    from candle.workflow.study import run_study

    cfg = yaml.safe_load((EXAMPLES / "tc1_nci60.yaml").read_text())
    cfg["directory"] = str(tmp_path / "tc1")
    cfg["params"].update(epochs=2, feature_subsample=500)
    cfg["grid"] = {"learning_rate": [0.001]}
    cfg["repeats"] = 1
    summary = run_study(cfg, progress=False)
    assert summary.counts["done"] == 1, summary.counts


@pytest.mark.distributed
@pytest.mark.skipif(
    bool(_HOROVOD) or find_launcher("horovodrun") is None,
    reason=_HOROVOD or "horovodrun is not on PATH",
)
@pytest.mark.parametrize(
    ("model", "args"),
    [
        ("nt3", ["feature_subsample=200", "synthetic_samples=80"]),
        ("uno", ["feature_subsample=16", "synthetic_samples=200", "dense=[32]"]),
        ("p1b1", ["model=vae", "batch_normalization=true", "feature_subsample=60", "dense=[32,8]"]),
    ],
)
def test_reference_models_train_under_horovodrun(tmp_path, model, args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CANDLE_", "HOROVOD_"))}
    cmd = [find_launcher("horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo"]
    cmd += [sys.executable, "-m", "candle", "train", "--trainer", model, *args]
    cmd += ["epochs=1", "dense_feature_layers=[32]"] if model == "uno" else ["epochs=1"]
    cmd += [f"run_dir={tmp_path / 'run'}", "progress_bar=false", "tensorboard=false"]
    r = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=300, start_new_session=True
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "completed"
    assert "HorovodStrategy" in (tmp_path / "run" / "train.log").read_text()
