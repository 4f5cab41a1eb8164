"""The Parsl executor of the workflow engine, with real Parsl workers on 127.0.0.1.

One Parsl (``site: local``, 2 workers) serves most tests of the module; each trial is a
``candle.testing:TinyTrainer`` run (a few seconds: Python and torch start-up).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("parsl")
psutil = pytest.importorskip("psutil")

from candle.errors import ConfigError  # noqa: E402
from candle.workflow.parsl_executor import ParslExecutor, run_trial_in_worker  # noqa: E402
from candle.workflow.trial import Resources, TrialSpec  # noqa: E402

TRAINER = "candle.testing:TinyTrainer"
FAST = {"epochs": 3, "hidden": 8, "n_samples": 128, "progress_bar": False, "tensorboard": False}
# ~0.5 s an epoch here: long enough to be caught mid-run
SLOW = {**FAST, "epochs": 8, "n_samples": 8000, "batch_size": 8}


def _cmdline(p) -> list[str]:
    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def _find(pred) -> list:
    out = []
    for p in psutil.process_iter():
        cmd = _cmdline(p)
        if cmd and pred(cmd):
            out.append(p)
    return out


def _parsl_processes(ex: ParslExecutor, run_dir: str) -> set:
    """Everything Parsl started for this executor: its interchange, the block's shell and
    worker pool (their command lines name run_dir), their workers, and the trials under them."""
    found = {psutil.Process(e.interchange_proc.pid) for e in ex._executors if e.interchange_proc}
    for p in _find(lambda cmd: any(run_dir in a for a in cmd)):
        found.add(p)
        with contextlib.suppress(psutil.NoSuchProcess):
            found.update(p.children(recursive=True))
    return found


def _assert_all_gone(procs: set, timeout: float) -> None:
    _, alive = psutil.wait_procs(list(procs), timeout=timeout)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, "left running: " + "; ".join(" ".join(_cmdline(p))[:160] for p in alive)


def _trial_processes(trial_dir: str) -> list:
    """The trial's supervisor and its `candle train` (their command lines name trial_dir)."""
    return _find(lambda cmd: any(trial_dir in a for a in cmd) and "parsl" not in " ".join(cmd))


def _supervisor(trial_dir: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in _trial_processes(trial_dir):
            if any(
                a.endswith("_supervisor.py") or a == "candle.workflow._supervisor"
                for a in _cmdline(p)
            ):
                return p
        time.sleep(0.1)
    raise AssertionError(f"no supervisor for {trial_dir} after {timeout} s")


def _spec(trial_id: int, trial_dir: Path, params: dict, **kw) -> TrialSpec:
    return TrialSpec(trial_id, TRAINER, dict(params), str(trial_dir), grace=2.0, **kw)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("parsl") / "runs")
    ex = ParslExecutor.from_config(
        {
            "site": "local",
            "run_dir": run_dir,
            "options": {"max_workers_per_node": 2, "heartbeat_period": 1, "heartbeat_threshold": 5},
        }
    )
    assert ex.slots == 2 and not ex.mpi_mode
    t0 = time.monotonic()
    ex.start()
    print(f"parsl start: {time.monotonic() - t0:.2f} s")
    yield ex
    procs = _parsl_processes(ex, run_dir)
    assert procs, "found no Parsl process to check"
    t0 = time.monotonic()
    ex.shutdown()
    ex.shutdown()  # idempotent
    print(f"parsl shutdown: {time.monotonic() - t0:.2f} s")
    _assert_all_gone(procs, timeout=20)


def test_trials_run_in_parallel_on_parsl_workers(local, tmp_path):
    specs = [_spec(i, tmp_path / f"t{i}", FAST) for i in range(2)]
    futures = [local.submit(s) for s in specs]
    assert all(isinstance(f, concurrent.futures.Future) for f in futures)
    _, pending = concurrent.futures.wait(futures, timeout=120)
    assert not pending
    outcomes = [f.result() for f in futures]
    for spec, o in zip(specs, outcomes, strict=True):
        assert o["status"] == "done", o["error"]
        assert o["objective"] is not None and math.isfinite(o["objective"])
        assert o["trial_id"] == spec.trial_id
        trial_dir = Path(spec.trial_dir)
        assert json.loads((trial_dir / "trial.json").read_text()) == spec.params
        assert (trial_dir / "result.json").exists()
        assert "=== trial" in (trial_dir / "trial.log").read_text()
    # two workers: the two trials ran at the same time, on two different workers
    (a, b) = sorted((o["started_at"], o["ended_at"]) for o in outcomes)
    assert b[0] < a[1], (a, b)


