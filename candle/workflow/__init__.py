"""candle.workflow: studies of many trials, run in parallel, recorded, resumable.

- :mod:`~candle.workflow.trial`: a trial's spec, resources, command line and outcome.
- :mod:`~candle.workflow.executors`: the local executor (default) and the Parsl executor.
- :mod:`~candle.workflow.store`: the study's SQLite database (one writer: the driver).
- :mod:`~candle.workflow.study`: the driver, study files, and the trial-source interface the
  search, UQ and training-data workflows plug into.

Command line: ``python -m candle study STUDY.yaml [--resume]`` and
``python -m candle runs list|show|export DIR``.
"""

from candle.workflow.executors import Executor, LocalExecutor, make_executor
from candle.workflow.study import (
    GridSource,
    Proposal,
    Study,
    StudyConfig,
    StudySummary,
    TrialSource,
    load_study_config,
    run_study,
)
from candle.workflow.trial import Resources, TrialOutcome, TrialSpec, run_trial

__all__ = [
    "Executor",
    "GridSource",
    "LocalExecutor",
    "Proposal",
    "Resources",
    "Study",
    "StudyConfig",
    "StudySummary",
    "TrialOutcome",
    "TrialSource",
    "TrialSpec",
    "load_study_config",
    "make_executor",
    "run_study",
    "run_trial",
]
