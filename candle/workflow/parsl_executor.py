"""Trials on Parsl workers: ``executor: {kind: parsl, ...}`` in a study.

The study driver keeps ``slots`` trials submitted to a Parsl DataFlowKernel; each trial runs
:func:`candle.workflow.trial.run_trial` inside a Parsl worker (a ``python_app``), which starts
the trial's own process tree under :mod:`candle.workflow._supervisor`. Parsl brings the workers:
on this machine (``site: local``) or on cluster nodes from Slurm, PBS, ... (a site profile in
:mod:`candle.workflow.sites`, or your own Parsl config file)::

    executor: {kind: parsl, site: local, options: {max_workers_per_node: 4}}
    executor: {kind: parsl, site: slurm, slots: 16, options: {partition: gpu, ...}}
    executor: {kind: parsl, config: my_site.py, options: {...}, run_dir: parsl-runs}

``config:`` is a Python file that defines ``config`` (a ``parsl.config.Config``) or
``make_config(run_dir, **options)`` returning one. Parsl's own retries are turned off: the
candle driver retries a lost trial (from its checkpoint). A worker that dies mid-trial makes the
trial's future raise (Parsl's ``WorkerLost``/``ManagerLost``); the trial's processes die with
it (the supervisor watches its starter).

Multi-node trials (``resources.nodes > 1``) need Parsl's MPI mode (an ``MPIExecutor``, e.g.
``site: slurm`` with ``options: {mpi: true}``): Parsl then gives each trial ``nodes`` nodes and
``ranks`` ranks, and the trial's launcher prefix becomes Parsl's ``$PARSL_MPI_PREFIX``
(``srun``/``mpiexec`` over exactly those nodes).

Parsl is imported only when a ParslExecutor is made. Each ParslExecutor starts its own
DataFlowKernel on its first :meth:`~ParslExecutor.submit` and stops it in
:meth:`~ParslExecutor.shutdown`, so several may be made (one after the other, or at once) in
one process.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import math
import os
import runpy
import shlex
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from candle.errors import ConfigError
from candle.workflow.trial import Resources, TrialSpec

__all__ = ["ParslExecutor", "run_trial_in_worker"]

log = logging.getLogger(__name__)

KEYS = ("config", "site", "slots", "options", "run_dir")
DEFAULT_SLOTS = 2
_MPI_LAUNCHERS = ("horovodrun", "mpiexec", "srun")  # ranks a $PARSL_MPI_PREFIX can start


def run_trial_in_worker(
    spec_data: dict[str, Any], parsl_resource_specification: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The Parsl app: one attempt of a trial, run in a Parsl worker process.

    In Parsl's MPI mode the worker's environment has ``PARSL_MPI_PREFIX`` (``srun``/``mpiexec``
    with the nodes and ranks Parsl gave this task): it replaces the trial's launcher prefix.
    ``parsl_resource_specification`` is for Parsl (an app that is given one must declare it).
    """
    from candle.workflow.trial import run_trial

    prefix = os.environ.get("PARSL_MPI_PREFIX")
    r = spec_data.get("resources") or {}
    if prefix and r.get("ranks", 1) > 1 and r.get("launcher") in _MPI_LAUNCHERS:
        spec_data = {**spec_data, "launch_prefix": shlex.split(prefix)}
    # a Parsl worker whose pool died goes on with its task, unseen: end it, so that the trial's
    # supervisor (which watches this process) stops the trial
    stop = threading.Event()
    threading.Thread(
        target=_exit_with_parent, args=(stop, os.getppid()), name="candle-parent-watch", daemon=True
    ).start()
    try:
        return run_trial(spec_data, None)
    finally:
        stop.set()


def _exit_with_parent(stop: threading.Event, parent: int, period: float = 1.0) -> None:
    while not stop.wait(period):
        if os.getppid() != parent:
            os._exit(1)


