"""The study store: one SQLite database per study (``<study_dir>/study.db``).

Only the study's driver process writes it (one writer per store: a SQLite file shared by many
writing processes on a cluster file system is the failure optuna users keep reporting). Any
number of readers -- ``python -m candle runs``, a notebook, :meth:`Store.to_dataframe` -- open
it with ``Store(path, readonly=True)`` while the driver writes: the journal is a WAL, so a
reader sees the last committed state and neither side waits for the other.

Tables::

    meta        key -> value ("schema_version")
    studies     name, config, provenance, directory, created_at, state (sampler/driver JSON)
    trials      one row per trial: params, status, attempt, segment, timings, objective, ...
    attempts    one row per process launch of a trial (the fault history)
    metrics     (trial_id, epoch, name) -> value, from the trial's history
    artifacts   (trial_id, kind, path) -> checksum, size

JSON columns are written with ``sort_keys=True`` and ``allow_nan=True``: a NaN or infinite
value inside params/metrics/extra is kept as the (non-standard) JSON tokens ``NaN`` and
``Infinity``, which Python's ``json`` reads back. In the REAL columns (``objective``,
``metrics.value``) SQLite stores +-inf as is and turns NaN into NULL, read back as ``None``.

Every public write method commits by itself; inside ``with store.transaction():`` they commit
once, at the end, and an exception rolls all of them back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import numbers
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from candle.errors import CandleError, ConfigError

if TYPE_CHECKING:
    import pandas

__all__ = ["SCHEMA_VERSION", "TRIAL_STATUSES", "Store", "TrialRecord"]

SCHEMA_VERSION = 1
TRIAL_STATUSES = ("queued", "running", "done", "failed", "pruned")

_BUSY_TIMEOUT_S = 30.0

# The current schema; a new database gets it directly. An older database reaches it through
# _MIGRATIONS, and the tests check that both paths give the same tables.
_SCHEMA = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE studies (
    study_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,
    provenance TEXT NOT NULL,
    directory TEXT NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE trials (
    trial_id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(study_id) ON DELETE CASCADE,
    key TEXT,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    segment INTEGER NOT NULL DEFAULT 0,
    trial_dir TEXT NOT NULL,
    resources TEXT NOT NULL,
    host TEXT,
    queued_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    busy_s REAL NOT NULL DEFAULT 0,
    objective REAL,
    metrics TEXT NOT NULL DEFAULT '{}',
    reason TEXT,
    error TEXT,
    extra TEXT NOT NULL DEFAULT '{}',
    UNIQUE (study_id, key)
);
CREATE INDEX trials_study_status ON trials(study_id, status);
CREATE TABLE attempts (
    attempt_id INTEGER PRIMARY KEY,
    trial_id INTEGER NOT NULL REFERENCES trials(trial_id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    returncode INTEGER,
    host TEXT,
    started_at REAL NOT NULL,
    ended_at REAL NOT NULL
);
CREATE INDEX attempts_trial ON attempts(trial_id);
CREATE TABLE metrics (
    trial_id INTEGER NOT NULL REFERENCES trials(trial_id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (trial_id, epoch, name)
) WITHOUT ROWID;
CREATE TABLE artifacts (
    artifact_id INTEGER PRIMARY KEY,
    trial_id INTEGER NOT NULL REFERENCES trials(trial_id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    checksum TEXT,
    size INTEGER,
    created_at REAL NOT NULL,
    UNIQUE (trial_id, kind, path)
);
"""


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    # Version 0 kept no sampler data per trial; successive halving needs the rung.
    conn.execute("ALTER TABLE trials ADD COLUMN extra TEXT NOT NULL DEFAULT '{}'")


# _MIGRATIONS[v] takes a database from version v to v + 1, inside the opening transaction.
_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_0_to_1]
assert len(_MIGRATIONS) == SCHEMA_VERSION

