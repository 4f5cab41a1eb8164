"""The workflow engine: trials in their own processes, the local executor, faults, segments,
checks before start, and a driver killed with SIGKILL and resumed (real processes throughout)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from candle.errors import ConfigError
from candle.workflow import LocalExecutor, Resources, TrialSpec, load_study_config, run_study
from candle.workflow.store import Store
from candle.workflow.trial import run_trial, trial_command

HERE = Path(__file__).parent
FAULTY = f"{HERE / '_wf_trainers.py'}:FaultyTrainer"
ENV = f"{HERE / '_wf_trainers.py'}:EnvTrainer"
TINY = {"epochs": 3, "n_samples": 96, "hidden": 4, "tensorboard": False}


def study(tmp_path, **kw):
    cfg = {
        "name": "t",
        "trainer": FAULTY,
        "directory": str(tmp_path / "study"),
        "params": dict(TINY),
        "executor": {"kind": "local", "slots": 2},
        "grace": 2,
    }
    cfg.update(kw)
    return cfg


def records(tmp_path, name="study"):
    with Store(tmp_path / name / "study.db", readonly=True) as store:
        return {t.key: t for t in store.trials()}


def attempts_in_log(trial_dir) -> int:
    text = (Path(trial_dir) / "trial.log").read_text()
    return sum(line.startswith("=== trial ") for line in text.splitlines())


# --------------------------------------------------------------------------- happy path


def test_grid_study_runs_trials_in_parallel_and_records_them(tmp_path):
    cfg = study(tmp_path, grid={"learning_rate": [0.01, 0.05], "hidden": [4, 8]})
    summary = run_study(cfg, progress=False)
    assert summary.counts["done"] == 4 and summary.counts["failed"] == 0
    trials = records(tmp_path)
    assert sorted(trials) == ["t0", "t1", "t2", "t3"]
    for t in trials.values():
        result = json.loads((Path(t.trial_dir) / "result.json").read_text())
        assert t.status == "done" and t.attempt == 1
        assert t.objective == result["objective"]["value"]
        assert t.params["learning_rate"] in (0.01, 0.05) and t.segment == 3
        assert t.busy_s > 0 and t.host
    best = min(trials.values(), key=lambda t: t.objective)
    assert summary.best.trial_id == best.trial_id
    # two slots: some trials ran at the same time
    spans = sorted((t.started_at, t.ended_at) for t in trials.values())
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans))
    with Store(tmp_path / "study" / "study.db", readonly=True) as store:
        t = trials["t0"]
        epochs = {m["epoch"] for m in store.metrics(t.trial_id)}
        assert epochs == {1, 2, 3}
        kinds = {a["kind"] for a in store.artifacts(t.trial_id)}
        assert kinds == {"result", "checkpoint"}
        ckpt = next(a for a in store.artifacts(t.trial_id) if a["kind"] == "checkpoint")
        import hashlib

        digest = hashlib.sha256(Path(ckpt["path"]).read_bytes()).hexdigest()
        assert ckpt["checksum"] == f"sha256:{digest}"
        study_row = store.study(store.study_id())
        assert study_row["provenance"]["versions"]["torch"].startswith("2.13")


def test_local_executor_hands_out_gpus_whole_and_threads(tmp_path):
    """Four trials asking one GPU each, on a fake machine with 2 GPUs and 2 slots: never two
    trials on one GPU at a time, and each trial gets exactly what CUDA_VISIBLE_DEVICES names."""
    lock, holding, seen, clashes = threading.Lock(), set(), [], []

    def runner(spec, gpus):
        with lock:
            clashes.extend(g for g in gpus if g in holding)
            holding.update(gpus)
            seen.append(tuple(gpus))
        time.sleep(0.2)
        with lock:
            holding.difference_update(gpus)
        return {"gpus": gpus}

    ex = LocalExecutor(2, cpus=4, gpus=[0, 1], runner=runner)
    r = Resources(gpus_per_rank=1)
    futs = [ex.submit(TrialSpec(i, "m:C", {}, str(tmp_path), r)) for i in range(4)]
    assert all(len(f.result(10)["gpus"]) == 1 for f in futs)
    ex.shutdown()
    assert clashes == [] and sorted(seen) == [(0,), (0,), (1,), (1,)]
    with pytest.raises(ConfigError, match="ask for 2 GPU"):
        LocalExecutor(1, gpus=[0]).check(Resources(gpus_per_rank=1, ranks=2, launcher="torchrun"))
    with pytest.raises(ConfigError, match="nodes: 2 cannot run on the local executor"):
        LocalExecutor(1, gpus=[]).check(Resources(ranks=2, nodes=2, launcher="horovodrun"))


def test_trial_sees_its_gpus_and_threads(tmp_path):
    spec = TrialSpec(7, ENV, dict(TINY, epochs=1), str(tmp_path / "t"), Resources(threads=2))
    out = run_trial(spec.to_dict(), gpu_ids=[1, 3])
    assert out["status"] == "done", out
    env = json.loads((tmp_path / "t" / "env.json").read_text())
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3" and env["OMP_NUM_THREADS"] == "2"
    assert env["torch_threads"] == 2
    assert (env["CANDLE_TRIAL_ID"], env["CANDLE_TRIAL_ATTEMPT"]) == ("7", "1")
    run_trial({**spec.to_dict(), "attempt": 2}, gpu_ids=[])
    env = json.loads((tmp_path / "t" / "env.json").read_text())
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # asked for none: sees none


def test_launcher_command_lines():
    def cmd(**r):
        spec = TrialSpec(1, "m:C", {}, "/d", Resources(**r), stop_at_epoch=4)
        return trial_command(spec, python="py")

    assert cmd()[:4] == ["py", "-m", "candle", "train"]
    assert "stop_at_epoch=4" in cmd() and "resume=true" in cmd()
    hv = cmd(ranks=2, launcher="horovodrun")
    assert hv[0].endswith("horovodrun") and hv[1:5] == ["-np", "2", "-H", "localhost:2"]
    assert cmd(ranks=4, launcher="torchrun")[1:5] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
    ]
    assert cmd(ranks=3, launcher="mpiexec")[1:3] == ["-n", "3"]
    assert cmd(ranks=8, nodes=2, launcher="srun")[1:3] == ["--ntasks=8", "--nodes=2"]
    spec = TrialSpec(1, "m:C", {}, "/d", Resources(ranks=2, launcher="mpiexec"))
    spec.launch_prefix = ["mpiexec", "-n", "2", "--hosts", "a,b"]
    assert trial_command(spec, python="py")[:6] == ["mpiexec", "-n", "2", "--hosts", "a,b", "py"]


# --------------------------------------------------------------------------- faults


def test_faults_are_recorded_with_reasons_and_the_study_goes_on(tmp_path):
    cfg = study(
        tmp_path,
        retries=0,
        time_limit=8,
        trials=[
            {"fault": "none"},
            {"fault": "raise"},
            {"fault": "nan"},
            {"fault": "sigkill"},
            {"fault": "hang"},
        ],
    )
    summary = run_study(cfg, progress=False)
    assert summary.counts["done"] == 1 and summary.counts["failed"] == 4
    trials = records(tmp_path)
    ok, raised, nan, killed, hung = (trials[f"t{i}"] for i in range(5))
    assert ok.status == "done"
    assert "RuntimeError: planted failure in epoch 1" in raised.reason
    assert "planted failure" in raised.error and "end of trial.log" in raised.error
    assert nan.status == "failed" and "training loss became nan" in nan.reason
    assert killed.reason.startswith("killed by SIGKILL")
    assert hung.reason == "time limit of 8 s"
    assert all(t.attempt == 1 for t in trials.values())  # retries: 0
    # the hung trial's processes are gone
    assert not _processes_in(Path(hung.trial_dir))


def test_retries_continue_from_the_last_checkpoint(tmp_path):
    cfg = study(
        tmp_path,
        retries=1,
        params=dict(TINY, epochs=4),
        trials=[{"fault": "sigkill_once", "fault_epoch": 2}, {"fault": "segv_once"}],
    )
    summary = run_study(cfg, progress=False)
    assert summary.counts["done"] == 2
    trials = records(tmp_path)
    with Store(tmp_path / "study" / "study.db", readonly=True) as store:
        for t in trials.values():
            assert t.attempt == 2 and t.status == "done" and t.segment == 4
            first, second = store.attempts(t.trial_id)
            assert first["status"] == "killed" and second["status"] == "done"
            log = (Path(t.trial_dir) / "train.log").read_text()
            assert "resumed from" in log  # not retrained from scratch
        sigs = {t.key: store.attempts(t.trial_id)[0]["reason"] for t in trials.values()}
    assert sigs["t0"].startswith("killed by SIGKILL") and sigs["t1"] == "killed by SIGSEGV"
    # resumed at epoch 2: the retry trained epochs 3 and 4 only
    log = (Path(trials["t0"].trial_dir) / "train.log").read_text()
    assert "resumed from" in log and "(epoch 2," in log


def test_a_raising_trial_is_retried_then_recorded_failed(tmp_path):
    cfg = study(tmp_path, retries=2, trials=[{"fault": "raise"}])
    summary = run_study(cfg, progress=False)
    assert summary.counts["failed"] == 1
    trials = records(tmp_path)
    assert trials["t0"].attempt == 3 and attempts_in_log(trials["t0"].trial_dir) == 3


def test_segments_return_to_the_driver_and_continue(tmp_path):
    cfg = study(tmp_path, segment_epochs=2, params=dict(TINY, epochs=5), trials=[{}])
    summary = run_study(cfg, progress=False)
    assert summary.counts["done"] == 1
    trials = records(tmp_path)
    with Store(tmp_path / "study" / "study.db", readonly=True) as store:
        t = trials["t0"]
        rows = store.attempts(t.trial_id)
        assert [(a["status"], a["segment"]) for a in rows] == [
            ("paused", 2),
            ("paused", 4),
            ("done", 5),
        ]
        assert sorted({m["epoch"] for m in store.metrics(t.trial_id)}) == [1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"trails": []}, "unknown key(s) trails (did you mean 'trials'"),
        ({"trainer": "no_such_module:X"}, "cannot import 'no_such_module'"),
        ({"trainer": "nt3x"}, "neither 'module:Class' nor a registered model name"),
        ({"grid": {"learing_rate": [0.1]}}, "learing_rate"),
        ({"trials": [{"learning_rate": -1}]}, "learning_rate"),
        ({"resources": {"gpus_per_rank": 1}}, "ask for 1 GPU(s) per trial"),
        ({"resources": {"ranks": 2}}, "ranks: 2 needs a launcher"),
        ({"resources": {"ranks": 2, "nodes": 2, "launcher": "srun"}}, "nodes: 2 cannot run"),
        ({"resources": {"cpus": 2}}, "unknown key(s) cpus"),
        ({"executor": {"kind": "slurm"}}, "executor.kind must be one of local, parsl"),
        ({"executor": {"kind": "local", "slots": 0}}, "executor.slots must be an integer >= 1"),
        ({"time_limit": "soon"}, "`time_limit` must be seconds"),
        ({"retries": -1}, "`retries` must be an integer >= 0"),
        ({"grid": {"hidden": []}}, "grid.hidden must be a non-empty list"),
    ],
)
def test_bad_study_configs_fail_before_any_trial_starts(tmp_path, change, message):
    cfg = study(tmp_path, **change)
    with pytest.raises(ConfigError) as e:
        run_study(cfg, progress=False)
    assert message in str(e.value)
    assert not (tmp_path / "study").exists()


def test_existing_study_needs_resume_and_resume_needs_a_study(tmp_path):
    cfg = study(tmp_path, trials=[{}], params=dict(TINY, epochs=1))
    with pytest.raises(ConfigError, match="no study to continue"):
        run_study(cfg, resume=True, progress=False)
    run_study(cfg, progress=False)
    with pytest.raises(ConfigError, match="already holds a study"):
        run_study(cfg, progress=False)
    assert run_study(cfg, resume=True, progress=False).counts["done"] == 1  # nothing left


def test_study_file_and_cli(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        f"name: cli\ntrainer: {FAULTY}\ndirectory: {tmp_path / 'cli'}\n"
        "params: {epochs: 2, n_samples: 64, tensorboard: false}\n"
        "grid: {learning_rate: [0.01, 0.1]}\nexecutor: {kind: local, slots: 2}\n"
    )
    assert load_study_config(path).grid == {"learning_rate": [0.01, 0.1]}
    run = subprocess.run(
        [sys.executable, "-m", "candle", "study", str(path), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "study cli: 2 done" in run.stdout
    listing = subprocess.run(
        [sys.executable, "-m", "candle", "runs", "list", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0 and listing.stdout.count(" done ") == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrainer: nope:Nope\n")
    run = subprocess.run(
        [sys.executable, "-m", "candle", "study", str(bad)], capture_output=True, text=True
    )
    assert run.returncode == 2 and "cannot import 'nope'" in run.stderr


# --------------------------------------------------------------------------- driver killed


def _processes_in(trial_dir: Path) -> list[int]:
    """PIDs of live processes whose command line mentions ``trial_dir``."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if str(trial_dir) in cmdline and state != "Z":
            out.append(int(pid))
    return out


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _running_with_checkpoint(db: Path) -> bool:
    with Store(db, readonly=True) as store:
        running = store.trials(status="running")
    for t in running:
        if list(Path(t.trial_dir, "checkpoints").glob("ckpt-*.pt")):
            result = Path(t.trial_dir, "result.json")
            if not result.exists() or json.loads(result.read_text())["status"] == "running":
                return True
    return False


