"""``python -m candle``: help, train, config precedence end to end, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from candle.cli import EXIT_INTERRUPTED, main

ROOT = Path(__file__).resolve().parents[1]
TINY = "candle.testing:TinyTrainer"


def resolved(run_dir):
    return yaml.safe_load((Path(run_dir) / "params.yaml").read_text())


def test_python_m_candle_help_answers():
    proc = subprocess.run(
        [sys.executable, "-m", "candle", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "train" in proc.stdout and "--trainer" in proc.stdout


def test_train_from_the_command_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "candle",
            "train",
            "--trainer",
            TINY,
            "epochs=2",
            "--lr",
            "0.01",
            "--progress-bar",
            "false",
            f"run_dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"run directory: {tmp_path / 'run'}" in proc.stdout
    assert "tensorboard --logdir" in proc.stdout
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "completed" and len(result["history"]) == 2
    assert resolved(tmp_path / "run")["learning_rate"] == 0.01


def test_precedence_file_env_cli(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("epochs: 4\nhidden: 5\nbatch_size: 8\nlearning_rate: 1e-3\n")
    monkeypatch.setenv("CANDLE_EPOCHS", "3")
    monkeypatch.setenv("CANDLE_BATCH_SIZE", "16")
    rc = main(
        ["train", "--trainer", TINY, str(cfg), "--epochs", "2", "run_dir=r", "progress_bar=false"]
    )
    assert rc == 0
    p = resolved("r")
    assert (p["epochs"], p["batch_size"], p["hidden"], p["learning_rate"]) == (2, 16, 5, 0.001)


def test_legacy_candle_default_model_file(tmp_path):
    ini = tmp_path / "tiny_default_model.txt"
    ini.write_text(
        "[Global_Params]\nepochs=2\nbatch_size=20\nlearning_rate=0.005\n"
        "optimizer='sgd'\nrng_seed=7\n\n[Monitor_Params]\nhidden=12\n"
    )
    assert main(["train", "--trainer", TINY, str(ini), "run_dir=r", "progress_bar=false"]) == 0
    p = resolved("r")
    assert (p["epochs"], p["batch_size"], p["optimizer"], p["seed"], p["hidden"]) == (
        2,
        20,
        "sgd",
        7,
        12,
    )


def test_trainer_help_lists_its_params(capsys):
    assert main(["train", "--trainer", TINY, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--hidden" in out and "--learning-rate" in out and "TinyParams" in out


def test_trainer_from_a_file_path(tmp_path):
    rc = main(
        [
            "train",
            "--trainer",
            str(ROOT / "examples/quickstart.py:BreastCancer"),
            "epochs=2",
            "run_dir=bc",
            "progress_bar=false",
        ]
    )
    assert rc == 0
    result = json.loads(Path("bc/result.json").read_text())
    assert result["metrics"]["val_accuracy"] > 0.8


def test_time_limit_exit_code(tmp_path):
    (tmp_path / "slow.py").write_text(
        "import time\nfrom candle.testing import TinyTrainer\n"
        "class Slow(TinyTrainer):\n"
        "    def training_step(self, batch):\n"
        "        time.sleep(0.05)\n"
        "        return super().training_step(batch)\n"
    )
    rc = main(
        [
            "train",
            "--trainer",
            str(tmp_path / "slow.py:Slow"),
            "epochs=5",
            "time_limit=1s",
            "run_dir=r",
            "progress_bar=false",
        ]
    )
    assert rc == EXIT_INTERRUPTED
    assert json.loads(Path("r/result.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["train", "--trainer", TINY, "epoch=3"], ["'epoch'", "did you mean 'epochs'"]),
        (["train", "--trainer", TINY, "--lr", "fast"], ["learning_rate", "'fast'", "float"]),
        (["train", "--trainer", TINY, "optimizer=adamm"], ["adamm", "did you mean 'adam'"]),
        (["train", "--trainer", TINY, "missing.yaml"], ["missing.yaml"]),
        (["train", "--trainer", "nosuchmodule:X"], ["cannot import", "nosuchmodule"]),
        (["train", "--trainer", "candle.testing:Nope"], ["no class 'Nope'", "TinyTrainer"]),
        (["train", "--trainer", "candle.testing:TinyParams"], ["not a subclass of candle.Trainer"]),
        (["train", "--trainer", "candle.testing"], ["nor a registered model name"]),
        (["train", "--trainer", "nofile.py:X"], ["nofile.py", "does not exist"]),
        (["train"], ["needs --trainer"]),
        (["fly"], ["unknown command 'fly'"]),
    ],
)
def test_bad_command_lines_exit_2_with_a_clear_message(argv, fragments, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    assert not Path("runs").exists()  # nothing started


def test_failed_run_exits_1(tmp_path, capsys):
    (tmp_path / "nan.py").write_text(
        "from candle.testing import TinyTrainer\n"
        "class Nan(TinyTrainer):\n"
        "    def training_step(self, batch):\n"
        "        return super().training_step(batch) * float('inf')\n"
    )
    rc = main(
        ["train", "--trainer", str(tmp_path / "nan.py:Nan"), "run_dir=r", "progress_bar=false"]
    )
    assert rc == 1
    assert "NonFiniteLossError" in capsys.readouterr().err
    assert json.loads(Path("r/result.json").read_text())["status"] == "failed"
