"""Elastic Horovod (``ElasticHorovodStrategy``): real ``horovodrun`` elastic jobs on 127.0.0.1
whose workers go away mid-run, and an in-process check of the commit/restore cycle.

How a worker goes away on one machine:

- the host discovery script (written by each test) stops offering a slot: ``localhost:2``
  becomes ``localhost:1`` and horovodrun removes the worker in slot 1 (it exits when it
  re-initialises Horovod);
- with two host names for the same machine (``localhost`` and ``127.0.0.1``) a whole host can
  leave, including the one rank 0 runs on, or a worker can be SIGKILLed: horovodrun blacklists
  the host of a failed worker, so that worker must not share its host with the survivors.

``--network-interface lo`` is needed: without it an elastic horovodrun waits for two hosts to
find a common network interface.
"""

import contextlib
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

from candle import Callback
from candle.testing.processes import find_launcher

pytestmark = pytest.mark.distributed

HERE = Path(__file__).parent
SCRIPT = HERE / "_elastic_script.py"
TIMEOUT_S = 180  # per job; a healthy one takes 10-20 s

try:
    import horovod.torch as hvd
    import psutil
    from horovod.common.exceptions import HorovodInternalError

    _missing = ""
except ImportError as e:
    _missing = f"horovod is not importable ({e}); install it with scripts/install_horovod.sh"
HOROVODRUN = find_launcher("horovodrun")
needs_horovod = pytest.mark.skipif(
    bool(_missing) or HOROVODRUN is None, reason=_missing or "horovodrun is not on PATH"
)