def _counts(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    try:
        with Store(db, readonly=True) as store:
            return store.counts(store.study_id())
    except Exception:  # created but the study row not written yet
        return {}


@pytest.mark.slow
def test_driver_killed_at_several_points_and_resumed_loses_and_repeats_nothing(tmp_path):
    """SIGKILL the driver (a real `python -m candle study` process) while trials run: right
    after the first trial starts, after 2 are done, after 5; resume each time. Then: 8 trials,
    all done; none that was done before a kill ran again; interrupted ones resumed from their
    checkpoints; no trial process outlived its driver."""
    path = tmp_path / "s.yaml"
    directory = tmp_path / "kill"
    path.write_text(
        json.dumps(
            {
                "name": "kill",
                "trainer": FAULTY,
                "directory": str(directory),
                "params": dict(TINY, epochs=4, epoch_sleep=0.4),
                "grid": {"seed": list(range(8))},
                "executor": {"kind": "local", "slots": 2},
                "grace": 2,
            }
        )
    )
    path = path.rename(tmp_path / "s.json")
    db = directory / "study.db"

    def driver(resume):
        cmd = [sys.executable, "-m", "candle", "study", str(path), "--quiet"]
        return subprocess.Popen(
            [*cmd, "--resume"] if resume else cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    done_logs: dict[str, int] = {}
    proc = driver(False)
    for i, point in enumerate([("running", 1), ("done", 2), ("done", 5)]):
        status, n = point
        _wait_for(lambda s=status, n=n: _counts(db).get(s, 0) >= n, 120, f"{n} {status}")
        if i == 0:  # kill while a running trial has a checkpoint (to resume from) but is not done
            _wait_for(lambda: _running_with_checkpoint(db), 120, "a checkpoint of a running trial")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Store(db, readonly=True) as store:
            trials = store.trials()
        running = [t for t in trials if t.status == "running"]
        for t in running:  # their supervisors take the trial processes down
            _wait_for(lambda t=t: not _processes_in(Path(t.trial_dir)), 30, "orphans to stop")
        for t in trials:
            if t.status == "done":
                done_logs.setdefault(t.key, attempts_in_log(t.trial_dir))
        proc = driver(True)
    assert proc.wait(300) == 0
    with Store(db, readonly=True) as store:
        trials = store.trials()
    assert len(trials) == 8 and sorted(t.key for t in trials) == [f"t{i}" for i in range(8)]
    assert all(t.status == "done" for t in trials)
    for t in trials:
        if t.key in done_logs:  # done before a kill: not launched again
            assert attempts_in_log(t.trial_dir) == done_logs[t.key], t.key
        result = json.loads((Path(t.trial_dir) / "result.json").read_text())
        assert len(result["history"]) == 4 and t.objective == result["objective"]["value"]
    resumed = [t for t in trials if t.attempt > 1]
    assert resumed, "no trial was interrupted: the kill points missed"
    assert any("resumed from" in (Path(t.trial_dir) / "train.log").read_text() for t in resumed)


# --------------------------------------------------------------------------- several ranks

try:
    import horovod.torch  # noqa: F401

    from candle.testing.processes import find_launcher

    _HOROVODRUN = find_launcher("horovodrun")
except ImportError:
    _HOROVODRUN = None


@pytest.mark.distributed
@pytest.mark.skipif(_HOROVODRUN is None, reason="horovod is not installed")
def test_a_trial_with_two_ranks_runs_under_horovodrun(tmp_path):
    cfg = study(
        tmp_path,
        trainer="candle.testing:TinyTrainer",
        params={"epochs": 2, "n_samples": 128, "hidden": 4, "tensorboard": False},
        resources={"ranks": 2, "launcher": "horovodrun", "threads": 1},
        executor={"kind": "local", "slots": 1},
        trials=[{}],
    )
    summary = run_study(cfg, progress=False)
    trials = records(tmp_path)
    assert summary.counts["done"] == 1, trials["t0"].error
    result = json.loads((Path(trials["t0"].trial_dir) / "result.json").read_text())
    assert result["world_size"] == 2 and len(result["history"]) == 2
    log = (Path(trials["t0"].trial_dir) / "trial.log").read_text()
    assert "horovodrun -np 2 -H localhost:2" in log


def test_the_store_records_the_data_checksum_of_each_trial(tmp_path):
    import numpy as np
    import pandas as pd

    from candle.data import ShardDataset, pack

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(80, 8)), columns=[f"g{i}" for i in range(8)])
    frame["y"] = frame.sum(axis=1)
    frame.to_csv(tmp_path / "t.csv", index=False)
    pack(tmp_path / "t.csv", tmp_path / "ds", target="y", shard_size="4KB")
    cfg = study(
        tmp_path,
        trainer=f"{HERE / '_wf_trainers.py'}:ShardFileTrainer",
        params={"epochs": 1, "tensorboard": False, "data_dir": str(tmp_path / "ds")},
        trials=[{"learning_rate": 0.01}],
    )
    assert run_study(cfg, progress=False).counts["done"] == 1
    data = records(tmp_path)["t0"].extra["data"]
    checksum = ShardDataset(tmp_path / "ds").checksum
    assert data["train"]["checksum"] == data["val"]["checksum"] == checksum


