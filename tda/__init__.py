"""candle.tda: training data analysis.

Learning curves (with a power-law fit), cross-study matrices, leave-one-group-out, transfer
(pretrain, then fine-tune on increasing target data vs training from scratch) and the
agreement of several models, each a plan of training runs on subsets of one grouped data set;
every run is a trial of the workflow engine (parallel, recorded, resumable).

- :mod:`~candle.tda.trainer`: the Trainer contract (:class:`TDATrainer`, :class:`GroupedData`);
- :mod:`~candle.tda.plan` and :mod:`~candle.tda.driver`: plan files and :func:`run_tda`;
- :mod:`~candle.tda.metrics`, :mod:`~candle.tda.fit`, :mod:`~candle.tda.analysis`,
  :mod:`~candle.tda.report`: scores, power laws, tables and plots;
- :mod:`~candle.tda.synthetic`: multi-study data with known answers.

Command line: ``python -m candle.tda PLAN.yaml [--resume]``, ``python -m candle.tda report DIR``.
"""

import importlib
from typing import Any

__all__ = [
    "GroupedData",
    "PowerLawFit",
    "TDAParams",
    "TDATrainer",
    "agreement",
    "fit_power_law",
    "flattening_point",
    "read_predictions",
    "run_tda",
    "score",
    "write_report",
]

# Imported on first use: a trial process needs only the trainer, and scipy, scikit-learn, the
# engine and matplotlib would add seconds to the start of every trial.
_HOMES = {
    "GroupedData": "trainer",
    "TDAParams": "trainer",
    "TDATrainer": "trainer",
    "read_predictions": "trainer",
    "PowerLawFit": "fit",
    "fit_power_law": "fit",
    "flattening_point": "fit",
    "agreement": "metrics",
    "score": "metrics",
    "run_tda": "driver",
    "write_report": "report",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"candle.tda.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'candle.tda' has no attribute {name!r}")
