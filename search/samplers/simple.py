"""Random, Sobol (scrambled quasi-random) and grid samplers.

Each suggestion depends only on the seed and its index, so restoring after a restart is
setting the index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from candle.search.samplers.base import Sampler, Suggestion
from candle.search.space import Space

__all__ = ["GridSampler", "RandomSampler", "SobolSampler"]


class RandomSampler(Sampler):
    """Independent uniform draws (log-uniform on log scales)."""

    name = "random"

    def ask(self, n: int, pending: Sequence[dict[str, Any]] = ()) -> list[Suggestion]:
        out = []
        for _ in range(n):
            rng = np.random.default_rng([self.seed, self.asked])
            out.append(self._next(self.space.from_unit(rng.random(self.space.n_raw))))
        return out


class SobolSampler(Sampler):
    """A scrambled Sobol sequence: spreads the first points more evenly than random ones."""

    name = "sobol"

    def __init__(self, space: Space, seed: int = 0):
        super().__init__(space, seed)
        self._engine: torch.quasirandom.SobolEngine | None = None
        self._at = 0

    def points(self, start: int, n: int) -> np.ndarray:
        """Points ``start`` .. ``start + n - 1`` of this seed's sequence, in [0, 1)^n_raw."""
        d = max(self.space.n_raw, 1)
        if self._engine is None or self._at != start:
            self._engine = torch.quasirandom.SobolEngine(d, scramble=True, seed=self.seed)
            if start:
                self._engine.fast_forward(start)
        self._at = start + n
        return self._engine.draw(n, dtype=torch.float64).numpy()[:, : self.space.n_raw]

    def ask(self, n: int, pending: Sequence[dict[str, Any]] = ()) -> list[Suggestion]:
        if n <= 0:
            return []
        return [self._next(self.space.from_unit(u)) for u in self.points(self.asked, n)]


class GridSampler(Sampler):
    """Every point of ``Space.grid(points)``, in order; exhausted after the last."""

    name = "grid"

    def __init__(self, space: Space, seed: int = 0, points: int = 5):
        super().__init__(space, seed)
        self._grid = space.grid(points)
        if seed:  # a seeded grid is visited in a shuffled order (the same for the same seed)
            order = np.random.default_rng(seed).permutation(len(self._grid))
            self._grid = [self._grid[i] for i in order]

    def __len__(self) -> int:
        return len(self._grid)

    def ask(self, n: int, pending: Sequence[dict[str, Any]] = ()) -> list[Suggestion]:
        out = []
        while len(out) < n and self.asked < len(self._grid):
            out.append(self._next(dict(self._grid[self.asked])))
        return out

    def exhausted(self) -> bool:
        return self.asked >= len(self._grid)
