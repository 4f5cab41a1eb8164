"""HorovodStrategy under real ``horovodrun -np 2 --gloo`` jobs on 127.0.0.1, checked against
plain single-process runs of the same script.

Each job is a subprocess with a deadline: a hang (ranks waiting on each other forever) fails
the test instead of blocking CI, and the whole process tree is killed. ``horovodrun`` picks
its rendezvous port itself (it binds a free one; there is no option to choose it) and, with
only local hosts, talks over the loopback interface.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from candle.testing.processes import find_launcher

pytestmark = pytest.mark.distributed

HERE = Path(__file__).parent
DIST_SCRIPT = HERE / "_dist_script.py"
UNEVEN_SCRIPT = HERE / "_hvd_uneven.py"
TIMEOUT_S = 180  # per job; a healthy one takes 5-15 s

try:
    import horovod.torch  # noqa: F401  (loads the compiled extension: a broken build fails here)
    import psutil

    _missing = ""
except ImportError as e:
    _missing = f"horovod is not importable ({e}); install it with scripts/install_horovod.sh"
HOROVODRUN = find_launcher("horovodrun")
needs_horovod = pytest.mark.skipif(
    bool(_missing) or HOROVODRUN is None, reason=_missing or "horovodrun is not on PATH"
)

# 320 samples: 256 training rows (128 per rank, no padding), 64 validation rows (32 per rank).
# SGD without dropout: np=2 x batch 16 and np=1 x batch 32 see the same samples in each step.
EQUIV = ["epochs=2", "n_samples=320", "optimizer=sgd", "lr=0.05", "dropout=0", "progress_bar=false"]
# 200 samples: 80 rows per rank = 5 micro-batches of 16, so with grad_accum_steps=2 each epoch
# ends with a group of one micro-batch; np=1 x batch 64 has batches of 64, 64 and 32 rows.
# Adam with weight decay: a zero-gradient step to initialise its state (as Horovod's
# broadcast_optimizer_state does) would count a step and decay the weights, and show here;
# so would clipping before the gradients are reduced (the norm must be of the average).
ACCUM = ["epochs=2", "n_samples=200", "optimizer=adam", "lr=0.01", "weight_decay=0.1"]
ACCUM += ["grad_clip=1.0", "dropout=0", "progress_bar=false"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CANDLE_", "HOROVOD_"))}
    return {**env, **extra}


def _hvd_cmd(script, *args, np=2):
    return [
        HOROVODRUN,
        "-np",
        str(np),
        "-H",
        f"localhost:{np}",
        "--gloo",
        "--gloo-timeout-seconds",
        "60",
        sys.executable,
        str(script),
        *map(str, args),
    ]


def _kill_tree(proc):
    """SIGKILL the launcher's process group and every descendant: horovodrun starts each
    worker in a session of its own, so killing the group alone would leave them running."""
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
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"processes survived SIGKILL: {alive}"


def _launch(cmd, *, env=None, kill_when=None):
    """Run ``cmd`` (in a new session) to completion, or kill it all once a line of its output
    satisfies ``kill_when``. Returns (returncode, output); fails the test after TIMEOUT_S."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env or _env(),
        start_new_session=True,
    )
    timed_out = threading.Event()

    def on_deadline():
        timed_out.set()
        _kill_tree(proc)

    deadline = threading.Timer(TIMEOUT_S, on_deadline)
    deadline.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if kill_when is not None and kill_when(line):
                _kill_tree(proc)
                break
        lines.append(proc.stdout.read())
        rc = proc.wait()
    finally:
        deadline.cancel()
        proc.stdout.close()
    out = "".join(lines)
    if timed_out.is_set():
        pytest.fail(f"job did not finish within {TIMEOUT_S} s (hang?): {cmd}\n{out[-4000:]}")
    return rc, out


def _hvd(script, *args, **kw):
    rc, out = _launch(_hvd_cmd(script, *args), **kw)
    assert rc == 0, out[-4000:]
    return out


