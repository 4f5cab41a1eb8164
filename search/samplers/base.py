"""The sampler interface: ``ask`` for configs, ``tell`` results, ``restore`` after a restart.

Samplers minimize (the search driver negates a metric to maximize). A failed trial (crash,
NaN) is told as ``None``. Each suggestion carries the sampler's count of suggestions when it
was made (``index``): the driver stores it with the trial, so after a restart ``restore`` can
put the sampler back where it was from the store alone (how many were asked, what came back),
with no separate state file to keep in step.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from candle.search.space import Space

__all__ = ["Sampler", "Suggestion", "clean_value"]


@dataclass
class Suggestion:
    config: dict[str, Any]  # the params of one trial (searched and fixed)
    index: int  # the sampler's count of suggestions when this one was made


def clean_value(value: float | None) -> float | None:
    """None for a failed trial or a non-finite objective, else the float."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class Sampler(ABC):
    name = "sampler"

    def __init__(self, space: Space, seed: int = 0):
        self.space, self.seed = space, int(seed)
        self.asked = 0
        self.observations: list[tuple[dict[str, Any], float | None]] = []

    @abstractmethod
    def ask(self, n: int, pending: Sequence[dict[str, Any]] = ()) -> list[Suggestion]:
        """Up to ``n`` new configs; ``pending`` are the configs of trials still running."""

    def tell(self, config: dict[str, Any], value: float | None) -> None:
        """A trial's result, to minimize; None (or NaN) for a failed one."""
        self.observations.append((dict(config), clean_value(value)))

    def restore(self, asked: int, observations: Sequence[tuple[dict[str, Any], float | None]]):
        """Continue as if ``asked`` suggestions had been made and these results told."""
        self.asked = int(asked)
        self.observations = []
        for config, value in observations:
            self.tell(config, value)

    def exhausted(self) -> bool:
        return False

    def close(self) -> None:  # noqa: B027 - optional: only samplers with background work
        """Stop background work, if any."""

    def _next(self, config: dict[str, Any]) -> Suggestion:
        s = Suggestion(config, self.asked)
        self.asked += 1
        return s
