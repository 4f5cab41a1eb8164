"""Executors: where trials run, behind one futures-style interface.

``submit(spec)`` returns a :class:`concurrent.futures.Future` whose result is the attempt's
:class:`~candle.workflow.trial.TrialOutcome` as a dict; the driver waits on many futures at once
and never on a single trial. An exception from a future means the attempt was lost on the way
(a Parsl worker that died, a node that went away): the driver records it and retries.

- :class:`LocalExecutor` (the default): slots on this machine. Hands out GPUs through
  ``CUDA_VISIBLE_DEVICES`` and CPU threads, so two trials never share a GPU by accident.
- :class:`candle.workflow.parsl_executor.ParslExecutor`: Parsl's HighThroughputExecutor, for
  clusters (Slurm, PBS, ...), made by :func:`make_executor`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from candle.errors import ConfigError
from candle.workflow.trial import Resources, TrialSpec, run_trial

__all__ = [
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "add_executor_arguments",
    "executor_from_arguments",
    "make_executor",
    "visible_gpus",
]

EXECUTORS = ("local", "parsl")


class Executor(Protocol):
    """What the driver needs from an executor."""

    name: str

    @property
    def slots(self) -> int:
        """How many trials may run at once (the driver keeps this many submitted)."""
        ...

    def check(self, resources: Resources) -> None:
        """Raise ConfigError if a trial with these resources could never run here."""
        ...

    def submit(self, spec: TrialSpec) -> Future: ...

    def shutdown(self, wait: bool = True) -> None: ...


def visible_gpus() -> list[int]:
    """GPU indices this process may hand out: CUDA_VISIBLE_DEVICES, else what torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [int(x) for x in env.split(",") if x.strip().lstrip("-").isdigit() and int(x) >= 0]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:  # no torch or no driver: no GPUs
        return []


class _Pool:
    """Counted CPU threads and named GPUs, taken whole by one trial and given back after."""

    def __init__(self, cpus: int, gpus: list[int]):
        self.total = self.cpus = cpus
        self.free_gpus = list(gpus)
        self._cond = threading.Condition()

    def take(self, r: Resources) -> list[int]:
        with self._cond:
            # a trial wider than the free threads waits, unless the machine is idle
            self._cond.wait_for(
                lambda: (
                    (self.cpus >= r.cpus or self.cpus == self.total)
                    and len(self.free_gpus) >= r.gpus
                )
            )
            self.cpus -= r.cpus
            gpus, self.free_gpus = self.free_gpus[: r.gpus], self.free_gpus[r.gpus :]
            return gpus

    def give(self, r: Resources, gpus: list[int]) -> None:
        with self._cond:
            self.cpus += r.cpus
            self.free_gpus = sorted(self.free_gpus + gpus)
            self._cond.notify_all()