def _single(out_dir, *args):
    proc = subprocess.run(
        [sys.executable, str(DIST_SCRIPT), str(out_dir), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _weights(out_dir, rank=0):
    return torch.load(Path(out_dir) / f"weights_rank{rank}.pt", weights_only=True)


def _only_run_dir(output_dir):
    runs = list(Path(output_dir).glob("*/*"))
    assert len(runs) == 1, runs
    return runs[0]


def _result(run_dir):
    return json.loads((Path(run_dir) / "result.json").read_text())


def _assert_close(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        diff = (a[k] - b[k]).abs().max().item()
        assert diff <= atol, f"{k}: max difference {diff:g} > {atol:g}"


def _pair(tmp_path_factory, name, common, np2_args, np1_args):
    """The same training as an np=2 horovodrun job and as one plain process."""
    d = tmp_path_factory.mktemp(name)
    hvd = {"out": d / "np2", "output_dir": d / "np2runs"}
    one = {"out": d / "np1", "output_dir": d / "np1runs"}
    hvd["log"] = _hvd(
        DIST_SCRIPT, hvd["out"], *common, *np2_args, f"output_dir={hvd['output_dir']}"
    )
    one["log"] = _single(one["out"], *common, *np1_args, f"output_dir={one['output_dir']}")
    return hvd, one


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    return _pair(tmp_path_factory, "equiv", EQUIV, ["batch_size=16"], ["batch_size=32"])


@pytest.fixture(scope="module")
def accumulation(tmp_path_factory):
    np2 = ["batch_size=16", "grad_accum_steps=2"]
    return _pair(tmp_path_factory, "accum", ACCUM, np2, ["batch_size=64"])


@needs_horovod
def test_ranks_end_with_bitwise_identical_parameters(equivalence):
    hvd, _ = equivalence
    w0, w1 = _weights(hvd["out"], 0), _weights(hvd["out"], 1)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"{k} differs between rank 0 and rank 1"
    assert "rank 1 done completed steps 16" in hvd["log"]


@needs_horovod
def test_two_ranks_match_one_process_with_twice_the_batch(equivalence):
    hvd, one = equivalence
    _assert_close(_weights(hvd["out"]), _weights(one["out"]), atol=1e-5)


@needs_horovod
def test_accumulation_with_a_short_last_group_matches_one_process(accumulation):
    """backward_passes_per_step=2; each epoch's last group has one micro-batch, so Horovod's
    count is not reached there and the step must reduce the gradients (and reset the count:
    otherwise the next epoch's groups would reduce at the wrong micro-batch, or fail). Adam
    with weight decay and clipping: see ACCUM."""
    hvd, one = accumulation
    assert "rank 0 done completed steps 6" in hvd["log"]  # 3 steps per epoch: 2 + 2 + 1
    _assert_close(_weights(hvd["out"]), _weights(one["out"]), atol=1e-5)
    w0, w1 = _weights(hvd["out"], 0), _weights(hvd["out"], 1)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


@needs_horovod
def test_validation_metrics_are_averaged_over_all_ranks(equivalence):
    hvd, one = equivalence
    got = _result(_only_run_dir(hvd["output_dir"]))["metrics"]
    want = _result(_only_run_dir(one["output_dir"]))["metrics"]
    for name in ("val_loss", "val_mae", "train_loss"):
        assert got[name] == pytest.approx(want[name], abs=1e-6), name


@needs_horovod
def test_only_rank_0_writes_the_run_directory(equivalence):
    hvd, _ = equivalence
    run = _only_run_dir(hvd["output_dir"])  # and no second run directory from rank 1
    assert sorted(p.name for p in Path(hvd["output_dir"]).iterdir()) == ["default"]
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["params.yaml", "train.log", "metrics.jsonl", "result.json", "tensorboard", "checkpoints"]
    )
    assert len(list((run / "tensorboard").iterdir())) == 1  # one events file
    result = _result(run)
    assert result["world_size"] == 2 and result["status"] == "completed"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    log = (run / "train.log").read_text()
    for line in ("training on cpu (HorovodStrategy)", "epoch 1/2:", "epoch 2/2:", "completed"):
        assert log.count(line) == 1, f"{line!r} in train.log {log.count(line)} times:\n{log}"


@needs_horovod
def test_sigkill_of_the_whole_job_then_resume_is_exact(tmp_path):
    """A real crash: every process of the job gets SIGKILL mid-epoch, then a new np=2 job
    resumes from the last checkpoint. Dropout is on, so each rank's RNG state must come back
    too; the LR schedule (warm-up, cosine) must go on from the checkpoint."""
    args = ["epochs=3", "n_samples=320", "batch_size=16", "lr_schedule=cosine", "warmup_steps=4"]
    args += ["checkpoint_every_steps=3", "progress_bar=false"]
    _hvd(DIST_SCRIPT, tmp_path / "ref", *args, f"run_dir={tmp_path / 'ref_run'}")

    run = tmp_path / "run"
    # 8 steps per epoch; the checkpoint at step 9 is in epoch 2, and step 10 is just after it
    rc, out = _launch(
        _hvd_cmd(DIST_SCRIPT, tmp_path / "killed", *args, f"run_dir={run}"),
        env=_env(CANDLE_TEST_STEP_SLEEP="0.3"),
        kill_when=lambda line: line.startswith("[0]<stdout>:rank 0/2 step 10 "),
    )
    assert rc == -signal.SIGKILL, out[-4000:]
    assert not list((tmp_path / "killed").glob("weights_rank*.pt"))
    assert _result(run)["status"] == "running"  # nobody wrote a final status

    out = _hvd(DIST_SCRIPT, tmp_path / "resumed", *args, f"run_dir={run}", "resume=true")
    first = int(out.split("[0]<stdout>:rank 0/2 step ")[1].split()[0])
    # continued after the checkpoint at step 9 (12 if the kill came late), did not restart
    assert first in (10, 13), out[-4000:]
    ref = _weights(tmp_path / "ref")
    for rank in (0, 1):
        got = _weights(tmp_path / "resumed", rank)
        for k in ref:
            assert torch.equal(got[k], ref[k]), f"rank {rank}: {k} differs after resume"
    rows = (run / "metrics.jsonl").read_text().splitlines()
    ref_rows = (tmp_path / "ref_run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r) for r in rows] == [json.loads(r) for r in ref_rows]
    assert _result(run)["status"] == "completed"


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    d = tmp_path_factory.mktemp("uneven")
    args = ["epochs=2", "lr=0.01", "lr_scaling=linear", "progress_bar=false", f"output_dir={d}"]
    return _hvd(UNEVEN_SCRIPT, *args), _only_run_dir(d)


@needs_horovod
def test_uneven_loaders_across_ranks_do_not_hang(uneven):
    out, run = uneven
    # 10 and 6 batches: both ranks run 6 per epoch
    assert "[0]<stdout>:rank 0 micro-batches 12 steps 12" in out
    assert "[1]<stdout>:rank 1 micro-batches 12 steps 12" in out
    log = (run / "train.log").read_text()
    assert "training loader has 10 batches, the shortest rank's has 6" in log


@needs_horovod
def test_lr_scaling_linear_doubles_the_learning_rate_on_two_ranks(uneven):
    out, run = uneven
    log = (run / "train.log").read_text()
    assert "lr_scaling=linear: 2 rank(s), learning rate 0.01 x 2 = 0.02" in log
    assert "steps 12 lr 0.02" in out  # the optimizer's learning rate, on each rank
    assert out.count("lr 0.02\n") == 2
    assert _result(run)["metrics"]["lr"] == pytest.approx(0.02)


def test_strategy_horovod_without_horovod_says_how_to_install(monkeypatch):
    from candle.distributed import resolve_strategy
    from candle.errors import StrategyError

    monkeypatch.setitem(sys.modules, "horovod", None)  # `import horovod` now raises
    monkeypatch.setitem(sys.modules, "horovod.torch", None)
    monkeypatch.delitem(sys.modules, "candle.distributed.horovod", raising=False)
    with pytest.raises(StrategyError, match=r"scripts/install_horovod\.sh") as info:
        resolve_strategy("horovod")
    assert "strategy=single" in str(info.value)