def test_worker_killed_mid_trial_then_retry_resumes(local, tmp_path):
    trial_dir = tmp_path / "killed"
    future = local.submit(_spec(7, trial_dir, SLOW))
    deadline = time.monotonic() + 90
    while not list((trial_dir / "checkpoints").glob("ckpt-*.pt")):
        assert time.monotonic() < deadline, "no checkpoint written"
        assert not future.done(), future.result()
        time.sleep(0.1)
    supervisor = _supervisor(str(trial_dir))
    worker = supervisor.parent()
    assert "spawn_main" in " ".join(_cmdline(worker)), _cmdline(worker)  # a Parsl worker
    tree = [supervisor, *supervisor.children(recursive=True)]
    assert any("train" in _cmdline(p) for p in tree)
    t0 = time.monotonic()
    worker.kill()
    with pytest.raises(Exception) as raised:  # Parsl's WorkerLost
        future.result(timeout=60)
    print(f"future raised {type(raised.value).__name__} after {time.monotonic() - t0:.2f} s")
    assert "lost" in str(raised.value).lower() or "Lost" in type(raised.value).__name__
    # the supervisor saw its worker die and took the trial with it
    _assert_all_gone(set(tree), timeout=20)
    assert not _trial_processes(str(trial_dir))
    # the driver's retry: a replacement worker runs attempt 2, resuming from the checkpoint
    t0 = time.monotonic()
    outcome = local.submit(_spec(7, trial_dir, SLOW, attempt=2)).result(timeout=120)
    print(f"attempt 2: {time.monotonic() - t0:.2f} s")
    assert outcome["status"] == "done", outcome["error"]
    assert outcome["attempt"] == 2 and outcome["epoch"] == SLOW["epochs"]
    log = (trial_dir / "trial.log").read_text()
    assert "=== trial 7 attempt 1 " in log and "=== trial 7 attempt 2 " in log
    assert "resumed from" in log + (trial_dir / "train.log").read_text()


def test_worker_pool_killed_gives_manager_lost_and_a_new_block(local, tmp_path):
    """A whole worker pool (a node, a block) dying: its trial's future raises once the
    interchange misses its heartbeats, its trial stops, and Parsl starts a new block."""
    trial_dir = tmp_path / "pool"
    future = local.submit(_spec(8, trial_dir, {**SLOW, "epochs": 200}))
    supervisor = _supervisor(str(trial_dir))
    worker = supervisor.parent()
    pool = worker.parent()
    assert "process_worker_pool" in " ".join(_cmdline(pool)), _cmdline(pool)
    tree = [supervisor, *supervisor.children(recursive=True)]
    t0 = time.monotonic()
    pool.kill()
    with pytest.raises(Exception) as raised:  # Parsl's ManagerLost
        future.result(timeout=60)
    print(f"future raised {type(raised.value).__name__} after {time.monotonic() - t0:.2f} s")
    assert "lost" in str(raised.value).lower() or "Lost" in type(raised.value).__name__
    # the orphaned worker ends itself, and its trial's supervisor stops the trial
    _assert_all_gone({worker, *tree}, timeout=20)
    outcome = local.submit(_spec(9, tmp_path / "after", FAST)).result(timeout=90)
    assert outcome["status"] == "done", outcome["error"]


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"site": "local", "workers": 2}, ["unknown key", "workers", "site", "slots"]),
        ({"site": "local", "config": "x.py"}, ["exactly one", "config", "site", "both"]),
        ({"slots": 2}, ["exactly one", "neither"]),
        ({"config": "does/not/exist.py"}, ["does/not/exist.py", "not found"]),
        ({"site": "cloud"}, ["'cloud'", "local", "slurm", "pbs"]),
        ({"site": "local", "slots": 0}, ["slots", ">= 1"]),
        (
            {"site": "local", "options": {"nodes": 2}},
            ["unknown option", "nodes", "max_workers_per_node"],
        ),
        ({"site": "local", "options": [1]}, ["options", "mapping"]),
    ],
)
def test_from_config_errors(section, words):
    with pytest.raises(ConfigError) as e:
        ParslExecutor.from_config(section, where="study.executor")
    message = str(e.value)
    assert message.startswith("study.executor")
    for word in words:
        assert word in message, message


