"""Tests for the study store (``candle.workflow.store``) and ``python -m candle runs``
(``candle.workflow._runs_cli.main``): schema, migrations, transactions, a read-only reader
beside a writer in another process, export, and the CLI's output and exit codes."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from candle.errors import CandleError, ConfigError
from candle.workflow import store as store_module
from candle.workflow._runs_cli import main
from candle.workflow.store import SCHEMA_VERSION, TRIAL_STATUSES, Store

REPO = Path(__file__).resolve().parents[1]


def _add(store: Store, study_id: int, key: str | None, **params) -> int:
    return store.add_trial(
        study_id, params, trial_dir=f"/runs/{key}", resources={"gpus": 1}, key=key
    )


@pytest.fixture()
def db(tmp_path) -> Path:
    return tmp_path / "study" / "study.db"


# ------------------------------------------------------------------------------ the store


def test_create_reopen_and_readonly(db):
    with Store(db) as store:
        sid = store.create_study("nt3", {"epochs": 5}, {"git": "abc"}, str(db.parent))
        tid = _add(store, sid, "grid-0", lr=0.01, layers=[64, 32])
        store.set_study_state(sid, {"sampler": {"seed": 3}})
    assert db.is_file()

    with Store(db) as store:  # reopened read-write: nothing lost, nothing re-created
        assert store.study_id() == sid == store.study_id("nt3")
        study = store.study(sid)
        assert study["name"] == "nt3" and study["config"] == {"epochs": 5}
        assert study["provenance"] == {"git": "abc"} and study["directory"] == str(db.parent)
        assert study["state"] == {"sampler": {"seed": 3}}
        assert [s["name"] for s in store.studies()] == ["nt3"]
        assert store.trial(tid).params == {"layers": [64, 32], "lr": 0.01}
        (mode,) = store._connection().execute("PRAGMA journal_mode").fetchone()
        assert mode == "wal"

    # Read-only after the writer closed (WAL and shm files gone).
    with Store(db, readonly=True) as reader:
        rec = reader.trial(tid)
        assert (rec.key, rec.status, rec.attempt, rec.segment) == ("grid-0", "queued", 0, 0)
        assert rec.resources == {"gpus": 1} and rec.extra == {} and rec.metrics == {}
        with pytest.raises(CandleError, match="read-only"):
            reader.update_trial(tid, status="running")
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )
    finally:
        conn.close()


def test_readonly_missing_file_and_not_a_database(tmp_path):
    missing = tmp_path / "nowhere" / "study.db"
    with pytest.raises(CandleError, match=str(missing)):
        Store(missing, readonly=True)
    assert not missing.parent.exists()  # a reader creates nothing

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CandleError, match=str(junk)):
        Store(junk)
    with pytest.raises(CandleError, match=str(junk)):
        Store(junk, readonly=True)


def test_closed_store_errors(db):
    store = Store(db)
    store.close()
    store.close()  # idempotent
    with pytest.raises(CandleError, match="closed"):
        store.studies()


def test_study_lookup_errors(db):
    with Store(db) as store:
        with pytest.raises(ConfigError, match="0 studies"):
            store.study_id()
        store.create_study("a", {}, {}, "/a")
        with pytest.raises(ConfigError, match="'a' is already in"):
            store.create_study("a", {}, {}, "/a")
        store.create_study("b", {}, {}, "/b")
        with pytest.raises(ConfigError, match="2 studies \\('a', 'b'\\)"):
            store.study_id()
        assert store.study_id("b") == 2
        with pytest.raises(ConfigError, match="no study named 'c'"):
            store.study_id("c")
        with pytest.raises(ConfigError, match="no study with id 9"):
            store.set_study_state(9, {})
        with pytest.raises(ConfigError, match="no study with id 9"):
            _add(store, 9, "x")


def test_trial_lifecycle_and_counts(db):
    with Store(db) as store:
        sid = store.create_study("s", {}, {}, "/s")
        other = store.create_study("other", {}, {}, "/o")
        ids = [_add(store, sid, f"k{i}", lr=10.0**-i) for i in range(4)]
        _add(store, other, "k0")  # same key, other study: allowed
        assert store.counts(sid) == {"queued": 4, "running": 0, "done": 0, "failed": 0, "pruned": 0}

        t0 = time.time()
        store.update_trial(ids[0], status="running", attempt=1, host="node7", started_at=t0)
        store.update_trial(ids[0], add_busy_s=2.5)
        store.update_trial(ids[0], add_busy_s=np.float32(1.5), segment=np.int64(3))
        store.update_trial(
            ids[0],
            status="done",
            ended_at=t0 + 4,
            objective=np.float64(0.25),
            metrics={"val_loss": 0.25, "note": "ok"},
            extra={"rung": 1},
        )
        store.update_trial(ids[1], status="failed", reason="timeout", error="Traceback...")
        store.update_trial(ids[2], status="pruned", reason="rung 0", objective=float("inf"))
        store.update_trial(ids[3], status="failed", objective=float("nan"), busy_s=7.0)

        rec = store.trial(ids[0])
        assert (rec.status, rec.attempt, rec.segment, rec.host) == ("done", 1, 3, "node7")
        assert rec.busy_s == pytest.approx(4.0)
        assert (rec.started_at, rec.ended_at) == (t0, t0 + 4)
        assert rec.objective == 0.25 and rec.metrics == {"note": "ok", "val_loss": 0.25}
        assert rec.extra == {"rung": 1} and rec.queued_at <= t0
        assert store.trial(ids[2]).objective == math.inf
        assert store.trial(ids[3]).objective is None  # SQLite stores NaN as NULL
        assert store.trial(ids[3]).busy_s == 7.0

        assert store.counts(sid) == {"queued": 0, "running": 0, "done": 1, "failed": 2, "pruned": 1}
        assert store.counts(other)["queued"] == 1
        assert [t.trial_id for t in store.trials(sid, "failed")] == [ids[1], ids[3]]
        assert [t.trial_id for t in store.trials(sid, ["done", "pruned"])] == [ids[0], ids[2]]
        assert len(store.trials()) == 5 and len(store.trials(sid)) == 4
        assert store.trial_by_key(sid, "k1").reason == "timeout"
        assert store.trial_by_key(other, "k0").study_id == other
        assert store.trial_by_key(sid, "nope") is None
        with pytest.raises(ConfigError, match="already has a trial with key 'k2'"):
            _add(store, sid, "k2")
        assert store.counts(sid)["queued"] == 0  # the failed insert left nothing behind


def test_update_trial_errors_name_the_field(db):
    with Store(db) as store:
        sid = store.create_study("s", {}, {}, "/s")
        tid = _add(store, sid, "a")
        with pytest.raises(ValueError, match="'finished'") as e:
            store.update_trial(tid, status="finished")
        assert isinstance(e.value, ConfigError)
        with pytest.raises(ValueError, match="unknown field 'colour'"):
            store.update_trial(tid, colour="red")
        with pytest.raises(ValueError, match="busy_s or add_busy_s"):
            store.update_trial(tid, busy_s=1, add_busy_s=2)
        with pytest.raises(ConfigError, match="no trial with id 99"):
            store.update_trial(99, status="done")
        with pytest.raises(ConfigError, match="no trial with id 99"):
            store.trial(99)
        with pytest.raises(ConfigError, match="'bogus'"):
            store.trials(sid, status="bogus")
        with pytest.raises(ConfigError, match="params must hold JSON values"):
            _add(store, sid, "b", fn=object())
        with pytest.raises(ConfigError, match="metrics must be a dict"):
            store.update_trial(tid, metrics=[1, 2])
        store.update_trial(tid)  # nothing to set: a no-op
        assert store.trial(tid).status == "queued"


def test_sql_injection_looking_values_are_stored_verbatim(db):
    key = "x'); DROP TABLE trials;--"
    name = 'nt3"; DELETE FROM studies; --'
    with Store(db) as store:
        sid = store.create_study(name, {"q": "' OR 1=1 --"}, {}, "/s")
        tid = _add(store, sid, key, **{"a'b": "Robert'); DROP TABLE students;--"})
        store.update_trial(tid, reason="'; DROP TABLE attempts; --", host="h'")
    with Store(db, readonly=True) as store:
        assert store.study_id(name) == sid and store.study(sid)["config"] == {"q": "' OR 1=1 --"}
        rec = store.trial_by_key(sid, key)
        assert rec is not None and rec.key == key and rec.host == "h'"
        assert rec.params == {"a'b": "Robert'); DROP TABLE students;--"}
        assert rec.reason == "'; DROP TABLE attempts; --"
        assert len(store.trials()) == 1 and store.attempts(tid) == []


def test_transaction_rolls_back_everything_and_commits_once(db):
    with Store(db) as store, Store(db, readonly=True) as reader:
        sid = store.create_study("s", {}, {}, "/s")
        tid = _add(store, sid, "a")
        with pytest.raises(RuntimeError, match="driver bug"), store.transaction():
            store.update_trial(tid, status="done", objective=0.1)
            new = _add(store, sid, "b")
            store.add_attempt(
                tid, 1, status="done", reason=None, returncode=0, host="h",
                started_at=1.0, ended_at=2.0,
            )  # fmt: skip
            store.add_metrics(tid, [{"epoch": 1, "loss": 0.5}])
            store.add_artifact(tid, "result", "/r.json")
            assert store.trial(new).key == "b"  # the writer sees its own writes
            raise RuntimeError("driver bug")
        assert store.trial(tid).status == "queued" and store.trial(tid).objective is None
        assert store.trial_by_key(sid, "b") is None
        assert store.attempts(tid) == [] and store.metrics(tid) == []
        assert store.artifacts(tid) == []

        with store.transaction():
            store.update_trial(tid, status="running")
            _add(store, sid, "c")
            # A reader sees nothing of an uncommitted transaction, and is not blocked.
            assert reader.counts(sid)["queued"] == 1 and reader.trial(tid).status == "queued"
            with store.transaction():  # nested: joins the outer transaction
                store.update_trial(tid, attempt=1)
            # A nested block that fails undoes only its own writes.
            with pytest.raises(ConfigError), store.transaction():
                store.update_trial(tid, host="lost")
                store.update_trial(tid, status="nonsense")
        assert reader.counts(sid) == dict.fromkeys(TRIAL_STATUSES, 0) | {"running": 1, "queued": 1}
        rec = reader.trial(tid)
        assert (rec.status, rec.attempt, rec.host) == ("running", 1, None)


def test_metrics_upsert_is_idempotent(db):
    with Store(db) as store:
        sid = store.create_study("s", {}, {}, "/s")
        tid = _add(store, sid, "a")
        history = [
            {"epoch": 1, "train_loss": 0.9, "val_loss": 1.0, "lr": np.float32(0.5)},
            {"epoch": 2, "train_loss": 0.7, "val_loss": float("nan"), "phase": "warm"},
        ]
        store.add_metrics(tid, history)
        store.add_metrics(tid, history)  # the same history again: no duplicates
        # A resumed segment re-reports epoch 2 and adds epoch 3.
        store.add_metrics(
            tid,
            [
                {"epoch": 2, "train_loss": 0.6, "val_loss": 0.8, "stopped": True, "x": None},
                {"epoch": 3, "train_loss": 0.5, "val_loss": float("inf")},
            ],
        )
        assert store.metrics(tid) == [
            {"epoch": 1, "name": "lr", "value": 0.5},
            {"epoch": 1, "name": "train_loss", "value": 0.9},
            {"epoch": 1, "name": "val_loss", "value": 1.0},
            {"epoch": 2, "name": "train_loss", "value": 0.6},
            {"epoch": 2, "name": "val_loss", "value": 0.8},
            {"epoch": 3, "name": "train_loss", "value": 0.5},
            {"epoch": 3, "name": "val_loss", "value": math.inf},
        ]
        store.add_metrics(tid, [{"epoch": 4, "val_loss": float("nan")}])
        assert store.metrics(tid)[-1] == {"epoch": 4, "name": "val_loss", "value": None}
        with pytest.raises(ConfigError, match="entry 1 needs an integer 'epoch'"):
            store.add_metrics(tid, [{"epoch": 5, "a": 1.0}, {"loss": 1.0}])
        assert store.metrics(tid)[-1]["epoch"] == 4  # the bad history wrote nothing
        with pytest.raises(ConfigError, match="no trial with id 42"):
            store.add_metrics(42, [{"epoch": 1, "loss": 1.0}])


def test_attempts_and_artifacts(db):
    with Store(db) as store:
        sid = store.create_study("s", {}, {}, "/s")
        tid = _add(store, sid, "a")
        store.add_attempt(
            tid, 1, status="killed", reason="killed by SIGKILL", returncode=-9, host="n1",
            started_at=100.0, ended_at=130.5,
        )  # fmt: skip
        store.add_attempt(
            tid, 2, status="done", reason=None, returncode=0, host="n2",
            started_at=140.0, ended_at=200.0, segment=10,
        )  # fmt: skip
        assert store.attempts(tid) == [
            {"attempt": 1, "segment": 0, "status": "killed", "reason": "killed by SIGKILL",
             "returncode": -9, "host": "n1", "started_at": 100.0, "ended_at": 130.5},
            {"attempt": 2, "segment": 10, "status": "done", "reason": None, "returncode": 0,
             "host": "n2", "started_at": 140.0, "ended_at": 200.0},
        ]  # fmt: skip
        with pytest.raises(ConfigError, match="no trial with id 7"):
            store.add_attempt(
                7, 1, status="done", reason=None, returncode=0, host=None,
                started_at=0.0, ended_at=1.0,
            )  # fmt: skip

        store.add_artifact(tid, "checkpoint", "/t/ckpt/last.pt", checksum="aa", size=10)
        store.add_artifact(tid, "result", Path("/t/result.json"), size=3)
        store.add_artifact(tid, "checkpoint", "/t/ckpt/last.pt", checksum="bb", size=12)
        arts = store.artifacts(tid)
        assert [(a["kind"], a["path"], a["checksum"], a["size"]) for a in arts] == [
            ("checkpoint", "/t/ckpt/last.pt", "bb", 12),  # recorded again: updated in place
            ("result", "/t/result.json", None, 3),
        ]
        assert all(a["created_at"] > 0 for a in arts)
        with pytest.raises(ConfigError, match="no trial with id 7"):
            store.add_artifact(7, "result", "/x")


def test_to_dataframe_columns_and_values(db):
    with Store(db) as store:
        sid = store.create_study("s", {}, {}, "/s")
        empty = store.to_dataframe()
        assert list(empty.columns) == [
            "trial_id", "key", "status", "attempt", "segment", "host", "started_at",
            "ended_at", "busy_s", "objective", "reason",
        ]  # fmt: skip
        assert len(empty) == 0
        a = _add(store, sid, "a", lr=0.1, layers=[8, 4])
        b = _add(store, sid, None, lr=0.01, dropout=0.5)
        store.update_trial(a, status="done", objective=0.3, metrics={"val_loss": 0.3}, busy_s=5.0)
        store.update_trial(b, status="failed", reason="timeout", metrics={"train_loss": 2.0})
        frame = store.to_dataframe(sid)
    assert list(frame.columns) == [
        "trial_id", "key", "status", "attempt", "segment", "host", "started_at", "ended_at",
        "busy_s", "objective", "reason", "param.layers", "param.lr", "param.dropout",
        "metric.val_loss", "metric.train_loss",
    ]  # fmt: skip
    assert frame["trial_id"].tolist() == [a, b]
    assert frame["status"].tolist() == ["done", "failed"]
    assert frame["param.lr"].tolist() == [0.1, 0.01]
    assert frame["param.layers"].iloc[0] == "[8, 4]"  # lists become JSON text
    assert math.isnan(frame["param.dropout"].iloc[0]) and frame["param.dropout"].iloc[1] == 0.5
    assert frame["objective"].iloc[0] == 0.3 and pd.isna(frame["objective"].iloc[1])
    assert frame["metric.val_loss"].iloc[0] == 0.3 and frame["metric.train_loss"].iloc[1] == 2.0
    assert frame["busy_s"].tolist() == [5.0, 0.0] and frame["reason"].iloc[1] == "timeout"
    assert pd.isna(frame["key"].iloc[1])


_WRITER = """
import sys, time
from pathlib import Path
from candle.workflow.store import Store

