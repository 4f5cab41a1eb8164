"""Distributed strategies. The Trainer talks to processes and ranks only through ``Strategy``."""

from __future__ import annotations

from candle.distributed.base import SingleProcess, Strategy, rank_indices
from candle.errors import StrategyError

__all__ = ["SingleProcess", "Strategy", "rank_indices", "resolve_strategy"]


def resolve_strategy(name: str = "auto") -> Strategy:
    """The strategy for ``name`` (the ``strategy`` param); ``auto`` detects the launcher.

    Horovod and torch.distributed strategies arrive with their own issue; until then asking
    for them is an error rather than a silent single-process run.
    """
    if name in ("auto", "single"):
        return SingleProcess()
    raise StrategyError(
        f"strategy={name!r} is not available in this version of candle; "
        "use strategy=single (or auto)"
    )
