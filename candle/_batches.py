"""Turning a Trainer's datasets into per-rank, per-epoch batches (private to the Trainer)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from candle.errors import ConfigError


class Indices(Sampler[int]):
    """Yields a precomputed list of sample indices (this rank's, this epoch's, maybe resumed)."""

    def __init__(self, indices: list[int]):
        self.indices = indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def batch_size_of(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, Mapping):
        return batch_size_of(next(iter(batch.values())))
    if isinstance(batch, Sequence) and batch:
        return batch_size_of(batch[0])
    return 1


def to_device(batch: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


class Skip:
    """Batches ``skip`` to ``stop`` of a user DataLoader (mid-epoch resume, equal counts)."""

    def __init__(self, loader: DataLoader, skip: int, stop: int):
        self.loader, self.skip, self.stop = loader, skip, stop

    def __len__(self) -> int:
        return self.stop - self.skip

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(self.loader, self.skip, self.stop)


def batch_indexable(data: Any) -> bool:
    """Whether ``data[list_of_indices]`` returns a whole batch (one read instead of many)."""
    if isinstance(data, Subset):  # Subset forwards list indexing to its dataset
        return batch_indexable(data.dataset)
    return isinstance(data, TensorDataset) or getattr(data, "supports_batch_indexing", False)


def base_dataset(data: Any) -> Any:
    while isinstance(data, Subset):
        data = data.dataset
    return getattr(data, "dataset", data)  # a DataLoader's dataset


def normalize_data(data: Any) -> dict[str, Any]:
    """``build_data()``'s return value as ``{"train": ..., "val": ..., "test": ...}``."""
    if isinstance(data, Mapping):
        unknown = set(data) - {"train", "val", "test"}
        if unknown or "train" not in data:
            raise ConfigError(
                f"build_data() returned keys {sorted(data)}; expected 'train' and optionally "
                "'val' and 'test'"
            )
        out = {k: v for k, v in data.items() if v is not None}
    elif isinstance(data, (tuple, list)) and 1 <= len(data) <= 3:
        out = {k: v for k, v in zip(("train", "val", "test"), data, strict=False) if v is not None}
    elif isinstance(data, (Dataset, DataLoader)):
        out = {"train": data}
    else:
        raise ConfigError(
            f"build_data() returned {type(data).__name__}; return (train, val), "
            "(train, val, test) or a dict of Datasets/DataLoaders"
        )
    return out