class LocalExecutor:
    """Trials as processes on this machine, at most ``slots`` at a time.

    ``cpus`` (default: the CPUs this process may use) bounds the threads of running trials
    together; ``gpus`` (default: :func:`visible_gpus`) are given to trials whole, each GPU to one
    trial at a time. A trial that asks for no GPU sees none (``CUDA_VISIBLE_DEVICES=""``).
    """

    name = "local"

    def __init__(
        self,
        slots: int | None = None,
        *,
        cpus: int | None = None,
        gpus: list[int] | None = None,
        runner: Callable[..., dict[str, Any]] = run_trial,
    ):
        self.cpus = cpus or len(os.sched_getaffinity(0))
        self.gpus = visible_gpus() if gpus is None else list(gpus)
        self._slots = slots or max(1, self.cpus)
        if self._slots < 1:
            raise ConfigError(f"executor.slots must be >= 1, got {slots}")
        self._pool = _Pool(self.cpus, self.gpus)
        self._threads = ThreadPoolExecutor(self._slots, thread_name_prefix="candle-trial")
        self._runner = runner
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    @property
    def slots(self) -> int:
        return self._slots

    def check(self, resources: Resources) -> None:
        if resources.nodes > 1:
            raise ConfigError(
                f"resources.nodes: {resources.nodes} cannot run on the local executor (one "
                "node); use executor: parsl with a multi-node site profile"
            )
        if resources.gpus > len(self.gpus):
            raise ConfigError(
                f"resources ask for {resources.gpus} GPU(s) per trial ({resources.ranks} ranks x "
                f"{resources.gpus_per_rank}), but this machine has {len(self.gpus)} "
                f"({'CUDA_VISIBLE_DEVICES' if 'CUDA_VISIBLE_DEVICES' in os.environ else 'torch'})"
            )
        if resources.cpus > self.cpus:
            raise ConfigError(
                f"resources ask for {resources.cpus} CPU threads per trial ({resources.ranks} "
                f"ranks x {resources.threads}), but the local executor has {self.cpus}"
            )

    def submit(self, spec: TrialSpec) -> Future:
        return self._threads.submit(self._run, spec)

    def _run(self, spec: TrialSpec) -> dict[str, Any]:
        r = spec.resources
        gpus = self._pool.take(r)
        started: list[subprocess.Popen] = []

        def on_start(proc: subprocess.Popen) -> None:
            started.append(proc)
            with self._lock:
                self._procs.add(proc)

        try:
            if self._runner is run_trial:
                return run_trial(spec.to_dict(), gpus, on_start=on_start)
            return self._runner(spec.to_dict(), gpus)
        finally:
            with self._lock:
                self._procs.difference_update(started)
            self._pool.give(r, gpus)

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking trials; with ``wait=False`` also stop the running ones (SIGTERM to their
        supervisors, which take down each trial's process tree) instead of waiting for them."""
        if not wait:
            with self._lock:
                procs = list(self._procs)
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        self._threads.shutdown(wait=wait, cancel_futures=True)


def make_executor(config: dict[str, Any] | None, where: str = "executor") -> Executor:
    """An executor from a study's ``executor:`` section.

    ``{kind: local, slots: 2, cpus: 8, gpus: [0, 1]}`` or
    ``{kind: parsl, config: site.py | site: local|slurm|pbs, slots: N, ...}``.
    """
    config = dict(config or {})
    kind = config.pop("kind", "local")
    if kind == "local":
        known = {"slots", "cpus", "gpus"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)} for kind local; known: "
                f"{', '.join(sorted(known | {'kind'}))}"
            )
        for key in ("slots", "cpus"):
            value = config.get(key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{where}.{key} must be an integer >= 1, got {value!r}")
        return LocalExecutor(config.get("slots"), cpus=config.get("cpus"), gpus=config.get("gpus"))
    if kind == "parsl":
        from candle.workflow.parsl_executor import ParslExecutor

        return ParslExecutor.from_config(config, where=where)
    raise ConfigError(f"{where}.kind must be one of {', '.join(EXECUTORS)}, got {kind!r}")


def add_executor_arguments(ap: Any) -> None:
    """The command-line options that override a study's ``executor:`` section."""
    ap.add_argument("--slots", type=int, help="trials at once (overrides executor.slots)")
    ap.add_argument("--executor", choices=EXECUTORS, help="overrides executor.kind")
    ap.add_argument("--site", help="Parsl site profile (local, slurm, pbs) or a Parsl config .py")
    ap.add_argument("--parsl-config", help="a Python file defining a Parsl `config`")


def executor_from_arguments(args: Any, executor: dict[str, Any]) -> dict[str, Any]:
    """A study's ``executor:`` section with the command line's overrides applied."""
    executor = dict(executor)
    if args.executor and args.executor != executor.get("kind", "local"):
        executor = {"kind": args.executor}
    site, config = args.site, args.parsl_config
    if site and site.endswith(".py"):  # --site my_cluster.py: a Parsl config file
        site, config = None, config or site
    if site or config:
        # keep the file's Parsl settings (slots, run_dir, and the options when the site is the
        # same); the command line only picks the site or the config file
        kept = executor if executor.get("kind") == "parsl" else {}
        same_site = site is not None and kept.get("site") == site
        executor = {"kind": "parsl", **{k: kept[k] for k in ("slots", "run_dir") if k in kept}}
        if site:
            executor["site"] = site
            if same_site and "options" in kept:
                executor["options"] = kept["options"]
        if config:
            executor["config"] = config
    if args.slots is not None:
        executor["slots"] = args.slots
    return executor
