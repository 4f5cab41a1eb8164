"""DDPStrategy under real ``torchrun`` jobs of two CPU ranks (gloo on 127.0.0.1).

Every launch runs with a timeout, so a hang fails the test instead of the suite; on timeout the
whole job (torchrun and its workers, which torchrun starts in sessions of their own) is killed.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from candle.distributed import SingleProcess, detect_launcher, resolve_strategy
from candle.distributed.ddp import DDPStrategy
from candle.errors import StrategyError
from candle.testing import free_port
from candle.testing.processes import kill_tree

pytestmark = pytest.mark.distributed

TESTS = Path(__file__).parent
DIST_SCRIPT = TESTS / "_dist_script.py"
UNEVEN_SCRIPT = TESTS / "_ddp_uneven_script.py"
REFIT_SCRIPT = TESTS / "_ddp_refit_script.py"
TIMEOUT = 180  # seconds for one launch; a deadlock fails instead of hanging the suite
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

# SGD without dropout: n_samples=320 leaves 256 training rows, which split evenly over two ranks
# (no padding), so two ranks with batch b see exactly the samples of one rank with batch 2b.
EQUIV = [
    "epochs=2",
    "n_samples=320",
    "optimizer=sgd",
    "learning_rate=0.05",
    "dropout=0",
    "progress_bar=false",
]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["OMP_NUM_THREADS"] = "1"  # what torchrun gives its workers, for the np=1 runs too
    env.update(extra)
    return env


def _torchrun(script: Path, *args: str, nproc: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",  # = torchrun, with this interpreter for the workers too
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        str(script),
        *args,
    ]


def _launch(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            out, err = proc.communicate()
            pytest.fail(f"{cmd} hung for {TIMEOUT} s\n--- stdout\n{out[-4000:]}\n{err[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _train(tmp: Path, nproc: int, *args: str, **env: str) -> dict:
    """Train TinyTrainer with _dist_script.py on ``nproc`` ranks (1: plain python, no launcher);
    returns each rank's weights, the run directory and the output."""
    tmp.mkdir(parents=True, exist_ok=True)
    weights, runs = tmp / "weights", tmp / "runs"
    args = (str(weights), *args, f"output_dir={runs}", "experiment=e", "run_id=r")
    if nproc == 1:
        cmd = [sys.executable, str(DIST_SCRIPT), *args]
    else:
        cmd = _torchrun(DIST_SCRIPT, *args, nproc=nproc)
    proc = _launch(cmd, tmp, **env)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return {
        "weights": [torch.load(weights / f"weights_rank{r}.pt") for r in range(nproc)],
        "output": proc.stdout,
        "runs": runs,
        "run_dir": runs / "e" / "r",
        "result": json.loads((runs / "e" / "r" / "result.json").read_text()),
    }


def _steps(output: str, rank: int = 0) -> list[int]:
    """Steps rank ``rank`` reported (lines of two ranks may interleave mid-line)."""
    return [int(s) for s in re.findall(rf"rank {rank}/\d+ step (\d+) ", output)]


def _assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The equivalence runs, each trained once per module: two ranks and its one-rank twin."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            nproc, args = {
                "np2": (2, ["batch_size=16"]),
                "np1": (1, ["batch_size=32"]),
                "np2_accum": (2, ["batch_size=16", "grad_accum_steps=2"]),
                "np1_accum": (1, ["batch_size=64"]),
                "np2_fp16": (2, ["batch_size=16", "fp16_allreduce=true"]),
            }[name]
            cache[name] = _train(tmp_path_factory.mktemp(name), nproc, *EQUIV, *args)
        return cache[name]

    return get


# ------------------------------------------------------------------ torchrun jobs
def test_parameters_are_bitwise_identical_on_every_rank(runs):
    run = runs("np2")
    assert _steps(run["output"], 0)[-1] == _steps(run["output"], 1)[-1] == 16
    rank0, rank1 = run["weights"]
    _assert_equal(rank0, rank1)
    assert "DDPStrategy" in (run["run_dir"] / "train.log").read_text()


@pytest.mark.parametrize(
    ("two_ranks", "one_rank"),
    [("np2", "np1"), ("np2_accum", "np1_accum")],
    ids=["batch", "grad_accum_no_sync"],
)
def test_two_ranks_equal_one_rank_with_the_combined_batch(runs, two_ranks, one_rank):
    """np=2 with batch b == np=1 with batch 2b; with grad_accum_steps=2 (micro-batches under
    no_sync, one all-reduce per step) == np=1 with batch 4b."""
    ddp, single = runs(two_ranks), runs(one_rank)
    assert ddp["result"]["global_step"] == single["result"]["global_step"]
    assert _max_diff(ddp["weights"][0], single["weights"][0]) < 1e-5
    assert ddp["result"]["world_size"] == 2
    assert single["result"]["world_size"] == 1


