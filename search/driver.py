"""A search study: a space, an objective, a sampler and a scheduler on the workflow engine.

The study file is a workflow study (``candle.workflow.study``: trainer, params, resources,
executor, retries, time_limit, directory) plus::

    space: {...}                               # see candle.search.space
    objective: {metric: val_loss, mode: min, at: best}   # at: best | last | <epoch>
    sampler: {type: botorch, seed: 0}          # random | sobol | grid (points: 5) | botorch
    budget: {trials: 100, time: 2h}            # new trials stop at either; running ones finish
    scheduler: {type: asha, min_epochs: 1, reduction: 3}   # or median, or fifo (default)
    warm_start: {studies: [studies/old], top: 5, prior: true}
    enqueue: [{learning_rate: 0.01, hidden: 64}]           # evaluated first

:class:`SearchSource` is the engine's trial source. The sampler's state is not saved apart:
every trial records the sampler index that made it, so after ``--resume`` the sampler and the
scheduler are rebuilt from the store (suggestions made, results and segment results in order).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from candle.errors import ConfigError
from candle.search.samplers import make_sampler
from candle.search.schedulers import WAIT, make_scheduler
from candle.search.space import Space
from candle.workflow.store import Store, TrialRecord
from candle.workflow.study import WAIT as ENGINE_WAIT
from candle.workflow.study import (
    Proposal,
    Study,
    StudyConfig,
    StudySummary,
    load_study_config,
    read_study_file,
)
from candle.workflow.trial import TrialOutcome

__all__ = ["SearchConfig", "SearchSource", "load_search_config", "run_search"]

_SEARCH_KEYS = {"space", "objective", "sampler", "budget", "scheduler", "warm_start", "enqueue"}


class SearchConfig:
    """The search sections of a study file, checked."""

    def __init__(self, data: Mapping[str, Any], study: StudyConfig):
        where = study.source
        self.study = study
        if "space" not in data:
            raise ConfigError(f"{where}: a search needs a `space` section")
        self.space_spec = dict(data["space"])
        self.space = Space.from_dict(self.space_spec, where=f"{where}: space")
        objective = dict(data.get("objective") or {})
        unknown = sorted(set(objective) - {"metric", "mode", "at"})
        if unknown:
            raise ConfigError(f"{where}: objective: unknown key(s) {', '.join(unknown)}")
        self.metric = str(objective.get("metric", "val_loss"))
        self.mode = objective.get("mode", "min")
        if self.mode not in ("min", "max"):
            raise ConfigError(f"{where}: objective.mode must be min or max, got {self.mode!r}")
        self.at = objective.get("at", "best")
        if not (self.at in ("best", "last") or (isinstance(self.at, int) and self.at >= 1)):
            raise ConfigError(
                f"{where}: objective.at must be best, last or an epoch >= 1, got {self.at!r}"
            )
        sampler = dict(data.get("sampler") or {"type": "botorch"})
        self.sampler_type = sampler.pop("type", "botorch")
        self.seed = int(sampler.pop("seed", 0))
        self.sampler_options = sampler
        budget = dict(data.get("budget") or {})
        unknown = sorted(set(budget) - {"trials", "time"})
        if unknown:
            raise ConfigError(f"{where}: budget: unknown key(s) {', '.join(unknown)}")
        self.max_trials = budget.get("trials")
        if self.max_trials is not None and (
            not isinstance(self.max_trials, int) or self.max_trials < 1
        ):
            raise ConfigError(f"{where}: budget.trials must be an integer >= 1")
        self.max_time = None
        if budget.get("time") is not None:
            from candle.config import parse_duration

            try:
                self.max_time = parse_duration(str(budget["time"]))
            except ValueError:
                raise ConfigError(
                    f"{where}: budget.time must be seconds, '30m', '2h' or 'HH:MM:SS', got "
                    f"{budget['time']!r}"
                ) from None
        if self.max_trials is None and self.max_time is None and self.sampler_type != "grid":
            raise ConfigError(f"{where}: give a budget (budget: {{trials: N}} and/or time)")
        self.scheduler_spec = data.get("scheduler")
        warm = dict(data.get("warm_start") or {})
        unknown = sorted(set(warm) - {"studies", "top", "prior"})
        if unknown:
            raise ConfigError(f"{where}: warm_start: unknown key(s) {', '.join(unknown)}")
        self.warm_studies = [str(p) for p in warm.get("studies", [])]
        self.warm_top = int(warm.get("top", 0))
        self.warm_prior = bool(warm.get("prior", True))
        self.enqueue = [dict(c) for c in data.get("enqueue") or []]

    @property
    def sign(self) -> float:
        return 1.0 if self.mode == "min" else -1.0


def load_search_config(config: str | os.PathLike | Mapping[str, Any]) -> SearchConfig:
    """Split a study file into the engine's part and the search part; check both."""
    data, source = read_study_file(config, "search")
    search = {k: data.pop(k) for k in list(data) if k in _SEARCH_KEYS}
    if "grid" in data or "trials" in data:
        raise ConfigError(
            f"{source or 'search'}: `grid`/`trials` belong to plain studies; a search takes a "
            "`space` (use sampler: {type: grid} for a grid search)"
        )
    study = load_study_config(data)
    if source is not None:
        study.source = str(source)
    sc = SearchConfig(search, study)
    study.extra = {
        "space": sc.space_spec,
        "objective": {"metric": sc.metric, "mode": sc.mode, "at": sc.at},
        "sampler": {"type": sc.sampler_type, "seed": sc.seed, **sc.sampler_options},
        "scheduler": sc.scheduler_spec,
        "budget": {"trials": sc.max_trials, "time": sc.max_time},
    }
    # the Trainer watches the optimized metric (best checkpoint, early stopping)
    study.params.setdefault("monitor", sc.metric)
    study.params.setdefault("monitor_mode", sc.mode)
    return sc


