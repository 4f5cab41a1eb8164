"""Studies: many trials of one Trainer, run in parallel, recorded in a store, resumable.

A study is described by a YAML (or JSON/TOML) file or a dict::

    name: lr-sweep
    trainer: examples/quickstart.py:BreastCancer    # module:Class, file.py:Class or a model name
    directory: studies/lr-sweep                     # default: studies/<name>
    params: {epochs: 20}                            # the same for every trial
    grid: {learning_rate: [0.001, 0.01], hidden: [16, 64]}   # and/or
    trials: [{learning_rate: 0.1, hidden: 8}]                # an explicit list
    repeats: 1                                      # each setting with seeds seed, seed+1, ...
    resources: {threads: 1, ranks: 1, gpus_per_rank: 0, launcher: none}
    executor: {kind: local, slots: 2}               # or {kind: parsl, site: slurm, ...}
    retries: 1                                      # extra attempts after a fault
    time_limit: 30m                                 # per attempt; 0 = none
    segment_epochs: 0                               # > 0: run every trial in segments

Everything is checked before the first trial starts: unknown keys, the Trainer import, every
trial's parameters against the Trainer's params class, and the resources against the executor.

The driver (:class:`Study`) is the only writer of the study's ``study.db``
(:class:`~candle.workflow.store.Store`). It keeps every slot busy, waits on all running trials
at once, and records each state change before acting on it, so a driver killed at any moment
and started again with ``resume=True`` loses no finished trial, runs none twice, continues the
interrupted ones from their checkpoints and rebuilds the queue.

Other workflows (search, UQ, training data analysis) drive the same engine with their own
:class:`TrialSource`, which proposes trials and decides what to do with segment results.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from candle.errors import ConfigError
from candle.workflow.executors import Executor, make_executor
from candle.workflow.store import Store, TrialRecord
from candle.workflow.trial import Resources, TrialOutcome, TrialSpec

__all__ = [
    "WAIT",
    "GridSource",
    "ListSource",
    "Proposal",
    "Study",
    "StudyConfig",
    "StudySummary",
    "TrialSource",
    "load_study_config",
    "read_study_file",
    "resolve_trainer",
    "run_study",
]

log = logging.getLogger("candle.workflow")

STUDY_DB = "study.db"
_KEYS = {
    "name",
    "trainer",
    "directory",
    "params",
    "grid",
    "trials",
    "repeats",
    "resources",
    "executor",
    "retries",
    "time_limit",
    "segment_epochs",
    "grace",
}


# --------------------------------------------------------------------------- configuration


@dataclass
class StudyConfig:
    name: str
    trainer: str
    directory: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    repeats: int = 1
    resources: Resources = field(default_factory=Resources)
    executor: dict[str, Any] = field(default_factory=lambda: {"kind": "local"})
    retries: int = 1
    time_limit: float = 0.0
    segment_epochs: int = 0
    grace: float = 10.0
    source: str = "dict"  # where it came from, for messages
    extra: dict[str, Any] = field(default_factory=dict)  # sections of other workflows (search)

    @property
    def path(self) -> Path:
        return Path(self.directory or Path("studies") / self.name)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["resources"] = self.resources.to_dict()
        data.pop("source")
        return {**data.pop("extra"), **data}


def load_study_config(config: str | os.PathLike | Mapping[str, Any]) -> StudyConfig:
    """A checked :class:`StudyConfig` from a file (YAML, JSON, TOML) or a mapping."""
    if isinstance(config, Mapping):
        data, source = dict(config), "dict"
    else:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"study file {path} does not exist")
        data, source = _read_file(path), str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a study must be a mapping of keys, got {type(data).__name__}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        hint = ""
        import difflib

        for key in unknown:
            close = difflib.get_close_matches(key, _KEYS, n=1)
            if close:
                hint = f" (did you mean {close[0]!r} for {key!r}?)"
                break
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}{hint}; known: "
            f"{', '.join(sorted(_KEYS))}"
        )
    for key in ("name", "trainer"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ConfigError(f"{source}: `{key}` is required (a non-empty string)")
    for key in ("params", "grid", "executor"):
        if not isinstance(data.get(key, {}), dict):
            raise ConfigError(f"{source}: `{key}` must be a mapping")
    if not isinstance(data.get("trials", []), list) or not all(
        isinstance(t, dict) for t in data.get("trials", [])
    ):
        raise ConfigError(f"{source}: `trials` must be a list of mappings of parameters")
    for key, values in data.get("grid", {}).items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: grid.{key} must be a non-empty list, got {values!r}")
    for key, low in (("repeats", 1), ("retries", 0), ("segment_epochs", 0)):
        value = data.get(key, low)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{source}: `{key}` must be an integer >= {low}, got {value!r}")
    from candle.config import parse_duration

    times = {}
    for key in ("time_limit", "grace"):
        if key in data:
            value = data[key]
            try:
                seconds = float(value) if isinstance(value, int | float) else None
                if seconds is None and isinstance(value, str):
                    seconds = parse_duration(value)
                if seconds is None or seconds < 0 or seconds != seconds:
                    raise ValueError
            except ValueError:
                raise ConfigError(
                    f"{source}: `{key}` must be seconds, '30m', '2h' or 'HH:MM:SS', got {value!r}"
                ) from None
            times[key] = seconds
    resources = Resources.from_dict(data.get("resources"), where=f"{source}: resources")
    cfg = StudyConfig(
        name=data["name"],
        trainer=data["trainer"],
        directory=str(data.get("directory") or ""),
        params=dict(data.get("params") or {}),
        grid=dict(data.get("grid") or {}),
        trials=[dict(t) for t in data.get("trials") or []],
        repeats=data.get("repeats", 1),
        resources=resources,
        executor=dict(data.get("executor") or {"kind": "local"}),
        retries=data.get("retries", 1),
        segment_epochs=data.get("segment_epochs", 0),
        source=source,
        **times,
    )
    return cfg


def read_study_file(
    config: str | os.PathLike | Mapping[str, Any], what: str = "study"
) -> tuple[dict[str, Any], Path | None]:
    """A workflow file's top-level mapping (YAML, JSON or TOML) and its path, or a deep copy of
    a given mapping and None. ``what`` ("search", "UQ study", "plan") names the file in errors.
    Search, UQ and training data analysis split their sections off this before the engine's
    :func:`load_study_config` checks the rest."""
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config)), None
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    data = _read_file(path)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a {what} file must be a mapping of keys, got {type(data).__name__}"
        )
    return data, path


def _read_file(path: Path) -> Any:
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        if path.suffix == ".json":
            return json.loads(text)
        if path.suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
    except Exception as e:
        raise ConfigError(f"study file {path} cannot be parsed: {e}") from None
    raise ConfigError(f"study file {path}: use .yaml, .yml, .json or .toml")


# --------------------------------------------------------------------------- trial sources


@dataclass
class Proposal:
    """A trial a source wants run: its own parameters and a key that identifies it.

    With ``trial_id`` it is instead an existing trial (one waiting after a segment, e.g. for an
    ASHA promotion) to continue from its checkpoint up to epoch ``stop``. ``stop`` on a new
    trial ends its first segment there (None: the study's ``segment_epochs``).
    """

    params: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    stop: int | None = None
    trial_id: int | None = None


WAIT = "wait"  # next_stop: keep the trial (recorded as pruned) in case the source continues it


class TrialSource(Protocol):
    """What proposes trials and hears how they ended (a grid, a sampler, an ensemble plan)."""

    def restore(self, trials: list[TrialRecord]) -> None:
        """Called once before the first ``ask``, with every trial the store already has."""

    def ask(self, n: int) -> list[Proposal]:
        """Up to ``n`` new trials now ([] if none at the moment)."""
        ...

    def tell(self, trial: TrialRecord, outcome: TrialOutcome | None) -> None:
        """A trial ended (done, failed or pruned); ``outcome`` of its last attempt if any."""

    def exhausted(self) -> bool:
        """True when no more trials will ever be proposed."""
        ...

    def next_stop(self, trial: TrialRecord, outcome: TrialOutcome) -> int | str | None:
        """A segment ended at ``outcome.epoch``: the epoch to continue to, None to prune, or
        :data:`WAIT` (recorded as pruned; a later ``ask`` may continue it by ``trial_id``)."""
        ...


class ListSource:
    """A fixed list of proposals, each run once (their keys identify them in the store).

    New trials run in segments of ``segment_epochs`` (0: to their end). What :class:`GridSource`
    and the UQ driver's source are.
    """

    def __init__(self, proposals: list[Proposal], segment_epochs: int = 0):
        self._all = list(proposals)
        self._next = 0
        self._taken: set[str] = set()
        self.segment_epochs = segment_epochs

    def __len__(self) -> int:
        return len(self._all)

    def proposals(self) -> list[Proposal]:
        return list(self._all)

    def restore(self, trials: list[TrialRecord]) -> None:
        self._taken = {t.key for t in trials if t.key}

    def ask(self, n: int) -> list[Proposal]:
        out = []
        while len(out) < n and self._next < len(self._all):
            p = self._all[self._next]
            self._next += 1
            if p.key not in self._taken:
                out.append(p)
        return out

    def tell(self, trial: TrialRecord, outcome: TrialOutcome | None) -> None:
        pass

    def exhausted(self) -> bool:
        return self._next >= len(self._all)

    def next_stop(self, trial: TrialRecord, outcome: TrialOutcome) -> int | None:
        return outcome.epoch + self.segment_epochs if self.segment_epochs else 0


class GridSource(ListSource):
    """The explicit ``trials`` list, then the ``grid`` product, each ``repeats`` times.

    Keys are ``t<index>``; repeats after the first get ``seed + r``. Segments continue by
    ``segment_epochs`` until the run's ``epochs``.
    """

    def __init__(self, cfg: StudyConfig):
        settings = [dict(t) for t in cfg.trials]
        if cfg.grid:
            names = sorted(cfg.grid)
            for combo in itertools.product(*(cfg.grid[n] for n in names)):
                settings.append(dict(zip(names, combo, strict=True)))
        if not settings:
            settings = [{}]  # just the fixed params
        base_seed = int(cfg.params.get("seed", 0))
        proposals: list[Proposal] = []
        for r in range(cfg.repeats):
            for s in settings:
                params = dict(s)
                if cfg.repeats > 1:
                    params.setdefault("seed", int(s.get("seed", base_seed)) + r)
                proposals.append(Proposal(params, key=f"t{len(proposals)}"))
        super().__init__(proposals, cfg.segment_epochs)


# --------------------------------------------------------------------------- driver


@dataclass
class StudySummary:
    directory: Path
    counts: dict[str, int]
    best: TrialRecord | None
    wall_s: float
    driver_s: float  # time the driver spent scheduling, recording and collecting
    trials_handled: int

    @property
    def driver_ms_per_trial(self) -> float:
        return 1000 * self.driver_s / max(self.trials_handled, 1)


class Study:
    """Runs a study to its end with one executor and one store; see the module docstring."""

    def __init__(
        self,
        cfg: StudyConfig,
        *,
        source: TrialSource | None = None,
        executor: Executor | None = None,
        resume: bool = False,
        progress: bool = True,
        monitor: str | None = None,
        mode: str = "min",
    ):
        self.cfg = cfg
        self.directory = cfg.path
        self.resume = resume
        self.progress = progress
        self.source = source or GridSource(cfg)
        self.trainer = resolve_trainer(cfg)
        self.cwd = os.getcwd()  # trials run here, so relative paths mean what they mean here
        self.monitor, self.mode = monitor, mode
        self._executor = executor
        self.driver_s = 0.0  # scheduling, recording and collecting; not waiting
        self.driver_s_by_trial: dict[int, float] = {}
        self.handled = 0
        self.durations: list[float] = []
        self.last_outcomes: dict[int, TrialOutcome] = {}
        self._check_before_start()

    # -------------------------------------------------------------- validation
    def _check_before_start(self) -> None:
        """Every check that can fail, before anything is written or started."""
        cfg = self.cfg
        from candle.cli import import_trainer
        from candle.config import params_from_dict

        cls = import_trainer(self.trainer)
        sample = getattr(self.source, "proposals", None)
        proposals = sample() if callable(sample) else []
        for p in proposals or [Proposal({})]:
            merged = {**cfg.params, **p.params}
            params_from_dict(cls.params_class, merged, source=f"{cfg.source}: trial {p.key}")
        epochs = params_from_dict(cls.params_class, cfg.params, source=cfg.source).epochs
        if cfg.segment_epochs and cfg.segment_epochs >= epochs:
            log.warning(
                "segment_epochs=%d >= epochs=%d: every trial runs in one segment",
                cfg.segment_epochs,
                epochs,
            )
        db = self.directory / STUDY_DB
        if db.exists() and not self.resume:
            raise ConfigError(
                f"study directory {self.directory} already holds a study ({db}); pass --resume "
                "to continue it, or choose another `directory`/`name`"
            )
        if self.resume and not db.exists():
            raise ConfigError(f"--resume: no study to continue in {self.directory} ({db})")
        if self._executor is None:
            executor = dict(cfg.executor)
            config = executor.get("config")
            if isinstance(config, str) and cfg.source != "dict" and not Path(config).is_file():
                beside = Path(cfg.source).parent / config  # relative to the study file
                if beside.is_file():
                    executor["config"] = str(beside)
            self._executor = make_executor(executor, where=f"{cfg.source}: executor")
        try:
            self._executor.check(cfg.resources)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    # -------------------------------------------------------------- running
    def run(self) -> StudySummary:
        cfg, executor = self.cfg, self._executor
        assert executor is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        store = Store(self.directory / STUDY_DB)
        try:
            if self.resume:
                study_id = store.study_id(cfg.name)
            else:
                from candle.run import provenance

                study_id = store.create_study(
                    cfg.name, cfg.to_dict(), provenance(), str(self.directory.resolve())
                )
            self._store, self._study_id = store, study_id
            pending = self._recover()
            running: dict[Future, tuple[TrialRecord, TrialSpec]] = {}
            last_report = 0.0
            while True:
                while len(running) < executor.slots:
                    t0 = time.perf_counter()
                    if not pending:
                        batch = self._new_trials(executor.slots - len(running))
                        pending.extend(batch)
                        self._charge([rec.trial_id for rec, _ in batch], t0)
                    if not pending:
                        break
                    t0 = time.perf_counter()
                    rec, stop = pending.popleft()
                    fut, spec = self._submit(rec, stop)
                    running[fut] = (self._store.trial(rec.trial_id), spec)
                    self._charge([rec.trial_id], t0)
                if not running:
                    break
                done, _ = wait(list(running), timeout=5.0, return_when=FIRST_COMPLETED)
                t0 = time.perf_counter()
                ids = []
                with store.transaction():
                    for fut in done:
                        rec, spec = running.pop(fut)
                        ids.append(rec.trial_id)
                        again = self._collect(rec, spec, fut)
                        if again is not None:
                            pending.appendleft(again)
                self._charge(ids, t0)
                if self.progress and time.monotonic() - last_report > 10:
                    last_report = time.monotonic()
                    self._report(len(running), len(pending), start)
            with store.transaction():  # trials the source kept waiting were not continued
                for t in store.trials(study_id, status="pruned"):
                    if t.extra.get("waiting"):
                        reason = f"stopped after epoch {t.segment} (not continued)"
                        store.update_trial(t.trial_id, reason=reason)
            counts = store.counts(study_id)
            best = self.best()
            summary = StudySummary(
                self.directory,
                counts,
                best,
                time.monotonic() - start,
                self.driver_s,
                self.handled,
            )
            if self.progress:
                self._report(0, 0, start, final=True)
            executor.shutdown(wait=True)
            return summary
        except BaseException:
            executor.shutdown(wait=False)  # interrupted: stop the running trials now
            raise
        finally:
            store.close()

    def _charge(self, trial_ids: list[int], since: float) -> None:
        """Book the driver's time since ``since`` to these trials, in equal shares."""
        spent = time.perf_counter() - since
        self.driver_s += spent
        for trial_id in trial_ids:
            self.driver_s_by_trial[trial_id] = self.driver_s_by_trial.get(
                trial_id, 0.0
            ) + spent / len(trial_ids)

    def _recover(self) -> deque[tuple[TrialRecord, int]]:
        """The queue after a restart: trials that were queued or running, oldest first.

        A trial that finished while the driver was down has its final result.json: it is
        recorded, not run again. The others continue from their checkpoints.
        """
        store, pending = self._store, deque()
        trials = store.trials(self._study_id)
        attach = getattr(self.source, "attach", None)
        if callable(attach):  # a source that reads more of the store (segment history)
            attach(store)
        self.source.restore(trials)
        for rec in trials:
            if rec.status not in ("queued", "running"):
                continue
            result = _final_result(Path(rec.trial_dir))
            if result is not None:
                outcome = _outcome_from_result(rec, result)
                with store.transaction():
                    self._finish(rec, outcome)
                continue
            if rec.status == "running":
                log.info("trial %d: continuing from its checkpoint", rec.trial_id)
                store.update_trial(rec.trial_id, status="queued")
            pending.append((store.trial(rec.trial_id), rec.extra.get("stop", 0)))
        return pending

    def _new_trials(self, n: int) -> list[tuple[TrialRecord, int]]:
        if n <= 0:
            return []
        proposals = self.source.ask(n)
        out = []
        with self._store.transaction():
            for p in proposals:
                if p.trial_id is not None:  # continue a waiting trial
                    rec = self._store.trial(p.trial_id)
                    stop = int(p.stop or 0)
                    self._store.update_trial(
                        p.trial_id,
                        status="queued",
                        reason=None,
                        extra={**rec.extra, "stop": stop, "waiting": False},
                    )
                    out.append((self._store.trial(p.trial_id), stop))
                    continue
                trial_id = self._store.add_trial(
                    self._study_id,
                    p.params,
                    trial_dir="",
                    resources=self.cfg.resources.to_dict(),
                    key=p.key,
                    extra=p.extra,
                )
                trial_dir = str((self.directory / "trials" / f"{trial_id:05d}").resolve())
                self._store.update_trial(trial_id, trial_dir=trial_dir)
                stop = self.cfg.segment_epochs if p.stop is None else p.stop
                out.append((self._store.trial(trial_id), stop))
        return out

    def _submit(self, rec: TrialRecord, stop: int) -> tuple[Future, TrialSpec]:
        cfg = self.cfg
        spec = TrialSpec(
            trial_id=rec.trial_id,
            trainer=self.trainer,
            params={**cfg.params, **rec.params},
            trial_dir=rec.trial_dir,
            resources=cfg.resources,
            time_limit=cfg.time_limit,
            stop_at_epoch=stop,
            attempt=rec.attempt + 1,
            grace=cfg.grace,
            cwd=self.cwd,
        )
        now = time.time()
        self._store.update_trial(
            rec.trial_id,
            status="running",
            attempt=spec.attempt,
            started_at=rec.started_at or now,
            extra={**rec.extra, "stop": stop},
        )
        return self._executor.submit(spec), spec

    def _collect(
        self, rec: TrialRecord, spec: TrialSpec, fut: Future
    ) -> tuple[TrialRecord, int] | None:
        """Record one finished attempt; -> the trial again if it must run on."""
        store = self._store
        try:
            outcome = TrialOutcome.from_dict(fut.result())
        except Exception as e:  # the attempt was lost on the way (a worker or node died)
            now = time.time()
            outcome = TrialOutcome(
                rec.trial_id,
                spec.attempt,
                "lost",
                reason=f"worker lost: {type(e).__name__}: {e}",
                started_at=now,
                ended_at=now,
            )
            outcome.error = outcome.reason
        self.handled += 1
        self.last_outcomes[rec.trial_id] = outcome
        if outcome.elapsed > 0:
            self.durations.append(outcome.elapsed)
        store.add_attempt(
            rec.trial_id,
            spec.attempt,
            status=outcome.status,
            reason=outcome.reason or None,
            returncode=outcome.returncode,
            host=outcome.host or None,
            started_at=outcome.started_at,
            ended_at=outcome.ended_at,
            segment=outcome.epoch,
        )
        if outcome.history:
            store.add_metrics(rec.trial_id, outcome.history)
        store.update_trial(
            rec.trial_id,
            add_busy_s=max(outcome.elapsed, 0.0),
            host=outcome.host or rec.host,
            segment=outcome.epoch or rec.segment,
        )
        rec = store.trial(rec.trial_id)
        if outcome.status == "paused":
            self._objective(outcome)  # may make it "nan": then it is a failure, below
        if outcome.status == "paused":
            stop = self.source.next_stop(rec, outcome)
            if stop is None or stop == WAIT:
                waiting = stop == WAIT
                store.update_trial(
                    rec.trial_id,
                    status="pruned",
                    reason=f"{'waiting' if waiting else 'stopped'} after epoch {outcome.epoch}",
                    objective=outcome.objective,
                    metrics=outcome.metrics,
                    ended_at=outcome.ended_at,
                    extra={**rec.extra, "waiting": waiting},
                )
                if not waiting:
                    self.source.tell(store.trial(rec.trial_id), outcome)
                return None
            store.update_trial(rec.trial_id, status="queued", extra={**rec.extra, "stop": stop})
            return store.trial(rec.trial_id), stop
        if outcome.retryable:
            faults = int(rec.extra.get("faults", 0)) + 1
            extra = {**rec.extra, "faults": faults}
            if faults <= self.cfg.retries:
                log.warning(
                    "trial %d attempt %d: %s; retrying (%d of %d), from its last checkpoint",
                    rec.trial_id,
                    spec.attempt,
                    outcome.reason,
                    faults,
                    self.cfg.retries,
                )
                store.update_trial(
                    rec.trial_id, status="queued", extra=extra, reason=outcome.reason
                )
                return store.trial(rec.trial_id), int(rec.extra.get("stop", 0))
            store.update_trial(rec.trial_id, extra=extra)
            rec = store.trial(rec.trial_id)
        self._finish(rec, outcome)
        return None

    def _objective(self, outcome: TrialOutcome) -> None:
        """Let the source define the objective (a metric at an epoch, best or last)."""
        define = getattr(self.source, "objective", None)
        if callable(define) and outcome.status in ("done", "paused"):
            outcome.objective = define(outcome)
            if outcome.objective is None or not math.isfinite(outcome.objective):
                outcome.status = "nan"
                outcome.reason = f"objective is {outcome.objective} (no finite value)"

    def _finish(self, rec: TrialRecord, outcome: TrialOutcome) -> None:
        store = self._store
        self._objective(outcome)
        if outcome.status == "done":
            extra = {**rec.extra, "data": outcome.data} if outcome.data else rec.extra
            store.update_trial(
                rec.trial_id,
                status="done",
                extra=extra,
                objective=outcome.objective,
                metrics=outcome.metrics,
                ended_at=outcome.ended_at or time.time(),
                reason=None,
                error=None,
            )
            self._artifacts(rec)
            if outcome.history:
                store.add_metrics(rec.trial_id, outcome.history)
        else:
            store.update_trial(
                rec.trial_id,
                status="failed",
                reason=outcome.reason or outcome.status,
                error=outcome.error or outcome.reason,
                metrics=outcome.metrics,
                ended_at=outcome.ended_at or time.time(),
            )
            log.warning("trial %d failed: %s", rec.trial_id, outcome.reason)
        self.source.tell(store.trial(rec.trial_id), outcome)

    def _artifacts(self, rec: TrialRecord) -> None:
        """The result and the checkpoints, with the checksums the checkpoint sidecars hold."""
        trial_dir = Path(rec.trial_dir)
        result = trial_dir / "result.json"
        if result.exists():
            self._store.add_artifact(
                rec.trial_id, "result", str(result), size=result.stat().st_size
            )
        ckpt_dir = trial_dir / "checkpoints"
        if ckpt_dir.is_dir():
            for path in sorted(ckpt_dir.glob("*.pt")):
                sidecar = path.with_name(path.name + ".sha256")
                checksum = None
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    checksum = "sha256:" + json.loads(sidecar.read_text())["sha256"]
                self._store.add_artifact(
                    rec.trial_id,
                    "checkpoint",
                    str(path),
                    checksum=checksum,
                    size=path.stat().st_size,
                )

    # -------------------------------------------------------------- reporting
    def best(self) -> TrialRecord | None:
        done = [
            t
            for t in self._store.trials(self._study_id, status="done")
            if t.objective is not None and math.isfinite(t.objective)
        ]
        if not done:
            return None
        return (min if self._mode(done[0]) == "min" else max)(done, key=lambda t: t.objective)

    def _mode(self, trial: TrialRecord) -> str:
        return str(self.cfg.params.get("monitor_mode", self.mode))

    def _report(self, running: int, pending: int, start: float, final: bool = False) -> None:
        counts = self._store.counts(self._study_id)
        best = self.best()
        elapsed = time.monotonic() - start
        finished = counts["done"] + counts["failed"] + counts["pruned"]
        total = len(self.source) if hasattr(self.source, "__len__") else None
        eta = ""
        if total and finished and not final:
            left = max(total - finished, 0)
            eta = f", ETA {_duration_text(elapsed / finished * left)}"
        best_text = f"; best objective {best.objective:.6g} (trial {best.trial_id})" if best else ""
        print(
            f"[{self.cfg.name}] {'finished' if final else 'progress'}: {counts['done']} done, "
            f"{running} running, {counts['failed']} failed, {counts['pruned']} pruned, "
            f"{pending} queued{best_text}; {_duration_text(elapsed)}"
            f"{eta}",
            file=sys.stderr,
            flush=True,
        )


def _duration_text(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def resolve_trainer(cfg: StudyConfig, workflow: str | None = None) -> str:
    """The study's trainer as ``module:Class``: a registered name looked up (``workflow``, e.g.
    ``uq`` or ``tda``, picks that workflow's variant of a reference model), ``module:Class`` as
    given, or ``file.py:Class`` with the file made absolute (looked for from the current
    directory, then beside the study file)."""
    from candle.registry import trainer_path

    path = trainer_path(cfg.trainer, workflow)
    module, _, name = path.rpartition(":")
    if module.endswith(".py") and not Path(module).is_absolute():
        here = Path(module)
        beside = Path(cfg.source).parent / module if cfg.source != "dict" else here
        found = here if here.is_file() else beside
        path = f"{found.resolve()}:{name}"
    return path


def _final_result(trial_dir: Path) -> dict[str, Any] | None:
    """The trial's result.json if it says the run finished (completed), else None."""
    path = trial_dir / "result.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("status") == "completed" else None


def _outcome_from_result(rec: TrialRecord, result: dict[str, Any]) -> TrialOutcome:
    objective = (result.get("objective") or {}).get("value")
    out = TrialOutcome(rec.trial_id, rec.attempt, "done", reason="recorded on resume")
    out.objective = float(objective) if isinstance(objective, int | float) else None
    if out.objective is None or not math.isfinite(out.objective):
        out.status, out.reason = "nan", f"objective is {out.objective} (no finite value)"
    out.metrics = dict(result.get("metrics") or {})
    out.history = list(result.get("history") or [])
    out.epoch = int(result.get("epoch") or 0)
    out.data = dict((result.get("provenance") or {}).get("data") or {})
    out.ended_at = Path(rec.trial_dir, "result.json").stat().st_mtime
    return out


def run_study(
    config: str | os.PathLike | Mapping[str, Any],
    *,
    resume: bool = False,
    progress: bool = True,
    source: TrialSource | None = None,
    executor: Executor | None = None,
) -> StudySummary:
    """Load, check and run a study; -> its summary. See :class:`Study`."""
    cfg = load_study_config(config)
    return Study(cfg, source=source, executor=executor, resume=resume, progress=progress).run()
