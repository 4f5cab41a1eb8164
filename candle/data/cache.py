"""Node-local shard cache: one verified copy per node, however many processes ask for it.

Shards live on shared storage (a path or any fsspec URL, http included); trials read them from
a node-local directory (``CANDLE_CACHE_DIR``). Thousands of trial processes on a node share one
copy, so the copy is made under a lock, verified, and published by an atomic rename::

    <cache_dir>/
      .candle-budget.lock              held while space is counted and entries are evicted
      <key>/                           key: 16 hex digits of xxh3(source URL, checksum)
        <name>                         the verified copy, under the source's base name
        .candle-lease                  LOCK_SH while a process uses the copy; mtime = last use
        .candle-fill.lock              LOCK_EX by the one process copying this entry
        .candle-part-<bytes>-<random>  copy in progress; reserves <bytes> of the budget

Fill: lock the entry (``flock``, released by the kernel if the process dies), look again (someone
may have filled it meanwhile), reserve space, stream the source into a temp file while hashing it,
compare size and checksum, ``os.replace`` onto the final name (no fsync: see ``_copy``). Only
the final name is ever served, so a killed filler leaves at most a temp file, which the next
filler of that entry (or any budget scan) deletes once it can take the fill lock.

Budget guarantee: a filler reserves its shard's size before copying a byte. Under the budget
lock it counts ``used`` = finished copies + the reservations of fills in flight (a temp file counts
as ``max(reserved, current size)``; a copy is aborted if the source outgrows its known size). It
starts only when ``used <= budget``, evicting unleased copies (least recently used first) to get
there, or waiting for leases to end (``DataError`` after ``timeout`` s). Each admitted fill thus
takes the cache at most one shard over budget, and an over-budget cache admits no other fill:
disk use never exceeds the budget plus the largest shard. Once its copy is verified, the filler
renames it into place and evicts again until ``used <= budget``, both under the budget lock (so a
scan never sees a copy under neither name). Evicting for a shard only after its copy is verified
means a fetch that fails (unreachable, missing, checksum mismatch) costs no other entry its place
(unless the cache was already over budget, and had to shrink before any fill).

Entry directories and their (empty) lock files are never deleted: removing a file that another
process may be about to ``flock`` would let two processes believe they hold the same lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import mmap
import os
import re
import secrets
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from candle.data._hash import Hasher, file_checksum
from candle.data.manifest import parse_size
from candle.errors import ConfigError, DataError, ShardError

__all__ = ["CacheEntry", "CacheStats", "ShardCache"]

logger = logging.getLogger("candle.data.cache")

_CHUNK = 1 << 20  # 1 MiB: read, hashed and written while still in the CPU cache
# Local sources are copied from mapped pages in chunks that stay in the CPU cache until hashed.
_MAP_CHUNK = 1 << 18
# Map the page-cache pages of a local source in one call instead of faulting them in one by one.
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
_PREFIX = ".candle-"  # every file the cache adds beside a copy; copies never start with it
_PART = ".candle-part-"
_LEASE = ".candle-lease"
_FILL_LOCK = ".candle-fill.lock"
_BUDGET_LOCK = ".candle-budget.lock"
_KEY_RE = re.compile(r"^[0-9a-f]{16}$")
_CHECKSUM_RE = re.compile(r"^xxh3_128:[0-9a-f]{32}$")

# Copies this process has hashed in full, by path -> (inode, mtime_ns, size, checksum): a hit
# re-hashes a copy at most once per process, and again if the file was rewritten since.
_verified: dict[str, tuple[int, int, int, str]] = {}


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One cached copy: where it is, its size, when it was last fetched, whether it is leased."""

    path: Path
    size: int
    last_used: float  # seconds since the epoch
    in_use: bool


@dataclasses.dataclass
class CacheStats:
    """What this ``ShardCache`` object did in this process."""

    hits: int = 0
    fills: int = 0  # copies made (a re-fetch of a damaged copy counts here too)
    bytes_copied: int = 0
    evictions: int = 0