def test_validation_metrics_are_averaged_over_all_ranks(runs):
    ddp, single = runs("np2")["result"], runs("np1")["result"]
    for name in ("val_loss", "val_mae"):
        assert abs(ddp["metrics"][name] - single["metrics"][name]) < 1e-6, name
    assert abs(ddp["metrics"]["train_loss"] - single["metrics"]["train_loss"]) < 1e-5


def test_fp16_allreduce_compresses_gradients(runs):
    """The fp16 hook really runs (the weights differ from the fp32 all-reduce's by fp16
    rounding), and still keeps the ranks identical and close to the uncompressed run."""
    fp16, fp32 = runs("np2_fp16"), runs("np2")
    _assert_equal(*fp16["weights"])
    diff = _max_diff(fp16["weights"][0], fp32["weights"][0])
    assert 0 < diff < 1e-2


def test_only_rank_zero_writes_run_files(runs):
    run = runs("np2")
    job_dir = run["runs"].parent  # the job's working directory: its own files and output_dir
    assert {p.name for p in job_dir.iterdir()} == {"weights", "runs"}
    assert [p.name for p in run["runs"].iterdir()] == ["e"]
    assert [p.name for p in (run["runs"] / "e").iterdir()] == ["r"]
    run_dir = run["run_dir"]
    assert {p.name for p in run_dir.iterdir()} == {
        "params.yaml",
        "train.log",
        "metrics.jsonl",
        "tensorboard",
        "checkpoints",
        "result.json",
    }
    assert len(list((run_dir / "tensorboard").iterdir())) == 1  # one events file
    names = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert {"last", "best"} <= names
    assert all(
        n in ("last", "best") or re.fullmatch(r"ckpt-e\d+-s\d+\.pt(\.sha256)?", n) for n in names
    )
    log = (run_dir / "train.log").read_text().splitlines()
    for text in ("epoch 1/2:", "epoch 2/2:", "training on cpu (DDPStrategy)", ": completed"):
        assert sum(text in line for line in log) == 1, text
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    result = run["result"]
    assert (result["status"], result["world_size"], result["global_step"]) == ("completed", 2, 16)


