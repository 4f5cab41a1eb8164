"""Input readers for ``pack``: each format becomes a stream of row blocks (``Raw``).

Tables (CSV/TSV, Parquet, DataFrame) and arrays (``.npy`` memory-mapped, ``.npz`` members read
from the zip stream) are read a block at a time, so a file larger than memory packs. Packing
itself (conversion, shard writing, the manifest) is in :mod:`candle.data.shards`.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from candle.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Raw", "Source", "not_numeric", "open_source"]

_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")


@dataclass
class Raw:
    """One block of input rows before conversion (DataFrames or arrays, ``rows x ...``)."""

    x: Any
    y: Any = None
    groups: Any = None
    ids: Any = None
    row0: int = 0


@dataclass
class Source:
    name: str  # the file (or "<DataFrame>") for messages and the manifest
    feature_shape: tuple[int, ...]
    feature_names: list[str] | None
    has_targets: bool
    target_names: list[str] | None
    has_groups: bool
    has_ids: bool
    blocks: Iterator[Raw]


def open_source(
    input: Any,
    target: str | Sequence[str] | None,
    group: str | None,
    id_column: str | None,
    features: Sequence[str] | None,
    targets: Any,
    keys: tuple[str, str] | None,
    read_bytes: int,
) -> Source:
    import pandas as pd

    columns = (target, group, id_column, features)
    if isinstance(input, pd.DataFrame):
        _refuse_array_options("<DataFrame>", targets, keys)
        return _frame_source(input, columns, read_bytes)
    if isinstance(input, np.ndarray):
        _refuse_column_options("<array>", columns)
        y = None if targets is None else _Rows(_load_npy(targets))
        return _array_source("<array>", _Rows(input), y, read_bytes)
    path = Path(input)
    where = str(path)
    if not path.is_file():
        raise DataError(f"{where}: input file does not exist" + (" (a directory)" * path.is_dir()))
    if path.stat().st_size == 0:
        raise DataError(f"{where}: the file is empty")
    name = path.name.lower()
    for suffix in _COMPRESSION:
        name = name.removesuffix(suffix)
    if name.endswith((".csv", ".tsv", ".tab", ".txt")):
        _refuse_array_options(where, targets, keys)
        return _csv_source(path, "," if name.endswith(".csv") else "\t", columns, read_bytes)
    if name.endswith((".parquet", ".pq")):
        _refuse_array_options(where, targets, keys)
        return _parquet_source(path, columns, read_bytes)
    if name.endswith(".npy"):
        _refuse_column_options(where, columns)
        y = None if targets is None else _Rows(_load_npy(targets))
        return _array_source(where, _Rows(_load_npy(path)), y, read_bytes)
    if name.endswith(".npz"):
        _refuse_column_options(where, columns)
        if targets is not None:
            raise DataError(f"{where}: a .npz holds its own targets; choose them with keys=(X, y)")
        return _npz_source(path, keys, read_bytes)
    raise DataError(
        f"{where}: unknown input format; pack reads .csv, .tsv (optionally .gz/.bz2/.xz), "
        ".parquet, .npy and .npz files, and pandas DataFrames"
    )


def _refuse_array_options(where: str, targets: Any, keys: Any) -> None:
    if targets is not None or keys is not None:
        raise DataError(f"{where}: targets=/keys= are for NumPy input; name a column: target=COL")


def _refuse_column_options(where: str, columns: tuple[Any, ...]) -> None:
    if any(c is not None for c in columns):
        raise DataError(
            f"{where}: NumPy input has no named columns, so target=/group=/id_column=/features= "
            "do not apply; pass the targets as another array: targets=PATH.npy (--targets)"
        )


# ---- tables


@dataclass
class _Plan:
    """Which columns of a table are features, targets, group labels and ids."""

    features: list[str]
    targets: list[str]
    group: str | None
    id: str | None

    @property
    def columns(self) -> list[str]:
        return [*self.features, *self.targets, *(c for c in (self.group, self.id) if c)]

    def source(self, where: str, chunks: Iterator[tuple[Any, int]]) -> Source:
        """A source over ``chunks``: (DataFrame or Arrow RecordBatch, first row) pairs."""

        def blocks() -> Iterator[Raw]:
            import pandas as pd

            for chunk, row0 in chunks:
                if isinstance(chunk, pd.DataFrame):
                    x, column = chunk[self.features], chunk.__getitem__
                else:  # Arrow: straight to NumPy, no pandas object per column (wide tables)
                    index = {name: i for i, name in enumerate(chunk.schema.names)}
                    x = _arrow_matrix(chunk, [index[c] for c in self.features])
                    column = _arrow_columns(chunk, index)
                y = None
                if self.targets:
                    y = column(self.targets[0] if len(self.targets) == 1 else self.targets)
                g = column(self.group) if self.group else None
                ids = column(self.id) if self.id else None
                yield Raw(x, y, g, ids, row0)

        return Source(
            where,
            (len(self.features),),
            list(self.features),
            bool(self.targets),
            list(self.targets) or None,
            self.group is not None,
            self.id is not None,
            blocks(),
        )


def _arrow_columns(batch: Any, index: dict[str, int]) -> Callable[[Any], Any]:
    """``column(name)``: a pandas Series of an Arrow batch's column (a DataFrame for a list)."""
    import pandas as pd

    def column(name: str | list[str]) -> Any:
        if isinstance(name, list):
            return pd.DataFrame({c: batch.column(index[c]).to_pandas() for c in name})
        return batch.column(index[name]).to_pandas()

    return column


