"""``python -m candle runs``: look at a study's trials while it runs, or after.

    python -m candle runs list studies/nt3 --status done --sort objective
    python -m candle runs show studies/nt3 17
    python -m candle runs export studies/nt3 --out nt3.parquet

DIR_OR_DB is a study directory (holding ``study.db``) or the database file. The database is
opened read-only, so these commands are safe while the study's driver writes it.

Exit status: 0 done; 2 bad usage, a missing database, an unknown study or trial (the message
names it); 1 another candle error (a damaged database, one newer than this candle).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from candle.errors import CandleError, ConfigError
from candle.workflow.store import TRIAL_STATUSES, Store, TrialRecord

__all__ = ["main"]

_DB_NAME = "study.db"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m candle runs",
        description="List, show and export the trials of a study (its study.db).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    db_help = f"study directory (holding {_DB_NAME}) or the database file"
    study_help = "study name, when the database holds several"

    p = sub.add_parser(
        "list",
        help="a table of the trials",
        description="One line per trial: id, key, status, attempt, objective, busy seconds "
        "and the reason a trial failed or was pruned; then the count per status.",
    )
    p.add_argument("db", metavar="DIR_OR_DB", help=db_help)
    p.add_argument(
        "--status",
        metavar="S",
        help=f"only trials of these statuses, comma-separated ({', '.join(TRIAL_STATUSES)})",
    )
    p.add_argument("--sort", choices=("trial_id", "objective"), default="trial_id")
    p.add_argument("--desc", action="store_true", help="sort descending (missing values last)")
    p.add_argument("--study", metavar="NAME", help=study_help)
    p.set_defaults(func=_list)

    p = sub.add_parser(
        "show",
        help="everything about one trial",
        description="Params, status, timings, host, last metrics, the per-epoch metrics, "
        "every attempt, artifacts and the error text of one trial.",
    )
    p.add_argument("db", metavar="DIR_OR_DB", help=db_help)
    p.add_argument("trial_id", metavar="TRIAL_ID", type=int, help="the trial's id (runs list)")
    p.set_defaults(func=_show)

    p = sub.add_parser(
        "export",
        help="write the trials as CSV or Parquet",
        description="One row per trial: its fields, param.<name> per parameter and "
        "metric.<name> per last metric (Store.to_dataframe).",
    )
    p.add_argument("db", metavar="DIR_OR_DB", help=db_help)
    p.add_argument("--out", required=True, metavar="FILE", help="a .csv or .parquet file")
    p.add_argument(
        "--format", choices=("csv", "parquet"), help="default: from the extension of --out"
    )
    p.add_argument("--study", metavar="NAME", help=study_help)
    p.set_defaults(func=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m candle runs ARGS``; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        with _open(args.db) as store:
            return args.func(store, args)
    except ConfigError as e:
        print(f"candle runs {args.command}: {e}", file=sys.stderr)
        return 2
    except CandleError as e:
        print(f"candle runs {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def _open(db: str) -> Store:
    path = Path(db)
    if path.is_dir():
        path = path / _DB_NAME
    if not path.is_file():
        raise ConfigError(
            f"no study database at {path}; give a study directory (holding {_DB_NAME}) "
            "or the database file"
        )
    return Store(path, readonly=True)


def _list(store: Store, args: argparse.Namespace) -> int:
    study_id = store.study_id(args.study)
    statuses = None
    if args.status:
        statuses = [s.strip() for s in args.status.split(",") if s.strip()]
    trials = store.trials(study_id, statuses)
    if args.sort == "objective":
        # Trials without an objective go last whichever the direction.
        scored = [t for t in trials if t.objective is not None]
        unscored = [t for t in trials if t.objective is None]
        trials = sorted(scored, key=lambda t: t.objective, reverse=args.desc) + unscored
    elif args.desc:
        trials = trials[::-1]
    rows = [
        [
            str(t.trial_id),
            t.key or "-",
            t.status,
            str(t.attempt),
            _num(t.objective),
            f"{t.busy_s:.1f}",
            t.reason or "",
        ]
        for t in trials
    ]
    header = ["id", "key", "status", "attempt", "objective", "busy_s", "reason"]
    _print_table(header, rows, right={0, 3, 4, 5})
    counts = store.counts(study_id)
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    study = store.study(study_id)
    print(f"\nstudy {study['name']!r}: {sum(counts.values())} trials ({summary or 'none'})")
    return 0


def _show(store: Store, args: argparse.Namespace) -> int:
    t: TrialRecord = store.trial(args.trial_id)
    study = store.study(t.study_id)
    print(f"trial {t.trial_id}" + (f" ({t.key})" if t.key else "") + f" of study {study['name']!r}")
    fields = [
        ("status", t.status + (f" ({t.reason})" if t.reason else "")),
        ("attempt", str(t.attempt)),
        ("segment", f"{t.segment} (epochs run)"),
        ("host", t.host or "-"),
        ("queued", _when(t.queued_at)),
        ("started", _when(t.started_at)),
        ("ended", _when(t.ended_at)),
        ("busy_s", f"{t.busy_s:.1f}"),
        ("objective", _num(t.objective)),
        ("trial_dir", t.trial_dir),
        ("resources", json.dumps(t.resources, sort_keys=True)),
    ]
    if t.extra:
        fields.append(("extra", json.dumps(t.extra, sort_keys=True)))
    for name, value in fields:
        print(f"  {name:<10} {value}")

    print("\nparams:")
    for name, value in sorted(t.params.items()):
        print(f"  {name} = {json.dumps(value)}")
    if t.metrics:
        print("\nlast metrics:")
        for name, value in sorted(t.metrics.items()):
            print(f"  {name} = {_num(value) if isinstance(value, float) else json.dumps(value)}")

    history = store.metrics(t.trial_id)
    if history:
        print("\nper-epoch metrics:")
        names = sorted({m["name"] for m in history})
        by_epoch: dict[int, dict[str, float | None]] = {}
        for m in history:
            by_epoch.setdefault(m["epoch"], {})[m["name"]] = m["value"]
        rows = [
            [str(epoch)] + [_num(values.get(n, None), missing="") for n in names]
            for epoch, values in sorted(by_epoch.items())
        ]
        _print_table(["epoch", *names], rows, right=set(range(len(names) + 1)), indent=2)

    attempts = store.attempts(t.trial_id)
    if attempts:
        print("\nattempts:")
        rows = [
            [
                str(a["attempt"]),
                str(a["segment"]),
                a["status"],
                a["reason"] or "",
                "" if a["returncode"] is None else str(a["returncode"]),
                a["host"] or "",
                _when(a["started_at"]),
                f"{a['ended_at'] - a['started_at']:.1f}",
            ]
            for a in attempts
        ]
        header = ["attempt", "segment", "status", "reason", "rc", "host", "started", "wall_s"]
        _print_table(header, rows, right={0, 1, 4, 7}, indent=2)

    artifacts = store.artifacts(t.trial_id)
    if artifacts:
        print("\nartifacts:")
        rows = [
            [a["kind"], a["path"], "" if a["size"] is None else str(a["size"]), a["checksum"] or ""]
            for a in artifacts
        ]
        _print_table(["kind", "path", "size", "checksum"], rows, right={2}, indent=2)

    if t.error:
        print("\nerror:")
        for line in t.error.rstrip().splitlines():
            print(f"  {line}")
    return 0


def _export(store: Store, args: argparse.Namespace) -> int:
    out = Path(args.out)
    fmt = args.format or {".csv": "csv", ".parquet": "parquet"}.get(out.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"cannot tell the format of --out {out} from its extension; name it .csv or "
            ".parquet, or pass --format csv|parquet"
        )
    frame = store.to_dataframe(store.study_id(args.study))
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        frame.to_csv(out, index=False)
    else:
        # Parquet wants one type per column; a parameter that is a number in one trial and a
        # string in another (a choice of 32 or "auto") is written as text.
        from pandas.api.types import is_object_dtype

        for column in [c for c in frame.columns if is_object_dtype(frame[c])]:
            kinds = {type(v) for v in frame[column] if v is not None}
            if len(kinds) > 1:
                frame[column] = [None if v is None else str(v) for v in frame[column]]
        frame.to_parquet(out, index=False)
    print(f"wrote {len(frame)} trials, {frame.shape[1]} columns to {out}")
    return 0


def _num(value: Any, missing: str = "-") -> str:
    if value is None:
        return missing
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _print_table(
    header: list[str], rows: list[list[str]], *, right: set[int], indent: int = 0
) -> None:
    """Plain text columns, numbers (the ``right`` columns) right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print(" " * indent + "  ".join(cells).rstrip())
