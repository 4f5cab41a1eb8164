"""Tests for candle.data.cache with real processes, real locks and a real HTTP server.

Workers are ``tests/_cache_worker.py`` subprocesses; the HTTP server is a
``ThreadingHTTPServer`` on 127.0.0.1 that can trickle bytes so a copy can be killed mid-way.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import http.server
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from candle.data._hash import file_checksum
from candle.data.cache import ShardCache
from candle.errors import ConfigError, DataError, ShardError

WORKER = Path(__file__).with_name("_cache_worker.py")
MB = 1 << 20


def _write(path: Path, size: int, seed: int = 0) -> tuple[str, str, int]:
    """A file of ``size`` pseudo-random bytes -> (path, checksum, size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 16) if seed == 0 else bytes([seed % 256]) * (1 << 16)
    with open(path, "wb") as f:
        for i in range(0, size, len(block)):
            f.write(block[: size - i])
    return str(path), file_checksum(path), size


def _parts(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*/.candle-part-*"))


def _copies(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.glob("*/*") if not p.name.startswith(".candle-"))


def _wait(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class _Workers:
    """Start ``_cache_worker.py``: one process, or one that forks several after its imports.

    Always reaped, even when a test fails.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.procs = tmp, []

    def start(self, cache_dir: Path, procs: list, **args) -> subprocess.Popen:
        """``procs``: for each process, the ``[url, checksum, size]`` shards it fetches."""
        i = len(self.procs)
        out = self.tmp / f"worker{i}.json"
        args = {"cache_dir": str(cache_dir), "procs": procs, "out": str(out), **args}
        with open(self.tmp / f"worker{i}.err", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), json.dumps(args)], stdout=err, stderr=err
            )
        proc.n, proc.out, proc.err = len(procs), out, self.tmp / f"worker{i}.err"
        self.procs.append(proc)
        return proc

    def results(self, proc: subprocess.Popen, timeout: float = 60.0) -> list[dict]:
        """Each process's ``{"fills", "hits", "results": [{"path", "inode", "read"}]}``."""
        rc = proc.wait(timeout)
        assert rc == 0, f"worker failed ({rc}):\n{proc.err.read_text()}"
        return [json.loads(Path(f"{proc.out}.{i}").read_text()) for i in range(proc.n)]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def workers(tmp_path):
    w = _Workers(tmp_path)
    yield w
    w.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.root``; ``server.delay`` seconds between 64 KiB blocks; counts GETs."""

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = self.server.root / urllib.parse.unquote(self.path).lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        if not self.path.startswith("/nolength/"):  # else the body simply ends at close
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not body:
            return
        self.server.gets[self.path] += 1
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for i in range(0, len(data), 1 << 16):
                self.wfile.write(data[i : i + (1 << 16)])
                if self.server.delay:
                    time.sleep(self.server.delay)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.root = tmp_path / "www"
    srv.root.mkdir()
    srv.delay, srv.gets = 0.0, collections.Counter()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.delay = 0.0
    srv.shutdown()
    srv.server_close()
    thread.join()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- one copy per node


def test_four_processes_asking_for_one_cold_shard_make_one_copy(tmp_path, workers):
    url, checksum, size = _write(tmp_path / "shared" / "train-000.h5", 24 * MB)
    cache_dir = tmp_path / "cache"
    ready, start = tmp_path / "ready", tmp_path / "start"
    proc = workers.start(
        cache_dir, [[[url, checksum, size]]] * 4, ready=str(ready), start=str(start)
    )
    _wait(ready.exists, what="four processes")
    start.touch()  # all four ask at the same moment
    results = workers.results(proc)

    assert sum(r["fills"] for r in results) == 1, results
    assert sum(r["hits"] for r in results) == 3, results
    (copy,) = _copies(cache_dir)
    assert copy.name == "train-000.h5"
    for r in results:
        (got,) = r["results"]
        assert got["path"] == str(copy)
        assert got["inode"] == copy.stat().st_ino  # nobody replaced the first copy
        assert got["read"] == checksum
    assert _parts(cache_dir) == []


def test_sigkill_during_a_copy_leaves_nothing_under_the_final_name(tmp_path, workers, server):
    _, checksum, size = _write(server.root / "slow.h5", 4 * MB)
    url = f"{server.url}/slow.h5"
    cache_dir = tmp_path / "cache"
    server.delay = 0.05  # 64 blocks x 50 ms: a copy takes > 3 s
    proc = workers.start(cache_dir, [[[url, checksum, size]]])
    _wait(lambda: any(p.stat().st_size > 0 for p in _parts(cache_dir)), what="a partial copy")
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    (part,) = _parts(cache_dir)
    assert 0 < part.stat().st_size < size
    assert _copies(cache_dir) == []  # nothing under the final name
    cache = ShardCache(cache_dir)
    assert cache.entries() == [] and cache.usage() == 0

    server.delay = 0.0
    path = cache.fetch(url, checksum=checksum, size=size)
    assert path.name == "slow.h5" and file_checksum(path) == checksum
    assert cache.stats.fills == 1
    assert _parts(cache_dir) == []  # the leftover was deleted by the next filler


def test_a_process_waiting_for_a_killed_filler_takes_over(tmp_path, workers, server):
    _, checksum, size = _write(server.root / "slow.h5", 4 * MB)
    url = f"{server.url}/slow.h5"
    cache_dir = tmp_path / "cache"
    server.delay = 0.05
    proc = workers.start(cache_dir, [[[url, checksum, size]]])
    _wait(lambda: any(p.stat().st_size > 0 for p in _parts(cache_dir)), what="a partial copy")
    cache, got = ShardCache(cache_dir), []
    waiter = threading.Thread(target=lambda: got.append(cache.fetch(url, checksum=checksum)))
    waiter.start()  # blocks on the entry's fill lock
    time.sleep(0.2)
    assert not got
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    server.delay = 0.0
    waiter.join(60)
    (path,) = got
    assert file_checksum(path) == checksum and cache.stats.fills == 1
    assert _parts(cache_dir) == []


def test_leftovers_of_killed_copies_are_deleted_by_a_budget_scan(tmp_path):
    cache = ShardCache(tmp_path / "cache", budget_bytes="1MB")
    entry = tmp_path / "cache" / "0123456789abcdef"
    entry.mkdir()
    (entry / ".candle-part-1000-deadbeef0000").write_bytes(b"x" * 1000)
    assert cache.evict() == []
    assert _parts(tmp_path / "cache") == []


# --------------------------------------------------------------------------- sources


def test_http_source_through_fsspec(tmp_path, server):
    _, checksum, size = _write(server.root / "sub dir" / "valid-003.h5", 3 * MB)
    url = f"{server.url}/sub%20dir/valid-003.h5"
    cache = ShardCache(tmp_path / "cache")
    path = cache.fetch(url, checksum=checksum)
    assert path.name == "valid-003.h5"
    assert file_checksum(path) == checksum and path.stat().st_size == size
    assert cache.fetch(url, checksum=checksum, size=size) == path
    assert (cache.stats.fills, cache.stats.hits) == (1, 1)
    assert sum(server.gets.values()) == 1, server.gets


def test_unreachable_and_missing_sources_raise_errors_naming_them(tmp_path, server):
    good, checksum, size = _write(tmp_path / "shared" / "a.h5", MB)
    cache = ShardCache(tmp_path / "cache", budget_bytes=MB)  # full: any new fill must evict
    cached = cache.fetch(good, checksum=checksum)
    inode = cached.stat().st_ino

    url = f"{server.url}/missing.h5"
    with pytest.raises(ShardError, match=re.escape(f"{url} does not exist")):
        cache.fetch(url, checksum=checksum, size=size)
    url = f"http://127.0.0.1:{_closed_port()}/a.h5"
    with pytest.raises(DataError, match=re.escape(f"cannot read shard source {url}: ")) as e:
        cache.fetch(url, checksum=checksum, size=size)
    assert not isinstance(e.value, ShardError) and "Connect" in str(e.value)
    missing = str(tmp_path / "shared" / "gone.h5")
    with pytest.raises(ShardError, match=re.escape(f"{missing} does not exist")):
        cache.fetch(missing, checksum=checksum)
    with pytest.raises(DataError, match=re.escape("no-such-protocol://x/a.h5")):
        cache.fetch("no-such-protocol://x/a.h5", checksum=checksum)
    with pytest.raises(DataError, match=r"checksum must look like 'xxh3_128:"):
        cache.fetch(good, checksum="sha256:abc")

    # Nothing already cached was lost, evicted or copied again.
    assert cache.stats.evictions == 0
    assert cache.fetch(good, checksum=checksum) == cached
    assert cached.stat().st_ino == inode and cache.stats.fills == 1
    assert [e.path for e in cache.entries()] == [cached]
    assert _parts(tmp_path / "cache") == []


def test_source_of_unknown_size_needs_size_under_a_budget(tmp_path, server):
    _, checksum, size = _write(server.root / "nolength" / "f.h5", MB)
    url = f"{server.url}/nolength/f.h5"
    assert ShardCache(tmp_path / "a").fetch(url, checksum=checksum).stat().st_size == size
    cache = ShardCache(tmp_path / "b", budget_bytes="10MB")
    with pytest.raises(DataError, match=re.escape(f"the size of {url} is unknown")):
        cache.fetch(url, checksum=checksum)
    assert cache.fetch(url, checksum=checksum, size=size).stat().st_size == size
    with pytest.raises(ShardError, match="larger than the 1000 bytes expected"):
        ShardCache(tmp_path / "c").fetch(url, checksum=checksum, size=1000)
    assert _parts(tmp_path / "c") == []


# --------------------------------------------------------------------------- checksums


def test_checksum_mismatch_at_fill_caches_nothing_and_evicts_nothing(tmp_path):
    other, other_sum, _ = _write(tmp_path / "shared" / "other.h5", MB)
    url, checksum, size = _write(tmp_path / "shared" / "b.h5", MB, seed=7)
    cache = ShardCache(tmp_path / "cache", budget_bytes="1.5MiB")
    kept = cache.fetch(other, checksum=other_sum)
    wrong = "xxh3_128:" + "0" * 32
    with pytest.raises(ShardError) as e:
        cache.fetch(url, checksum=wrong)
    assert f"checksum mismatch for shard source {url}" in str(e.value)
    assert wrong in str(e.value) and checksum in str(e.value)
    with pytest.raises(ShardError, match=re.escape(f"{url} has {size} bytes, but {size + 1} were")):
        cache.fetch(url, checksum=checksum, size=size + 1)
    assert _copies(tmp_path / "cache") == [kept]
    assert _parts(tmp_path / "cache") == []
    assert cache.stats.evictions == 0


@pytest.mark.parametrize("change", ["shrinks", "grows"])
def test_source_rewritten_during_a_copy_is_an_error_and_caches_nothing(
    tmp_path, monkeypatch, change
):
    """The local copy reads a mapped file: a source truncated under it must give a ShardError
    (reading a mapped page past the end of a file is SIGBUS, which would kill the process)."""
    import candle.data.cache as cache_mod

    url, checksum, size = _write(tmp_path / "shared" / "b.h5", 3 * MB)
    calls = []

    class Rewriting(cache_mod.Hasher):
        def update(self, data) -> None:
            super().update(data)
            calls.append(len(data))
            if len(data) > 4096 and len(calls) == 1 + sum(c <= 4096 for c in calls):  # 1st chunk
                with open(url, "r+b") as f:
                    if change == "shrinks":
                        f.truncate(MB + MB // 2)
                    else:
                        f.seek(0, os.SEEK_END)
                        f.write(b"x" * 100)

    monkeypatch.setattr(cache_mod, "Hasher", Rewriting)
    cache = ShardCache(tmp_path / "cache")
    expected = "shrank while being copied" if change == "shrinks" else "is larger than the"
    with pytest.raises(ShardError, match=expected) as e:
        cache.fetch(url, checksum=checksum)
    assert url in str(e.value)
    assert _copies(tmp_path / "cache") == [] and _parts(tmp_path / "cache") == []
    monkeypatch.undo()
    _write(Path(url), size)  # the source rewritten whole: it is copied normally
    fixed = file_checksum(url)
    assert Path(cache.fetch(url, checksum=fixed)).read_bytes() == Path(url).read_bytes()


def test_mapped_and_read_copies_give_the_same_bytes(tmp_path, monkeypatch):
    """Local sources are mapped, others read: both paths, and a file of 0 bytes."""
    import candle.data.cache as cache_mod

    for i, size in enumerate([0, 1, MB - 1, 2 * MB + 5]):
        url, checksum, _ = _write(tmp_path / "shared" / f"s{i}.h5", size)
        got = ShardCache(tmp_path / "mapped").fetch(url, checksum=checksum, size=size)
        assert Path(got).read_bytes() == Path(url).read_bytes()
        with monkeypatch.context() as m:
            m.setattr(cache_mod.mmap, "mmap", _no_mmap)
            got = ShardCache(tmp_path / "read").fetch(url, checksum=checksum, size=size)
        assert Path(got).read_bytes() == Path(url).read_bytes()


def _no_mmap(*args, **kwargs):
    raise OSError(19, "No such device")  # as on a file system that cannot map files


def test_hit_does_not_copy_and_damaged_copy_is_fetched_again(tmp_path, caplog):
    url, checksum, size = _write(tmp_path / "shared" / "c.h5", 2 * MB)
    cache = ShardCache(tmp_path / "cache")
    path = cache.fetch(url, checksum=checksum, size=size)
    before = path.stat()
    assert cache.fetch(url, checksum=checksum, size=size) == path
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (cache.stats.fills, cache.stats.hits) == (1, 1)

    time.sleep(0.02)  # file times tick in jiffies: let the rewrite below change the mtime
    with open(path, "r+b") as f:  # flip one byte
        f.seek(12345)
        byte = f.read(1)
        f.seek(12345)
        f.write(bytes([byte[0] ^ 0xFF]))
    with caplog.at_level(logging.WARNING, logger="candle.data.cache"):
        assert cache.fetch(url, checksum=checksum) == path
    assert "is damaged" in caplog.text
    assert cache.stats.fills == 2 and file_checksum(path) == checksum

    # Bit rot that keeps the mtime is caught by verify=True (and by every new process).
    stat = path.stat()
    with open(path, "r+b") as f:
        f.write(b"\0" * 16)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.fetch(url, checksum=checksum) == path  # trusted: already verified here
    assert cache.stats.fills == 2
    cache.fetch(url, checksum=checksum, verify=True)
    assert cache.stats.fills == 3 and file_checksum(path) == checksum

    with open(path, "r+b") as f:  # truncated: the size check alone catches it
        f.truncate(size // 2)
    cache.fetch(url, checksum=checksum, size=size)
    assert cache.stats.fills == 4 and file_checksum(path) == checksum


# --------------------------------------------------------------------------- budget and leases


def test_budget_evicts_least_recently_used(tmp_path):
    shards = [_write(tmp_path / "shared" / f"s{i}.h5", MB, seed=i + 1) for i in range(4)]
    cache = ShardCache(tmp_path / "cache", budget_bytes=int(2.5 * MB))
    paths = [cache.fetch(u, checksum=c, size=s) for u, c, s in shards[:2]]
    cache.fetch(shards[0][0], checksum=shards[0][1])  # s0 is now used more recently than s1
    paths.append(cache.fetch(shards[2][0], checksum=shards[2][1]))
    assert not paths[1].exists() and paths[0].exists() and paths[2].exists()
    assert cache.usage() <= cache.budget
    cache.fetch(shards[3][0], checksum=shards[3][1])
    assert not paths[0].exists()
    assert [e.path.name for e in cache.entries()] == ["s2.h5", "s3.h5"]  # oldest first
    assert cache.stats.evictions == 2


def test_shard_leased_by_another_process_is_never_evicted(tmp_path, workers):
    shards = [list(_write(tmp_path / "shared" / f"s{i}.h5", MB, seed=i + 1)) for i in range(6)]
    cache_dir = tmp_path / "cache"
    budget = int(2.5 * MB)
    ready, hold = tmp_path / "ready", tmp_path / "hold"
    holder = workers.start(cache_dir, [shards[:2]], budget=budget, ready=str(ready), hold=str(hold))
    _wait(ready.exists, what="the leases")
    cache = ShardCache(cache_dir, budget_bytes=budget, timeout=1.0)
    assert [e.in_use for e in cache.entries()] == [True, True]

    # s0 and s1 are leased: s2 takes the cache one shard over budget, s3 replaces s2.
    p2 = cache.fetch(shards[2][0], checksum=shards[2][1], size=MB)
    assert cache.usage() == 3 * MB <= budget + MB
    with cache.leased(shards[3][0], checksum=shards[3][1], size=MB) as p3:
        assert not p2.exists() and cache.usage() == 3 * MB
        # Everything is leased and the cache is over budget: no fifth shard, a clear error.
        with pytest.raises(DataError, match=r"over its budget of 2621440, all of it in use"):
            cache.fetch(shards[4][0], checksum=shards[4][1], size=MB)
        assert cache.usage() == 3 * MB
        with pytest.raises(ShardError, match="was evicted"), cache.lease(p2):
            pass
        hold.touch()  # the other process lets go of s0 and s1
        workers.results(holder)
        p5 = cache.fetch(shards[5][0], checksum=shards[5][1], size=MB)
        assert p3.exists() and p5.exists()
        assert cache.usage() <= budget
    assert [e.path.name for e in cache.entries()] == ["s3.h5", "s5.h5"]


def test_concurrent_fills_never_exceed_budget_by_more_than_one_shard(tmp_path, workers, server):
    shards = [list(_write(server.root / f"p{i}.h5", MB, seed=i + 1)) for i in range(5)]
    for s in shards:
        s[0] = f"{server.url}/{Path(s[0]).name}"
    cache_dir = tmp_path / "cache"
    budget = int(2.5 * MB)
    cache = ShardCache(cache_dir, budget_bytes=budget)
    server.delay = 0.01  # 16 blocks: each copy takes ~0.2 s, so they overlap
    peak, done = [0], threading.Event()

    def watch() -> None:
        # Every byte under the cache dir, temp files included. A directory walk is no snapshot
        # (a copy evicted after its directory was read still counts), so each sample holds the
        # cache's budget lock, under which copies are admitted, renamed and evicted.
        lock = os.open(cache_dir / ".candle-budget.lock", os.O_RDONLY | os.O_CREAT)
        try:
            while not done.is_set():
                fcntl.flock(lock, fcntl.LOCK_EX)
                total = 0
                for root, _, files in os.walk(cache_dir):
                    for name in files:
                        with contextlib.suppress(FileNotFoundError):
                            total += os.lstat(os.path.join(root, name)).st_size
                fcntl.flock(lock, fcntl.LOCK_UN)
                peak[0] = max(peak[0], total)
                time.sleep(0.002)
        finally:
            os.close(lock)

    watcher = threading.Thread(target=watch)
    with cache.leased(shards[0][0], checksum=shards[0][1], size=MB) as leased:
        ready, start = tmp_path / "ready", tmp_path / "start"
        procs = [[s] for s in shards[1:]]  # four processes, one shard each
        proc = workers.start(cache_dir, procs, budget=budget, ready=str(ready), start=str(start))
        _wait(ready.exists, what="the processes")
        watcher.start()
        start.touch()
        try:
            results = workers.results(proc)
        finally:
            done.set()
            watcher.join()
        assert leased.exists()
    assert [r["results"][0]["read"] for r in results] == [s[1] for s in shards[1:]]
    assert peak[0] <= budget + MB
    cache.evict()  # the last fillers may have finished while each held its own copy leased
    assert cache.usage() <= budget


def test_lease_refuses_paths_outside_the_cache(tmp_path):
    url, checksum, _ = _write(tmp_path / "shared" / "d.h5", 1000)
    cache = ShardCache(tmp_path / "cache")
    with pytest.raises(DataError, match="is not a copy in the cache"), cache.lease(url):
        pass
    path = cache.fetch(url, checksum=checksum)
    with cache.lease(path) as leased:
        assert leased == path and cache.entries()[0].in_use
    assert not cache.entries()[0].in_use


# --------------------------------------------------------------------------- configuration


def test_local_paths_and_file_urls_share_one_entry(tmp_path, monkeypatch):
    url, checksum, _ = _write(tmp_path / "shared" / "e.h5", 1000)
    monkeypatch.setenv("CANDLE_CACHE_DIR", str(tmp_path / "node-local"))
    cache = ShardCache()
    assert cache.cache_dir == tmp_path / "node-local"
    monkeypatch.chdir(tmp_path / "shared")
    paths = {
        cache.fetch(url, checksum=checksum),
        cache.fetch("e.h5", checksum=checksum),
        cache.fetch(Path("e.h5"), checksum=checksum),
        cache.fetch(Path(url).as_uri(), checksum=checksum),
    }
    (path,) = paths
    assert path.parent.parent == tmp_path / "node-local" and path.name == "e.h5"
    assert (cache.stats.fills, cache.stats.hits) == (1, 3)
    # A new checksum (the source was rewritten and re-packed) is a new entry.
    _, new_checksum, _ = _write(tmp_path / "shared" / "e.h5", 1000, seed=3)
    new = cache.fetch(url, checksum=new_checksum)
    assert new != path and new.name == "e.h5" and file_checksum(new) == new_checksum


def test_default_cache_dir_and_budget_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("CANDLE_CACHE_BUDGET", "2.5 GB")
    cache = ShardCache()
    assert cache.cache_dir == tmp_path / f"candle-cache-{os.getuid()}"
    assert cache.cache_dir.stat().st_mode & 0o777 == 0o700
    assert cache.budget == 2_500_000_000
    assert ShardCache(budget_bytes="512MiB").budget == 512 * MB
    monkeypatch.setenv("CANDLE_CACHE_BUDGET", "lots")
    with pytest.raises(ConfigError, match=r"CANDLE_CACHE_BUDGET: size 'lots' is not understood"):
        ShardCache()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10GB", 10**10), ("1.5 TB", 15 * 10**11), ("1000", 1000), ("4KiB", 4096), (7, 7), ("", None)],
)
def test_budget_is_a_byte_count_as_in_the_manifest(tmp_path, text, expected):
    assert ShardCache(tmp_path, budget_bytes=text).budget == expected


@pytest.mark.parametrize("text", ["-1", "ten", "5 parsecs", -3])
def test_nonsense_budget_is_a_config_error(tmp_path, text):
    with pytest.raises(
        ConfigError, match=r"budget_bytes: size .* (is not understood|must be positive)"
    ):
        ShardCache(tmp_path, budget_bytes=text)
