"""candle: a PyTorch-native framework for deep learning in biomedicine.

Write a small ``Trainer`` subclass; get data-parallel training, hyperparameter search,
uncertainty quantification and training data analysis from the framework.
"""

from __future__ import annotations

__version__ = "0.1.0"

from candle.callbacks import Callback
from candle.config import Params, load_params, param
from candle.errors import (
    CandleError,
    CheckpointError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    ShardError,
    StrategyError,
    TrainingError,
)
from candle.trainer import FitResult, Trainer

__all__ = [
    "Callback",
    "CandleError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "FitResult",
    "NonFiniteLossError",
    "Params",
    "ShardError",
    "StrategyError",
    "Trainer",
    "TrainingError",
    "__version__",
    "load_params",
    "param",
]