def test_config_file_without_config(tmp_path):
    path = tmp_path / "site.py"
    path.write_text("workers = 4\n")
    with pytest.raises(ConfigError, match=r"site\.py defines neither `config`.*make_config"):
        ParslExecutor.from_config({"config": str(path)})
    path.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match=r"site\.py failed to load: RuntimeError: boom"):
        ParslExecutor.from_config({"config": str(path)})
    path.write_text("config = 3\n")
    with pytest.raises(ConfigError, match=r"expected a parsl\.config\.Config, got int"):
        ParslExecutor.from_config({"config": str(path)})


USER_CONFIG = """
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

config = Config(
    executors=[
        HighThroughputExecutor(
            label="mine",
            address="127.0.0.1",
            max_workers_per_node=1,
            heartbeat_period=1,
            heartbeat_threshold=5,
            provider=LocalProvider(init_blocks=1, max_blocks=1, worker_init={init!r}),
        )
    ],
    retries=3,
)
"""


def test_user_config_file_runs_a_trial(tmp_path):
    from candle.workflow.sites import venv_path_init

    path = tmp_path / "my_site.py"
    path.write_text(USER_CONFIG.format(init=venv_path_init()))
    run_dir = tmp_path / "runs"
    ex = ParslExecutor.from_config({"config": str(path), "run_dir": str(run_dir)})
    assert ex.slots == 1  # max_workers_per_node * nodes_per_block * max_blocks
    assert ex._config.retries == 0  # the candle driver retries, not Parsl
    assert not run_dir.exists()  # nothing started yet
    try:
        outcome = ex.submit(_spec(1, tmp_path / "t", FAST)).result(timeout=120)
        assert outcome["status"] == "done", outcome["error"]
        assert (run_dir / "000" / "mine").is_dir()  # Parsl's logs went to our run_dir
        # shutdown(wait=False) with a trial running: it stops, and its future raises
        running = ex.submit(_spec(2, tmp_path / "running", SLOW))
        tree = [_supervisor(str(tmp_path / "running"))]
        tree += tree[0].children(recursive=True)
    finally:
        procs = _parsl_processes(ex, str(run_dir))
        ex.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="shut down before the trial ended"):
        running.result(timeout=1)
    _assert_all_gone(procs | set(tree), timeout=20)
    with pytest.raises(RuntimeError, match="shut down"):
        ex.submit(_spec(2, tmp_path / "t2", FAST))


MPI_CONFIG = """
from parsl.config import Config
from parsl.executors import MPIExecutor
from parsl.launchers import SimpleLauncher
from parsl.providers import LocalProvider


def make_config(run_dir, nodefile):
    # MPI mode on this machine: two made-up nodes from a PBS node file
    return Config(
        executors=[
            MPIExecutor(
                label="mpi",
                address="127.0.0.1",
                max_workers_per_block=1,
                mpi_launcher="mpiexec",
                heartbeat_period=1,
                heartbeat_threshold=5,
                provider=LocalProvider(
                    nodes_per_block=2,
                    launcher=SimpleLauncher(),
                    worker_init={init!r} + "; export PBS_NODEFILE=" + nodefile,
                ),
            )
        ],
        run_dir=run_dir,
    )
"""


def test_mpi_mode_gives_the_trial_parsls_launch_prefix(tmp_path):
    """A 2-node trial under MPIExecutor: Parsl picks its nodes and the trial's command starts
    with $PARSL_MPI_PREFIX (no mpiexec here, so the attempt itself fails)."""
    from candle.workflow.sites import venv_path_init

    nodefile = tmp_path / "nodes"
    nodefile.write_text("node-a\nnode-b\n")
    path = tmp_path / "mpi_site.py"
    path.write_text(MPI_CONFIG.format(init=venv_path_init()))
    ex = ParslExecutor.from_config(
        {
            "config": str(path),
            "options": {"nodefile": str(nodefile)},
            "run_dir": str(tmp_path / "r"),
        }
    )
    assert ex.mpi_mode and ex.slots == 1
    two_nodes = Resources(ranks=4, nodes=2, launcher="mpiexec")
    ex.check(two_nodes)
    with pytest.raises(ConfigError, match="nodes: 3 is more than the 2 node"):
        ex.check(Resources(ranks=3, nodes=3, launcher="mpiexec"))
    try:
        outcome = ex.submit(
            _spec(1, tmp_path / "t", FAST, resources=two_nodes, env={"PATH": "/nonexistent"})
        ).result(timeout=120)
    finally:
        procs = _parsl_processes(ex, str(tmp_path / "r"))
        ex.shutdown()
    header = (tmp_path / "t" / "trial.log").read_text().splitlines()[0]
    assert "mpiexec -n 4 -ppn 2 -hosts node-a,node-b " in header, header
    assert outcome["status"] == "failed"
    _assert_all_gone(procs, timeout=20)


