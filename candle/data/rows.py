"""In-memory samples whose input is one tensor or a dict of tensors (a model with several inputs).

    ds = RowDataset({"cell": cell_x, "drug": drug_x}, y)   # every tensor has n rows
    x, y = ds[[4, 1, 7]]                                    # a batch: ({"cell": ..., ...}, y)

The helpers treat both kinds of input alike: :func:`num_rows`, :func:`take_rows` (rows by
index, every tensor of a dict) and :func:`map_inputs` (a function applied to every tensor).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import torch
from torch.utils.data import Dataset

__all__ = ["Inputs", "RowDataset", "map_inputs", "num_rows", "take_rows"]

Inputs: TypeAlias = torch.Tensor | dict[str, torch.Tensor]


def map_inputs(x: Inputs, fn: Callable[[torch.Tensor], torch.Tensor]) -> Inputs:
    """``fn`` applied to ``x``, or to each tensor of a dict ``x``."""
    if isinstance(x, Mapping):
        return {name: fn(t) for name, t in x.items()}
    return fn(x)


def take_rows(x: Inputs, rows: Any) -> Inputs:
    """Rows ``rows`` (an index, slice or index tensor) of ``x`` or of each tensor of it."""
    return map_inputs(x, lambda t: t[rows])


def num_rows(x: Inputs) -> int:
    """The number of rows of ``x``: of every tensor of a dict, which must agree."""
    if not isinstance(x, Mapping):
        return len(x)
    counts = {name: len(t) for name, t in x.items()}
    if not counts or len(set(counts.values())) != 1:
        raise ValueError(f"the inputs must all have the same number of rows, got {counts}")
    return next(iter(counts.values()))


class RowDataset(Dataset):
    """Samples ``(x[i], y[i])`` of in-memory tensors; ``x`` may be a dict of tensors.
    Asked for a list of indices, it returns the whole batch at once."""

    supports_batch_indexing = True

    def __init__(self, x: Inputs, y: torch.Tensor):
        if num_rows(x) != len(y):
            raise ValueError(f"{num_rows(x)} input rows but {len(y)} targets")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: Any) -> tuple[Inputs, torch.Tensor]:
        if isinstance(i, list):
            i = torch.as_tensor(i, dtype=torch.long)
        return take_rows(self.x, i), self.y[i]