def _arrow_matrix(batch: Any, columns: list[int]) -> np.ndarray:
    """Columns of an Arrow batch as an ``n x d`` float64 array (a transposed view)."""
    import pyarrow as pa

    out = np.empty((len(columns), batch.num_rows), dtype=np.float64)
    for j, i in enumerate(columns):  # ints, bools and nulls all become float64 (null: NaN)
        out[j] = batch.column(i).cast(pa.float64()).to_numpy(zero_copy_only=False)
    return out.T


def _plan(columns: list[str], where: str, spec: tuple[Any, ...]) -> _Plan:
    target, group, id_column, features = spec
    targets = [] if target is None else [target] if isinstance(target, str) else list(target)
    known = set(columns)
    for kind, names in (
        ("target", targets),
        ("group", [group] if group else []),
        ("id", [id_column] if id_column else []),
        ("feature", list(features or [])),
    ):
        for name in names:
            if name not in known:
                raise _missing_column(where, kind, name, columns)
    used = {*targets, group, id_column}
    if features is None:
        feats = [c for c in columns if c not in used]
        unnamed = [c for c in feats if c.startswith("Unnamed: ")]
        if unnamed:
            raise DataError(
                f"{where}: column {unnamed[0]!r} has no name in the header (a saved DataFrame "
                f"index?); keep it as sample ids with id_column={unnamed[0]!r} (--id), or list "
                "the feature columns with features=[...] (--features)"
            )
    else:
        feats = list(features)
        clash = sorted(set(feats) & used)
        if clash or len(set(feats)) != len(feats):
            raise DataError(f"{where}: features= repeats a column or names a target/group/id one")
    if not feats:
        raise DataError(f"{where}: no feature columns left (columns: {columns})")
    return _Plan(feats, targets, group, id_column)


def _missing_column(where: str, kind: str, name: str, columns: list[str]) -> DataError:
    lower = {c.lower(): c for c in columns}
    close = [lower[name.lower()]] if name.lower() in lower else []
    close += [
        c for c in difflib.get_close_matches(name, columns, n=3, cutoff=0.6) if c not in close
    ]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(repr(c) for c in columns[:8]) + (", ..." if len(columns) > 8 else "")
    return DataError(
        f"{where}: no {kind} column {name!r}{hint} (the file has {len(columns)} columns: {shown})"
    )