def test_worker_applies_mpi_prefix(monkeypatch):
    import candle.workflow.trial as trial

    seen = []
    monkeypatch.setattr(trial, "run_trial", lambda data, gpus: seen.append(data) or {"ok": 1})
    monkeypatch.setenv("PARSL_MPI_PREFIX", "srun --ntasks 4 --nodelist a,b --nodes 2 ")
    base = TrialSpec(1, TRAINER, {}, "/tmp/x")
    for launcher, ranks, prefixed in [
        ("horovodrun", 4, True),
        ("srun", 2, True),
        ("torchrun", 2, False),  # torchrun starts its own ranks on one node
        ("none", 1, False),
    ]:
        base.resources = Resources(ranks=ranks, launcher=launcher)
        assert run_trial_in_worker(base.to_dict()) == {"ok": 1}
        got = seen[-1]["launch_prefix"]
        want = ["srun", "--ntasks", "4", "--nodelist", "a,b", "--nodes", "2"]
        assert got == (want if prefixed else None), (launcher, got)
    monkeypatch.delenv("PARSL_MPI_PREFIX")
    base.resources = Resources(ranks=4, launcher="horovodrun")
    run_trial_in_worker(base.to_dict())
    assert seen[-1]["launch_prefix"] is None


def test_check_needs_mpi_mode_for_several_nodes():
    ex = ParslExecutor.from_config({"site": "local"})
    ex.check(Resources(ranks=2, launcher="horovodrun"))  # one node: fine
    with pytest.raises(ConfigError, match=r"nodes: 2 needs Parsl's MPI mode.*mpi: true"):
        ex.check(Resources(ranks=2, nodes=2, launcher="horovodrun"))
    ex.shutdown()  # never started: nothing to do


# -- site profiles (built, never started: no job is submitted) -------------------------------


def test_slurm_profile():
    from parsl.executors import HighThroughputExecutor, MPIExecutor
    from parsl.launchers import SimpleLauncher, SrunLauncher
    from parsl.providers import SlurmProvider

    from candle.workflow.sites import slurm

    config = slurm.make_config("/tmp/runs")
    (htex,) = config.executors
    assert type(htex) is HighThroughputExecutor and not htex.enable_mpi_mode
    assert isinstance(htex.provider, SlurmProvider)
    assert isinstance(htex.provider.launcher, SrunLauncher)
    assert htex.max_workers_per_node == 1 and config.retries == 0 and config.run_dir == "/tmp/runs"
    assert os.path.dirname(sys.executable) in htex.provider.worker_init
    # workers try this machine's addresses (no query of a web service); the interchange
    # listens on all interfaces
    assert htex.address is None and htex.all_addresses
    (htex,) = slurm.make_config("/tmp/runs", address="10.1.2.3").executors
    assert htex.address == "10.1.2.3" and htex.all_addresses == {"10.1.2.3"}

    config = slurm.make_config(
        "/tmp/runs",
        partition="gpu",
        account="abc",
        walltime="02:00:00",
        nodes_per_block=4,
        max_blocks=2,
        worker_init="module load cuda; source venv/bin/activate",
        scheduler_options="#SBATCH --gres=gpu:4",
        mpi=True,
        max_workers_per_block=2,
    )
    (mpi,) = config.executors
    assert isinstance(mpi, MPIExecutor) and mpi.enable_mpi_mode and mpi.mpi_launcher == "srun"
    p = mpi.provider
    assert isinstance(p.launcher, SimpleLauncher)
    assert (p.partition, p.account, p.walltime, p.nodes_per_block, p.max_blocks) == (
        "gpu",
        "abc",
        "02:00:00",
        4,
        2,
    )
    assert p.worker_init.startswith("module load cuda") and "--gres=gpu:4" in p.scheduler_options
    ex = ParslExecutor(config)
    assert ex.mpi_mode and ex.slots == 4  # 2 trials per block x 2 blocks
    ex.check(Resources(ranks=8, nodes=4, launcher="horovodrun"))
    with pytest.raises(ConfigError, match="launcher torchrun"):
        ex.check(Resources(ranks=8, nodes=4, launcher="torchrun"))


