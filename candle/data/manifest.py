"""The JSON manifest of a shard dataset: what the shards hold and how to check them.

A dataset is a directory ``DIR`` of HDF5 shards plus ``DIR/manifest.json``::

    {"format": "candle-shards", "version": 1,
     "schema": {"features": {"dtype": "float32", "shape": [5000], "names": ["TP53", ...]},
                "targets": {"dtype": "int64", "shape": [], "names": ["label"],
                            "task": "classification", "classes": ["normal", "tumor"]},
                "groups": {"name": "cell_line", "dtype": "str"},     # or null
                "ids": {"name": "sample", "dtype": "str"}},          # or null
     "rows": 1200,
     "shards": [{"path": "shard-00000.h5", "rows": 800, "bytes": 16411234,
                 "checksum": "xxh3_128:..."}, ...],
     "checksum": "xxh3_128:...",         # the dataset's: schema + every shard's checksum
     "nan_count": {"features": 0, "targets": 0},
     "created": "2026-01-01T00:00:00+00:00", "source": "expression.csv"}

``shape`` is per sample (``[]`` for a scalar target). The dataset checksum is what runs record
as provenance: two datasets with the same checksum hold the same bytes under the same schema.
Shard paths are relative and must stay inside ``DIR`` (no absolute paths, no ``..``), so a
manifest cannot make a reader open files elsewhere.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from candle.checkpoint import atomic_write_text
from candle.data._hash import ALGORITHM, combine_checksums
from candle.errors import ShardError

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "VERSION",
    "Manifest",
    "ShardInfo",
    "check_shard_path",
    "dataset_checksum",
    "is_url",
    "parse_size",
]

FORMAT = "candle-shards"
VERSION = 1
MANIFEST_NAME = "manifest.json"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*$")
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(size: int | str) -> int:
    """Bytes in ``"64MB"`` (10^6), ``"512KiB"`` (2^10), ``"1G"`` (2^30) or a plain integer."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        m = _SIZE_RE.match(str(size))
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise ValueError(
                f"size {size!r} is not understood; write a number of bytes or a number with a "
                "unit such as 512KiB, 64MB, 1GB (KB/MB/GB are powers of 10, KiB/MiB/GiB of 2)"
            )
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"size {size!r} must be positive")
    return value


def is_url(source: str | os.PathLike[str]) -> bool:
    """True for fsspec URLs such as ``http://host/ds`` or ``s3://bucket/ds``; False for paths."""
    return isinstance(source, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", source) is not None


def check_shard_path(path: Any, where: str) -> str:
    """Return ``path`` if it is a relative path inside the dataset directory, else raise."""
    if not isinstance(path, str) or not path:
        raise ShardError(f"{where}: shard path {path!r} must be a non-empty string")
    p = PurePosixPath(path)
    if p.is_absolute() or "\\" in path or re.match(r"^[a-zA-Z]:", path) or is_url(path):
        raise ShardError(
            f"{where}: shard path {path!r} is absolute; shard paths must be relative to the "
            "dataset directory (e.g. 'shard-00000.h5')"
        )
    if any(part in ("..", ".", "") for part in path.split("/")):
        raise ShardError(
            f"{where}: shard path {path!r} points outside the dataset directory (or has '.'/'..' "
            "or empty parts); shard paths must be plain relative names such as 'shard-00000.h5'"
        )
    return path


def dataset_checksum(schema: dict[str, Any], shard_checksums: list[str]) -> str:
    """The dataset checksum: the canonical JSON of the schema, then each shard's, in order."""
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return combine_checksums([f"{FORMAT}/{VERSION}", canonical, *shard_checksums])


@dataclass(frozen=True)
class ShardInfo:
    """One shard file as the manifest lists it."""

    path: str
    rows: int
    bytes: int
    checksum: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": self.rows,
            "bytes": self.bytes,
            "checksum": self.checksum,
        }


