"""``python -m candle data``: pack, verify, inspect and split shard datasets.

    python -m candle data pack expression.csv --out data/nt3 --target label --group cell_line
    python -m candle data verify data/nt3
    python -m candle data info data/nt3
    python -m candle data split data/nt3 --kind stratified --seed 0

Exit status: 0 done; 1 ``verify`` found problems (one line each) or another candle error;
2 bad input or usage (a ``DataError``: the message names the file and the problem).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from candle.errors import CandleError, DataError

__all__ = ["main"]

_DESCRIPTION = """\
Shard datasets: a directory of HDF5 shards plus manifest.json (schema, rows, byte sizes and
xxh3 checksums of every shard, and a dataset checksum that runs record as provenance)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m candle data",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "pack",
        help="convert CSV/TSV/Parquet/NumPy data into shards",
        description="Convert a table or array file into a shard dataset. The input is streamed, "
        "so files larger than memory pack; wide tables (gene-expression matrices with tens of "
        "thousands of columns) are read a few rows at a time.",
    )
    p.add_argument("input", help=".csv/.tsv (optionally .gz/.bz2/.xz), .parquet, .npy or .npz")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset directory to write")
    p.add_argument("--target", metavar="COL", help="target column (tables)")
    p.add_argument("--group", metavar="COL", help="group column: cell line, drug, study")
    p.add_argument("--id", dest="id_column", metavar="COL", help="sample id column")
    p.add_argument(
        "--features",
        metavar="COLS",
        help="feature columns, comma-separated, or @FILE with one name per line "
        "(default: every column but the target, group and id)",
    )
    p.add_argument("--shard-size", default="64MB", help="bytes per shard (default 64MB)")
    p.add_argument("--dtype", default="float32", help="stored feature dtype (default float32)")
    p.add_argument(
        "--task",
        default="auto",
        choices=("auto", "classification", "regression"),
        help="auto: text labels are classes, numbers are regression targets",
    )
    p.add_argument("--targets", metavar="NPY", help="targets for .npy input (another .npy)")
    p.add_argument("--keys", metavar="X,Y", help=".npz arrays of features and targets")
    p.add_argument("--read-size", default="64MB", help="input held in memory at once")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset in --out")
    p.set_defaults(func=_pack)

    p = sub.add_parser(
        "verify",
        help="check shards against the manifest",
        description="Check every shard's existence, size, checksum, HDF5 readability, rows, "
        "dtypes and shapes, and the dataset checksum. Prints one line per problem; exit "
        "status 1 if there is any.",
    )
    p.add_argument("dir", help="dataset directory")
    p.add_argument("--no-checksums", action="store_true", help="skip reading every byte")
    p.set_defaults(func=_verify)

    p = sub.add_parser(
        "info",
        help="describe a dataset",
        description="Rows, shards, schema, class and group counts, checksum, size, NaN counts.",
    )
    p.add_argument("dir", help="dataset directory (or URL: manifest only)")
    p.add_argument("--json", action="store_true", help="print the manifest summary as JSON")
    p.set_defaults(func=_info)

    p = sub.add_parser(
        "split",
        help="make and save a train/val/test split",
        description="Save index files under DIR/splits/ that every run reuses.",
    )
    p.add_argument("dir", help="dataset directory")
    p.add_argument("--kind", default="random", choices=("random", "stratified", "grouped"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fractions", type=float, nargs="+", default=[0.8, 0.1, 0.1], help="train [val] test"
    )
    p.add_argument("--group-column", metavar="COL", help="grouped: the dataset's group column")
    p.add_argument("--name", help="split name (default: from the dataset)")
    p.add_argument("--index", type=int, default=0, help="split number (files <name>_split_<N>)")
    p.add_argument("--overwrite", action="store_true", help="replace a different saved split")
    p.set_defaults(func=_split)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m candle data ARGS``; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except DataError as e:
        print(f"candle data {args.command}: {e}", file=sys.stderr)
        return 2
    except CandleError as e:
        print(f"candle data {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def _pack(args: argparse.Namespace) -> int:
    from candle.data.shards import pack

    features = None
    if args.features:
        if args.features.startswith("@"):
            path = Path(args.features[1:])
            try:
                features = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
            except OSError as e:
                raise DataError(f"{path}: cannot read the --features file ({e})") from e
        else:
            features = [c.strip() for c in args.features.split(",") if c.strip()]
    keys = None
    if args.keys:
        parts = [k.strip() for k in args.keys.split(",")]
        keys = (parts[0], parts[1] if len(parts) > 1 else "")
    m = pack(
        args.input,
        args.out,
        target=args.target,
        group=args.group,
        id_column=args.id_column,
        features=features,
        shard_size=args.shard_size,
        dtype=args.dtype,
        task=args.task,
        targets=args.targets,
        keys=keys,
        read_size=args.read_size,
        overwrite=args.overwrite,
    )
    print(
        f"packed {m.rows:,} rows into {len(m.shards)} shards ({_size(m.total_bytes)}) in "
        f"{args.out}\nchecksum {m.checksum}"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from candle.data.dataset import verify
    from candle.data.manifest import Manifest

    problems = verify(args.dir, checksums=not args.no_checksums)
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    m = Manifest.read(args.dir)
    print(f"OK {args.dir}: {m.rows:,} rows in {len(m.shards)} shards, {m.checksum}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from candle.data.manifest import Manifest, is_url

    m = Manifest.read(args.dir)
    counts = {} if is_url(args.dir) else _counts(args.dir, m)
    if args.json:
        summary = m.to_dict()
        summary.pop("shards")
        summary["shards"] = len(m.shards)
        summary["bytes"] = m.total_bytes
        summary["counts"] = counts
        print(json.dumps(summary, indent=1, default=str))
        return 0
    rows = [s.rows for s in m.shards]
    feats, names = m.schema["features"], m.feature_names or []
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} names)" if len(names) > 5 else "")
    lines = [
        ("dataset", str(args.dir)),
        ("source", f"{m.source} (packed {m.created})"),
        ("rows", f"{m.rows:,} in {len(rows)} shards ({min(rows):,} to {max(rows):,} rows each)"),
        ("size", _disk_size(args.dir, m)),
        ("checksum", m.checksum),
        ("features", f"{' x '.join(map(str, feats['shape'])) or 'scalar'} {feats['dtype']}"),
    ]
    if names:
        lines.append(("", shown))
    t = m.targets
    if t is None:
        lines.append(("targets", "none"))
    else:
        what = f"{', '.join(t.get('names') or ['targets'])}: {t['dtype']} {t.get('task', '')}"
        if t.get("classes") is not None:
            what += f", {len(t['classes'])} classes"
        lines.append(("targets", what))
        if "targets" in counts:
            lines.append(("", _shown_counts(counts["targets"])))
    if m.groups is not None:
        n = len(counts.get("groups", {}))
        lines.append(("groups", f"{m.groups.get('name')}" + (f": {n} groups" if n else "")))
        if counts.get("groups"):
            lines.append(("", _shown_counts(counts["groups"])))
    if m.ids is not None:
        lines.append(("ids", str(m.ids.get("name"))))
    nan = m.nan_count
    lines.append(("NaN", f"features {nan.get('features', 0):,}, targets {nan.get('targets', 0):,}"))
    if "error" in counts:
        lines.append(("counts", f"unavailable: {counts['error']}"))
    for key, value in lines:
        print(f"{key:<9} {value}")
    return 0


def _counts(directory: str, m: Any) -> dict[str, Any]:
    """Class and group counts, read from the shards (targets and groups only)."""
    from candle.data.dataset import ShardDataset

    out: dict[str, Any] = {}
    try:
        ds = ShardDataset(directory)
        try:
            t = m.targets
            if t is not None and t.get("task") == "classification" and not t["shape"]:
                values, n = np.unique(ds.targets(), return_counts=True)
                classes = t.get("classes")
                labels = [classes[v] if isinstance(classes[0], str) else v for v in values.tolist()]
                out["targets"] = dict(zip(map(str, labels), n.tolist(), strict=True))
            groups = ds.groups()
            if groups is not None:
                values, n = np.unique(groups.astype(str), return_counts=True)
                order = np.argsort(-n, kind="stable")
                out["groups"] = {str(values[i]): int(n[i]) for i in order}
        finally:
            ds.close()
    except DataError as e:
        out["error"] = str(e)
    return out


def _disk_size(directory: str, m: Any) -> str:
    from candle.data.manifest import is_url

    if is_url(directory):
        return f"{_size(m.total_bytes)} (manifest)"
    paths = [Path(directory) / s.path for s in m.shards]
    on_disk = sum(p.stat().st_size for p in paths if p.is_file())
    shown = f"{_size(on_disk)} on disk"
    return (
        shown if on_disk == m.total_bytes else f"{shown} (the manifest says {_size(m.total_bytes)})"
    )


def _shown_counts(counts: dict[str, int], limit: int = 10) -> str:
    items = [f"{k} ({v:,})" for k, v in list(counts.items())[:limit]]
    return ", ".join(items) + (f", ... ({len(counts)} in all)" if len(counts) > limit else "")


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _split(args: argparse.Namespace) -> int:
    try:
        from candle.data.splits import make_split
    except ImportError as e:
        raise CandleError(f"splits are not available in this candle ({e})") from e
    parts = make_split(
        args.dir,
        kind=args.kind,
        seed=args.seed,
        fractions=tuple(args.fractions),
        group_column=args.group_column,
        name=args.name,
        index=args.index,
        overwrite=args.overwrite,
    )
    sizes = ", ".join(f"{k} {len(v):,}" for k, v in parts.items())
    print(f"{args.kind} split of {args.dir} (seed {args.seed}): {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
