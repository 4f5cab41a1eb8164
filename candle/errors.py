"""Exception classes. Every error candle raises on purpose is a ``CandleError``."""

from __future__ import annotations

__all__ = [
    "CandleError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "NonFiniteLossError",
    "ShardError",
    "StrategyError",
    "TrainingError",
]


class CandleError(Exception):
    """Base class of all errors raised by candle."""


class ConfigError(CandleError, ValueError):
    """A parameter, config file, environment variable or command-line override is invalid."""


class CheckpointError(CandleError):
    """A checkpoint is missing, corrupt, truncated or does not match the run."""


class TrainingError(CandleError):
    """Training could not go on (the run is recorded as failed)."""


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or infinite."""


class StrategyError(CandleError):
    """A distributed strategy was asked for but cannot be set up."""


class DataError(CandleError, ValueError):
    """Input data cannot be packed or read: a missing column, a bad value, an unreadable file."""


class ShardError(DataError):
    """A shard dataset is damaged: a manifest that does not match its shards, a missing,
    truncated or altered shard file, or a path that points outside the dataset directory."""