# 640 samples: 512 training rows, 16 steps per epoch on 2 ranks (batch 16 each), 32 on one.
# No dropout, so the per-epoch training loss falls steadily and its trend can be asserted.
TRAIN = ["epochs=6", "n_samples=640", "batch_size=16", "lr=0.01", "lr_scaling=linear"]
TRAIN += ["dropout=0", "elastic_commit_steps=2", "progress_bar=false"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CANDLE_", "HOROVOD_"))}
    return {**env, "CANDLE_TEST_STEP_SLEEP": "0.1", **extra}


def _kill_tree(proc):
    """SIGKILL the launcher's process group and every descendant (horovodrun starts each worker
    in a session of its own)."""
    try:
        workers = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait(timeout=30)
    psutil.wait_procs(workers, timeout=30)


def _elastic_job(tmp_path, hosts, event, at_step, *, np=2, extra=()):
    """Run _elastic_script.py under an elastic horovodrun (``-np np --min-np 1 --max-np 2``);
    ``hosts`` is ``-H ...`` or a discovery script. Returns (output, run directory); fails the
    test on a non-zero exit or a hang."""
    output_dir = tmp_path / "runs"
    cmd = [HOROVODRUN, "-np", str(np), "--min-np", "1", "--max-np", "2", *hosts]
    cmd += ["--network-interface", "lo", "--gloo", "--gloo-timeout-seconds", "60"]
    cmd += ["--elastic-timeout", "60", sys.executable, str(SCRIPT), event, str(at_step)]
    cmd += [*TRAIN, f"output_dir={output_dir}", *extra]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    timed_out = threading.Event()

    def on_deadline():
        timed_out.set()
        _kill_tree(proc)

    deadline = threading.Timer(TIMEOUT_S, on_deadline)
    deadline.start()
    try:
        out, _ = proc.communicate()
    finally:
        deadline.cancel()
    if timed_out.is_set():
        pytest.fail(f"elastic job did not finish within {TIMEOUT_S} s (hang?)\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    runs = list(output_dir.glob("*/*"))
    assert len(runs) == 1, runs
    return out, runs[0]


def _discovery(tmp_path, body):
    script = tmp_path / "discover.sh"
    script.write_text(f"#!/bin/sh\nFLAG={tmp_path / 'flag'}\n{body}\n")
    script.chmod(0o755)
    return ["--host-discovery-script", str(script)]


def _rows(run):
    return [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_finished(out, run, *, epochs=6):
    done = rf"done rank 0/1 ElasticHorovodStrategy completed .* epochs {epochs} "
    assert re.search(done, out), out[-4000:]
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))  # each epoch once
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "completed" and result["world_size"] == 1
    assert result["history"] == rows
    return rows


def _changed_at(log):
    """(epoch, micro-batch on one rank) where the single rank went on, from the log."""
    m = re.search(r"saved by 2 rank\(s\), continuing on 1: epoch (\d+) from micro-batch (\d+)", log)
    assert m, log
    return int(m.group(1)), int(m.group(2))


def _assert_loss_falls(rows, changed_epoch):
    losses = [r["train_loss"] for r in rows]
    assert losses[-1] < losses[0] / 10, losses
    if 1 < changed_epoch < len(rows):
        # the last epoch wholly on 2 ranks vs the first wholly on 1
        assert losses[changed_epoch] < losses[changed_epoch - 2], losses


@needs_horovod
def test_a_slot_leaves_and_training_finishes_on_one_rank(tmp_path):
    """Rank 0 writes the flag at step 20 (epoch 2); the discovery script then offers one slot
    instead of two, horovodrun tells rank 0, and at the next commit every rank resets: worker 1
    exits and rank 0 goes on alone, with the learning rate halved (lr_scaling=linear)."""
    body = 'if [ -f "$FLAG" ]; then echo localhost:1; else echo localhost:2; fi'
    out, run = _elastic_job(tmp_path, _discovery(tmp_path, body), f"flag:{tmp_path / 'flag'}", 20)
    assert "localhost[1] has been removed from elastic job" in out
    rows = _assert_finished(out, run)
    log = (run / "train.log").read_text()
    assert "lr_scaling=linear: 2 rank(s), learning rate 0.01 x 2 = 0.02" in log
    assert "elastic reset 1 after a change of hosts: 2 -> 1 rank(s), this process is rank 0" in log
    assert "learning rates rescaled x 0.5 for 1 ranks" in log
    epoch, batch = _changed_at(log)
    assert 2 <= epoch <= 6 and batch % 2 == 0  # where 2 ranks had each done batch/2
    # no step lost or repeated: 16 per epoch on 2 ranks, then 32 per epoch on 1
    steps = 16 * (epoch - 1) + batch // 2 + (32 - batch) + 32 * (6 - epoch)
    assert f"completed steps {steps} epochs 6 lr 0.01" in out
    assert [r["lr"] for r in rows] == [0.02] * (epoch - 1) + [0.01] * (7 - epoch)
    _assert_loss_falls(rows, epoch)


@needs_horovod
def test_the_host_of_rank_0_leaves_and_the_other_worker_takes_over(tmp_path):
    """Two host names, one worker each. Rank 0 writes its host name to the flag; the
    discovery script then offers only the other host. The survivor becomes rank 0: it opens
    the run files (train.log, metrics.jsonl rewritten from the restored history, checkpoints)
    and writes the result."""
    body = (
        'if [ ! -f "$FLAG" ]; then echo localhost:1; echo 127.0.0.1:1\n'
        'elif [ "$(cat "$FLAG")" = localhost ]; then echo 127.0.0.1:1\n'
        "else echo localhost:1; fi"
    )
    out, run = _elastic_job(tmp_path, _discovery(tmp_path, body), f"flag:{tmp_path / 'flag'}", 20)
    gone = (tmp_path / "flag").read_text()
    assert f"{gone}[0] has been removed from elastic job" in out
    survivor = re.search(r"\[(\d)\]<stdout>:done rank 0/1", out).group(1)
    assert survivor == "1", out[-4000:]  # horovodrun's index of the worker: it was rank 1
    rows = _assert_finished(out, run)
    log = (run / "train.log").read_text()
    assert re.search(r"is rank 0 of 1 now and writes the run directory .* learning rate 0\.01", log)
    assert log.count("training on cpu (ElasticHorovodStrategy)") == 1  # from the first rank 0
    assert log.count(": completed (epochs)") == 1  # from the second
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.pt"))
    assert ckpts and ckpts[-1].startswith("ckpt-e0006-")
    _assert_loss_falls(rows, _changed_at(out)[0])  # the survivor said it before it was rank 0


@needs_horovod
def test_a_killed_worker_is_replaced_by_the_last_commit(tmp_path):
    """Rank 1 SIGKILLs itself at step 26, before that step's commit. Rank 0's next collective
    fails; it restores the commit of step 24, re-initialises on its own and redoes the steps
    after it."""
    hosts = ["-H", "localhost:1,127.0.0.1:1"]
    out, run = _elastic_job(tmp_path, hosts, "kill", 26)
    rows = _assert_finished(out, run)
    log = (run / "train.log").read_text()
    assert "elastic reset 1 after a failed collective: 2 -> 1 rank(s)" in log
    assert "learning rates rescaled x 0.5 for 1 ranks" in log
    first_alone = int(re.search(r"\[0\]<stdout>:rank 0/1 step (\d+) ", out).group(1))
    assert first_alone == 25, out[-4000:]  # back to the commit at step 24
    epoch, batch = _changed_at(log)
    assert (epoch, batch) == (2, 16)  # step 24 = micro-batch 8 of epoch 2 on each of 2 ranks
    _assert_loss_falls(rows, epoch)


@needs_horovod
def test_a_worker_that_comes_to_join_is_turned_away(tmp_path):
    """Growing a running job is not supported: a host appears (rank 0 writes the flag), the
    new worker learns in its first collective that the others are already training and
    stops; horovodrun blacklists its host and the job finishes on the one rank it began with."""
    body = 'echo localhost:1\nif [ -f "$FLAG" ]; then echo 127.0.0.1:1; fi'
    hosts = _discovery(tmp_path, body)
    extra = ["epochs=3", "n_samples=320"]
    out, run = _elastic_job(tmp_path, hosts, f"flag:{tmp_path / 'flag'}", 4, np=1, extra=extra)
    assert "was started for an elastic job that is already training" in out
    assert re.search(r"done rank 0/1 ElasticHorovodStrategy completed steps \d+ epochs 3 ", out)
    log = (run / "train.log").read_text()
    assert "1 new worker(s) came to join" in log


# ---------------------------------------------------------------- in-process (one rank)


class _FailOnce(Callback):
    """Raises HorovodInternalError (what a collective raises once a worker died) at step
    ``at``, once; records the step of every step end."""

    def __init__(self, at):
        self.at, self.fired, self.steps = at, False, []

    def on_step_end(self, trainer, loss):
        self.steps.append(trainer.global_step)
        if trainer.global_step == self.at and not self.fired:
            self.fired = True
            raise HorovodInternalError("simulated: a worker died")


@pytest.fixture
def horovod_alone():
    """Horovod initialised in this process alone (one rank), shut down afterwards."""
    yield
    if hvd.is_initialized():
        hvd.shutdown()


@needs_horovod
def test_a_failed_collective_restores_the_last_commit_exactly(tmp_path, horovod_alone):
    """Commits every 3 steps and at epoch ends (7 steps per epoch). The failure at step 12
    comes before that step's commit, so training goes back to the commit of step 9 and runs
    steps 10-12 again. Model, optimizer, LR schedule, data position and RNG (dropout) all come
    back: the run ends bitwise equal to one without the failure."""
    from candle.distributed.horovod import ElasticHorovodStrategy
    from candle.testing import TinyTrainer

    def fit(name, fail_at):
        fail = _FailOnce(fail_at)
        trainer = TinyTrainer(
            epochs=3,
            lr_schedule="cosine",
            warmup_steps=2,
            progress_bar=False,
            output_dir=str(tmp_path / name),
            callbacks=[fail],
            strategy=ElasticHorovodStrategy(commit_steps=3),
        )
        return trainer, trainer.fit(), fail.steps

    ref, ref_result, ref_steps = fit("ref", 0)
    got, result, steps = fit("failed", 12)
    assert ref_steps == list(range(1, 22))
    assert steps == [*range(1, 13), 10, 11, 12, *range(13, 22)]
    assert result.history == ref_result.history
    want = ref._unwrapped().state_dict()
    for k, v in got._unwrapped().state_dict().items():
        assert torch.equal(v, want[k]), k
    assert got.current_lr == ref.current_lr


@needs_horovod
def test_horovodrun_elastic_mode_selects_the_elastic_strategy(monkeypatch):
    from candle.config import Params
    from candle.distributed import resolve_strategy
    from candle.distributed.horovod import ElasticHorovodStrategy, HorovodStrategy

    for name, value in {"HOROVOD_RANK": "0", "HOROVOD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    assert type(resolve_strategy("auto")) is HorovodStrategy
    monkeypatch.setenv("HOROVOD_ELASTIC", "1")
    strategy = resolve_strategy("auto", Params(elastic_commit_steps=25))
    assert isinstance(strategy, ElasticHorovodStrategy) and strategy.commit_steps == 25
