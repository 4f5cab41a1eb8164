"""Reading shard datasets: :class:`ShardDataset`, :func:`shard_loader` and :func:`verify`.

    ds = ShardDataset("data/nt3")                      # a local dataset directory
    x, y = ds[0]                                       # one sample: (features, target)
    xb, yb = ds[[7, 3, 3, 12]]                         # a batch, in the requested order
    loader = shard_loader(ds, 256, shuffle=True, seed=0, epoch=0, num_workers=4)

HDF5 files are opened lazily, in the process that reads them: a DataLoader worker never uses a
handle inherited from its parent (h5py handles must not cross ``fork``) and a pickled dataset
carries no handles. A batch reads each shard it touches once, with sorted, de-duplicated indices
(h5py's fancy indexing needs increasing indices), and is then put back in the requested order.
With a :class:`~candle.data.cache.ShardCache` (always, for a URL source) each shard is fetched
into the node-local cache by the first worker that needs it and leased while it is open.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from candle.data._hash import file_checksum
from candle.data.manifest import MANIFEST_NAME, Manifest, ShardInfo, is_url
from candle.distributed.base import rank_indices
from candle.errors import DataError, ShardError

__all__ = ["ShardDataset", "shard_loader", "shard_problems", "verify"]

# No HDF5 chunk cache: shards are uncompressed, so HDF5 then reads just the rows asked for. With
# a cache, reading one scattered row pulls its whole ~512 KiB chunk in first: on 80 KB rows that
# halved the rate of shuffled batch reads (measured 0.42 vs 0.85 GB/s).
_CHUNK_CACHE_BYTES = 0
_BLOCK_BYTES = 32 << 20  # rows per block when streaming a whole column (statistics, targets())
# Handles inherited across fork are parked here, never closed or collected in the child: closing
# one would run HDF5 and lease clean-up on state that belongs to the parent process.
_INHERITED: list[Any] = []


class _Open:
    """One open shard: the h5py file, its datasets, and the cache lease held while it is open."""

    def __init__(self, file: h5py.File, stack: contextlib.ExitStack):
        self.file, self.stack = file, stack
        self.features = file["features"]
        self.targets = file.get("targets")

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.stack.close()


class ShardDataset(Dataset):
    """A map-style dataset over a directory (or URL) of HDF5 shards written by ``pack``.

    ``ds[i]`` is ``(features, target)`` (``(features,)`` for a dataset without targets);
    ``ds[list_of_indices]`` is the batch ``(X: b x ..., y: b x ...)`` in the order asked for.
    Targets are int64 for classification, float32 for regression.

    Args:
        source: a dataset directory (or its ``manifest.json``), or a URL such as
            ``https://host/datasets/nt3`` (fsspec), which is read through a cache.
        cache: a ``ShardCache``; shards are fetched into it and leased while open. Default:
            none for a local directory (shards are read in place), ``ShardCache()`` for a URL.
        in_memory: read every shard into tensors once per process (small data).
        transform, target_transform: called on the features and targets, of a sample or of a
            batch (they must broadcast over a leading batch axis, as ``Standardizer`` does).
    """

    #: Tells the Trainer (and :func:`shard_loader`) to fetch whole batches with ``ds[indices]``.
    supports_batch_indexing = True
    #: Open shards kept per process (least recently used are closed beyond this).
    max_open_files = 32

    def __init__(
        self,
        source: str | os.PathLike[str],
        *,
        cache: Any = None,
        in_memory: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        target_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if is_url(source):
            self.source: str | Path = str(source).rstrip("/")
            if cache is None:
                from candle.data.cache import ShardCache

                cache = ShardCache()
        else:
            path = Path(source)
            self.source = path.parent if path.name == MANIFEST_NAME else path
        self.manifest = Manifest.read(self.source)
        expected = self.manifest.expected_checksum()
        if self.manifest.checksum != expected:
            raise ShardError(
                f"{self._where(MANIFEST_NAME)}: dataset checksum {self.manifest.checksum} does not "
                f"match {expected}, computed from its schema and shard checksums (was the manifest "
                "edited?); re-pack the data, or run `python -m candle data verify`"
            )
        self.cache = cache
        self.in_memory = in_memory
        self.transform = transform
        self.target_transform = target_transform
        self._starts = [0]
        for info in self.manifest.shards:
            self._starts.append(self._starts[-1] + info.rows)
        self._offsets = np.asarray(self._starts, dtype=np.int64)
        self._pid: int | None = None
        self._open: OrderedDict[int, _Open] = OrderedDict()
        self._memory: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ description
    @property
    def checksum(self) -> str:
        """The dataset checksum (``xxh3_128:...``) that runs record as provenance."""
        return self.manifest.checksum

    @property
    def feature_names(self) -> list[str] | None:
        return self.manifest.feature_names

    @property
    def classes(self) -> list[Any] | None:
        return self.manifest.classes

    def __len__(self) -> int:
        return self.manifest.rows

    def __repr__(self) -> str:
        return (
            f"ShardDataset({str(self.source)!r}, rows={len(self)}, "
            f"shards={len(self.manifest.shards)}, in_memory={self.in_memory})"
        )

    # ------------------------------------------------------------------ indexing
    def __getitem__(self, index: Any) -> tuple[torch.Tensor, ...]:
        if isinstance(index, torch.Tensor) and index.ndim == 0:
            index = int(index)
        if isinstance(index, (int, np.integer)):
            return self._item(int(index))
        if isinstance(index, slice):
            index = range(*index.indices(len(self)))
        return self._batch(index)

    def _item(self, i: int) -> tuple[torch.Tensor, ...]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for a dataset of {n} rows")
        i %= n
        if self.in_memory:
            mem = self._load()
            return self._output(mem["features"][i], mem["targets"][i] if "targets" in mem else None)
        k = bisect.bisect_right(self._starts, i) - 1
        shard, local = self._shard(k), i - self._starts[k]
        x = torch.as_tensor(np.asarray(shard.features[local]))
        y = None if shard.targets is None else torch.as_tensor(np.asarray(shard.targets[local]))
        return self._output(x, y)

    def _batch(self, indices: Any) -> tuple[torch.Tensor, ...]:
        if isinstance(indices, torch.Tensor):
            indices = indices.cpu().numpy()
        idx = np.asarray(indices, dtype=np.int64)
        n = len(self)
        if idx.ndim != 1:
            raise IndexError(f"batch indices must be 1-D, got shape {idx.shape}")
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = idx[(idx < -n) | (idx >= n)][0]
            raise IndexError(f"index {bad} is out of range for a dataset of {n} rows")
        idx = np.where(idx < 0, idx + n, idx)
        if self.in_memory:
            mem, t = self._load(), torch.from_numpy(idx)
            return self._output(mem["features"][t], mem["targets"][t] if "targets" in mem else None)
        names = ["features"] + (["targets"] if self.manifest.targets else [])
        out = self._read(idx, names)
        y = torch.from_numpy(out["targets"]) if "targets" in out else None
        return self._output(torch.from_numpy(out["features"]), y)

    def _output(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        if self.transform is not None:
            x = self.transform(x)
        if y is None:
            return (x,)
        if self.target_transform is not None:
            y = self.target_transform(y)
        return x, y

    def _read(self, idx: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """Rows ``idx`` of datasets ``names``, each shard read once with sorted indices."""
        in_order = idx.size < 2 or bool(np.all(idx[1:] > idx[:-1]))
        uniq, inverse = (idx, None) if in_order else np.unique(idx, return_inverse=True)
        shard_of = np.searchsorted(self._offsets, uniq, side="right") - 1
        cuts = [0, *(np.flatnonzero(np.diff(shard_of)) + 1).tolist(), len(uniq)]
        out = {name: self._empty(name, len(uniq)) for name in names}
        for a, b in itertools.pairwise(cuts if len(uniq) else []):
            k = int(shard_of[a])
            shard = self._shard(k)
            local = uniq[a:b] - self._starts[k]
            for name in names:
                out[name][a:b] = _take(getattr(shard, name), local)
        return out if inverse is None else {k: v[inverse] for k, v in out.items()}

    def _empty(self, name: str, rows: int) -> np.ndarray:
        part = self.manifest.schema[name]
        return np.empty((rows, *part["shape"]), dtype=part["dtype"])

    # ------------------------------------------------------------------ whole columns
    def targets(self) -> np.ndarray | None:
        """Every row's target (``n`` or ``n x k``), read without the features; None if none."""
        if self.manifest.targets is None:
            return None
        if self.in_memory:
            return self._load()["targets"].numpy()
        return np.concatenate(list(self.blocks("targets")))

    def groups(self) -> np.ndarray | None:
        """Every row's group label (object array of ``str``); None if packed without groups."""
        return self._strings("groups")

    def ids(self) -> np.ndarray | None:
        """Every row's sample id (object array of ``str``); None if packed without ids."""
        return self._strings("ids")

    def _strings(self, name: str) -> np.ndarray | None:
        if self.manifest.schema.get(name) is None:
            return None
        parts = [self._shard(k).file[name].asstr()[...] for k in range(len(self.manifest.shards))]
        return np.concatenate(parts) if parts else np.empty(0, dtype=object)

    def blocks(
        self, what: str = "features", indices: Sequence[int] | np.ndarray | None = None
    ) -> Iterator[np.ndarray]:
        """Raw (untransformed) ``features`` or ``targets`` of rows ``indices`` (default all),
        in increasing row order, in blocks of ~32 MiB: for streaming statistics."""
        if what not in ("features", "targets") or self.manifest.schema.get(what) is None:
            raise DataError(f"{self.source}: no {what!r} to read (features or targets)")
        part = self.manifest.schema[what]
        row_bytes = np.dtype(part["dtype"]).itemsize * int(np.prod(part["shape"], dtype=np.int64))
        step = max(1, _BLOCK_BYTES // max(row_bytes, 1))
        idx = None if indices is None else np.unique(np.asarray(indices, dtype=np.int64))
        if idx is not None and idx.size and (idx[0] < 0 or idx[-1] >= len(self)):
            raise IndexError(f"indices must lie in [0, {len(self)}), got {idx[0]}..{idx[-1]}")
        for k in range(len(self.manifest.shards)):
            lo, hi = self._starts[k], self._starts[k + 1]
            if idx is None:
                local = None
            else:
                local = idx[np.searchsorted(idx, lo) : np.searchsorted(idx, hi)] - lo
                if not local.size:
                    continue
            if self.in_memory:
                column = self._load()[what][lo:hi].numpy()
                rows = column if local is None else column[local]
                for a in range(0, len(rows), step):
                    yield rows[a : a + step]
                continue
            dset = getattr(self._shard(k), what)
            if local is None:
                for a in range(0, hi - lo, step):
                    yield dset[a : a + step]
            else:
                for a in range(0, len(local), step):
                    yield _take(dset, local[a : a + step])

    # ------------------------------------------------------------------ files
    def _where(self, name: str) -> str:
        return f"{self.source}/{name}" if isinstance(self.source, str) else str(self.source / name)

    def _shard(self, k: int) -> _Open:
        """Shard ``k``, opened in this process on first use (least recently used closed)."""
        if self._pid != os.getpid():
            if self._open:  # inherited over fork: park, never touch
                _INHERITED.append(self._open)
            self._open, self._pid = OrderedDict(), os.getpid()
        shard = self._open.get(k)
        if shard is not None:
            self._open.move_to_end(k)
            return shard
        while len(self._open) >= self.max_open_files:
            self._open.popitem(last=False)[1].close()
        shard = self._open[k] = self._open_shard(self.manifest.shards[k])
        return shard

    def _open_shard(self, info: ShardInfo) -> _Open:
        where = self._where(info.path)
        stack = contextlib.ExitStack()
        try:
            if self.cache is None:
                path = Path(where)
            elif hasattr(self.cache, "leased"):  # fetch and lease with no eviction in between
                path = stack.enter_context(
                    self.cache.leased(where, checksum=info.checksum, size=info.bytes)
                )
            else:
                path = self.cache.fetch(where, checksum=info.checksum, size=info.bytes)
                stack.enter_context(self.cache.lease(path))
            return _Open(_open_checked(path, info, self.manifest.schema, where), stack)
        except BaseException:
            stack.close()
            raise

    def _load(self) -> dict[str, torch.Tensor]:
        """``in_memory``: every shard read once into tensors (per process)."""
        if self._memory is None:
            names = ["features"] + (["targets"] if self.manifest.targets else [])
            mem = {name: self._empty(name, len(self)) for name in names}
            for k, info in enumerate(self.manifest.shards):
                shard = self._open_shard(info)  # not kept open: everything is in memory now
                try:
                    for name in names:
                        if info.rows:
                            getattr(shard, name).read_direct(
                                mem[name], dest_sel=np.s_[self._starts[k] : self._starts[k + 1]]
                            )
                finally:
                    shard.close()
            self._memory = {name: torch.from_numpy(a) for name, a in mem.items()}
        return self._memory

    def close(self) -> None:
        """Close this process's open shards and end their cache leases."""
        if self._pid == os.getpid():
            while self._open:
                self._open.popitem()[1].close()

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle h5py handles or leases; in_memory tensors are re-read per process.
        state = self.__dict__.copy()
        state.update(_open=OrderedDict(), _pid=None, _memory=None)
        return state


def _take(dset: h5py.Dataset, local: np.ndarray) -> np.ndarray:
    """Rows ``local`` (sorted, unique) of an HDF5 dataset, read with as few requests as sensible."""
    lo, hi = int(local[0]), int(local[-1]) + 1
    if hi - lo == len(local):
        return dset[lo:hi]  # a contiguous run: one hyperslab
    if hi - lo <= 4 * len(local):
        return dset[lo:hi][local - lo]  # dense enough that reading the span is cheaper
    if dset.dtype.kind not in "biuf":
        return dset[local]  # strings (groups, ids): small, fancy indexing is fine
    # Scattered rows: h5py's point selection is slow for wide rows (~120 MB/s measured on
    # 80 KB rows); one direct read per contiguous run into the output is ~3.5x faster.
    out = np.empty((len(local), *dset.shape[1:]), dtype=dset.dtype)
    breaks = np.flatnonzero(np.diff(local) != 1) + 1
    starts, ends = np.concatenate(([0], breaks)), np.concatenate((breaks, [len(local)]))
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        first = int(local[a])
        dset.read_direct(out, np.s_[first : first + b - a], np.s_[a:b])
    return out


def _open_checked(path: Path, info: ShardInfo, schema: dict[str, Any], where: str) -> h5py.File:
    """Open a shard read-only after cheap checks (exists, size, structure); raise ShardError."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise ShardError(
            f"{where}: shard file is missing (the manifest lists it with {info.rows} rows)"
        ) from None
    if size != info.bytes:
        raise ShardError(
            f"{where}: file is {size} bytes but the manifest says {info.bytes} (truncated, or "
            "replaced after packing); check it with `python -m candle data verify`"
        )
    try:
        # locking=False: read-only shards on shared filesystems (FACTS.md, HDF5).
        f = h5py.File(path, "r", locking=False, rdcc_nbytes=_CHUNK_CACHE_BYTES)
    except OSError as e:
        raise ShardError(f"{where}: not a readable HDF5 file ({e})") from e
    problems = shard_problems(f, info, schema)
    if problems:
        f.close()
        raise ShardError(f"{where}: " + "; ".join(problems))
    return f


def shard_problems(f: h5py.File, info: ShardInfo, schema: dict[str, Any]) -> list[str]:
    """How an open shard differs from its manifest entry and the schema ([] if it matches)."""
    problems = []
    for name in ("features", "targets", "groups", "ids"):
        part = schema.get(name)
        if part is None:
            continue
        if name not in f:
            problems.append(f"has no {name!r} dataset, but the manifest's schema has {name}")
            continue
        d = f[name]
        if not d.shape or d.shape[0] != info.rows:
            rows = d.shape[0] if d.shape else "no"
            problems.append(f"{name!r} has {rows} rows but the manifest says {info.rows}")
        if name in ("groups", "ids"):
            if h5py.check_string_dtype(d.dtype) is None:
                problems.append(f"{name!r} holds {d.dtype}, not strings")
            continue
        if d.dtype != np.dtype(part["dtype"]):
            problems.append(f"{name!r} has dtype {d.dtype} but the manifest says {part['dtype']}")
        if list(d.shape[1:]) != list(part["shape"]):
            problems.append(
                f"{name!r} rows have shape {list(d.shape[1:])} but the manifest says "
                f"{list(part['shape'])}"
            )
    return problems


def verify(source: str | os.PathLike[str], *, checksums: bool = True) -> list[str]:
    """Check a local dataset directory against its manifest; one line per problem ([] = sound).

    Checks every shard's existence, size, checksum (unless ``checksums=False``), HDF5
    readability, rows, dtypes and shapes, and the dataset checksum.
    """
    if is_url(source):
        raise DataError(
            f"{source}: verify reads a local directory; a URL dataset's shards are checked by "
            "the cache as they are fetched"
        )
    root = Path(source)
    root = root.parent if root.name == MANIFEST_NAME else root
    try:
        manifest = Manifest.read(root)
    except ShardError as e:
        return [str(e)]
    problems = []
    for info in manifest.shards:
        path = root / info.path
        if not path.is_file():
            problems.append(f"{path}: shard file is missing")
            continue
        size = path.stat().st_size
        if size != info.bytes:
            problems.append(
                f"{path}: file is {size} bytes but the manifest says {info.bytes} (truncated, or "
                "replaced after packing)"
            )
        if checksums:
            actual = file_checksum(path)
            if actual != info.checksum:
                problems.append(
                    f"{path}: checksum {actual} does not match the manifest's {info.checksum} "
                    "(the file changed after packing)"
                )
        try:
            with h5py.File(path, "r", locking=False) as f:
                problems += [f"{path}: {p}" for p in shard_problems(f, info, manifest.schema)]
        except OSError as e:
            problems.append(f"{path}: not a readable HDF5 file ({e})")
    expected = manifest.expected_checksum()
    if manifest.checksum != expected:
        problems.append(
            f"{root / MANIFEST_NAME}: dataset checksum {manifest.checksum} does not match "
            f"{expected}, computed from its schema and shard checksums"
        )
    return problems


def shard_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` for one rank and epoch, for use outside the Trainer.

    The order is a pure function of (seed, epoch, world size), as in the Trainer: rank ``r``
    takes every ``world_size``-th sample; with ``shuffle`` (training) every rank gets the same
    number of samples, so ranks run equal batch counts. A dataset with
    ``supports_batch_indexing`` (``ShardDataset``) is asked for whole batches (``ds[indices]``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = rank_indices(
        len(dataset),
        seed=seed,
        epoch=epoch,
        rank=rank,
        world_size=world_size,
        shuffle=shuffle,
        pad=shuffle,
    )
    common = {"num_workers": num_workers, "pin_memory": pin_memory}
    if getattr(dataset, "supports_batch_indexing", False):
        batches = BatchSampler(indices, batch_size, drop_last=drop_last)
        return DataLoader(dataset, batch_size=None, sampler=batches, **common)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=indices, drop_last=drop_last, **common
    )