@dataclass
class Manifest:
    """A parsed, validated ``manifest.json``. Build with :meth:`read` or :meth:`from_dict`."""

    schema: dict[str, Any]
    shards: list[ShardInfo]
    checksum: str = ""
    created: str = ""
    source: str = ""
    nan_count: dict[str, int] = field(default_factory=lambda: {"features": 0, "targets": 0})

    # ------------------------------------------------------------------ schema accessors
    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.schema["features"]["shape"])

    @property
    def feature_dtype(self) -> str:
        return self.schema["features"]["dtype"]

    @property
    def feature_names(self) -> list[str] | None:
        return self.schema["features"].get("names")

    @property
    def targets(self) -> dict[str, Any] | None:
        """The target schema (``dtype``, ``shape``, ``names``, ``task``, ``classes``) or None."""
        return self.schema.get("targets")

    @property
    def classes(self) -> list[Any] | None:
        return (self.targets or {}).get("classes")

    @property
    def groups(self) -> dict[str, Any] | None:
        return self.schema.get("groups")

    @property
    def ids(self) -> dict[str, Any] | None:
        return self.schema.get("ids")

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def expected_checksum(self) -> str:
        """The dataset checksum recomputed from the schema and the shard checksums listed."""
        return dataset_checksum(self.schema, [s.checksum for s in self.shards])

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "schema": self.schema,
            "rows": self.rows,
            "shards": [s.to_dict() for s in self.shards],
            "checksum": self.checksum or self.expected_checksum(),
            "nan_count": self.nan_count,
            "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": self.source,
        }

    def write(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``directory/manifest.json`` atomically (readers never see half a manifest)."""
        data = self.to_dict()
        self.checksum, self.created = data["checksum"], data["created"]
        text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
        return atomic_write_text(Path(directory) / MANIFEST_NAME, text)

    @classmethod
    def read(cls, source: str | os.PathLike[str]) -> Manifest:
        """Read and validate the manifest of a dataset directory or URL (or a manifest path)."""
        if is_url(source):
            import fsspec

            where = f"{str(source).rstrip('/')}/{MANIFEST_NAME}"
            try:
                with fsspec.open(where, "rb") as f:
                    raw = f.read()
            except (OSError, ValueError) as e:
                raise ShardError(f"{where}: cannot read the manifest ({e})") from e
        else:
            path = Path(source)
            if path.is_dir() or path.name != MANIFEST_NAME:
                path = path / MANIFEST_NAME
            where = str(path)
            if not path.parent.is_dir():
                raise ShardError(f"{path.parent}: dataset directory does not exist")
            if not path.is_file():
                raise ShardError(
                    f"{where}: no manifest; is this a dataset made by `python -m candle data "
                    "pack`? (a pack that did not finish leaves no manifest)"
                )
            raw = path.read_bytes()
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ShardError(f"{where}: manifest is not valid JSON ({e})") from e
        return cls.from_dict(data, where)

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_NAME) -> Manifest:
        """Validate a decoded manifest; ``where`` names the file in error messages."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ShardError(
                f"{where}: not a candle shard manifest (format {got!r}, not {FORMAT!r})"
            )
        if data.get("version") != VERSION:
            raise ShardError(
                f"{where}: manifest version {data.get('version')!r} is not supported (this candle "
                f"reads version {VERSION}); upgrade candle or re-pack the data"
            )
        for key, kind in (("schema", dict), ("shards", list), ("rows", int), ("checksum", str)):
            if not isinstance(data.get(key), kind):
                raise ShardError(f"{where}: key {key!r} is missing or not a {kind.__name__}")
        schema = data["schema"]
        _check_schema(schema, where)
        shards = []
        for i, entry in enumerate(data["shards"]):
            at = f"{where}: shards[{i}]"
            if not isinstance(entry, dict):
                raise ShardError(f"{at} is not an object")
            path = check_shard_path(entry.get("path"), at)
            for key in ("rows", "bytes"):
                value = entry.get(key)
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ShardError(
                        f"{at} ({path}): {key!r} must be an integer >= 0, got {value!r}"
                    )
            checksum = entry.get("checksum")
            if not isinstance(checksum, str) or not checksum.startswith(f"{ALGORITHM}:"):
                raise ShardError(f"{at} ({path}): checksum {checksum!r} is not '{ALGORITHM}:<hex>'")
            shards.append(ShardInfo(path, entry["rows"], entry["bytes"], checksum))
        paths = [s.path for s in shards]
        if len(set(paths)) != len(paths):
            raise ShardError(f"{where}: a shard is listed twice")
        total = sum(s.rows for s in shards)
        if data["rows"] != total:
            raise ShardError(
                f"{where}: 'rows' is {data['rows']} but the shards' rows add up to {total}"
            )
        nan_count = data.get("nan_count") or {"features": 0, "targets": 0}
        return cls(
            schema=schema,
            shards=shards,
            checksum=data["checksum"],
            created=str(data.get("created", "")),
            source=str(data.get("source", "")),
            nan_count=nan_count,
        )


def _check_schema(schema: dict[str, Any], where: str) -> None:
    feats = schema.get("features")
    if not isinstance(feats, dict):
        raise ShardError(f"{where}: schema has no 'features' entry")
    for name in ("features", "targets"):
        part = schema.get(name)
        if part is None and name == "targets":
            continue
        if not isinstance(part, dict):
            raise ShardError(f"{where}: schema[{name!r}] must be an object or null")
        if not isinstance(part.get("dtype"), str):
            raise ShardError(f"{where}: schema[{name!r}]['dtype'] is missing")
        shape = part.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ShardError(f"{where}: schema[{name!r}]['shape'] must be a list of sizes")
    for name in ("groups", "ids"):
        if schema.get(name) is not None and not isinstance(schema[name], dict):
            raise ShardError(f"{where}: schema[{name!r}] must be an object or null")