def _csv_source(path: Path, sep: str, spec: tuple[Any, ...], read_bytes: int) -> Source:
    """CSV/TSV, cut into pieces of whole lines and parsed piece by piece.

    Numbers go through ``numpy.loadtxt``'s C parser, whose cost is per value: pandas'
    ``read_csv(chunksize=...)`` also pays ~0.2 ms per column on every chunk (10 s a chunk for
    a 60,000-gene matrix) and Arrow's CSV reader is slower still that wide (measured: 0.6 s
    vs 9.5 s and 4.6 s for 100 x 60,000 values). Pieces with missing values get them spelled
    ``nan`` first; Arrow parses what is left (text, true/false) and names non-numeric columns.
    A piece is about ``read_bytes / 8`` of text: the bytes, the decoded lines, float64 values
    and the float32 copy are alive together, and the allocator keeps some slack. Fields may
    not contain line breaks (expression matrices never do).
    """
    where = str(path)
    names, header_bytes = _csv_header(path, sep, where)
    plan = _plan(names, where, spec)
    index = {name: i for i, name in enumerate(names)}
    numbers = plan.features + (plan.targets if len(plan.targets) > 1 else [])
    strings = [c for c in (plan.group, plan.id) if c]
    if len(plan.targets) == 1:
        strings.append(plan.targets[0])  # the coder decides: numbers or class labels
    pieces = _line_blocks(path, max(64 << 10, read_bytes // 8, 16 * header_bytes), where)

    def blocks() -> Iterator[Raw]:
        import pandas as pd

        row0 = 0
        for piece in pieces:
            try:
                text = piece.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 text after row {row0} ({e})") from e
            values = _csv_numbers(text, piece, sep, names, [index[c] for c in numbers], where, row0)
            column = {c: _csv_strings(text, sep, index[c]) for c in strings}
            if plan.targets and len(plan.targets) > 1:
                y = pd.DataFrame(values[:, len(plan.features) :], columns=plan.targets)
            else:
                y = column.get(plan.targets[0]) if plan.targets else None
            x = values[:, : len(plan.features)]
            yield Raw(x, y, column.get(plan.group), column.get(plan.id), row0)
            row0 += len(x)

    has_groups, has_ids = plan.group is not None, plan.id is not None
    targets = list(plan.targets) or None
    return Source(where, (len(plan.features),), list(plan.features), bool(plan.targets),
                   targets, has_groups, has_ids, blocks())  # fmt: skip


# Spellings of a missing value (Arrow's and pandas' defaults), and an empty field.
_NULLS = ("", "NA", "N/A", "#N/A", "#NA", "NULL", "null", "n/a", "NaN", "-NaN", "nan", "-nan")


def _loadtxt(text: str, sep: str, columns: list[int], dtype: Any) -> np.ndarray:
    return np.loadtxt(text.splitlines(), delimiter=sep, usecols=columns,
                      dtype=dtype, comments=None, quotechar='"', ndmin=2)  # fmt: skip


def _csv_numbers(
    text: str, piece: bytes, sep: str, names: list[str], columns: list[int], where: str, row0: int
) -> np.ndarray:
    """The numeric columns of a piece of CSV lines, ``rows x len(columns)`` float64."""
    try:
        return _loadtxt(text, sep, columns, np.float64)
    except ValueError:
        pass
    s = re.escape(sep)
    tokens = "|".join(re.escape(t) for t in _NULLS[1:])
    spelled = re.sub(rf"(?m)(?:(?<={s})|^)(?:{tokens})(?={s}|\r?$)", "nan", text)
    spelled = re.sub(rf"(?m){s}(?={s}|\r?$)", f"{sep}nan", spelled)
    spelled = re.sub(rf"(?m)^(?={s})", "nan", spelled)
    try:
        return _loadtxt(spelled, sep, columns, np.float64)
    except ValueError:
        pass
    # Text or true/false in a numeric column, or a row with the wrong number of fields.
    import pyarrow as pa
    import pyarrow.csv as pacsv

    wanted = [names[i] for i in columns]
    try:
        table = pacsv.read_csv(
            pa.py_buffer(piece),
            read_options=pacsv.ReadOptions(column_names=names, block_size=max(1 << 20, len(piece))),
            parse_options=pacsv.ParseOptions(delimiter=sep),
            convert_options=pacsv.ConvertOptions(include_columns=wanted),
        )
    except pa.ArrowException as e:
        raise DataError(f"{where}: cannot parse the rows after row {row0} ({e})") from e
    bad = [f.name for f in table.schema if not _arrow_numeric(f.type)]
    if bad:
        values = table.column(bad[0]).to_pylist()
        i = next((i for i, v in enumerate(values) if v not in (None, "")), 0)
        not_numeric(where, bad, f" (e.g. {values[i]!r} in row {row0 + i})")
    return _arrow_matrix(table, list(range(len(wanted))))


def _csv_strings(text: str, sep: str, column: int) -> pd.Series:
    import pandas as pd

    s = pd.Series(_loadtxt(text, sep, [column], str)[:, 0], dtype=object)
    return s.where(~s.isin(_NULLS), None)


def _text_stream(path: Path) -> Any:
    """A binary stream of the file's text, decompressed (.gz, .bz2, .zst by Arrow; .xz)."""
    import pyarrow as pa

    if path.name.lower().endswith(".xz"):
        import lzma

        return lzma.open(path)
    return pa.input_stream(str(path), compression="detect")


def _line_blocks(path: Path, size: int, where: str) -> Iterator[bytes]:
    """Pieces of about ``size`` bytes of whole lines, after the header line."""
    import pyarrow as pa

    try:
        with _text_stream(path) as f:
            buf, header = b"", True
            while True:
                data = f.read(size)
                buf += data
                if header:
                    newline = buf.find(b"\n")
                    if newline < 0 and data:
                        continue
                    buf, header = (buf[newline + 1 :] if newline >= 0 else b""), False
                cut = buf.rfind(b"\n") + 1 if data else len(buf)
                if cut:
                    piece, buf = buf[:cut], buf[cut:]
                    yield piece
                if not data:
                    return
    except (OSError, EOFError, pa.ArrowException) as e:
        raise DataError(f"{where}: cannot read the file ({e})") from e


def _csv_header(path: Path, sep: str, where: str) -> tuple[list[str], int]:
    """Column names from the first line (empty ones named ``Unnamed: i`` as pandas does)."""

    import pyarrow as pa

    try:
        with _text_stream(path) as stream:
            head = b""
            while b"\n" not in head:
                piece = stream.read(1 << 20)
                if not piece:
                    break
                head += piece
    except (pa.ArrowException, OSError, EOFError) as e:
        raise DataError(f"{where}: cannot read the header ({e})") from e
    line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8-sig", errors="replace")
    if not line.strip():
        raise DataError(f"{where}: the file is empty (no header row)")
    names = next(csv.reader(io.StringIO(line), delimiter=sep))
    names = [n if n else f"Unnamed: {i}" for i, n in enumerate(names)]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"{where}: column names repeat: {repeated}")
    return names, len(line)


def _arrow_numeric(t: Any) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or (pa.types.is_null(t))
    )