db, signals = Path(sys.argv[1]), Path(sys.argv[2])
store = Store(db)
sid = store.create_study("w", {}, {}, str(db.parent))
for i in range(50):
    store.add_trial(sid, {"i": i}, trial_dir=f"t{i}", resources={}, key=f"k{i}")
with store.transaction():
    for i in range(50, 60):
        store.add_trial(sid, {"i": i}, trial_dir=f"t{i}", resources={}, key=f"k{i}")
    (signals / "half").touch()  # 50 committed, 10 not yet
    deadline = time.monotonic() + 60
    while not (signals / "go").exists():
        assert time.monotonic() < deadline, "the reader never said go"
        time.sleep(0.005)
for i in range(60, 300):
    tid = store.add_trial(sid, {"i": i}, trial_dir=f"t{i}", resources={}, key=f"k{i}")
    store.update_trial(tid, status="running", started_at=time.time())
    store.update_trial(tid, status="done", objective=float(i), add_busy_s=0.5)
    if i % 20 == 0:
        time.sleep(0.01)
store.close()
"""


def test_readonly_reader_beside_a_writer_in_another_process(tmp_path):
    db, signals = tmp_path / "study.db", tmp_path / "signals"
    signals.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db), str(signals)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (signals / "half").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # The writer holds an open write transaction: a reader sees the committed rows and
        # is not locked out.
        with Store(db, readonly=True) as reader:
            sid = reader.study_id("w")
            assert reader.counts(sid)["queued"] == 50
            assert reader.trial_by_key(sid, "k55") is None
            (signals / "go").touch()
            seen = []
            while proc.poll() is None:
                seen.append(sum(reader.counts(sid).values()))
                with Store(db, readonly=True) as fresh:  # readers come and go, too
                    assert len(fresh.trials(sid)) >= seen[-1]
                assert len(reader.to_dataframe(sid)) >= seen[-1]
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert seen == sorted(seen) and seen[0] >= 50 and len(seen) > 3
    with Store(db, readonly=True) as reader:
        counts = reader.counts(sid)
        assert counts == {"queued": 60, "running": 0, "done": 240, "failed": 0, "pruned": 0}
        assert reader.trial_by_key(sid, "k299").objective == 299.0


_V0_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE studies (
    study_id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, config TEXT NOT NULL,
    provenance TEXT NOT NULL, directory TEXT NOT NULL, created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT '{}');
CREATE TABLE trials (
    trial_id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(study_id) ON DELETE CASCADE,
    key TEXT, params TEXT NOT NULL, status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0, segment INTEGER NOT NULL DEFAULT 0,
    trial_dir TEXT NOT NULL, resources TEXT NOT NULL, host TEXT, queued_at REAL NOT NULL,
    started_at REAL, ended_at REAL, busy_s REAL NOT NULL DEFAULT 0, objective REAL,
    metrics TEXT NOT NULL DEFAULT '{}', reason TEXT, error TEXT, UNIQUE (study_id, key));
CREATE INDEX trials_study_status ON trials(study_id, status);
CREATE TABLE attempts (
    attempt_id INTEGER PRIMARY KEY,
    trial_id INTEGER NOT NULL REFERENCES trials(trial_id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL, segment INTEGER NOT NULL, status TEXT NOT NULL, reason TEXT,
    returncode INTEGER, host TEXT, started_at REAL NOT NULL, ended_at REAL NOT NULL);
CREATE INDEX attempts_trial ON attempts(trial_id);
CREATE TABLE metrics (
    trial_id INTEGER NOT NULL REFERENCES trials(trial_id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL, name TEXT NOT NULL, value REAL,
    PRIMARY KEY (trial_id, epoch, name)) WITHOUT ROWID;
CREATE TABLE artifacts (
    artifact_id INTEGER PRIMARY KEY,
    trial_id INTEGER NOT NULL REFERENCES trials(trial_id) ON DELETE CASCADE,
    kind TEXT NOT NULL, path TEXT NOT NULL, checksum TEXT, size INTEGER,
    created_at REAL NOT NULL, UNIQUE (trial_id, kind, path));
INSERT INTO meta VALUES ('schema_version', '0');
INSERT INTO studies VALUES (1, 'old', '{"epochs": 3}', '{}', '/old', 1000.0, '{}');
INSERT INTO trials (trial_id, study_id, key, params, status, trial_dir, resources, queued_at,
                    objective, metrics)
    VALUES (1, 1, 'grid-0', '{"lr": 0.1}', 'done', '/old/t1', '{}', 1001.0, 0.5,
            '{"val_loss": 0.5}');
INSERT INTO metrics VALUES (1, 1, 'val_loss', 0.5);
"""