# update_trial's fields (also the column names) -> how a value is stored
_UPDATABLE: dict[str, Callable[[Any], Any] | None] = {
    "status": None,
    "attempt": int,  # int() and float() also turn numpy scalars into what sqlite3 binds
    "segment": int,
    "host": None,
    "started_at": float,
    "ended_at": float,
    "busy_s": float,
    "objective": float,
    "metrics": None,  # JSON
    "reason": None,
    "error": None,
    "extra": None,  # JSON
    "trial_dir": os.fspath,
}


@dataclass
class TrialRecord:
    """One row of the ``trials`` table, JSON columns decoded."""

    trial_id: int
    study_id: int
    key: str | None  # the caller's identity of the trial, unique per study, e.g. "grid-3"
    params: dict[str, Any]
    status: str  # one of TRIAL_STATUSES
    attempt: int  # attempts started so far (0 before the first)
    segment: int  # epoch the trial has been run up to (0: none yet)
    trial_dir: str
    resources: dict[str, Any]
    host: str | None
    queued_at: float  # unix time
    started_at: float | None
    ended_at: float | None
    busy_s: float  # wall seconds summed over all attempts and segments
    objective: float | None
    metrics: dict[str, Any]  # the last metrics reported
    reason: str | None  # why failed/pruned: "timeout", "killed by SIGKILL", "nan objective"
    error: str | None  # error text and the tail of the trial log
    extra: dict[str, Any]  # free-form JSON for samplers (rung, sampler info)


_TRIAL_FIELDS = tuple(f.name for f in dataclasses.fields(TrialRecord))
_TRIAL_COLUMNS = ", ".join(_TRIAL_FIELDS)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{value!r} (type {type(value).__name__})")


def _dumps(value: Any, what: str) -> str:
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a dict, got {type(value).__name__}: {value!r}")
    try:
        return json.dumps(value, sort_keys=True, allow_nan=True, default=_json_default)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"{what} must hold JSON values (numbers, strings, bools, None, lists, dicts), but {e}"
        ) from None


def _check_status(status: Any) -> None:
    if status not in TRIAL_STATUSES:
        raise ConfigError(f"status must be one of {', '.join(TRIAL_STATUSES)}; got {status!r}")