def _is_int(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _check_options(func: Any, options: dict[str, Any], where: str, what: str) -> None:
    """Unknown option names -> ConfigError listing the known ones (unless it takes **kw)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [
        n
        for i, (n, p) in enumerate(params.items())
        if i > 0 and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}.options: unknown option(s) {', '.join(unknown)} for {what}; known: "
            f"{', '.join(known) or '(none)'}"
        )


def _call_make_config(
    make_config: Any, run_dir: str, options: dict[str, Any], where: str, what: str
) -> Any:
    _check_options(make_config, options, where, what)
    try:
        config = make_config(run_dir, **options)
    except ConfigError:
        raise
    except Exception as e:  # a bad option value (Parsl type-checks its arguments)
        raise ConfigError(f"{where}: make_config of {what} failed: {type(e).__name__}: {e}") from e
    return config


def _load_config_file(
    path: Path, run_dir: str, options: dict[str, Any], where: str
) -> tuple[Any, bool]:
    """-> (parsl Config, whether it came from make_config)."""
    try:
        namespace = runpy.run_path(str(path), run_name="candle_parsl_config")
    except Exception as e:
        raise ConfigError(f"{where}.config: {path} failed to load: {type(e).__name__}: {e}") from e
    make_config = namespace.get("make_config")
    if callable(make_config):
        return _call_make_config(make_config, run_dir, options, where, str(path)), True
    if "config" in namespace:
        if options:
            raise ConfigError(
                f"{where}.options: {path} defines `config`, which takes no options; define "
                "`make_config(run_dir, **options)` there to use options"
            )
        return namespace["config"], False
    raise ConfigError(
        f"{where}.config: {path} defines neither `config` (a parsl.config.Config) nor "
        "`make_config(run_dir, **options)`"
    )


class ParslExecutor:
    """Trials as Parsl tasks; see the module's docstring."""

    name = "parsl"

    def __init__(self, config: Any, slots: int | None = None, *, source: str = "parsl config"):
        from parsl.config import Config

        if not isinstance(config, Config):
            raise ConfigError(
                f"{source}: expected a parsl.config.Config, got {type(config).__name__}"
            )
        if config.retries:
            log.warning(
                "%s: Parsl retries=%s turned off; the candle driver retries trials itself",
                source,
                config.retries,
            )
        config.retries = 0
        config.retry_handler = None
        self.source = source
        self._config = config
        executors = list(config.executors)
        if not executors:
            raise ConfigError(f"{source}: the Parsl config has no executors")
        mpi = [ex for ex in executors if getattr(ex, "enable_mpi_mode", False)]
        # MPI-mode executors need a resource specification with every task, which the others
        # refuse: with any of them, trials go to those only
        self._executors = mpi or executors
        self.mpi_mode = bool(mpi)
        for ex in self._executors:
            _fix_interchange_cmd(ex)
        if slots is not None and not _is_int(slots, 1):
            raise ConfigError(f"executor.slots must be an integer >= 1, got {slots!r}")
        self._slots = slots or _count_slots(self._executors) or DEFAULT_SLOTS
        self._lock = threading.Lock()
        self._dfk: Any = None
        self._app: Any = None
        self._closed = False
        self._pending: set[Future] = set()

    @classmethod
    def from_config(cls, config: dict[str, Any], where: str = "executor") -> ParslExecutor:
        """From a study's executor section (``kind`` already taken out); starts nothing."""
        from candle.workflow.sites import SITES

        config = dict(config or {})
        unknown = sorted(set(config) - set(KEYS))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)} for kind parsl; known: "
                f"{', '.join(sorted((*KEYS, 'kind')))}"
            )
        has_file, has_site = config.get("config") is not None, config.get("site") is not None
        if has_file == has_site:
            raise ConfigError(
                f"{where}: kind parsl needs exactly one of `config` (a Python file defining a "
                f"Parsl `config` or `make_config`) and `site` (one of {', '.join(SITES)}), got "
                + ("both" if has_file else "neither")
            )
        slots = config.get("slots")
        if slots is not None and not _is_int(slots, 1):
            raise ConfigError(f"{where}.slots must be an integer >= 1, got {slots!r}")
        options = config.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(
                f"{where}.options must be a mapping of make_config's options, got {options!r}"
            )
        run_dir = config.get("run_dir") or os.path.join(os.getcwd(), "parsl-runs")
        if not isinstance(run_dir, str | os.PathLike):
            raise ConfigError(f"{where}.run_dir must be a path, got {run_dir!r}")
        run_dir = os.path.abspath(os.fspath(run_dir))
        if has_site:
            site = config["site"]
            if site not in SITES:
                raise ConfigError(
                    f"{where}.site must be one of {', '.join(SITES)}, got {site!r} (or give "
                    "`config: my_site.py`, a Parsl config file)"
                )
            import importlib

            module = importlib.import_module(f"candle.workflow.sites.{site}")
            parsl_config = _call_make_config(
                module.make_config, run_dir, options, where, f"site {site}"
            )
            source = f"{where}.site {site}"
        else:
            path = config["config"]
            if not isinstance(path, str | os.PathLike):
                raise ConfigError(f"{where}.config must be a path to a Python file, got {path!r}")
            path = Path(path).expanduser()
            if not path.is_file():
                raise ConfigError(f"{where}.config: Parsl config file {path} not found")
            parsl_config, made = _load_config_file(path, run_dir, options, where)
            source = f"{where}.config {path}"
            # a plain `config` keeps its own run_dir unless the study names one
            if not made and ("run_dir" in config or _default_run_dir(parsl_config)):
                with contextlib.suppress(AttributeError):
                    parsl_config.run_dir = run_dir
        return cls(parsl_config, slots, source=source)

    @property
    def slots(self) -> int:
        return self._slots

    def check(self, resources: Resources) -> None:
        r = resources
        if r.nodes > 1 and not self.mpi_mode:
            raise ConfigError(
                f"resources.nodes: {r.nodes} needs Parsl's MPI mode, which {self.source} does "
                "not enable: use `site: slurm` or `site: pbs` with `options: {mpi: true}`, or "
                "in your Parsl config an MPIExecutor (parsl.executors.MPIExecutor(mpi_launcher="
                "'srun'|'mpiexec', max_workers_per_block=..., provider=...(launcher="
                "SimpleLauncher(), nodes_per_block>=nodes)))"
            )
        if self.mpi_mode and r.nodes > 1 and r.launcher not in _MPI_LAUNCHERS:
            raise ConfigError(
                f"resources: launcher {r.launcher} cannot start ranks on the {r.nodes} nodes "
                f"Parsl's MPI mode gives a trial; use one of {', '.join(_MPI_LAUNCHERS)}"
            )
        if self.mpi_mode:
            largest = max((_nodes_per_block(ex) for ex in self._executors), default=0)
            if largest and r.nodes > largest:
                raise ConfigError(
                    f"resources.nodes: {r.nodes} is more than the {largest} node(s) of one Parsl "
                    f"block ({self.source}); raise nodes_per_block"
                )
        gpus = [len(getattr(ex, "available_accelerators", ()) or ()) for ex in self._executors]
        if r.gpus_per_rank and r.nodes == 1 and all(gpus) and r.gpus > max(gpus):
            raise ConfigError(
                f"resources ask for {r.gpus} GPU(s) per trial, but each Parsl worker gets one of "
                f"{max(gpus)} accelerator(s) ({self.source}); leave available_accelerators unset "
                "and run fewer workers per node to give a trial several GPUs"
            )

    def start(self) -> None:
        """Start Parsl (the interchange and the first blocks of workers); submit does it too."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._closed:
            raise RuntimeError("this ParslExecutor has been shut down")
        if self._dfk is not None:
            return
        from parsl.app.app import python_app
        from parsl.dataflow.dflow import DataFlowKernel

        os.makedirs(self._config.run_dir, exist_ok=True)
        dfk = DataFlowKernel(self._config)
        self._app = python_app(
            run_trial_in_worker,
            data_flow_kernel=dfk,
            executors=[ex.label for ex in self._executors],
        )
        self._dfk = dfk
        atexit.register(self._atexit)

    def _atexit(self) -> None:
        with contextlib.suppress(Exception):
            self.shutdown(wait=False)

    def submit(self, spec: TrialSpec) -> Future:
        with self._lock:
            self._start_locked()
            app = self._app
        kwargs: dict[str, Any] = {}
        if self.mpi_mode:
            r = spec.resources
            kwargs["parsl_resource_specification"] = {
                "num_nodes": r.nodes,
                "num_ranks": r.ranks,
                "ranks_per_node": math.ceil(r.ranks / r.nodes),
            }
        future = app(spec.to_dict(), **kwargs)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)

    def shutdown(self, wait: bool = True) -> None:
        """Stop Parsl: its interchange and its blocks of workers (and so their trials).

        ``wait``: let submitted trials finish first. Without it, trials still running are
        stopped and their futures raise.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            dfk, self._dfk = self._dfk, None
        if dfk is None:
            return
        atexit.unregister(self._atexit)
        # Parsl detaches its parsl.log handler at cleanup but leaves the file open
        run_dir = os.path.abspath(dfk.run_dir) + os.sep
        logs = [
            h
            for name in ("parsl", "concurrent.futures")
            for h in logging.getLogger(name).handlers
            if isinstance(h, logging.FileHandler) and h.baseFilename.startswith(run_dir)
        ]
        try:
            if wait:
                dfk.wait_for_current_tasks()
            dfk.cleanup()
        finally:
            for handler in logs:
                handler.close()
            for ex in self._executors:  # Parsl leaves the blocks of a failed executor running
                if getattr(ex, "bad_state_is_set", False) and getattr(ex, "provider", None):
                    with contextlib.suppress(Exception):
                        ex.provider.cancel(list(ex.blocks_to_job_id.values()))
            with self._lock:
                pending, self._pending = list(self._pending), set()
            for future in pending:
                if not future.done():
                    with contextlib.suppress(Exception):
                        future.set_exception(
                            RuntimeError("the Parsl executor was shut down before the trial ended")
                        )