def _make_v0(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.executescript(_V0_SCHEMA)
    finally:
        conn.close()


def _columns(path: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {
            t: conn.execute("SELECT * FROM pragma_table_info(?)", (t,)).fetchall() for t in tables
        }
    finally:
        conn.close()


def test_migration_from_v0_keeps_rows(tmp_path):
    old = tmp_path / "old.db"
    _make_v0(old)
    with pytest.raises(CandleError, match=r"schema version 0.*open it once read-write"):
        Store(old, readonly=True)  # a reader cannot migrate
    with Store(old) as store:
        rec = store.trial(1)
        assert (rec.key, rec.params, rec.status, rec.objective) == (
            "grid-0",
            {"lr": 0.1},
            "done",
            0.5,
        )
        assert rec.extra == {}  # the column migration 0 -> 1 added
        assert store.metrics(1) == [{"epoch": 1, "name": "val_loss", "value": 0.5}]
        store.update_trial(1, extra={"rung": 2})
        assert store.study(1)["config"] == {"epochs": 3}
    with Store(old, readonly=True) as store:
        assert store.trial(1).extra == {"rung": 2}
    with Store(tmp_path / "new.db"):
        pass
    assert _columns(old) == _columns(tmp_path / "new.db")  # migrated == created fresh


def test_failed_migration_changes_nothing(tmp_path, monkeypatch):
    old = tmp_path / "old.db"
    _make_v0(old)

    def broken(conn):
        conn.execute("ALTER TABLE trials ADD COLUMN extra TEXT NOT NULL DEFAULT '{}'")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(store_module, "_MIGRATIONS", [broken])
    with pytest.raises(RuntimeError, match="migration bug"):
        Store(old)
    cols = [c[1] for c in _columns(old)["trials"]]
    assert "extra" not in cols
    conn = sqlite3.connect(old)
    try:
        assert conn.execute("SELECT value FROM meta").fetchone() == ("0",)
    finally:
        conn.close()


def test_newer_schema_is_refused_naming_both_versions(db):
    with Store(db):
        pass
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", ("7",))
    finally:
        conn.close()
    for readonly in (False, True):
        with pytest.raises(CandleError, match=f"schema version 7.*up to {SCHEMA_VERSION}"):
            Store(db, readonly=readonly)


# --------------------------------------------------------------------------------- the CLI


@pytest.fixture()
def study_dir(tmp_path) -> Path:
    directory = tmp_path / "nt3"
    with Store(directory / "study.db") as store:
        sid = store.create_study("nt3", {"epochs": 3}, {}, str(directory))
        ids = [_add(store, sid, f"grid-{i}", lr=10.0**-i, act="relu") for i in range(4)]
        store.update_trial(
            ids[0], status="done", attempt=1, objective=0.5, busy_s=12.0, host="node1",
            started_at=1.7e9, ended_at=1.7e9 + 12, metrics={"val_loss": 0.5},
        )  # fmt: skip
        store.update_trial(ids[1], status="done", attempt=2, objective=0.2, busy_s=30.0)
        store.update_trial(
            ids[2], status="failed", attempt=3, reason="timeout",
            error="TimeoutError: trial ran past 600 s\n--- end of trial.log ---\nepoch 2",
        )  # fmt: skip
        store.add_metrics(
            ids[2], [{"epoch": 1, "val_loss": 0.91, "auc": 0.6}, {"epoch": 2, "val_loss": 0.8}]
        )
        store.add_attempt(
            ids[2], 1, status="timeout", reason="timeout", returncode=-15, host="node2",
            started_at=1.7e9, ended_at=1.7e9 + 600,
        )  # fmt: skip
        store.add_artifact(ids[2], "checkpoint", "/ckpt/last.pt", checksum="abc123", size=2048)
    return directory


def _list_ids(out: str) -> list[int]:
    lines = out.strip().splitlines()
    assert lines[0].split() == ["id", "key", "status", "attempt", "objective", "busy_s", "reason"]
    return [int(line.split()[0]) for line in lines[1:] if line and line.split()[0].isdigit()]


def test_cli_list(study_dir, capsys):
    assert main(["list", str(study_dir)]) == 0
    out = capsys.readouterr().out
    assert _list_ids(out) == [1, 2, 3, 4]
    row3 = next(line for line in out.splitlines() if line.split()[:1] == ["3"])
    assert row3.split() == ["3", "grid-2", "failed", "3", "-", "0.0", "timeout"]
    assert "study 'nt3': 4 trials (1 queued, 2 done, 1 failed)" in out

    assert main(["list", str(study_dir / "study.db"), "--sort", "objective"]) == 0
    assert _list_ids(capsys.readouterr().out) == [2, 1, 3, 4]  # no objective: last
    assert main(["list", str(study_dir), "--sort", "objective", "--desc"]) == 0
    assert _list_ids(capsys.readouterr().out) == [1, 2, 3, 4]
    assert main(["list", str(study_dir), "--desc"]) == 0
    assert _list_ids(capsys.readouterr().out) == [4, 3, 2, 1]
    assert main(["list", str(study_dir), "--status", "done,queued"]) == 0
    assert _list_ids(capsys.readouterr().out) == [1, 2, 4]


def test_cli_show(study_dir, capsys):
    assert main(["show", str(study_dir), "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("trial 3 (grid-2) of study 'nt3'")
    assert "failed (timeout)" in out and "lr = 0.01" in out and '"act"' not in out
    assert 'act = "relu"' in out
    epochs = out.split("per-epoch metrics:")[1].split("\n\n")[0].strip().splitlines()
    assert epochs[0].split() == ["epoch", "auc", "val_loss"]
    assert epochs[1].split() == ["1", "0.6", "0.91"] and epochs[2].split() == ["2", "0.8"]
    attempts = out.split("attempts:")[1].split("\n\n")[0].strip().splitlines()
    assert attempts[1].split()[:6] == ["1", "0", "timeout", "timeout", "-15", "node2"]
    assert attempts[1].split()[-1] == "600.0"
    assert "checkpoint  /ckpt/last.pt  2048  abc123" in out
    assert "TimeoutError: trial ran past 600 s" in out.split("error:")[1]

    assert main(["show", str(study_dir), "1"]) == 0
    out = capsys.readouterr().out
    assert "node1" in out and "val_loss = 0.5" in out and "attempts:" not in out


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_cli_export(study_dir, tmp_path, capsys, suffix):
    out = tmp_path / "exports" / f"nt3.{suffix}"
    assert main(["export", str(study_dir), "--out", str(out)]) == 0
    assert "wrote 4 trials" in capsys.readouterr().out
    frame = pd.read_csv(out) if suffix == "csv" else pd.read_parquet(out)
    assert frame["trial_id"].tolist() == [1, 2, 3, 4]
    assert frame["status"].tolist() == ["done", "done", "failed", "queued"]
    assert frame["param.lr"].tolist() == [1.0, 0.1, 0.01, 0.001]
    assert frame["objective"].tolist()[:2] == [0.5, 0.2] and frame["objective"].isna().sum() == 2
    assert frame["metric.val_loss"].tolist()[0] == 0.5
    assert {"param.act", "reason", "busy_s"} <= set(frame.columns)


def test_cli_export_mixed_types_and_explicit_format(tmp_path, capsys):
    with Store(tmp_path / "study.db") as store:
        sid = store.create_study("s", {}, {}, str(tmp_path))
        _add(store, sid, "a", batch=32)
        _add(store, sid, "b", batch="auto")
    out = tmp_path / "trials.data"
    assert main(["export", str(tmp_path), "--out", str(out), "--format", "parquet"]) == 0
    assert pd.read_parquet(out)["param.batch"].tolist() == ["32", "auto"]


def test_cli_errors(study_dir, tmp_path, capsys):
    missing = tmp_path / "no-study"
    assert main(["list", str(missing)]) == 2
    assert f"no study database at {missing}" in capsys.readouterr().err
    assert main(["show", str(study_dir), "99"]) == 2
    assert "no trial with id 99" in capsys.readouterr().err
    assert main(["list", str(study_dir), "--status", "finished"]) == 2
    assert "'finished'" in capsys.readouterr().err
    assert main(["list", str(study_dir), "--study", "other"]) == 2
    assert "no study named 'other'" in capsys.readouterr().err
    assert main(["export", str(study_dir), "--out", str(tmp_path / "x.xlsx")]) == 2
    assert "x.xlsx" in capsys.readouterr().err
    assert main(["show", str(study_dir), "three"]) == 2
    assert "invalid int value: 'three'" in capsys.readouterr().err
    assert main([]) == 2
    capsys.readouterr()
    for command in ([], ["list"], ["show"], ["export"]):
        assert main([*command, "--help"]) == 0
        assert "usage: python -m candle runs" in capsys.readouterr().out