def not_numeric(where: str, bad: list[str], example: str = "") -> None:
    shown = ", ".join(repr(c) for c in bad[:10]) + (f" and {len(bad) - 10} more" * (len(bad) > 10))
    raise DataError(
        f"{where}: feature columns are not numeric: {shown}{example}; leave them out with "
        "features=[...] (--features), or name them as group= (--group) or id_column= (--id)"
    )


def _frame_source(df: pd.DataFrame, spec: tuple[Any, ...], read_bytes: int) -> Source:
    where = "<DataFrame>"
    if not df.columns.is_unique:
        raise DataError(
            f"{where}: column names repeat: {sorted(df.columns[df.columns.duplicated()])}"
        )
    if not all(isinstance(c, str) for c in df.columns):
        df = df.rename(columns=str)
    plan = _plan(list(df.columns), where, spec)
    rows = max(1, read_bytes // (16 * len(plan.columns)))
    return plan.source(where, ((df.iloc[i : i + rows], i) for i in range(0, len(df), rows)))


def _parquet_source(path: Path, spec: tuple[Any, ...], read_bytes: int) -> Source:
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = str(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{where}: not a readable Parquet file ({e})") from e
    schema = pf.schema_arrow
    index = {
        c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)
    }
    plan = _plan([n for n in schema.names if n not in index], where, spec)
    bad = [c for c in plan.features if not _arrow_numeric(schema.field(c).type)]
    if bad:
        not_numeric(where, bad, f" (types {', '.join(str(schema.field(c).type) for c in bad[:3])})")
    rows = max(1, read_bytes // (16 * len(plan.columns)))

    def chunks() -> Iterator[tuple[pd.DataFrame, int]]:
        row0 = 0
        try:
            for batch in pf.iter_batches(batch_size=rows, columns=plan.columns):
                yield batch, row0
                row0 += batch.num_rows
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{where}: cannot read the rows after row {row0} ({e})") from e

    return plan.source(where, chunks())


# ---- arrays


class _Rows:
    """Blocks of rows of an in-memory or memory-mapped array."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        for i in range(0, self.shape[0], rows):
            yield np.asarray(self.array[i : i + rows])


class _ZipRows:
    """Blocks of rows of one array in a ``.npz``, read from the (de)compressing zip stream."""

    def __init__(self, zf: zipfile.ZipFile, member: str, where: str):
        self.zf, self.member, self.where = zf, member, where
        with zf.open(member) as f:
            self.shape, fortran, self.dtype = self._header(f)
        if fortran or self.dtype.hasobject:
            raise DataError(f"{where}: {member} is Fortran-ordered or holds Python objects")

    def _header(self, f: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
        fmt = np.lib.format
        try:
            major, _ = fmt.read_magic(f)
            return fmt.read_array_header_1_0(f) if major == 1 else fmt.read_array_header_2_0(f)
        except ValueError as e:
            raise DataError(f"{self.where}: {self.member} is not a .npy array ({e})") from e

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        with self.zf.open(self.member) as f:
            self._header(f)
            for i in range(0, self.shape[0], rows):
                k = min(rows, self.shape[0] - i)
                buf = f.read(k * row_bytes)
                if len(buf) != k * row_bytes:
                    raise DataError(f"{self.where}: {self.member} is truncated at row {i}")
                yield np.frombuffer(buf, self.dtype).reshape(k, *self.shape[1:])


def _load_npy(source: Any) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return source
    try:
        return np.load(source, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{source}: not a readable .npy file ({e})") from e


def _npz_source(path: Path, keys: tuple[str, str] | None, read_bytes: int) -> Source:
    where = str(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{where}: not a readable .npz archive ({e})") from e
    members = {n.removesuffix(".npy"): n for n in zf.namelist() if n.endswith(".npy")}
    if keys is None:
        pairs = [("X", "y"), ("features", "targets"), ("x", "y")]
        keys = next((p for p in pairs if p[0] in members), None)
        if keys is None:
            raise DataError(
                f"{where}: no features array: expected X/y or features/targets, found "
                f"{sorted(members)}; choose with keys=(FEATURES, TARGETS) (--keys X,y)"
            )
        keys = keys if keys[1] in members else (keys[0], "")
    for key in keys:
        if key and key not in members:
            raise DataError(f"{where}: no array {key!r} in the archive (it has {sorted(members)})")
    x = _ZipRows(zf, members[keys[0]], where)
    y = _ZipRows(zf, members[keys[1]], where) if keys[1] else None
    return _array_source(where, x, y, read_bytes)


def _array_source(where: str, x: Any, y: Any, read_bytes: int) -> Source:
    if len(x.shape) == 0:
        raise DataError(f"{where}: features must be an array of rows (n x ...), not a scalar")
    if y is not None and (len(y.shape) == 0 or y.shape[0] != x.shape[0]):
        raise DataError(
            f"{where}: {x.shape[0]} feature rows but the targets have shape {tuple(y.shape)}; "
            "features and targets need one row each per sample"
        )
    per_row = int(np.prod(x.shape[1:], dtype=np.int64)) * max(x.dtype.itemsize, 4) * 2
    rows = max(1, read_bytes // max(per_row, 1))

    def blocks() -> Iterator[Raw]:
        ys = None if y is None else y.blocks(rows)
        for i, xb in enumerate(x.blocks(rows)):
            yield Raw(xb, None if ys is None else next(ys), row0=i * rows)

    return Source(where, tuple(x.shape[1:]), None, y is not None, None, False, False, blocks())
