"""Exact resume: a run killed with SIGKILL mid-epoch and resumed ends bitwise equal to an
uninterrupted run (real subprocesses, real SIGKILL)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("_resume_script.py")


def _run(run_dir, kill_at, resume, out, **kw):
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(run_dir), str(kill_at), "1" if resume else "0", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    proc = _run(d / "run", 0, False, d / "w.pt")
    assert proc.returncode == 0, proc.stderr
    return torch.load(d / "w.pt", weights_only=True), d / "run"


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


# step 10: mid-epoch 2, one step after the checkpoint at 9;  step 17: mid-epoch 3, two steps
# after the checkpoint at 15 (epochs have 7 optimizer steps, checkpoints every 3 steps).
@pytest.mark.parametrize("kill_at", [10, 17])
def test_sigkill_mid_epoch_then_resume_is_bitwise_exact(tmp_path, reference, kill_at):
    ref_weights, ref_dir = reference
    run = tmp_path / "run"
    killed = _run(run, kill_at, False, tmp_path / "unused.pt")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert f"step {kill_at}" in killed.stdout
    assert not (tmp_path / "unused.pt").exists()
    status = json.loads((run / "result.json").read_text())["status"]
    assert status == "running"  # the killed process never wrote a final status

    resumed = _run(run, 0, True, tmp_path / "w.pt")
    assert resumed.returncode == 0, resumed.stderr
    # it continued rather than restarting: the first step it ran is after the checkpoint
    first_step = int(resumed.stdout.split("step ")[1].split()[0])
    assert first_step == (kill_at // 3) * 3 + 1
    _assert_same(torch.load(tmp_path / "w.pt", weights_only=True), ref_weights)

    # the run's records match the uninterrupted run's, with no duplicated epochs
    ref_rows = (ref_dir / "metrics.jsonl").read_text().splitlines()
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 4
    assert [json.loads(r)["train_loss"] for r in rows] == [
        json.loads(r)["train_loss"] for r in ref_rows
    ]
    assert json.loads((run / "result.json").read_text())["status"] == "completed"


def test_external_sigkill_at_an_arbitrary_moment(tmp_path, reference):
    """Killed from outside at a moment we do not choose (maybe inside a checkpoint write)."""
    ref_weights, _ = reference
    run = tmp_path / "run"
    with subprocess.Popen(
        [sys.executable, str(SCRIPT), str(run), "0", "0", str(tmp_path / "unused.pt")],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        for line in proc.stdout:  # wait until training is under way, then kill
            if line.startswith("step 12"):
                break
        time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    resumed = _run(run, 0, True, tmp_path / "w.pt")
    assert resumed.returncode == 0, resumed.stderr
    _assert_same(torch.load(tmp_path / "w.pt", weights_only=True), ref_weights)


def test_corrupt_latest_checkpoint_falls_back_and_stays_exact(tmp_path, reference):
    ref_weights, _ = reference
    run = tmp_path / "run"
    assert _run(run, 17, False, tmp_path / "unused.pt").returncode == -signal.SIGKILL
    ckpt_dir = run / "checkpoints"
    last = ckpt_dir / (ckpt_dir / "last").read_text().strip()
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated by a bad disk
    resumed = _run(run, 0, True, tmp_path / "w.pt")
    assert resumed.returncode == 0, resumed.stderr
    log = (run / "train.log").read_text()
    assert last.name in log and "WARNING" in log  # the fallback is logged, naming the file
    first_step = int(resumed.stdout.split("step ")[1].split()[0])
    # from the checkpoint before the corrupt one: the end of epoch 2 (step 14)
    assert first_step == 15
    _assert_same(torch.load(tmp_path / "w.pt", weights_only=True), ref_weights)
