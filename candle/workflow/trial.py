"""Trials: what one training run of a study needs, how it is launched, and what came of it.

A trial runs as ``python -m candle train`` in its own process tree (under ``horovodrun``,
``torchrun``, ``mpiexec`` or ``srun`` when it has several ranks), watched by
:mod:`candle.workflow._supervisor`. Its directory is the Trainer's run directory::

    <trial_dir>/
      trial.json        the trial's parameters as given to the Trainer (its config file)
      trial.log         stdout and stderr of every attempt, one header line per attempt
      params.yaml, train.log, metrics.jsonl, checkpoints/, result.json   (the Trainer's)

Every attempt passes ``resume=true``: a retry, a continued segment or a trial re-queued after
the driver died continues from the trial's last checkpoint. :func:`run_trial` is a plain
function of JSON-able arguments, so any executor (a local thread, a Parsl worker) can run it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from candle.cli import EXIT_CONFIG, EXIT_INTERRUPTED  # exit statuses of `candle train`
from candle.errors import ConfigError

__all__ = [
    "LAUNCHERS",
    "OUTCOMES",
    "Resources",
    "TrialOutcome",
    "TrialSpec",
    "run_trial",
    "trial_command",
]

LAUNCHERS = ("none", "horovodrun", "torchrun", "mpiexec", "srun")
# done: finished; paused: a segment ended (continue it); the rest are faults
OUTCOMES = ("done", "paused", "failed", "nan", "timeout", "killed", "lost", "config")
LOG_TAIL_LINES = 40
_LOCK = ".trial.lock"
_SUPERVISOR = str(Path(__file__).with_name("_supervisor.py"))


@dataclass(frozen=True)
class Resources:
    """What one trial needs. ``threads`` and ``gpus_per_rank`` are per rank."""

    threads: int = 1
    gpus_per_rank: int = 0
    ranks: int = 1
    nodes: int = 1
    launcher: str = "none"

    def __post_init__(self) -> None:
        where = "resources"
        for name in ("threads", "ranks", "nodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{where}.{name} must be an integer >= 1, got {value!r}")
        if (
            not isinstance(self.gpus_per_rank, int)
            or isinstance(self.gpus_per_rank, bool)
            or self.gpus_per_rank < 0
        ):
            raise ConfigError(
                f"{where}.gpus_per_rank must be an integer >= 0, got {self.gpus_per_rank!r}"
            )
        if self.launcher not in LAUNCHERS:
            raise ConfigError(
                f"{where}.launcher must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}"
            )
        if self.ranks > 1 and self.launcher == "none":
            raise ConfigError(
                f"{where}: ranks: {self.ranks} needs a launcher (horovodrun, torchrun, mpiexec "
                "or srun); launcher: none runs one process"
            )
        if self.nodes > self.ranks:
            raise ConfigError(
                f"{where}: nodes: {self.nodes} is more than ranks: {self.ranks}; every node "
                "needs at least one rank"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "resources") -> Resources:
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def gpus(self) -> int:
        return self.gpus_per_rank * self.ranks

    @property
    def cpus(self) -> int:
        return self.threads * self.ranks


@dataclass
class TrialSpec:
    """One attempt at (a segment of) a trial: everything the process that runs it needs."""

    trial_id: int
    trainer: str  # module:Class or path/to/file.py:Class
    params: dict[str, Any]
    trial_dir: str
    resources: Resources = field(default_factory=Resources)
    time_limit: float = 0.0  # seconds of wall time for this attempt; 0 = none
    stop_at_epoch: int = 0  # end of this segment; 0 = train to the end
    attempt: int = 1
    grace: float = 10.0  # seconds between SIGTERM and SIGKILL
    env: dict[str, str] = field(default_factory=dict)
    # replaces the launcher's own prefix, e.g. Parsl MPI mode's $PARSL_MPI_PREFIX for the nodes
    # and ranks it gave this task
    launch_prefix: list[str] | None = None
    # working directory of the trial's process (relative paths in params resolve against it);
    # None: the trial directory
    cwd: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "resources": self.resources.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialSpec:
        return cls(**{**data, "resources": Resources(**data["resources"])})


@dataclass
class TrialOutcome:
    """What one attempt came to. ``status`` is one of :data:`OUTCOMES`."""

    trial_id: int
    attempt: int
    status: str
    reason: str = ""
    returncode: int | None = None
    objective: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0
    error: str = ""
    log_tail: str = ""
    host: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    checkpoint: str | None = None
    data: dict[str, Any] = field(default_factory=dict)  # the datasets' checksums (provenance)

    @property
    def elapsed(self) -> float:
        return self.ended_at - self.started_at

    @property
    def retryable(self) -> bool:
        """Faults another attempt may get past. Not a bad config, and not a NaN: resumed from
        the same checkpoint with the same seed, it would come again."""
        return self.status in ("failed", "timeout", "killed", "lost")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialOutcome:
        return cls(**data)


def _tool(name: str) -> str:
    """A launcher next to this Python (the venv's) first, then on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def trial_command(spec: TrialSpec, python: str | None = None) -> list[str]:
    """The command line of one attempt, launcher included."""
    python = python or sys.executable
    r = spec.resources
    overrides = [
        f"run_dir={spec.trial_dir}",
        "resume=true",
        "progress_bar=false",
        f"threads={r.threads}",
        f"stop_at_epoch={spec.stop_at_epoch}",
    ]
    if spec.time_limit > 0:
        # the Trainer stops by itself (checkpointed) before the supervisor has to kill it
        overrides.append(f"time_limit={max(spec.time_limit - spec.grace, spec.time_limit / 2):g}")
    train = ["-m", "candle", "train", "--trainer", spec.trainer, _config_path(spec), *overrides]
    if spec.launch_prefix is not None:
        return [*spec.launch_prefix, python, *train]
    if r.launcher == "none":
        return [python, *train]
    if r.launcher == "horovodrun":
        hosts = [] if r.nodes > 1 else ["-H", f"localhost:{r.ranks}"]
        return [_tool("horovodrun"), "-np", str(r.ranks), *hosts, python, *train]
    if r.launcher == "torchrun":
        if r.nodes > 1:
            raise ConfigError(
                "resources: launcher torchrun runs on one node here; use horovodrun, mpiexec or "
                "srun for several nodes"
            )
        return [
            python,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={r.ranks}",
            *train,
        ]
    if r.launcher == "mpiexec":
        return [_tool("mpiexec"), "-n", str(r.ranks), python, *train]
    return [_tool("srun"), f"--ntasks={r.ranks}", f"--nodes={r.nodes}", python, *train]


def _config_path(spec: TrialSpec) -> str:
    return str(Path(spec.trial_dir) / "trial.json")


def _environment(spec: TrialSpec, gpu_ids: list[int] | None) -> dict[str, str]:
    env = {**os.environ, **spec.env}
    threads = str(spec.resources.threads)
    env.update(
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        OPENBLAS_NUM_THREADS=threads,
        PYTHONUNBUFFERED="1",
        CANDLE_TRIAL_ID=str(spec.trial_id),
        CANDLE_TRIAL_ATTEMPT=str(spec.attempt),
    )
    if gpu_ids is not None:  # the executor hands out GPUs: a trial sees only its own
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
    if spec.resources.launcher == "horovodrun":
        env.setdefault("HOROVOD_GLOO_TIMEOUT_SECONDS", "60")
    return env


@contextlib.contextmanager
def _trial_lock(trial_dir: Path, wait: float):
    """Hold the trial directory's lock while a process of this trial may be writing in it.

    A trial process left by a driver that died stops within a second or two (its supervisor
    sees the pipe close); the next attempt waits for that rather than run beside it. The
    supervisor inherits the locked descriptor, so the lock lasts as long as it does, even when
    the process that took it dies first. -> the descriptor
    """
    fd = os.open(trial_dir / _LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"trial directory {trial_dir} is still locked by another process after "
                        f"{wait:.0f} s (an earlier attempt that did not stop?)"
                    ) from None
                time.sleep(0.05)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def run_trial(
    spec_data: dict[str, Any],
    gpu_ids: list[int] | None = None,
    python: str | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> dict[str, Any]:
    """Run one attempt of a trial to its end; -> :class:`TrialOutcome` as a dict.

    Never raises for anything the trial did (crash, signal, time limit): that is the outcome.
    It raises only when the attempt could not be started at all. ``on_start`` gets the
    supervisor's process (SIGTERM to it stops the trial's whole tree).
    """
    spec = TrialSpec.from_dict(spec_data)
    trial_dir = Path(spec.trial_dir)
    trial_dir.mkdir(parents=True, exist_ok=True)
    config = Path(_config_path(spec))
    if not config.exists():  # written once: later attempts must train the same trial
        tmp = config.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec.params, indent=1, sort_keys=True, allow_nan=False))
        os.replace(tmp, config)
    host = socket.gethostname()
    cmd = trial_command(spec, python)
    with _trial_lock(trial_dir, wait=spec.grace + 30) as lock_fd:
        result_file = trial_dir / "result.json"
        before = result_file.stat().st_mtime_ns if result_file.exists() else None
        log_path = trial_dir / "trial.log"
        started = time.time()
        with open(log_path, "ab") as log:
            header = (
                f"=== trial {spec.trial_id} attempt {spec.attempt} on {host} at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n"
            )
            log.write(header.encode())
            log.flush()
            read_end, write_end = os.pipe()
            try:
                proc = subprocess.Popen(
                    [
                        python or sys.executable,
                        _SUPERVISOR,  # by path: `-m` would import candle (and torch) first
                        "--watch-fd",
                        str(read_end),
                        "--time-limit",
                        str(spec.time_limit),
                        "--grace",
                        str(spec.grace),
                        "--",
                        *cmd,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_environment(spec, gpu_ids),
                    cwd=spec.cwd if spec.cwd and Path(spec.cwd).is_dir() else trial_dir,
                    pass_fds=(read_end, lock_fd),
                )
            finally:
                os.close(read_end)
            if on_start is not None:  # e.g. an executor that stops its trials on shutdown
                on_start(proc)
            try:
                rc = proc.wait()
            except BaseException:  # the driver is stopping: take the trial with it
                os.close(write_end)
                write_end = -1
                with contextlib.suppress(Exception):
                    proc.wait(spec.grace + 5)
                raise
            finally:
                if write_end >= 0:
                    os.close(write_end)
        ended = time.time()
    outcome = _outcome(spec, rc, result_file, before, log_path)
    outcome.host, outcome.started_at, outcome.ended_at = host, started, ended
    return outcome.to_dict()


def _outcome(
    spec: TrialSpec, rc: int, result_file: Path, before: int | None, log_path: Path
) -> TrialOutcome:
    from candle.workflow._supervisor import EXIT_ORPHANED, EXIT_TIME_LIMIT

    out = TrialOutcome(spec.trial_id, spec.attempt, "failed", returncode=rc)
    result: dict[str, Any] = {}
    if result_file.exists() and result_file.stat().st_mtime_ns != before:
        with contextlib.suppress(OSError, ValueError):
            result = json.loads(result_file.read_text())
    out.history = list(result.get("history") or [])
    out.metrics = dict(result.get("metrics") or {})
    out.epoch = int(result.get("epoch") or 0)
    out.checkpoint = result.get("last_checkpoint") or result.get("checkpoint")
    out.data = dict((result.get("provenance") or {}).get("data") or {})
    objective = (result.get("objective") or {}).get("value")
    out.objective = float(objective) if isinstance(objective, int | float) else None
    status = result.get("status")
    error = result.get("error") or {}
    if rc == 0 and status in ("completed", "paused"):
        if out.objective is None or not math.isfinite(out.objective):
            out.status, out.reason = "nan", f"objective is {out.objective} (no finite value)"
        else:
            out.status = "done" if status == "completed" else "paused"
            out.reason = result.get("stop_reason", "")
    elif rc == EXIT_TIME_LIMIT or (rc == EXIT_INTERRUPTED and status == "interrupted"):
        out.status, out.reason = "timeout", f"time limit of {spec.time_limit:g} s"
    elif rc == EXIT_ORPHANED:
        out.status, out.reason = "lost", "the process that started the trial died"
    elif rc == EXIT_CONFIG:
        out.status = "config"
        out.reason = "bad configuration: " + (error.get("message") or "see the log")
    elif rc > 128 and rc - 128 < signal.NSIG:
        name = signal.Signals(rc - 128).name
        out.status, out.reason = "killed", f"killed by {name}"
        if name == "SIGKILL":
            out.reason += " (out of memory, or killed from outside)"
    elif error.get("type") == "NonFiniteLossError":
        out.status, out.reason = "nan", error.get("message", "non-finite loss")
    else:
        message = error.get("message") or f"exit status {rc}"
        out.reason = f"{error.get('type', 'error')}: {message}" if error else message
    if out.status not in ("done", "paused"):
        out.log_tail = _tail(log_path)
        out.error = out.reason + (
            "\n--- end of trial.log ---\n" + out.log_tail if out.log_tail else ""
        )
    return out


def _tail(path: Path, lines: int = LOG_TAIL_LINES, max_bytes: int = 64 * 1024) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