class SearchSource:
    """The engine's trial source for a search (see the module docstring)."""

    def __init__(self, cfg: SearchConfig, max_epochs: int):
        self.cfg = cfg
        self.space = cfg.space
        self.max_epochs = max_epochs
        options = dict(cfg.sampler_options)
        # the earlier studies' results: prior observations for the GP and/or the top-k to rerun
        earlier = self._warm_start_prior() if cfg.warm_studies else []
        prior = earlier if cfg.warm_prior else []
        if prior and cfg.sampler_type == "botorch":
            options["prior"] = prior
        self.sampler = make_sampler(cfg.sampler_type, cfg.space, seed=cfg.seed, **options)
        self.scheduler = make_scheduler(cfg.scheduler_spec, max_epochs)
        self.first = [self.space.canonical({**self.space.fixed, **c}) for c in cfg.enqueue]
        if cfg.warm_top and cfg.warm_studies:
            self.first += [c for c, _ in sorted(earlier, key=lambda o: o[1])[: cfg.warm_top]]
        self._first_used = 0
        self._issued = 0  # new trials so far (enqueued and sampled)
        self._running: dict[str, dict[str, Any]] = {}  # key -> config: the pending points
        self.store: Store | None = None
        self._started = time.monotonic()

    # ------------------------------------------------------------------ engine interface
    def proposals(self) -> list[Proposal]:
        """Sample configs to check before the study starts (corners of the space and the
        enqueued ones); the sampler is not advanced."""
        n = self.space.n_raw
        configs = [self.space.from_unit([0.0] * n), self.space.from_unit([0.999999] * n)]
        return [Proposal(c) for c in configs + self.first]

    def restore(self, trials: list[TrialRecord]) -> None:
        sampled = [t for t in trials if "index" in t.extra]
        asked = max((int(t.extra["index"]) + 1 for t in sampled), default=0)
        observations = [
            (t.params, self._value(t.objective)) for t in trials if t.status in ("done", "failed")
        ]
        observations += [
            (t.params, self._value(t.objective))
            for t in trials
            if t.status == "pruned" and not t.extra.get("waiting")
        ]
        self.sampler.restore(asked, observations)
        self._issued = len(trials)
        self._first_used = sum(1 for t in trials if "first" in t.extra)
        self._running = {
            t.key: t.params
            for t in trials
            if t.key and (t.status in ("queued", "running") or t.extra.get("waiting"))
        }
        # trials the engine is about to continue are not waiting; failed ones never continue
        in_flight = [t.trial_id for t in trials if t.status in ("queued", "running")]
        self.scheduler.restore(self._segment_events(trials), in_flight=in_flight)
        for t in trials:
            if t.status == "failed":
                self.scheduler.on_failed(t.trial_id)

    def ask(self, n: int) -> list[Proposal]:
        out: list[Proposal] = []
        for trial_id, stop in self.scheduler.promotions()[:n]:
            out.append(Proposal(trial_id=trial_id, stop=stop))
        while len(out) < n and self._first_used < len(self.first) and self._budget_left():
            config = self.first[self._first_used]
            out.append(self._new(config, {"first": self._first_used}))
            self._first_used += 1
        want = n - len(out)
        if want > 0 and self._budget_left():
            if self.cfg.max_trials is not None:
                want = min(want, self.cfg.max_trials - self._issued)
            pending = list(self._running.values())
            for s in self.sampler.ask(want, pending) if want > 0 else []:
                out.append(self._new(s.config, {"index": s.index, "sampler": self.sampler.name}))
        return out

    def _new(self, config: dict[str, Any], extra: dict[str, Any]) -> Proposal:
        self._issued += 1
        key = f"s{extra['index']}" if "index" in extra else f"q{extra['first']}"
        self._running[key] = dict(config)
        stop = self.scheduler.first_stop()
        return Proposal(dict(config), key=key, extra=extra, stop=stop)

    def _budget_left(self) -> bool:
        if self.cfg.max_trials is not None and self._issued >= self.cfg.max_trials:
            return False
        if self.cfg.max_time is not None and time.monotonic() - self._started > self.cfg.max_time:
            return False
        return not self.sampler.exhausted() or self._first_used < len(self.first)

    def exhausted(self) -> bool:
        return not self._budget_left()

    def __len__(self) -> int:
        return self.cfg.max_trials or 0

    def attach(self, store: Store) -> None:
        """The engine's store, read on restore for the segment history."""
        self.store = store

    def tell(self, trial: TrialRecord, outcome: TrialOutcome | None) -> None:
        self._running.pop(trial.key or "", None)
        value = self._value(trial.objective) if trial.status in ("done", "pruned") else None
        self.sampler.tell(trial.params, value)
        if trial.status == "done":
            self.scheduler.on_done(trial.trial_id, trial.segment, value)
        elif trial.status == "failed":
            self.scheduler.on_failed(trial.trial_id)

    def next_stop(self, trial: TrialRecord, outcome: TrialOutcome) -> int | str | None:
        decision = self.scheduler.on_segment(
            trial.trial_id, outcome.epoch, self._value(outcome.objective)
        )
        if decision == WAIT:
            return ENGINE_WAIT
        return decision

    def objective(self, outcome: TrialOutcome) -> float | None:
        """The objective's raw value (not negated) from the trial's epoch history."""
        values = [
            (int(h.get("epoch", 0)), h.get(self.cfg.metric))
            for h in outcome.history
            if isinstance(h.get(self.cfg.metric), int | float)
        ]
        values = [(e, float(v)) for e, v in values if math.isfinite(v)]
        if not values:
            return None
        if self.cfg.at == "last":
            return values[-1][1]
        if isinstance(self.cfg.at, int):
            at = [v for e, v in values if e == min(self.cfg.at, outcome.epoch)]
            return at[0] if at else None
        pick = min if self.cfg.mode == "min" else max
        return pick(v for _, v in values)

    # ------------------------------------------------------------------ helpers
    def _value(self, objective: float | None) -> float | None:
        if objective is None or not math.isfinite(objective):
            return None
        return self.cfg.sign * objective

    def _segment_events(self, trials: list[TrialRecord]) -> list[tuple[int, int, float | None]]:
        """(trial, epoch, value) of every segment that ended, in the order they ended."""
        events = []
        store = self.store
        if store is None:
            return []
        for t in trials:
            history = {}
            for m in store.metrics(t.trial_id):
                if m["name"] == self.cfg.metric:
                    history[int(m["epoch"])] = m["value"]
            for a in store.attempts(t.trial_id):
                if a["status"] in ("paused", "done") and a["segment"]:
                    running = [v for e, v in history.items() if e <= a["segment"] and v is not None]
                    if self.cfg.at == "last" or not running:
                        raw = history.get(a["segment"])
                    else:
                        raw = (min if self.cfg.mode == "min" else max)(running)
                    events.append((a["ended_at"], t.trial_id, a["segment"], self._value(raw)))
        return [(tid, epoch, value) for _, tid, epoch, value in sorted(events)]

    def _warm_start_prior(self) -> list[tuple[dict[str, Any], float]]:
        """(config, value to minimize) of the done trials of earlier studies, in this space."""
        prior = []
        for directory in self.cfg.warm_studies:
            db = Path(directory) / "study.db"
            if not db.exists():
                raise ConfigError(f"warm_start: no study store at {db}")
            with Store(db, readonly=True) as store:
                for t in store.trials(status="done"):
                    value = self._value(t.objective)
                    if value is None:
                        continue
                    config = self.space.canonical({**self.space.fixed, **t.params})
                    if all(config.get(n) is not None for n in self.space.names if n in config):
                        prior.append((config, value))
        return prior


def run_search(
    config: str | os.PathLike | Mapping[str, Any],
    *,
    resume: bool = False,
    progress: bool = True,
    executor: Any = None,
    executor_override: dict[str, Any] | None = None,
) -> StudySummary:
    """Load, check and run a search study; -> the engine's summary."""
    from candle.cli import import_trainer
    from candle.config import params_from_dict
    from candle.workflow.study import resolve_trainer

    sc = load_search_config(config)
    study_cfg = sc.study
    if executor_override:
        study_cfg.executor = executor_override
    cls = import_trainer(resolve_trainer(study_cfg))
    sc.space.check_names(cls.params_class, where=f"{study_cfg.source}: space")
    epochs = params_from_dict(cls.params_class, study_cfg.params, source=study_cfg.source).epochs
    source = SearchSource(sc, max_epochs=epochs)
    study = Study(
        study_cfg,
        source=source,
        executor=executor,
        resume=resume,
        progress=progress,
        mode=sc.mode,
    )
    try:
        return study.run()
    finally:
        source.sampler.close()