def _budget(value: int | str | None, what: str) -> int | None:
    """``None``/``""`` -> unlimited; else bytes, as in the manifest (``"200GB"``, ``"64GiB"``)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return parse_size(value)
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from None


# --------------------------------------------------------------------------- locks


def _open_lock(path: Path) -> int:
    # flock needs no write access, so a read-only descriptor also works on a cache shared by users
    return os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)


def _try_lock(path: Path, exclusive: bool = True) -> int | None:
    """The descriptor holding the lock (close it to release), or None if someone else holds it."""
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _exclusive(
    path: Path, timeout: float, why: Callable[[], str], progress: Callable[[], Any] | None = None
) -> Iterator[None]:
    """Hold LOCK_EX on ``path``; wait at most ``timeout`` s without ``progress()`` changing."""
    deadline = time.monotonic() + timeout
    last = progress() if progress else None
    delay = 0.002
    while (fd := _try_lock(path)) is None:
        now = time.monotonic()
        if progress is not None and (seen := progress()) != last:
            last, deadline = seen, now + timeout
        if now >= deadline:
            raise DataError(why())
        time.sleep(delay)
        delay = min(2 * delay, 0.1)
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(path: Path, mode: int = fcntl.LOCK_SH) -> Iterator[None]:
    """Hold ``flock(mode)`` on ``path``, waiting as long as it takes (for locks held briefly)."""
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def _touch(path: Path) -> None:
    """Record a use (LRU order). Exact time from a fine clock: file timestamps tick in jiffies."""
    now = time.time_ns()
    try:
        os.utime(path, ns=(now, now))
    except PermissionError:  # another user's entry: only "now" is allowed, if writable at all
        with contextlib.suppress(OSError):
            os.utime(path)


# --------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class _Source:
    url: str  # as the caller wrote it, for messages
    ident: str  # absolute local path or fsspec URL: what the cache key is made of
    local: bool
    name: str  # base name of the cached copy


def _source(url: str | os.PathLike[str]) -> _Source:
    text = os.fspath(url)
    if text.startswith("file://"):
        ident = os.path.realpath(urllib.request.url2pathname(urllib.parse.urlparse(text).path))
        local = True
    elif "://" in text or "::" in text:
        ident, local = text, False
    else:
        ident, local = os.path.realpath(os.path.expanduser(text)), True
    path = ident if local else urllib.parse.urlparse(text.rsplit("::", 1)[-1]).path
    name = os.path.basename(urllib.parse.unquote(path.rstrip("/"))) if path else ""
    if not name or name in (".", "..") or name.startswith(_PREFIX):
        name = "shard"
    return _Source(text, ident, local, name)


def _source_error(url: str, exc: BaseException) -> DataError:
    """Turn whatever the filesystem layer raised into an error naming the URL and the cause."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    causes = [c for c in chain if not (isinstance(c, FileNotFoundError) and c is not chain[-1])]
    if isinstance(chain[-1], FileNotFoundError) or any(
        getattr(c, "status", None) == 404 for c in chain
    ):
        return ShardError(
            f"shard source {url} does not exist (no such file, or HTTP 404); "
            "check the URL or path and the data manifest"
        )
    cause = "; ".join(dict.fromkeys(f"{type(c).__name__}: {c}" for c in causes))
    return DataError(
        f"cannot read shard source {url}: {cause}; check that the storage or server is up and "
        "reachable from this node"
    )


def _size_error(url: str, got: int, size: int) -> ShardError:
    return ShardError(
        f"shard source {url} has {got} bytes, but {size} were expected (from the data "
        "manifest); the source changed or is truncated; nothing was cached"
    )


# --------------------------------------------------------------------------- the cache


@dataclasses.dataclass(frozen=True)
class _Entry:
    dir: Path
    final: Path
    lease: Path
    fill_lock: Path


