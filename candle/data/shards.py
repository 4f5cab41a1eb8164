"""Packing: CSV/TSV/Parquet/NumPy/DataFrame in, HDF5 shards plus a JSON manifest out.

    from candle.data import pack
    pack("expression.csv", "data/nt3", target="label", group="cell_line", shard_size="64MB")

Input is streamed block by block (see :mod:`candle.data._readers`), so a file larger than
memory packs. Shard files are written under hidden temporary names and renamed only when the
whole pack succeeded, and the manifest is written last and atomically: a pack that crashes
never looks like a dataset, and never damages the dataset it was to replace.

HDF5 layout of one shard: ``features`` (``rows x ...``), optional ``targets``, ``groups`` and
``ids`` (UTF-8 strings), all chunked along the sample axis in ~512 KiB chunks, uncompressed.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from candle.checkpoint import _fsync_dir
from candle.data._hash import file_checksum
from candle.data._readers import not_numeric, open_source
from candle.data.manifest import MANIFEST_NAME, Manifest, ShardInfo, parse_size
from candle.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SHARD_NAME", "pack"]

log = logging.getLogger("candle.data")

SHARD_NAME = "shard-{:05d}.h5"
_SHARD_RE = re.compile(r"^shard-\d{5,}\.h5$")
_CHUNK_BYTES = 512 * 1024  # HDF5 chunk target (FACTS.md: 10 KiB - 1 MiB along the sample axis)
_STRING_BYTES = 16  # bytes a variable-length string costs in a row (heap reference)
_UNIT_BYTES = 4 << 20  # rows are written to a shard in units of about this many bytes
_COLUMNS = ("features", "targets", "groups", "ids")
_TASKS = ("auto", "classification", "regression")


def pack(
    input: str | os.PathLike[str] | pd.DataFrame | np.ndarray,
    out_dir: str | os.PathLike[str],
    *,
    target: str | Sequence[str] | None = None,
    group: str | None = None,
    id_column: str | None = None,
    features: Sequence[str] | None = None,
    shard_size: int | str = "64MB",
    dtype: str = "float32",
    task: str = "auto",
    targets: str | os.PathLike[str] | np.ndarray | None = None,
    keys: tuple[str, str] | None = None,
    read_size: int | str = "64MB",
    overwrite: bool = False,
) -> Manifest:
    """Pack ``input`` into a shard dataset in ``out_dir`` and return its manifest.

    Args:
        input: a ``.csv``/``.tsv`` file (optionally ``.gz``/``.bz2``/``.xz``), a ``.parquet``
            file, a ``.npy`` array (``n x ...`` features), a ``.npz`` archive (features and
            targets under ``keys``, default ``X``/``y`` or ``features``/``targets``), a pandas
            DataFrame or a NumPy array.
        target: the target column(s) of tabular input. String, bool or categorical targets
            are classes (stored as int64 codes, class names in the schema); numeric targets
            are float32 regression targets unless ``task="classification"`` (int64 labels).
        group, id_column: a column of group labels (cell line, drug, study) or sample ids,
            stored as strings and never used as features.
        features: the feature columns, in order (default: every other column).
        shard_size: bytes per shard (``"64MB"``, ``"512KiB"``, ``"1GB"`` or an int).
        dtype: the stored feature dtype.
        task: ``"auto"``, ``"classification"`` or ``"regression"``.
        targets: for ``.npy``/array input, the targets (another ``.npy`` path or an array).
        read_size: about the most memory that input in flight may take (a CSV is read in
            pieces of an eighth of it: the text, its lines, float64 and float32 copies).
        overwrite: replace a dataset already in ``out_dir``.
    """
    out = Path(out_dir)
    if task not in _TASKS:
        raise DataError(f"task={task!r} is not one of {', '.join(_TASKS)}")
    try:
        np_dtype = np.dtype(dtype)
        shard_bytes, read_bytes = parse_size(shard_size), parse_size(read_size)
    except (TypeError, ValueError) as e:
        raise DataError(f"pack: {e}") from e
    if np_dtype.kind not in "biuf":
        raise DataError(f"dtype={dtype!r} is not a numeric dtype (use e.g. float32)")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: the output path exists and is not a directory")
    if not overwrite and out.is_dir() and _existing_dataset_files(out):
        raise DataError(f"{out}: already holds a dataset; pass overwrite=True (--overwrite)")
    src = open_source(input, target, group, id_column, features, targets, keys, read_bytes)
    coder = _TargetCoder(src.target_names, task, src.name)
    out.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(out, src.feature_shape, np_dtype, shard_bytes)
    nan_features = 0
    try:
        for raw in src.blocks:
            x = _features(raw.x, np_dtype, src.name, raw.row0)
            if np_dtype.kind == "f":
                nan_features += int(np.count_nonzero(np.isnan(x)))
            y = None if raw.y is None else coder.encode(raw.y, raw.row0)
            writer.append(x, y, _labels(raw.groups), _labels(raw.ids))
        if writer.rows == 0:
            raise DataError(f"{src.name}: no data rows (only a header, or an empty array)")
        schema = {
            "features": {
                "dtype": np_dtype.name,
                "shape": list(src.feature_shape),
                "names": src.feature_names,
            },
            "targets": coder.schema(writer.target_shape) if src.has_targets else None,
            "groups": {"name": group or "groups", "dtype": "str"} if src.has_groups else None,
            "ids": {"name": id_column or "ids", "dtype": "str"} if src.has_ids else None,
        }
        shards = writer.finish(coder.remap())
    except BaseException:
        writer.abort()
        raise
    # The new shards are complete under temporary names: only now retire an old dataset.
    _remove_dataset(out)
    for tmp, info in shards:
        os.replace(tmp, out / info.path)
    _fsync_dir(out)
    manifest = Manifest(
        schema=schema,
        shards=[info for _, info in shards],
        source=src.name if src.name.startswith("<") else Path(src.name).name,
        nan_count={"features": nan_features, "targets": coder.nan},
    )
    manifest.write(out)
    log.info(
        "packed %s: %d rows in %d shards, %s",
        src.name,
        manifest.rows,
        len(shards),
        manifest.checksum,
    )
    return manifest


# --------------------------------------------------------------------------- writing


class _ShardWriter:
    """Appends blocks of rows to shards of ``rows_per_shard`` rows, under temporary names.

    Rows are written in fixed units (a whole number of HDF5 chunks, ~4 MiB), whatever the size
    of the blocks read from the input, so the same input and options always give byte-identical
    shards, and so the same dataset checksum.
    """

    def __init__(self, out: Path, shape: tuple[int, ...], dtype: np.dtype, shard_bytes: int):
        self.out, self.shape, self.dtype, self.shard_bytes = out, shape, dtype, shard_bytes
        self.rows_per_shard = 0  # set by the first block, once the target width is known
        self.rows = 0
        self.target_shape: tuple[int, ...] = ()
        self._done: list[tuple[Path, int]] = []
        self._file: h5py.File | None = None
        self._tmp: Path | None = None
        self._n = 0
        self._pending: list[tuple[Any, ...]] = []
        self._pending_rows = 0
        self._unit = 0

    def append(self, x: np.ndarray, y: np.ndarray | None, g: Any, ids: Any) -> None:
        if not self.rows_per_shard:
            row = x[:1].nbytes + (0 if y is None else y[:1].nbytes)
            row += _STRING_BYTES * ((g is not None) + (ids is not None))
            self.rows_per_shard = max(1, self.shard_bytes // max(row, 1))
            self.target_shape = () if y is None else y.shape[1:]
            chunk = self._chunk_rows(x[:1].nbytes)
            self._unit = max(chunk, (_UNIT_BYTES // max(row, 1)) // chunk * chunk)
        self._pending.append((x, y, g, ids))
        self._pending_rows += len(x)
        self.rows += len(x)
        self._write(final=False)

    def _write(self, final: bool) -> None:
        while self._pending_rows >= self._unit or (final and self._pending_rows):
            if self._file is None:
                self._open(*self._pending[0])
            k = min(self._unit, self.rows_per_shard - self._n, self._pending_rows)
            for name, values in zip(_COLUMNS, self._take(k), strict=True):
                if values is not None:
                    d = self._file[name]
                    d.resize(self._n + k, axis=0)
                    d[self._n : self._n + k] = values
            self._n += k
            if self._n == self.rows_per_shard:
                self._close()

    def _take(self, k: int) -> list[Any]:
        """The next ``k`` pending rows, as one array per column."""
        parts, got = [], 0
        while got < k:
            block = self._pending[0]
            n = len(block[0])
            if got + n <= k:
                parts.append(self._pending.pop(0))
                got += n
            else:
                cut = k - got
                parts.append(tuple(None if v is None else v[:cut] for v in block))
                self._pending[0] = tuple(None if v is None else v[cut:] for v in block)
                got = k
        self._pending_rows -= k
        if len(parts) == 1:
            return list(parts[0])
        return [None if p[0] is None else np.concatenate(p) for p in zip(*parts, strict=True)]

    def _chunk_rows(self, row_bytes: int) -> int:
        return max(1, min(self.rows_per_shard, _CHUNK_BYTES // max(row_bytes, 1)))

    def _open(self, x: np.ndarray, y: np.ndarray | None, g: Any, ids: Any) -> None:
        name = SHARD_NAME.format(len(self._done))
        self._tmp = self.out / f".{name}.{secrets.token_hex(4)}.tmp"
        f = h5py.File(self._tmp, "w", rdcc_nbytes=4 << 20)
        f.attrs["format"] = "candle-shards"
        columns = [("features", x.dtype, self.shape)]
        if y is not None:
            columns.append(("targets", y.dtype, y.shape[1:]))
        columns += [
            (k, h5py.string_dtype(), ()) for k, v in (("groups", g), ("ids", ids)) if v is not None
        ]
        for key, dt, shape in columns:
            item = np.dtype(dt).itemsize if key in ("features", "targets") else _STRING_BYTES
            chunk = self._chunk_rows(item * int(np.prod(shape, dtype=np.int64)))
            f.create_dataset(
                key, shape=(0, *shape), maxshape=(None, *shape), dtype=dt, chunks=(chunk, *shape)
            )
        self._file, self._n = f, 0

    def _close(self) -> None:
        self._file.close()
        self._done.append((self._tmp, self._n))
        self._file, self._tmp, self._n = None, None, 0

    def finish(self, remap: np.ndarray | None) -> list[tuple[Path, ShardInfo]]:
        """Close the last shard, apply a class-code remap, checksum; returns (temp, info)."""
        self._write(final=True)
        if self._file is not None:
            self._close()
        out = []
        for i, (tmp, rows) in enumerate(self._done):
            if remap is not None:
                with h5py.File(tmp, "r+") as f:
                    f["targets"][...] = remap[f["targets"][...]]
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            name = SHARD_NAME.format(i)
            out.append((tmp, ShardInfo(name, rows, tmp.stat().st_size, file_checksum(tmp))))
            log.debug("shard %s: %d rows, %d bytes", name, rows, out[-1][1].bytes)
        return out

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._done.append((self._tmp, self._n))
        for tmp, _ in self._done:
            tmp.unlink(missing_ok=True)


def _existing_dataset_files(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name == MANIFEST_NAME or _SHARD_RE.match(p.name)]


def _remove_dataset(out: Path) -> None:
    """Retire an old dataset: the manifest first, so a half-removed one never looks complete."""
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for p in _existing_dataset_files(out):
        p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- conversion


def _features(x: Any, dtype: np.dtype, where: str, row0: int) -> np.ndarray:
    """A block's features as a ``rows x ...`` array of ``dtype``; non-numeric input raises."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise DataError(
                f"{where}: features have dtype {x.dtype}, which is not numeric; "
                "store numbers (e.g. float32) or pack from a table with --features"
            )
        return np.ascontiguousarray(x, dtype=dtype)
    import pandas as pd

    bad = [c for c, t in x.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
    if bad:
        col = x[bad[0]]
        wrong = (pd.to_numeric(col, errors="coerce").isna() & col.notna()).to_numpy()
        i = int(np.argmax(wrong))
        not_numeric(where, bad, f" (e.g. {col.iloc[i]!r} in row {row0 + i})" if wrong.any() else "")
    try:
        return x.to_numpy(dtype=dtype, na_value=np.nan)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: features cannot be stored as {dtype} ({e})") from e


def _labels(values: Any) -> np.ndarray | None:
    """Group labels or ids as an object array of ``str`` (missing values become ``""``)."""
    if values is None:
        return None
    import pandas as pd

    s = pd.Series(np.asarray(values)) if isinstance(values, np.ndarray) else values
    if isinstance(values, np.ndarray) and values.dtype.kind == "S":
        s = s.str.decode("utf-8")
    return np.asarray(s.astype(object).where(s.notna(), "").map(str), dtype=object)


class _TargetCoder:
    """Turns raw target values into stored targets, block by block, with one consistent kind.

    Kinds: ``float`` (regression, float32, NaN allowed and counted), ``int`` (classification
    with integer labels kept as int64), ``codes`` (string labels -> int64 codes; the codes are
    remapped to sorted class order when packing ends).
    """

    def __init__(self, names: list[str] | None, task: str, where: str):
        self.names, self.task, self.where = names, task, where
        self.kind: str | None = None
        self.seen: dict[Any, int] = {}
        self.nan = 0

    def _label(self) -> str:
        return f"target column {self.names[0]!r}" if self.names else "targets"

    def encode(self, raw: Any, row0: int) -> np.ndarray:
        """Stored targets for one block (``raw``: a Series, a DataFrame or an array)."""
        import pandas as pd

        if isinstance(raw, pd.DataFrame) or (isinstance(raw, np.ndarray) and raw.ndim > 1):
            return self._vector(raw)
        s = pd.Series(raw) if isinstance(raw, np.ndarray) else raw
        if s.dtype.kind == "S":
            s = s.str.decode("utf-8")
        values = self._numbers(s)  # float64, or None when some value is not a number
        if self.kind is None:
            self.kind = self._decide(s, values)
        if self.kind == "float":
            if values is None:
                raise self._not_a_number(
                    s,
                    row0,
                    "earlier rows were numeric; fix the value, or pass task='classification' "
                    "to treat every value as a class label",
                )
            return self._float(values)
        missing = s.isna().to_numpy()
        if missing.any():
            raise DataError(
                f"{self.where}: {self._label()} is empty in {int(missing.sum())} rows (first: row "
                f"{row0 + int(np.argmax(missing))}); class labels cannot be missing"
            )
        if self.kind == "int":
            if values is None:
                raise self._not_a_number(s, row0, "earlier rows were integer labels")
            fractional = values != np.round(values)
            if fractional.any():
                i = int(np.argmax(fractional))
                raise DataError(
                    f"{self.where}: task='classification' needs integer or string labels, but "
                    f"{self._label()} holds {values[i]!r} in row {row0 + i}"
                )
            out = values.astype(np.int64)
            for v in np.unique(out).tolist():
                self.seen.setdefault(v, v)
            return out
        labels = s.astype(str)
        for v in labels.unique():
            self.seen.setdefault(v, len(self.seen))
        return labels.map(self.seen).to_numpy(dtype=np.int64)

    def _numbers(self, s: pd.Series) -> np.ndarray | None:
        import pandas as pd

        if pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
            return s.to_numpy(dtype=np.float64, na_value=np.nan)
        if self.kind == "codes":
            return None
        num = pd.to_numeric(s, errors="coerce")
        if not bool((num.notna() == s.notna()).all()):
            return None
        return num.to_numpy(dtype=np.float64, na_value=np.nan)

    def _decide(self, s: pd.Series, values: np.ndarray | None) -> str:
        import pandas as pd

        if values is None:
            if self.task == "regression":
                raise DataError(
                    f"{self.where}: task='regression' but {self._label()} is not numeric "
                    f"(e.g. {s.dropna().iloc[0]!r}); use task='classification'"
                )
            return "codes"
        if self.task == "classification":
            return "int"
        if self.task == "auto" and pd.api.types.is_bool_dtype(s.dtype):
            return "int"
        finite = values[~np.isnan(values)]
        if self.task == "auto" and len(finite) and np.all(finite == np.round(finite)):
            log.info(
                "%s: %s holds integers; packed as float32 regression targets "
                "(pass task='classification' to keep int64 class labels)",
                self.where,
                self._label(),
            )
        return "float"

    def _not_a_number(self, s: pd.Series, row0: int, why: str) -> DataError:
        import pandas as pd

        bad = (pd.to_numeric(s, errors="coerce").isna() & s.notna()).to_numpy()
        i = int(np.argmax(bad))
        return DataError(
            f"{self.where}: {self._label()} holds {s.iloc[i]!r} in row {row0 + i}, but {why}"
        )

    def _vector(self, raw: Any) -> np.ndarray:
        """Several target columns, or an ``n x k`` target array."""
        import pandas as pd

        if isinstance(raw, pd.DataFrame):
            bad = [c for c, t in raw.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
            if bad or self.task == "classification":
                raise DataError(
                    f"{self.where}: several target columns make a regression target and must "
                    f"be numeric (not numeric: {bad}); classification takes one target column"
                )
            self.kind = "float"
            return self._float(raw.to_numpy(dtype=np.float64, na_value=np.nan))
        if raw.dtype.kind not in "biuf":
            raise DataError(f"{self.where}: targets of dtype {raw.dtype} must be 1-D labels")
        if self.kind is None:
            integral = raw.dtype.kind in "biu"
            self.kind = "int" if self.task == "classification" and integral else "float"
        if self.kind == "int":
            for v in np.unique(raw).tolist():
                self.seen.setdefault(v, v)
            return raw.astype(np.int64)
        return self._float(raw)

    def _float(self, values: np.ndarray) -> np.ndarray:
        out = np.asarray(values, dtype=np.float32)
        self.nan += int(np.count_nonzero(np.isnan(out)))
        return out

    def remap(self) -> np.ndarray | None:
        """Old code -> code in sorted class order, or None when the order already matches."""
        if self.kind != "codes":
            return None
        order = sorted(self.seen)
        remap = np.empty(len(order), dtype=np.int64)
        for new, label in enumerate(order):
            remap[self.seen[label]] = new
        return None if np.array_equal(remap, np.arange(len(order))) else remap

    def schema(self, shape: tuple[int, ...]) -> dict[str, Any]:
        classification = self.kind in ("int", "codes")
        return {
            "dtype": "int64" if classification else "float32",
            "shape": list(shape),
            "names": self.names,
            "task": "classification" if classification else "regression",
            "classes": sorted(self.seen) if classification else None,
        }