# Parsl's interchange outlives a driver that dies without cleaning up (its worker pools then
# keep heartbeating it, and their trials keep running). Started through this, it exits when its
# parent does; the pools follow within their heartbeat_threshold, and the trials with them
# (each trial's supervisor watches its worker).
_INTERCHANGE_MAIN = (
    "import os, runpy, threading, time\n"
    "parent = os.getppid()\n"
    "def watch():\n"
    "    while os.getppid() == parent:\n"
    "        time.sleep(1)\n"
    "    os._exit(1)\n"
    "threading.Thread(target=watch, daemon=True).start()\n"
    "runpy.run_module('parsl.executors.high_throughput.interchange', run_name='__main__')\n"
)


def _fix_interchange_cmd(ex: Any) -> None:
    """Parsl's default interchange command: ``interchange.py`` from PATH, which misses the venv's
    ``bin/`` when this Python was started by its path, and lives on if the driver dies. Start it
    with this Python instead, watching its parent."""
    cmd = getattr(ex, "interchange_launch_cmd", None)
    if cmd is not None and list(cmd) == ["interchange.py"]:
        ex.interchange_launch_cmd = [sys.executable, "-c", _INTERCHANGE_MAIN]


def _default_run_dir(config: Any) -> bool:
    return getattr(config, "run_dir", None) == "runinfo"  # Parsl's default, relative to cwd