def test_the_example_study_runs(tmp_path):
    """examples/study.yaml as shipped (fewer epochs, its own directory)."""
    import yaml

    root = HERE.parent
    cfg = yaml.safe_load((root / "examples" / "study.yaml").read_text())
    cfg["directory"] = str(tmp_path / "example")
    cfg["params"]["epochs"] = 2
    cfg["trainer"] = str(root / cfg["trainer"])
    summary = run_study(cfg, progress=False)
    assert summary.counts["done"] == 6 and summary.best.objective < 0.7  # ln 2 = chance


def test_ctrl_c_on_the_driver_stops_its_trials_and_resume_continues(tmp_path):
    path = tmp_path / "s.json"
    directory = tmp_path / "int"
    path.write_text(
        json.dumps(
            {
                "name": "int",
                "trainer": FAULTY,
                "directory": str(directory),
                "params": dict(TINY, epochs=6, epoch_sleep=1.5),  # trials of 9 s and more
                "grid": {"seed": [0, 1]},
                "executor": {"kind": "local", "slots": 2},
                "grace": 2,
            }
        )
    )
    cmd = [sys.executable, "-m", "candle", "study", str(path), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = directory / "study.db"
    _wait_for(lambda: _counts(db).get("running", 0) >= 2, 60, "2 running trials")
    with Store(db, readonly=True) as store:
        dirs = [Path(t.trial_dir) for t in store.trials()]
    _wait_for(lambda: all((d / "result.json").exists() for d in dirs), 60, "trials to start")
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    proc.wait(30)
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 5  # it stopped its trials rather than wait for them
    for d in dirs:
        _wait_for(lambda d=d: not _processes_in(d), 5, f"the trial in {d} to stop")
    assert _counts(db)["running"] == 2
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert _counts(db)["done"] == 2


def test_command_line_executor_overrides():
    import argparse

    from candle.workflow.executors import add_executor_arguments, executor_from_arguments

    ap = argparse.ArgumentParser()
    add_executor_arguments(ap)
    base = {"kind": "local", "slots": 2}

    def over(*argv):
        return executor_from_arguments(ap.parse_args(list(argv)), base)

    assert over() == base
    assert over("--slots", "4") == {"kind": "local", "slots": 4}
    assert over("--site", "pbs") == {"kind": "parsl", "site": "pbs"}
    assert over("--site", "my_cluster.py") == {"kind": "parsl", "config": "my_cluster.py"}
    assert over("--executor", "parsl", "--parsl-config", "c.py") == {
        "kind": "parsl",
        "config": "c.py",
    }
    # a parsl section keeps its slots and run_dir; its options only for the same site
    base = {"kind": "parsl", "site": "slurm", "slots": 8, "run_dir": "r", "options": {"qos": "x"}}
    assert over("--site", "slurm") == base
    assert over("--site", "pbs") == {"kind": "parsl", "site": "pbs", "slots": 8, "run_dir": "r"}
    assert over("--site", "c.py", "--slots", "3") == {
        "kind": "parsl",
        "slots": 3,
        "run_dir": "r",
        "config": "c.py",
    }