def test_pbs_profile():
    from parsl.executors import HighThroughputExecutor, MPIExecutor
    from parsl.launchers import MpiExecLauncher, SimpleLauncher, SingleNodeLauncher
    from parsl.providers import PBSProProvider

    from candle.workflow.sites import pbs

    config = pbs.make_config("/tmp/runs")
    (htex,) = config.executors
    assert type(htex) is HighThroughputExecutor and isinstance(htex.provider, PBSProProvider)
    assert isinstance(htex.provider.launcher, SingleNodeLauncher)
    config = pbs.make_config("/tmp/runs", nodes_per_block=2, workers_per_node=4, queue="debug")
    (htex,) = config.executors
    assert isinstance(htex.provider.launcher, MpiExecLauncher) and htex.provider.queue == "debug"
    assert ParslExecutor(config).slots == 8  # 4 workers x 2 nodes x 1 block
    (mpi,) = pbs.make_config("/tmp/runs", mpi=True, nodes_per_block=2).executors
    assert isinstance(mpi, MPIExecutor) and mpi.mpi_launcher == "mpiexec"
    assert isinstance(mpi.provider.launcher, SimpleLauncher)


def test_site_from_config_passes_options(tmp_path):
    ex = ParslExecutor.from_config(
        {
            "site": "slurm",
            "slots": 16,
            "run_dir": str(tmp_path / "r"),
            "options": {"partition": "gpu", "mpi": True, "nodes_per_block": 2},
        }
    )
    assert ex.slots == 16 and ex.mpi_mode
    assert ex._config.run_dir == str(tmp_path / "r")
    with pytest.raises(ConfigError, match="make_config of site slurm failed"):
        ParslExecutor.from_config({"site": "slurm", "options": {"nodes_per_block": "two"}})


def test_importing_the_workflow_does_not_import_parsl():
    code = (
        "import sys, candle.workflow.executors, candle.workflow.parsl_executor, "
        "candle.workflow.sites; print('parsl' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_study_retries_a_trial_whose_worker_was_killed(tmp_path):
    """The engine end to end on Parsl: 3 trials on 2 workers; the worker of trial 1 is killed
    after its first checkpoint; the driver records the lost attempt and retries it, resuming."""
    from candle.workflow import Study, load_study_config
    from candle.workflow.store import Store

    run_dir = str(tmp_path / "parsl-runs")
    ex = ParslExecutor.from_config(
        {
            "site": "local",
            "run_dir": run_dir,
            "options": {"max_workers_per_node": 2, "heartbeat_period": 1, "heartbeat_threshold": 5},
        }
    )
    cfg = load_study_config(
        {
            "name": "p",
            "trainer": TRAINER,
            "directory": str(tmp_path / "study"),
            "params": SLOW,
            "grid": {"seed": [0, 1, 2]},
            "retries": 1,
            "grace": 2,
        }
    )
    study = Study(cfg, executor=ex, progress=False)
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(summary=study.run()))
    runner.start()
    first = tmp_path / "study" / "trials" / "00001"
    deadline = time.monotonic() + 120
    while not list((first / "checkpoints").glob("ckpt-*.pt")):
        assert time.monotonic() < deadline and runner.is_alive(), "trial 1 wrote no checkpoint"
        time.sleep(0.1)
    supervisor = _supervisor(str(first))
    supervisor.parent().kill()  # the Parsl worker running trial 1
    runner.join(300)
    assert not runner.is_alive()
    summary = outcome["summary"]
    assert summary.counts["done"] == 3, summary.counts
    with Store(tmp_path / "study" / "study.db", readonly=True) as store:
        attempts = store.attempts(1)
        assert [a["status"] for a in attempts] == ["lost", "done"]
        assert "worker lost" in attempts[0]["reason"]
        assert all(len(store.attempts(t)) == 1 for t in (2, 3))
    assert "resumed from" in (first / "train.log").read_text()