def _nodes_per_block(ex: Any) -> int:
    provider = getattr(ex, "provider", None)
    value = getattr(provider, "nodes_per_block", None)
    return value if _is_int(value, 1) else 0


def _count_slots(executors: list[Any]) -> int:
    """Trials the executors run at once, when their configuration says; else 0."""
    total = 0
    for ex in executors:
        provider = getattr(ex, "provider", None)
        max_blocks = getattr(provider, "max_blocks", None)
        if getattr(ex, "enable_mpi_mode", False):
            per_block = getattr(ex, "max_workers_per_block", None)
            if not (_is_int(per_block, 1) and _is_int(max_blocks, 1)):
                return 0
            total += per_block * max_blocks
            continue
        if hasattr(ex, "max_threads") and provider is None:  # parsl ThreadPoolExecutor
            if not _is_int(ex.max_threads, 1):
                return 0
            total += ex.max_threads
            continue
        workers = getattr(ex, "max_workers_per_node", None)
        if workers is None or workers == float("inf"):
            # HTEX works it out from the provider's cores/memory/accelerators when it can
            workers = getattr(ex, "workers_per_node", None)
            hinted = getattr(provider, "cores_per_node", None) or getattr(
                ex, "available_accelerators", None
            )
            if not hinted:
                return 0
        nodes = _nodes_per_block(ex)
        if not (
            isinstance(workers, int | float) and workers >= 1 and nodes and _is_int(max_blocks, 1)
        ):
            return 0
        total += int(workers) * nodes * max_blocks
    return total