class Store:
    """A study database. ``Store(path)`` creates or migrates it; ``readonly=True`` opens an
    existing one for reading (a missing file is an error) while another process writes."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        self._depth = 0  # transaction nesting
        self._conn: sqlite3.Connection | None = None
        if readonly and not self.path.is_file():
            raise CandleError(f"no study database at {self.path}")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # mode=ro: a reader cannot write, not even by accident, nor create the file.
            target = self.path.resolve().as_uri() + "?mode=ro" if readonly else str(self.path)
            conn = sqlite3.connect(
                target, uri=readonly, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise CandleError(f"cannot open study database {self.path}: {e}") from e
        self._conn = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            if readonly:
                self._check_version(self._schema_version())
            else:
                # WAL: readers never block the writer nor see a half-written transaction.
                # synchronous=NORMAL: a commit does not fsync (the WAL is synced at
                # checkpoints); a power cut may lose the last commits, never corrupt the file.
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
                self._create_or_migrate()
        except sqlite3.Error as e:
            self.close()
            raise CandleError(f"cannot open study database {self.path}: {e}") from e
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------------------- plumbing

    def _schema_version(self) -> int | None:
        """The ``meta`` table's schema version; None for an empty database."""
        conn = self._connection()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            if tables:
                raise CandleError(
                    f"{self.path} is not a candle study database: it has tables "
                    f"{', '.join(sorted(tables))} but no 'meta' table"
                )
            return None
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            raise CandleError(f"{self.path}: the meta table has no schema_version")
        return int(row[0])

    def _check_version(self, version: int | None) -> None:
        if version is None:
            raise CandleError(f"{self.path} is an empty database, not a candle study database")
        if version > SCHEMA_VERSION:
            raise CandleError(
                f"{self.path} has schema version {version}, but this candle reads versions up "
                f"to {SCHEMA_VERSION}; upgrade candle to open it"
            )
        if version < SCHEMA_VERSION and self.readonly:
            raise CandleError(
                f"{self.path} has schema version {version}, older than this candle's "
                f"{SCHEMA_VERSION}; open it once read-write (Store(path)) to migrate it"
            )

    def _create_or_migrate(self) -> None:
        with self.transaction():
            conn = self._connection()
            version = self._schema_version()
            if version is None:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                return
            self._check_version(version)
            for v in range(version, SCHEMA_VERSION):
                _MIGRATIONS[v](conn)
            if version != SCHEMA_VERSION:
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION),),
                )

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise CandleError(f"the store {self.path} is closed")
        return self._conn

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            cursor = self._connection().execute(sql, args)
            try:
                return cursor.fetchall()
            finally:
                cursor.close()

    def _write(self, sql: str, args: Sequence[Any] | dict[str, Any], missing: str) -> int:
        """Run one write statement in its own transaction (or the caller's); returns the
        row id it inserted. A foreign-key failure, or an UPDATE that matched no row, means
        that ``missing`` ("trial 3", "study 1") is not in the database: a ConfigError."""
        with self.transaction():
            try:
                cursor = self._connection().execute(sql, args)
            except sqlite3.IntegrityError as e:
                if "FOREIGN KEY" in str(e):
                    raise ConfigError(f"no {missing} in {self.path}") from None
                raise
            if cursor.rowcount == 0:
                raise ConfigError(f"no {missing} in {self.path}")
            return int(cursor.lastrowid or 0)

    def close(self) -> None:
        """Close the connection (idempotent). An open transaction is rolled back."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "read-write"
        return f"Store({str(self.path)!r}, {mode})"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: they commit once when the outermost block ends, and an exception
        rolls back everything written in the block. A nested block is a savepoint: its
        exception undoes only its own writes (if the outer block catches it)."""
        if self.readonly:
            raise CandleError(f"the store {self.path} is open read-only; it cannot be written")
        with self._lock:
            conn = self._connection()
            savepoint = f"s{self._depth}" if self._depth else None  # from a counter, not input
            try:
                conn.execute(f"SAVEPOINT {savepoint}" if savepoint else "BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise CandleError(
                    f"cannot write {self.path}: {e}. A study database has one writer, the "
                    "study's driver; is another driver running on this study?"
                ) from e
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if savepoint:
                    conn.execute(f"ROLLBACK TO {savepoint}")
                    conn.execute(f"RELEASE {savepoint}")
                else:
                    conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            try:
                conn.execute(f"RELEASE {savepoint}" if savepoint else "COMMIT")
            except sqlite3.Error as e:
                if not savepoint:
                    conn.execute("ROLLBACK")
                raise CandleError(f"cannot commit to {self.path}: {e}") from e

    # ------------------------------------------------------------------------------ studies

    def create_study(
        self, name: str, config: dict, provenance: dict, directory: str | os.PathLike
    ) -> int:
        """Add a study; returns its id. A study of that name already there is a ConfigError."""
        args = (
            name,
            _dumps(config, f"study {name!r} config"),
            _dumps(provenance, f"study {name!r} provenance"),
            os.fspath(directory),
            time.time(),
        )
        sql = "INSERT INTO studies (name, config, provenance, directory, created_at) "
        try:
            return self._write(sql + "VALUES (?, ?, ?, ?, ?)", args, "study")
        except sqlite3.IntegrityError:  # the name is UNIQUE
            raise ConfigError(
                f"a study named {name!r} is already in {self.path}; pick another name or "
                "resume that study"
            ) from None

    def study_id(self, name: str | None = None) -> int:
        """The id of the study called ``name``; with no name, of the database's only study."""
        rows = self._rows("SELECT study_id, name FROM studies ORDER BY study_id")
        if name is None:
            if len(rows) != 1:
                names = ", ".join(repr(r[1]) for r in rows) or "none"
                raise ConfigError(
                    f"{self.path} holds {len(rows)} studies ({names}); name the one you mean"
                )
            return int(rows[0][0])
        for study_id, study_name in rows:
            if study_name == name:
                return int(study_id)
        names = ", ".join(repr(r[1]) for r in rows) or "none"
        raise ConfigError(f"no study named {name!r} in {self.path} (studies: {names})")

    def study(self, study_id: int) -> dict[str, Any]:
        """``study_id, name, config, provenance, directory, created_at, state``."""
        rows = self._rows(
            "SELECT study_id, name, config, provenance, directory, created_at, state "
            "FROM studies WHERE study_id = ?",
            (study_id,),
        )
        if not rows:
            raise ConfigError(f"no study with id {study_id} in {self.path}")
        return _study_dict(rows[0])

    def studies(self) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT study_id, name, config, provenance, directory, created_at, state "
            "FROM studies ORDER BY study_id"
        )
        return [_study_dict(r) for r in rows]

    def set_study_state(self, study_id: int, state: dict) -> None:
        """Replace the study's state (the sampler's and driver's JSON)."""
        state_json = _dumps(state, f"study {study_id} state")
        sql = "UPDATE studies SET state = ? WHERE study_id = ?"
        self._write(sql, (state_json, study_id), f"study with id {study_id}")

    # ------------------------------------------------------------------------------- trials

    def add_trial(
        self,
        study_id: int,
        params: dict,
        *,
        trial_dir: str | os.PathLike,
        resources: dict,
        key: str | None = None,
        extra: dict | None = None,
    ) -> int:
        """Add a queued trial; returns its id. ``key`` is unique within the study."""
        row = (
            study_id,
            key,
            _dumps(params, f"trial {key!r} params"),
            os.fspath(trial_dir),
            _dumps(resources, f"trial {key!r} resources"),
            time.time(),
            _dumps(extra or {}, f"trial {key!r} extra"),
        )
        sql = (
            "INSERT INTO trials (study_id, key, params, status, trial_dir, resources, "
            "queued_at, extra) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)"
        )
        try:
            return self._write(sql, row, f"study with id {study_id}")
        except sqlite3.IntegrityError:  # UNIQUE (study_id, key)
            raise ConfigError(
                f"study {study_id} in {self.path} already has a trial with key {key!r}"
            ) from None

    def update_trial(self, trial_id: int, **fields: Any) -> None:
        """Set fields of a trial in one statement. Fields: status, attempt, segment, host,
        started_at, ended_at, busy_s (absolute), add_busy_s (added to busy_s), objective,
        metrics, reason, error, extra (replaced whole), trial_dir. An unknown field or
        status is a ConfigError (a ValueError)."""
        sets: list[str] = []
        args: list[Any] = []
        for name, value in fields.items():
            if name == "add_busy_s":
                if "busy_s" in fields:
                    raise ConfigError("update_trial takes busy_s or add_busy_s, not both")
                sets.append("busy_s = busy_s + ?")
                args.append(float(value))
                continue
            if name not in _UPDATABLE:
                known = ", ".join([*_UPDATABLE, "add_busy_s"])
                raise ConfigError(f"update_trial: unknown field {name!r}; fields: {known}")
            if name == "status":
                _check_status(value)
            if name in ("metrics", "extra"):
                value = _dumps(value, f"trial {trial_id} {name}")
            elif value is not None and (convert := _UPDATABLE[name]) is not None:
                value = convert(value)
            sets.append(f"{name} = ?")  # a name from _UPDATABLE, never from the caller
            args.append(value)
        if not sets:
            return
        sql = f"UPDATE trials SET {', '.join(sets)} WHERE trial_id = ?"
        self._write(sql, (*args, trial_id), f"trial with id {trial_id}")

    def trial(self, trial_id: int) -> TrialRecord:
        rows = self._rows(f"SELECT {_TRIAL_COLUMNS} FROM trials WHERE trial_id = ?", (trial_id,))
        if not rows:
            raise ConfigError(f"no trial with id {trial_id} in {self.path}")
        return _trial_record(rows[0])

    def trial_by_key(self, study_id: int, key: str) -> TrialRecord | None:
        rows = self._rows(
            f"SELECT {_TRIAL_COLUMNS} FROM trials WHERE study_id = ? AND key = ?", (study_id, key)
        )
        return _trial_record(rows[0]) if rows else None

    def trials(
        self, study_id: int | None = None, status: str | Sequence[str] | None = None
    ) -> list[TrialRecord]:
        """Trials ordered by id: of one study or of all, of some statuses or of all."""
        where: list[str] = []
        args: list[Any] = []
        if study_id is not None:
            where.append("study_id = ?")
            args.append(study_id)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            for s in statuses:
                _check_status(s)
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            args.extend(statuses)
        sql = f"SELECT {_TRIAL_COLUMNS} FROM trials"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_trial_record(r) for r in self._rows(sql + " ORDER BY trial_id", args)]

    def counts(self, study_id: int) -> dict[str, int]:
        """Trials per status; every status present (0 if none)."""
        counts = dict.fromkeys(TRIAL_STATUSES, 0)
        rows = self._rows(
            "SELECT status, COUNT(*) FROM trials WHERE study_id = ? GROUP BY status", (study_id,)
        )
        for status, n in rows:
            counts[status] = int(n)
        return counts

    # ----------------------------------------------------------------------------- attempts

    def add_attempt(
        self,
        trial_id: int,
        attempt: int,
        *,
        status: str,
        reason: str | None,
        returncode: int | None,
        host: str | None,
        started_at: float,
        ended_at: float,
        segment: int = 0,
    ) -> None:
        """Record one process launch of a trial and how it ended. ``status`` is how the
        launch ended, free text (the executor's outcome: "done", "paused", "timeout", ...),
        not one of TRIAL_STATUSES."""
        if not isinstance(status, str) or not status:
            raise ConfigError(f"an attempt's status must be a non-empty string; got {status!r}")
        args = (trial_id, attempt, segment, status, reason, returncode, host, started_at, ended_at)
        sql = (
            "INSERT INTO attempts (trial_id, attempt, segment, status, reason, returncode, host, "
            "started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self._write(sql, args, f"trial with id {trial_id}")

    def attempts(self, trial_id: int) -> list[dict[str, Any]]:
        """``attempt, segment, status, reason, returncode, host, started_at, ended_at``, in
        the order they were recorded."""
        rows = self._rows(
            "SELECT attempt, segment, status, reason, returncode, host, started_at, ended_at "
            "FROM attempts WHERE trial_id = ? ORDER BY attempt_id",
            (trial_id,),
        )
        return [dict(zip(_ATTEMPT_KEYS, r, strict=True)) for r in rows]

    # ------------------------------------------------------------------------------ metrics

    def add_metrics(self, trial_id: int, history: list[dict]) -> None:
        """Store per-epoch metrics from a history (``[{"epoch": 1, "val_loss": 0.3}, ...]``).
        Idempotent: an (epoch, name) already stored is replaced. Values that are not numbers
        (strings, bools, None) are skipped; NaN is stored as NULL (read back as None)."""
        rows: list[tuple[int, int, str, float]] = []
        for i, entry in enumerate(history):
            epoch = entry.get("epoch") if isinstance(entry, dict) else None
            if not isinstance(epoch, numbers.Integral) or isinstance(epoch, bool):
                raise ConfigError(
                    f"trial {trial_id} history entry {i} needs an integer 'epoch'; got {entry!r}"
                )
            for name, value in entry.items():
                if name == "epoch" or isinstance(value, bool):
                    continue
                if isinstance(value, numbers.Real):
                    rows.append((trial_id, int(epoch), str(name), float(value)))
        with self.transaction():
            try:
                self._connection().executemany(
                    "INSERT OR REPLACE INTO metrics (trial_id, epoch, name, value) "
                    "VALUES (?, ?, ?, ?)",
                    rows,
                )
            except sqlite3.IntegrityError:
                raise ConfigError(f"no trial with id {trial_id} in {self.path}") from None

    def metrics(self, trial_id: int) -> list[dict[str, Any]]:
        """``[{"epoch": 1, "name": "val_loss", "value": 0.3}, ...]`` by epoch, then name."""
        rows = self._rows(
            "SELECT epoch, name, value FROM metrics WHERE trial_id = ? ORDER BY epoch, name",
            (trial_id,),
        )
        return [{"epoch": e, "name": n, "value": v} for e, n, v in rows]

    # ---------------------------------------------------------------------------- artifacts

    def add_artifact(
        self,
        trial_id: int,
        kind: str,
        path: str | os.PathLike,
        *,
        checksum: str | None = None,
        size: int | None = None,
    ) -> None:
        """Record a file a trial wrote (kind: "checkpoint", "predictions", "result", ...).
        Recording the same (kind, path) again updates its checksum and size."""
        sql = (
            "INSERT INTO artifacts (trial_id, kind, path, checksum, size, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (trial_id, kind, path) DO UPDATE SET "
            "checksum = excluded.checksum, size = excluded.size, created_at = excluded.created_at"
        )
        args = (trial_id, kind, os.fspath(path), checksum, size, time.time())
        self._write(sql, args, f"trial with id {trial_id}")

    def artifacts(self, trial_id: int) -> list[dict[str, Any]]:
        """``kind, path, checksum, size, created_at``, in the order first recorded."""
        rows = self._rows(
            "SELECT kind, path, checksum, size, created_at FROM artifacts WHERE trial_id = ? "
            "ORDER BY artifact_id",
            (trial_id,),
        )
        return [dict(zip(_ARTIFACT_KEYS, r, strict=True)) for r in rows]

    # ------------------------------------------------------------------------------- export

    def to_dataframe(self, study_id: int | None = None) -> pandas.DataFrame:
        """One row per trial of the study (default: the database's only study): trial_id,
        key, status, attempt, segment, host, started_at, ended_at, busy_s, objective, reason,
        then ``param.<name>`` per parameter and ``metric.<name>`` per last metric. A list or
        dict value becomes its JSON text, so that every cell is a scalar."""
        import pandas

        if study_id is None:
            study_id = self.study_id()
        records = []
        for t in self.trials(study_id):
            row: dict[str, Any] = {c: getattr(t, c) for c in _FRAME_COLUMNS}
            row.update({f"param.{k}": _scalar(v) for k, v in t.params.items()})
            row.update({f"metric.{k}": _scalar(v) for k, v in t.metrics.items()})
            records.append(row)
        return pandas.DataFrame.from_records(records, columns=_frame_columns(records))


# fmt: off
_ATTEMPT_KEYS = (
    "attempt", "segment", "status", "reason", "returncode", "host", "started_at", "ended_at",
)
_ARTIFACT_KEYS = ("kind", "path", "checksum", "size", "created_at")
_FRAME_COLUMNS = (
    "trial_id", "key", "status", "attempt", "segment", "host", "started_at", "ended_at",
    "busy_s", "objective", "reason",
)
# fmt: on


def _frame_columns(records: list[dict[str, Any]]) -> list[str]:
    """The fixed columns, then params, then metrics, each in first-seen order."""
    seen = dict.fromkeys(_FRAME_COLUMNS)
    for prefix in ("param.", "metric."):
        for row in records:
            seen.update(dict.fromkeys(k for k in row if k.startswith(prefix)))
    return list(seen)


def _scalar(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _study_dict(row: Sequence[Any]) -> dict[str, Any]:
    study_id, name, config, provenance, directory, created_at, state = row
    return {
        "study_id": study_id,
        "name": name,
        "config": json.loads(config),
        "provenance": json.loads(provenance),
        "directory": directory,
        "created_at": created_at,
        "state": json.loads(state),
    }


def _trial_record(row: Sequence[Any]) -> TrialRecord:
    values = dict(zip(_TRIAL_FIELDS, row, strict=True))
    for name in ("params", "resources", "metrics", "extra"):
        values[name] = json.loads(values[name])
    return TrialRecord(**values)