def test_uneven_user_loaders_do_not_hang(tmp_path):
    """Rank 0's DataLoader has 10 batches, rank 1's 6: both run 6 per epoch and finish."""
    proc = _launch(
        _torchrun(UNEVEN_SCRIPT, "epochs=2", "batch_size=10", f"output_dir={tmp_path / 'runs'}"),
        tmp_path,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    done = dict(
        (m[0], m[1:])
        for m in re.findall(r"rank (\d) done steps (\d+) batches (\d+) val_loss (\S+)", proc.stdout)
    )
    assert done.keys() == {"0", "1"}
    assert done["0"] == done["1"]  # the same steps, batches and (all-reduced) val_loss
    assert done["0"][:2] == ("12", "12")


def test_fit_twice_and_after_shutdown_in_one_job(tmp_path):
    """A second fit() reuses the process group; after shutdown() the next one makes a fresh
    group in the same job (torchrun's store still holds the old group's keys: no hang)."""
    proc = _launch(
        _torchrun(
            REFIT_SCRIPT,
            "epochs=1",
            "tensorboard=false",
            "progress_bar=false",
            f"output_dir={tmp_path / 'runs'}",
            "run_id=r",
        ),
        tmp_path,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    found = re.findall(r"rank (\d) fit (\d) val_loss (\S+)", proc.stdout)
    assert sorted((r, k) for r, k, _ in found) == [(r, k) for r in "01" for k in "012"]
    assert len({v for _, _, v in found}) == 1  # the same result on every rank, every time
    assert proc.stdout.count("shut down") == 2


def test_sigkill_of_the_whole_job_then_resume_is_exact(tmp_path):
    """Kill torchrun and both workers mid-epoch, resume under torchrun: the final weights are
    bitwise those of an uninterrupted two-rank run (dropout on, Adam state, per-rank RNG)."""
    args = [
        "epochs=3",
        "batch_size=16",
        "n_samples=320",  # 8 steps per epoch on each of two ranks
        "dropout=0.3",
        "lr_schedule=cosine",
        "checkpoint_every_steps=3",
        "progress_bar=false",
    ]
    reference = _train(tmp_path / "ref", 2, *args)
    _assert_equal(*reference["weights"])

    killed_dir = tmp_path / "killed"  # _train's layout: weights/ and runs/e/r
    killed_dir.mkdir()
    cmd = _torchrun(DIST_SCRIPT, str(killed_dir / "weights"), *args)
    cmd += [f"output_dir={killed_dir / 'runs'}", "experiment=e", "run_id=r"]
    seen = ""
    with subprocess.Popen(
        cmd,
        cwd=killed_dir,
        env=_env(CANDLE_TEST_STEP_SLEEP="0.1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        watchdog = threading.Timer(TIMEOUT, kill_tree, [proc.pid])
        watchdog.start()
        try:
            for line in proc.stdout:
                seen += line
                if 10 in _steps(seen):  # mid-epoch 2, one step after the checkpoint at 9
                    kill_tree(proc.pid)
                    break
        finally:
            watchdog.cancel()
        proc.stdout.read()
        assert proc.wait(timeout=60) == -signal.SIGKILL, seen[-3000:]
    assert 10 in _steps(seen), seen[-3000:]
    run_dir = killed_dir / "runs" / "e" / "r"
    assert json.loads((run_dir / "result.json").read_text())["status"] == "running"
    assert not list((killed_dir / "weights").glob("*.pt"))  # it never finished

    resumed = _train(killed_dir, 2, *args, "resume=true")
    first = _steps(resumed["output"])[0]
    assert 9 < first <= 13, first  # continued after the last checkpoint, not from scratch
    for rank in range(2):
        _assert_equal(resumed["weights"][rank], reference["weights"][rank])
    ref_rows = (reference["run_dir"] / "metrics.jsonl").read_text().splitlines()
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["train_loss"] for r in rows] == [
        json.loads(r)["train_loss"] for r in ref_rows
    ]
    assert resumed["result"]["status"] == "completed"


# ------------------------------------------------------------------ in-process
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HOROVOD_RANK": "1", "HOROVOD_SIZE": "4", "HOROVOD_LOCAL_RANK": "1"}, "horovod"),
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1"}, "ddp"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, "single"),  # not torchrun: no LOCAL_RANK
        ({"HOROVOD_RANK": "0"}, "single"),
        ({}, "single"),
    ],
    ids=["horovod", "torchrun", "partial-torchrun", "partial-horovod", "none"],
)
def test_detect_launcher(env, expected):
    assert detect_launcher(env) == expected


def test_auto_strategy_follows_the_environment(monkeypatch):
    for name in (*LAUNCH_VARS, "HOROVOD_RANK", "HOROVOD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(resolve_strategy("auto"), SingleProcess)
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    strategy = resolve_strategy("auto")
    assert isinstance(strategy, DDPStrategy)
    assert (strategy.rank, strategy.world_size, strategy.local_rank) == (1, 2, 1)
    assert not strategy.is_main
    assert not strategy.fp16_allreduce


def test_ddp_without_torchrun_teaches(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(StrategyError, match="torchrun --nproc-per-node"):
        DDPStrategy.from_params(None).setup()


@pytest.fixture
def one_rank_group(monkeypatch):
    """A real gloo process group of one rank in this process, destroyed afterwards."""
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**env, "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    strategy = DDPStrategy(requested_device="cpu")
    strategy.setup()
    yield strategy
    strategy.shutdown()
    assert not torch.distributed.is_initialized()


def test_strategy_in_one_process(one_rank_group):
    s = one_rank_group
    assert s.device("auto") == torch.device("cpu")
    with pytest.raises(StrategyError, match="CUDA is not available"):
        s.device("cuda:1")
    s.setup()  # idempotent: joins the existing group
    assert s.world_size == 1 and s.is_main

    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters())
    wrapped, opt2 = s.wrap(model, opt, accum_steps=2)
    assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) and opt2 is opt
    assert s.wrap(wrapped, opt, accum_steps=2)[0] is wrapped  # never DDP inside DDP
    with s.no_sync(wrapped):
        wrapped(torch.ones(2, 3)).sum().backward()
    s.optimizer_step(opt, list(wrapped.parameters()), scaler=None, max_norm=1.0)
    s.broadcast_state(wrapped, opt)

    x = torch.tensor([1.0, -2.0])
    for op in ("mean", "sum", "min", "max"):
        out = s.all_reduce(x, op=op)
        assert torch.equal(out, x) and out is not x
    with pytest.raises(ValueError, match="mean, sum, min, max"):
        s.all_reduce(x, op="prod")
    assert s.broadcast_object({"a": [1]}) == {"a": [1]}
    assert s.all_gather_object(7) == [7]
    s.barrier()


def test_shutdown_leaves_a_foreign_group_alone(one_rank_group):
    other = DDPStrategy()
    other.setup()  # reuses the group the fixture's strategy made
    other.shutdown()
    assert torch.distributed.is_initialized()
