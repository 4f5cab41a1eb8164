"""Data management: HDF5 shard datasets with checksummed JSON manifests.

- :func:`pack` turns CSV/TSV/Parquet/NumPy files or a DataFrame into shards;
  :func:`verify` checks a dataset against its manifest (``python -m candle data ...``).
- :class:`ShardDataset` reads them (lazily, per DataLoader worker, batch by batch);
  :func:`shard_loader` builds a DataLoader for one rank and epoch.
- :class:`Standardizer` standardizes features or targets with training-set statistics.
- :class:`ShardCache` (``candle.data.cache``) keeps node-local copies of remote shards;
  :func:`make_split` / :func:`load_split` (``candle.data.splits``) save reusable splits.
"""

from __future__ import annotations

from typing import Any

from candle.data.dataset import ShardDataset, shard_loader, verify
from candle.data.manifest import Manifest, ShardInfo, parse_size
from candle.data.shards import pack
from candle.data.transforms import Standardizer

__all__ = [
    "Manifest",
    "ShardCache",
    "ShardDataset",
    "ShardInfo",
    "Standardizer",
    "load_split",
    "make_split",
    "pack",
    "parse_size",
    "shard_loader",
    "verify",
]

_LAZY = {"ShardCache": "candle.data.cache", "make_split": "candle.data.splits"}
_LAZY["load_split"] = "candle.data.splits"


def __getattr__(name: str) -> Any:
    # The cache and splits modules are imported on first use: `import candle.data` stays light
    # for DataLoader workers, and neither is needed to read a local dataset.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'candle.data' has no attribute {name!r}")
