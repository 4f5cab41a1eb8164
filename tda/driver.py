"""Running a plan on the workflow engine: every subset run is a trial.

:func:`run_tda` loads the plan (:mod:`candle.tda.plan`), loads the trainer's data once in the
driver to learn the groups and their sizes, plans every trial, and runs them with
:class:`~candle.workflow.study.Study` (parallel, recorded in ``study.db``, resumable with
``resume=True``). :class:`PlanSource` is the engine's trial source: it hands out the planned
trials in order, holding back a fine-tune trial until its pretraining trial is done (then
``init_from`` is that trial's directory) and dropping it if the pretraining failed.

Trials are identified by their keys (``lc/s0/n40/r1``: learning curve, split 0, 40 rows, repeat
1), so after a restart the source skips every key the store already has: nothing is lost or run
twice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from candle.errors import ConfigError
from candle.tda.plan import PlannedTrial, TDAPlan, load_plan, plan_trials
from candle.tda.trainer import TDATrainer
from candle.workflow.store import TrialRecord
from candle.workflow.study import Proposal, Study, StudySummary
from candle.workflow.trial import TrialOutcome

__all__ = ["PlanSource", "prepare", "run_tda"]

log = logging.getLogger("candle.tda")


class PlanSource:
    """The engine's trial source for a plan (see the module docstring)."""

    def __init__(self, trials: list[PlannedTrial], segment_epochs: int = 0):
        self.trials = trials
        self.segment_epochs = segment_epochs
        self._taken: set[str] = set()
        self._done_dirs: dict[str, str] = {}
        self._failed: set[str] = set()
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.trials)

    def proposals(self) -> list[Proposal]:
        """Every planned trial, for the engine's parameter check before the start."""
        return [Proposal(dict(t.params), key=t.key) for t in self.trials]

    def restore(self, trials: list[TrialRecord]) -> None:
        for t in trials:
            if t.key:
                self._taken.add(t.key)
                self._note(t)

    def _note(self, t: TrialRecord) -> None:
        if t.status == "done":
            self._done_dirs[t.key] = t.trial_dir
        elif t.status == "failed":
            self._failed.add(t.key)

    def ask(self, n: int) -> list[Proposal]:
        out = []
        for t in self.trials:
            if len(out) >= n:
                break
            if t.key in self._taken:
                continue
            params = dict(t.params)
            if t.after is not None:
                if t.after in self._failed:
                    self._taken.add(t.key)
                    self.skipped.append(t.key)
                    log.warning("%s not run: its pretraining trial %s failed", t.key, t.after)
                    continue
                if t.after not in self._done_dirs:
                    continue  # wait for the pretraining trial
                params["init_from"] = self._done_dirs[t.after]
            self._taken.add(t.key)
            out.append(Proposal(params, key=t.key, extra=dict(t.extra)))
        return out

    def tell(self, trial: TrialRecord, outcome: TrialOutcome | None) -> None:
        if trial.key:
            self._note(trial)

    def exhausted(self) -> bool:
        return all(t.key in self._taken for t in self.trials)

    def next_stop(self, trial: TrialRecord, outcome: TrialOutcome) -> int | None:
        return outcome.epoch + self.segment_epochs if self.segment_epochs else 0


def prepare(
    config: str | os.PathLike | Mapping[str, Any],
) -> tuple[TDAPlan, list[PlannedTrial], type[TDATrainer]]:
    """Load and check a plan, load its data once, and plan every trial (no trial runs)."""
    from candle.cli import import_trainer
    from candle.config import params_from_dict
    from candle.workflow.study import resolve_trainer

    plan = load_plan(config)
    study = plan.study
    study.trainer = resolve_trainer(study, workflow="tda")  # nt3: its TDA trainer
    cls = import_trainer(study.trainer)
    if not issubclass(cls, TDATrainer):
        raise ConfigError(
            f"{plan.where}: trainer {study.trainer} is a {cls.__mro__[1].__name__} subclass; "
            "a training data analysis needs a candle.tda.TDATrainer subclass (it implements "
            "load_data() and writes predictions)"
        )
    fixed = {**study.params, **{k: plan.data[k] for k in ("test_fraction", "val_fraction")}}
    params = params_from_dict(cls.params_class, fixed, source=plan.where)
    trainer = cls(params)
    data = trainer.data  # ConfigError (a missing column, bad shapes) before any trial starts
    labels = data.y.reshape(-1) if cls.task == "classification" else None
    trials = plan_trials(plan, data.groups, cls.task, labels)
    study.params.update({k: plan.data[k] for k in ("test_fraction", "val_fraction")})
    study.extra = {"tda": plan.resolved, "sections": plan.sections}
    return plan, trials, cls


def run_tda(
    config: str | os.PathLike | Mapping[str, Any],
    *,
    resume: bool = False,
    progress: bool = True,
    executor: Any = None,
    executor_override: dict[str, Any] | None = None,
) -> StudySummary:
    """Load, check and run a plan; -> the engine's summary. ``python -m candle.tda report DIR``
    (or :func:`candle.tda.report.write_report`) then analyses the trials."""
    plan, trials, _ = prepare(config)
    if executor_override:
        plan.study.executor = executor_override
    source = PlanSource(trials, plan.study.segment_epochs)
    study = Study(plan.study, source=source, executor=executor, resume=resume, progress=progress)
    summary = study.run()
    if source.skipped:
        log.warning("%d trial(s) not run (their pretraining failed)", len(source.skipped))
    return summary