class ShardCache:
    """Node-local cache of shards, safe for any number of processes.

    Args:
        cache_dir: where copies go; default ``$CANDLE_CACHE_DIR``, else
            ``<tempdir>/candle-cache-<uid>``. Use a node-local disk (not a shared filesystem).
        budget_bytes: most bytes of copies to keep (``"200GB"`` or an int); default
            ``$CANDLE_CACHE_BUDGET``, else unlimited. Least recently used unleased copies are
            evicted. Disk use exceeds the budget by at most one shard: while a shard is being
            copied, or when every other copy is leased (see the module docstring).
        timeout: seconds to wait for another process's copy (while it makes no progress) or for
            room in the budget (while every copy is leased) before raising ``DataError``.
        storage_options: keyword arguments for the fsspec filesystem of remote URLs.

    Usage::

        cache = ShardCache()
        with cache.leased(url, checksum=info.checksum, size=info.bytes) as path:
            ...  # read the local copy; it cannot be evicted while leased
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        budget_bytes: int | str | None = None,
        *,
        timeout: float = 300.0,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if budget_bytes is not None:
            self.budget = _budget(budget_bytes, "budget_bytes")
        else:
            self.budget = _budget(os.environ.get("CANDLE_CACHE_BUDGET"), "CANDLE_CACHE_BUDGET")
        self.timeout = float(timeout)
        self.storage_options = dict(storage_options or {})
        self.stats = CacheStats()
        if cache_dir is None and os.environ.get("CANDLE_CACHE_DIR"):
            cache_dir = os.environ["CANDLE_CACHE_DIR"]
        if cache_dir is None:
            self.cache_dir = Path(tempfile.gettempdir()) / f"candle-cache-{os.getuid()}"
            self.cache_dir.mkdir(mode=0o700, exist_ok=True)
            if self.cache_dir.stat().st_uid != os.getuid():
                raise DataError(
                    f"default cache directory {self.cache_dir} belongs to another user; "
                    "set CANDLE_CACHE_DIR to a directory of your own"
                )
        else:
            self.cache_dir = Path(cache_dir).expanduser().absolute()
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise DataError(f"cannot create cache directory {self.cache_dir}: {e}") from e

    # ------------------------------------------------------------------ public API

    def fetch(
        self,
        url: str | os.PathLike[str],
        *,
        checksum: str,
        size: int | None = None,
        verify: bool = False,
    ) -> Path:
        """Path of a verified local copy of ``url`` (a local path, ``file://`` or fsspec URL).

        ``checksum`` is the manifest's ``xxh3_128:<hex>``; ``size`` its byte count (needed with
        a budget when the source cannot tell its size). A valid copy is returned without
        copying; its checksum is re-computed once per process (and with ``verify=True``), and a
        damaged copy is fetched again. The copy may be evicted once this returns: hold
        :meth:`leased` (or :meth:`lease`) while reading.
        """
        src, entry = self._entry(url, checksum)
        with _locked(entry.lease):
            return self._fetch_leased(src, entry, checksum, size, verify)

    @contextlib.contextmanager
    def leased(
        self,
        url: str | os.PathLike[str],
        *,
        checksum: str,
        size: int | None = None,
        verify: bool = False,
    ) -> Iterator[Path]:
        """:meth:`fetch` and :meth:`lease` in one step, with no window for eviction between."""
        src, entry = self._entry(url, checksum)
        with _locked(entry.lease):
            yield self._fetch_leased(src, entry, checksum, size, verify)

    @contextlib.contextmanager
    def lease(self, path: str | os.PathLike[str]) -> Iterator[Path]:
        """Mark a copy returned by :meth:`fetch` in use, so no process evicts it meanwhile.

        Leases are ``flock`` locks: any number of processes may hold one, and the kernel drops
        them when a process dies. Raises ``ShardError`` if the copy was evicted already.
        """
        path = Path(path).absolute()
        inside = path.parent.parent.resolve() == self.cache_dir.resolve()
        if not inside or not _KEY_RE.match(path.parent.name):
            raise DataError(f"{path} is not a copy in the cache {self.cache_dir}")
        with _locked(path.parent / _LEASE):
            if not path.is_file():
                raise ShardError(
                    f"{path} was evicted before it could be leased; fetch it again, or use "
                    "ShardCache.leased() to fetch and lease in one step"
                )
            yield path

    def evict(self, needed_bytes: int = 0) -> list[Path]:
        """Evict unleased copies, least recently used first, until ``needed_bytes`` more fit
        in the budget (as far as leases allow). Also deletes leftovers of killed copies.
        Returns the evicted paths; with no budget, evicts nothing."""
        if self.budget is None:
            return []
        with self._budget_lock():
            return self._evict_locked(needed_bytes)[0]

    def usage(self) -> int:
        """Bytes of finished copies in the cache (copies in progress not included)."""
        return sum(size for _, size, _ in self._scan(clean=False)[0])

    def entries(self) -> list[CacheEntry]:
        """Every finished copy, least recently used first."""
        out = []
        for path, size, last_used in self._scan(clean=False)[0]:
            fd = _try_lock(path.parent / _LEASE)
            if fd is not None:
                os.close(fd)
            out.append(CacheEntry(path, size, last_used, in_use=fd is None))
        return out

    # ------------------------------------------------------------------ fetch internals

    def _entry(self, url: str | os.PathLike[str], checksum: str) -> tuple[_Source, _Entry]:
        if not isinstance(checksum, str) or not _CHECKSUM_RE.match(checksum):
            raise DataError(
                f"checksum must look like 'xxh3_128:<32 hex digits>' (as in the data manifest), "
                f"got {checksum!r} for {os.fspath(url)}"
            )
        src = _source(url)
        h = Hasher()
        h.update(f"{src.ident}\n{checksum}".encode())
        d = self.cache_dir / h.hexdigest().split(":", 1)[1][:16]
        d.mkdir(parents=True, exist_ok=True)
        return src, _Entry(d, d / src.name, d / _LEASE, d / _FILL_LOCK)

    def _fetch_leased(
        self, src: _Source, entry: _Entry, checksum: str, size: int | None, verify: bool
    ) -> Path:
        """Hit or fill, holding the entry's lease (so it cannot be evicted under us)."""
        if self._valid(entry.final, checksum, size, verify):
            self.stats.hits += 1
        else:

            def why() -> str:
                return (
                    f"timed out after {self.timeout:.0f} s waiting for another process to copy "
                    f"{src.url} into {entry.dir} (no progress); it may be hung"
                )

            def progress() -> list[tuple[str, int]]:  # the other copy's temp file growing
                with os.scandir(entry.dir) as it:
                    parts = [f for f in it if f.name.startswith(_PART)]
                sizes = []
                for f in parts:
                    with contextlib.suppress(FileNotFoundError):
                        sizes.append((f.name, f.stat().st_size))
                return sizes

            with _exclusive(entry.fill_lock, self.timeout, why, progress):
                if self._valid(entry.final, checksum, size, verify=False):
                    self.stats.hits += 1  # another process filled it while we waited
                else:
                    self._fill(src, entry, checksum, size)
        _touch(entry.lease)
        return entry.final

    def _valid(self, path: Path, checksum: str, size: int | None, verify: bool) -> bool:
        """Is the copy at ``path`` good? Size always; full checksum once per process."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        sig = (st.st_ino, st.st_mtime_ns, st.st_size, checksum)
        if size is not None and st.st_size != size:
            _verified.pop(str(path), None)
            logger.warning(
                "cached %s has %d bytes, expected %d; fetching again", path, st.st_size, size
            )
            return False
        if not verify and _verified.get(str(path)) == sig:
            return True
        try:
            actual = file_checksum(path)
        except FileNotFoundError:  # another process found it damaged and is fetching it again
            return False
        if actual != checksum:
            _verified.pop(str(path), None)  # so the re-check under the fill lock hashes it too
            logger.warning(
                "cached %s is damaged (%s, expected %s); fetching again", path, actual, checksum
            )
            return False
        _verified[str(path)] = sig
        return True

    def _fill(self, src: _Source, entry: _Entry, checksum: str, size: int | None) -> None:
        """Copy, verify and publish one entry; the caller holds its fill lock."""
        for stale in entry.dir.glob(_PART + "*"):  # only the fill lock holder writes these
            stale.unlink(missing_ok=True)
        if entry.final.exists():  # damaged: readers that opened it keep their inode
            entry.final.unlink()
            _verified.pop(str(entry.final), None)
        start = time.monotonic()
        # Open the source before reserving space: an unreachable or missing source evicts nothing.
        known, f = self._open_source(src, size)
        with contextlib.closing(f):
            if size is not None and known is not None and known != size:
                raise _size_error(src.url, known, size)
            tmp = self._reserve(src, entry, known)
            try:
                n, actual = self._copy(src, f, tmp, limit=known)
                if size is not None and n != size:
                    raise _size_error(src.url, n, size)
                if actual != checksum:
                    raise ShardError(
                        f"checksum mismatch for shard source {src.url}: expected {checksum}, got "
                        f"{actual}; the source changed or is damaged since the manifest was "
                        "written; fix the source or re-create the manifest; nothing was cached"
                    )
                self._publish(src, tmp, entry.final)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        st = entry.final.stat()
        _verified[str(entry.final)] = (st.st_ino, st.st_mtime_ns, st.st_size, checksum)
        self.stats.fills += 1
        self.stats.bytes_copied += n
        elapsed = time.monotonic() - start
        logger.info("cached %s (%d bytes, %.1f s) as %s", src.url, n, elapsed, entry.final)

    def _open_source(self, src: _Source, size: int | None) -> tuple[int | None, IO[bytes]]:
        """(size if known, open binary file) of the source; errors name the URL and the cause."""
        if src.local:
            try:
                f = open(src.ident, "rb", buffering=0)  # noqa: SIM115 - the caller closes it
            except FileNotFoundError:
                raise ShardError(
                    f"shard source {src.url} does not exist; check the path and the data manifest"
                ) from None
            except OSError as e:
                raise DataError(f"cannot read shard source {src.url}: {e}") from e
            return os.fstat(f.fileno()).st_size, f
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(src.ident, **self.storage_options)
            known = size
            if known is None and self.budget is not None:
                known = fs.size(path)
            kwargs: dict[str, Any] = {}
            protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
            if "http" in protocols:  # one streamed GET instead of a range request per block
                kwargs = {"block_size": 0, "size": known} if known else {"block_size": 0}
            return known, fs.open(path, "rb", **kwargs)
        except Exception as e:
            raise _source_error(src.url, e) from e

    def _copy(self, src: _Source, f: IO[bytes], tmp: Path, limit: int | None) -> tuple[int, str]:
        """Copy ``f`` into ``tmp`` in one pass and hash what was copied. -> (bytes, checksum)

        No fsync: the copy is scratch data whose checksum every process verifies before first
        use (``_verified``), so a copy a crash left incomplete is caught and fetched again;
        fsync would halve the fill rate. ``tmp`` exists and is empty; it is opened without
        O_TRUNC, because ext4 flushes a file truncated to zero when it is closed
        (``auto_da_alloc``), which cost a third of the fill rate here.
        """
        h = Hasher()
        with open(tmp, "r+b", buffering=0) as out:
            try:
                n = self._copy_mapped(src, f, out, h) if src.local else 0
                n += self._copy_stream(src, f, out, h, n, limit)
            except OSError as e:
                raise DataError(
                    f"cannot write {tmp}: {e}; is {self.cache_dir} full? Point "
                    "CANDLE_CACHE_DIR elsewhere or lower CANDLE_CACHE_BUDGET"
                ) from e
        return n, h.hexdigest()

    @staticmethod
    def _copy_mapped(src: _Source, f: IO[bytes], out: IO[bytes], h: Hasher) -> int:
        """Copy a local file from its page-cache pages, as ``shutil.copyfile`` copies it once.

        Both files are mapped: each chunk is written from the source's pages, then hashed from
        the copy's, while it is still in the CPU cache; so the checksum is that of the bytes in
        the cache, not of a second read of the source. -> bytes copied (0: not mappable; the
        caller streams it instead)
        """
        fd, dst = f.fileno(), out.fileno()
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        os.ftruncate(dst, size)  # map the copy's full length; extending, not truncating
        try:
            source = mmap.mmap(fd, size, flags=_MAP_FLAGS, prot=mmap.PROT_READ)
        except (OSError, ValueError):  # a file system that cannot map files
            os.ftruncate(dst, 0)
            return 0
        try:
            copy = mmap.mmap(dst, size, prot=mmap.PROT_READ)
        except (OSError, ValueError):
            source.close()
            os.ftruncate(dst, 0)
            return 0
        with source, copy, memoryview(source) as sv, memoryview(copy) as cv:
            for off in range(0, size, _MAP_CHUNK):
                end = min(off + _MAP_CHUNK, size)
                # Reading a mapped page past the end of a file that shrank is SIGBUS, which
                # kills the process: check the size before touching each chunk.
                if os.fstat(fd).st_size < end:
                    raise ShardError(
                        f"shard source {src.url} shrank while being copied (it had {size} "
                        "bytes); shards must not be rewritten in place"
                    )
                done = off
                while done < end:  # a write may take part of the chunk
                    with sv[done:end] as part:
                        done += os.pwrite(dst, part, done)
                with cv[off:end] as written:
                    h.update(written)
        f.seek(size)  # anything appended meanwhile is read by the caller, which then refuses it
        return size

    @staticmethod
    def _copy_stream(
        src: _Source, f: IO[bytes], out: IO[bytes], h: Hasher, n: int, limit: int | None
    ) -> int:
        """Copy the rest of ``f`` through one reused buffer (read, hash, write). -> bytes

        A fresh 4 MiB ``bytes`` per chunk would be above malloc's mmap threshold, so each chunk
        would cost a map, page faults and an unmap.
        """
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        readinto = getattr(f, "readinto", None)
        out.seek(n)
        copied = 0
        while True:
            try:
                if readinto is not None:
                    got = readinto(buf)
                    chunk = view[:got] if got else b""
                else:
                    chunk = f.read(_CHUNK)
            except Exception as e:
                raise _source_error(src.url, e) from e
            if not chunk:
                return copied
            copied += len(chunk)
            if limit is not None and n + copied > limit:
                raise ShardError(
                    f"shard source {src.url} is larger than the {limit} bytes expected; "
                    "it changed while being copied or does not match the data manifest"
                )
            h.update(chunk)
            rest = memoryview(chunk)
            while rest:  # an unbuffered write may take part of the chunk
                rest = rest[out.write(rest) :]

    # ------------------------------------------------------------------ budget

    def _budget_lock(self) -> contextlib.AbstractContextManager[None]:
        # Blocking, not polled: it is held only for a directory scan, and pollers would starve
        # behind blocking waiters when hundreds of processes fill at once.
        return _locked(self.cache_dir / _BUDGET_LOCK, fcntl.LOCK_EX)

    def _reserve(self, src: _Source, entry: _Entry, needed: int | None) -> Path:
        """Wait until the cache is within budget (evicting), then create the temp file."""
        if self.budget is None:
            return self._new_part(entry, needed or 0)
        if needed is None:
            raise DataError(
                f"the size of {src.url} is unknown (the server sent none); pass size= (the data "
                "manifest's byte count) so the cache can keep to its budget"
            )
        deadline = time.monotonic() + self.timeout
        while True:
            with self._budget_lock():
                used = self._evict_locked(0)[1]
                if used <= self.budget:
                    return self._new_part(entry, needed)
            if time.monotonic() >= deadline:
                raise DataError(
                    f"cannot cache {src.url} ({needed} bytes): {self.cache_dir} holds {used} "
                    f"bytes, over its budget of {self.budget}, all of it in use (leased or being "
                    f"copied), and waited {self.timeout:.0f} s. Raise CANDLE_CACHE_BUDGET or "
                    "lease fewer shards at once"
                )
            time.sleep(0.1)

    def _publish(self, src: _Source, tmp: Path, final: Path) -> None:
        """Rename the verified copy into place, then evict back down to the budget.

        Under the budget lock, so that no scan sees the copy under neither name (or both).
        """
        if self.budget is None:
            os.replace(tmp, final)
            return
        with self._budget_lock():
            os.replace(tmp, final)
            used = self._evict_locked(0)[1]
        if used > self.budget:
            logger.warning(
                "cache %s holds %d bytes, over its budget of %d, after adding %s: the other "
                "copies are in use; nothing else is cached until leases end",
                *(self.cache_dir, used, self.budget, src.url),
            )

    @staticmethod
    def _new_part(entry: _Entry, reserved: int) -> Path:
        tmp = entry.dir / f"{_PART}{reserved}-{secrets.token_hex(6)}"
        tmp.touch(exist_ok=False)
        return tmp

    def _scan(self, clean: bool) -> tuple[list[tuple[Path, int, float]], int]:
        """([(copy, size, last_used)] oldest first, bytes reserved by copies in progress).

        With ``clean`` (budget lock held), temp files whose fill lock nobody holds are leftovers
        of killed fillers and are deleted.
        """
        cached, reserved = [], 0
        with os.scandir(self.cache_dir) as top:
            dirs = [Path(d.path) for d in top if _KEY_RE.match(d.name) and d.is_dir()]
        for d in dirs:
            copies, parts, last_used = [], [], None
            with contextlib.suppress(FileNotFoundError), os.scandir(d) as it:
                for f in it:
                    with contextlib.suppress(FileNotFoundError):  # evicted meanwhile
                        if f.name.startswith(_PART):
                            parts.append((Path(f.path), f.stat().st_size))
                        elif f.name == _LEASE:
                            last_used = f.stat().st_mtime
                        elif not f.name.startswith(_PREFIX):
                            st = f.stat()
                            copies.append((Path(f.path), st.st_size, st.st_mtime))
            cached += [(p, size, last_used or mtime) for p, size, mtime in copies]
            if not (parts and clean):
                continue
            fd = _try_lock(d / _FILL_LOCK)
            if fd is None:  # a live filler: count what it reserved
                for p, current in parts:
                    declared = p.name[len(_PART) :].split("-", 1)[0]
                    reserved += max(int(declared) if declared.isdigit() else 0, current)
                continue
            try:
                for p, _ in parts:
                    logger.info("removing %s, left by a killed copy", p)
                    p.unlink(missing_ok=True)
            finally:
                os.close(fd)
        cached.sort(key=lambda c: (c[2], str(c[0])))
        return cached, reserved

    def _evict_locked(self, needed: int) -> tuple[list[Path], int]:
        """Evict LRU unleased copies while ``used + needed > budget`` (budget lock held).

        Returns the evicted paths and ``used`` after them (copies + reservations in flight).
        """
        assert self.budget is not None
        cached, used = self._scan(clean=True)
        used += sum(size for _, size, _ in cached)
        evicted = []
        for path, size, _ in cached:
            if used + needed <= self.budget:
                break
            fd = _try_lock(path.parent / _LEASE)
            if fd is None:  # leased: in use by some process
                continue
            try:
                path.unlink(missing_ok=True)
                _verified.pop(str(path), None)
            finally:
                os.close(fd)
            used -= size
            evicted.append(path)
            self.stats.evictions += 1
            logger.info("evicted %s (%d bytes) from the cache", path, size)
        return evicted, used
