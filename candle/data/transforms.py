"""Feature and target transforms; statistics come from training rows only.

    split = make_split("data/nt3", kind="stratified", seed=0)
    ds = ShardDataset("data/nt3")
    std = Standardizer.fit(ds, split["train"])                 # streamed over the shards
    std.save(Standardizer.path_for("data/nt3", "split0"))      # data/nt3/standardizer-split0.json
    ds.transform = Standardizer.load("data/nt3/standardizer-split0.json", dataset=ds)

Fitting on the training rows alone keeps validation and test statistics out of the model, and
saving the statistics next to the dataset lets every run of a study reuse the same ones.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from candle.checkpoint import atomic_write_text
from candle.errors import DataError

__all__ = ["Standardizer"]

log = logging.getLogger("candle.data")

_FORMAT = "candle-standardizer"


class _Moments:
    """Per-element count, mean and sum of squared deviations, merged block by block (Chan et
    al.'s parallel Welford update) in float64. NaNs are skipped, element by element."""

    def __init__(self) -> None:
        self.n: np.ndarray | None = None
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, block: np.ndarray) -> None:
        b = np.asarray(block, dtype=np.float64)
        valid = ~np.isnan(b)
        n_b = valid.sum(axis=0)
        mean_b = np.where(valid, b, 0.0).sum(axis=0) / np.maximum(n_b, 1)
        m2_b = (np.where(valid, b - mean_b, 0.0) ** 2).sum(axis=0)
        if self.n is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        share = n_b / np.maximum(n, 1)  # fraction of the merged count from this block
        delta = mean_b - self.mean
        self.mean = self.mean + delta * share
        self.m2 = self.m2 + m2_b + delta**2 * self.n * share
        self.n = n


class Standardizer:
    """``(x - mean) / std`` per feature (element), as a dataset transform.

    ``std`` is the population standard deviation (``ddof=0``, as ``numpy.std`` and
    scikit-learn's ``StandardScaler``); constant features get ``std = 1``. Works on a sample
    (``d``) or a batch (``b x d``), and on regression targets (``of="targets"``), where
    :meth:`inverse` turns predictions back into the original units.
    """

    def __init__(
        self,
        mean: Any,
        std: Any,
        *,
        rows: int = 0,
        of: str = "features",
        dataset_checksum: str | None = None,
    ):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        if self.mean.shape != self.std.shape:
            raise DataError(f"mean {self.mean.shape} and std {self.std.shape} shapes differ")
        if np.any(self.std <= 0):
            raise DataError("every std must be > 0 (fit() sets constant features' std to 1)")
        self.rows, self.of, self.dataset_checksum = rows, of, dataset_checksum
        self._mean_t = torch.from_numpy(self.mean.astype(np.float32))
        self._std_t = torch.from_numpy(self.std.astype(np.float32))

    @classmethod
    def fit(
        cls,
        data: Any,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        of: str = "features",
    ) -> Standardizer:
        """Statistics of ``data`` rows ``indices`` (default all), streamed shard by shard.

        ``data`` is a ``ShardDataset`` (its raw values, before any transform) or an array or
        tensor of rows (``n x ...``).
        """
        from candle.data.dataset import ShardDataset

        checksum = None
        if isinstance(data, ShardDataset):
            target = data.manifest.targets
            if of == "targets" and target is not None and target["task"] == "classification":
                raise DataError(
                    f"{data.source}: targets are class labels; standardize regression targets only"
                )
            blocks: Iterable[np.ndarray] = data.blocks(of, indices)
            checksum = data.checksum
        else:
            rows = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
            blocks = [rows if indices is None else rows[np.asarray(indices, dtype=np.int64)]]
        acc = _Moments()
        for block in blocks:
            if len(block):
                acc.add(block)
        if acc.n is None:
            raise DataError("Standardizer.fit: no rows to compute statistics from")
        std = np.sqrt(acc.m2 / np.maximum(acc.n, 1))
        constant = (std == 0) | (acc.n == 0) | ~np.isfinite(std)
        if constant.any():
            log.info("Standardizer: %d constant (or empty) %s keep std=1", constant.sum(), of)
        mean = np.where(acc.n > 0, acc.mean, 0.0)
        std = np.where(constant, 1.0, std)
        return cls(mean, std, rows=int(acc.n.max()), of=of, dataset_checksum=checksum)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            x = x.float()
        mean = self._mean_t.to(device=x.device, dtype=x.dtype)
        std = self._std_t.to(device=x.device, dtype=x.dtype)
        return (x - mean) / std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Back to the original units (e.g. regression predictions)."""
        mean = self._mean_t.to(device=x.device, dtype=x.dtype)
        std = self._std_t.to(device=x.device, dtype=x.dtype)
        return x * std + mean

    def __repr__(self) -> str:
        return f"Standardizer(of={self.of!r}, shape={list(self.mean.shape)}, rows={self.rows})"

    # ------------------------------------------------------------------ files
    @staticmethod
    def path_for(dataset_dir: str | os.PathLike[str], name: str) -> Path:
        """The conventional place: ``DIR/standardizer-<name>.json`` next to the shards."""
        return Path(dataset_dir) / f"standardizer-{name}.json"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": 1,
            "of": self.of,
            "shape": list(self.mean.shape),
            "rows": self.rows,
            "dataset_checksum": self.dataset_checksum,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the statistics as JSON (atomically; floats round-trip exactly)."""
        return atomic_write_text(path, json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, dataset: Any = None) -> Standardizer:
        """Read statistics saved by :meth:`save`; with ``dataset``, check they belong to it."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: no such standardizer file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: not a readable standardizer file ({e})") from e
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise DataError(f"{path}: not a candle standardizer (no format {_FORMAT!r})")
        saved = data.get("dataset_checksum")
        if dataset is not None and saved is not None and saved != dataset.checksum:
            raise DataError(
                f"{path}: fitted on dataset {saved}, but this dataset is {dataset.checksum}; "
                "fit the statistics again on this dataset's training rows"
            )
        try:
            return cls(
                np.asarray(data["mean"]).reshape(data["shape"]),
                np.asarray(data["std"]).reshape(data["shape"]),
                rows=int(data.get("rows", 0)),
                of=str(data.get("of", "features")),
                dataset_checksum=saved,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: malformed standardizer ({e})") from e
