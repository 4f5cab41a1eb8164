"""Full-state training checkpoints: atomic on write, verified on load, never arbitrary pickles.

A checkpoint must survive the three ways runs die in practice: the process is killed while
writing (so every file is written to a temp file and renamed into place), the file is damaged
afterwards (so a SHA-256 sidecar is checked before anything is unpickled), and the file comes
from somewhere untrusted (so it is loaded with ``torch.load(weights_only=True)``, which only
rebuilds tensors and plain containers and cannot run code).

Layout of a checkpoint directory::

    ckpt-e0003-s00001200.pt          torch.save({"candle_checkpoint": 1, "epoch", "step",
                                                 "metric", "state": <user state>})
    ckpt-e0003-s00001200.pt.sha256   JSON: {"sha256", "file", "epoch", "step", "metric"}
    last                             name of the newest checkpoint written
    best                             name of the best checkpoint still on disk (per ``mode``)

The sidecar is written before the checkpoint is renamed into place, so a ``.pt`` whose sidecar
is missing or disagrees with its bytes is incomplete or damaged, and is never trusted.
Only one process may write to a directory (in distributed runs: rank 0).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import pickle
import random
import re
import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from candle.errors import CheckpointError, ConfigError

__all__ = [
    "FORMAT_VERSION",
    "CheckpointInfo",
    "CheckpointManager",
    "atomic_write_bytes",
    "atomic_write_text",
    "capture_rng_state",
    "restore_rng_state",
]

#: Version stored under ``"candle_checkpoint"`` in every record; bumped on incompatible change.
FORMAT_VERSION = 1

logger = logging.getLogger("candle.checkpoint")

_NAME_RE = re.compile(r"^ckpt-e(\d{4,})-s(\d{8,})\.pt$")
_SIDECAR_SUFFIX = ".sha256"
_TMP_SUFFIX = ".tmp"
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
# Exact types torch.load(weights_only=True) rebuilds without extra allow-listing.
_PLAIN_TYPES = (bool, int, float, complex, str, bytes, bytearray, type(None))
_PLAIN_TYPES += (torch.dtype, torch.device, torch.Size)
_CONTAINERS = (dict, OrderedDict, Counter, list, tuple, set)
_ALLOWED_MSG = (
    "only tensors and plain containers (dict, list, tuple, set) of int, float, str, bool, "
    "bytes and None are allowed in a candle checkpoint"
)


# --------------------------------------------------------------------------- atomic writes


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: the new directory entry is only safe once the directory is synced."""
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open directories; rename is enough there
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write a fresh, fsynced temp file next to ``path`` (same filesystem, so rename is atomic)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _replace(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` over ``path`` and sync the directory; a failure never leaves ``tmp``."""
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see either the old file or the complete new one.

    A killed writer leaves at most a hidden ``.<name>.<random>.tmp`` file beside ``path``.
    """
    path = Path(path)
    _replace(_write_temp(path, lambda f: f.write(data)), path)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """Snapshot Python ``random``, NumPy's global RNG, torch CPU and every CUDA device.

    Everything is stored as tensors, ints, floats, str or None so the snapshot survives
    ``torch.load(weights_only=True)``; NumPy's ``uint32`` key becomes an int64 tensor.
    """
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "numpy": {
            "bit_generator": str(np_name),
            "key": torch.from_numpy(np.asarray(np_key, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`: the next random numbers match those at capture."""
    if "python" in state:
        py = state["python"]
        internal = tuple(int(x) for x in _as_list(py["internal"]))
        random.setstate((int(py["version"]), internal, py["gauss_next"]))
    if "numpy" in state:
        nps = state["numpy"]
        key = np.asarray(_as_list(nps["key"]), dtype=np.uint32)
        pos, has_gauss, gauss = int(nps["pos"]), int(nps["has_gauss"]), nps["cached_gaussian"]
        np.random.set_state((nps["bit_generator"], key, pos, has_gauss, float(gauss)))
    if "torch" in state:
        torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    cuda_states = state.get("cuda")
    if cuda_states:
        if not torch.cuda.is_available():
            logger.warning("checkpoint has CUDA RNG state but CUDA is unavailable; not restored")
            return
        count = torch.cuda.device_count()
        if count != len(cuda_states):
            logger.warning(
                "checkpoint has CUDA RNG state for %d device(s), %d visible; restoring %d",
                len(cuda_states),
                count,
                min(count, len(cuda_states)),
            )
        for device, device_state in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(device_state.to("cpu", torch.uint8), device)


def _as_list(value: Any) -> builtins.list[Any]:
    return value.tolist() if isinstance(value, torch.Tensor | np.ndarray) else list(value)


# --------------------------------------------------------------------------- validation


def _check_loadable(obj: Any, where: str = "state") -> None:
    """Refuse at save time what ``weights_only`` would refuse at load time.

    Finding out only when resuming (typically a ``numpy.float64`` in a metric history) would
    lose the run, so the error names the offending entry now.
    """
    if isinstance(obj, torch.Tensor):
        return
    kind = type(obj)
    if kind in _PLAIN_TYPES or kind in _safe_globals():
        return
    if kind not in _CONTAINERS:
        hint = " (convert NumPy values with float()/int() or torch.as_tensor())"
        hint = hint if kind.__module__ == "numpy" else ""
        raise CheckpointError(
            f"cannot checkpoint {where}: {kind.__module__}.{kind.__qualname__} is not "
            f"allowed; {_ALLOWED_MSG}{hint}"
        )
    if isinstance(obj, dict):
        for key, value in obj.items():
            _check_loadable(key, f"{where} key {key!r}")
            _check_loadable(value, f"{where}[{key!r}]")
    else:
        for i, value in enumerate(obj):
            _check_loadable(value, f"{where}[{i}]")


def _safe_globals() -> set[Any]:
    """Types the user allow-listed with ``torch.serialization.add_safe_globals``."""
    entries = torch.serialization.get_safe_globals()
    return {e[0] if isinstance(e, tuple) else e for e in entries}


def _describe_unpickling_error(exc: BaseException) -> str:
    """Keep the line of torch's long weights_only message that names the refused global."""
    lines = [ln.strip() for ln in _ANSI_RE.sub("", str(exc)).splitlines() if ln.strip()]
    for line in lines:
        if "WeightsUnpickler error" in line:
            return line
    return lines[0] if lines else type(exc).__name__


# --------------------------------------------------------------------------- manager


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint on disk; ``metric`` comes from its sidecar (None if unknown or unset)."""

    path: Path
    epoch: int
    step: int
    metric: float | None = None


class CheckpointManager:
    """Writes, prunes and loads the checkpoints of one run in ``directory``.

    ``keep_last`` newest checkpoints (ordered by step, then epoch) are kept; with
    ``keep_best`` the best one by ``metric`` (lowest for ``mode="min"``, highest for
    ``"max"``; NaN never counts) is kept too, however old.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        keep_last: int = 2,
        keep_best: bool = True,
        mode: str = "min",
    ) -> None:
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ConfigError(f"keep_last must be an int >= 1, got {keep_last!r}")
        if mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'min' or 'max', got {mode!r}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.mode = mode
        self.directory.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ paths

    def path_for(self, epoch: int, step: int) -> Path:
        """Where the checkpoint for ``(epoch, step)`` is (or would be) written."""
        return self.directory / f"ckpt-e{epoch:04d}-s{step:08d}.pt"

    @property
    def last_path(self) -> Path | None:
        """Checkpoint named by the ``last`` pointer file; None when there is no pointer."""
        return self._read_pointer("last")

    @property
    def best_path(self) -> Path | None:
        """Checkpoint named by the ``best`` pointer file; None when there is no pointer."""
        return self._read_pointer("best")

    def list(self) -> builtins.list[CheckpointInfo]:
        """Checkpoints in the directory, oldest to newest; temp files are never included."""
        infos = []
        for path in self.directory.iterdir():
            match = _NAME_RE.match(path.name)
            if match and path.is_file():
                sidecar = self._read_sidecar(path)
                metric = sidecar.get("metric") if sidecar else None
                epoch, step = int(match[1]), int(match[2])
                infos.append(CheckpointInfo(path, epoch, step, _as_metric(metric)))
        return sorted(infos, key=lambda i: (i.step, i.epoch))

    # ------------------------------------------------------------------ save

    def save(
        self, state: Mapping[str, Any], *, epoch: int, step: int, metric: float | None = None
    ) -> Path:
        """Atomically write ``state`` as the checkpoint for ``(epoch, step)``; return its path.

        Then points ``last`` at it, prunes per the keep policy and updates ``best``.
        Saving the same ``(epoch, step)`` again replaces that checkpoint.
        """
        for name, value in (("epoch", epoch), ("step", step)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CheckpointError(f"{name} must be an int >= 0, got {value!r}")
        metric = None if metric is None else float(metric)
        state = dict(state)
        _check_loadable(state)
        record = {
            "candle_checkpoint": FORMAT_VERSION,
            "epoch": epoch,
            "step": step,
            "metric": metric,
            "state": state,
        }
        path = self.path_for(epoch, step)
        try:
            self._write_checkpoint(path, record)
            self._write_pointer("last", path)
            self._prune(keep=path)
        except OSError as exc:
            raise CheckpointError(f"saving checkpoint {path} failed: {exc}") from exc
        return path

    def _write_checkpoint(self, path: Path, record: dict[str, Any]) -> None:
        tmp = _write_temp(path, lambda f: torch.save(record, f))
        sidecar = path.with_name(path.name + _SIDECAR_SUFFIX)
        old_sidecar = sidecar.read_bytes() if sidecar.exists() else None
        try:
            info = {
                "sha256": _sha256_file(tmp),
                "file": path.name,
                "epoch": record["epoch"],
                "step": record["step"],
                "metric": record["metric"],
            }
            atomic_write_text(sidecar, json.dumps(info, indent=2) + "\n")
            _replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            # Leave the previous (checkpoint, sidecar) pair consistent, or no stray sidecar.
            # Should that fail too, load() reports the mismatch and load_latest() falls back.
            with contextlib.suppress(OSError):
                if old_sidecar is not None:
                    atomic_write_bytes(sidecar, old_sidecar)
                else:
                    sidecar.unlink(missing_ok=True)
            raise

    def _prune(self, keep: Path) -> None:
        infos = self.list()
        best = self._best_of(infos)
        survivors = {i.path for i in infos[-self.keep_last :]} | {keep}
        if self.keep_best and best is not None:
            survivors.add(best.path)
        for info in infos:
            if info.path not in survivors:
                info.path.unlink(missing_ok=True)
                info.path.with_name(info.path.name + _SIDECAR_SUFFIX).unlink(missing_ok=True)
        # Only the (single) writer cleans up, so a reader never deletes a write in progress.
        for leftover in self.directory.glob(f".*{_TMP_SUFFIX}"):  # from a killed writer
            leftover.unlink(missing_ok=True)
        for sidecar in self.directory.glob(f"ckpt-*.pt{_SIDECAR_SUFFIX}"):
            if not sidecar.with_suffix("").exists():  # orphan of a checkpoint deleted by hand
                sidecar.unlink(missing_ok=True)
        # Without keep_best the best may have just been deleted: point at the best survivor.
        best = self._best_of([i for i in infos if i.path in survivors])
        if best is None:
            (self.directory / "best").unlink(missing_ok=True)
        elif self.best_path != best.path:
            self._write_pointer("best", best.path)

    def _best_of(self, infos: builtins.list[CheckpointInfo]) -> CheckpointInfo | None:
        """Best metric; ties go to the older checkpoint (a later one must strictly improve)."""
        best, best_metric = None, math.nan
        for info in infos:
            metric = info.metric
            if metric is None or math.isnan(metric):
                continue
            better = metric < best_metric if self.mode == "min" else metric > best_metric
            if best is None or better:
                best, best_metric = info, metric
        return best

    # ------------------------------------------------------------------ load

    def load(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Verify and load one checkpoint; return the record (``epoch``, ``step``, ``metric``,
        ``state``). A bare file name that does not exist as given is looked up in the directory.

        Raises CheckpointError when the file is missing, its sidecar is missing or disagrees
        with its bytes, it cannot be unpickled safely, or it is not a candle checkpoint.
        """
        path = Path(path)
        if path.name == str(path) and not path.exists():
            path = self.directory / path
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
        sidecar = self._read_sidecar(path)
        if sidecar is None or not isinstance(sidecar.get("sha256"), str):
            raise CheckpointError(
                f"checkpoint {path}: checksum sidecar {path.name}{_SIDECAR_SUFFIX} is missing "
                "or unreadable, so the write may never have completed"
            )
        expected, actual = sidecar["sha256"], hashlib.sha256(data).hexdigest()
        if expected != actual:
            raise CheckpointError(
                f"checkpoint {path}: checksum mismatch (expected sha256 {expected}, "
                f"actual {actual}); the file is truncated or corrupt"
            )
        try:
            record = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"checkpoint {path}: refused to unpickle it ({_ALLOWED_MSG}): "
                f"{_describe_unpickling_error(exc)}"
            ) from exc
        except Exception as exc:
            raise CheckpointError(
                f"checkpoint {path} is truncated or corrupt: {type(exc).__name__}: {exc}"
            ) from exc
        version = record.get("candle_checkpoint") if isinstance(record, dict) else None
        if not isinstance(version, int) or "state" not in record:
            raise CheckpointError(f"{path} is not a candle checkpoint")
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {path} has format {version}; this candle reads up to {FORMAT_VERSION}"
            )
        return record

    def load_latest(self) -> dict[str, Any] | None:
        """Load the newest valid checkpoint, or None when the directory has none.

        Tries the ``last`` pointer, then every other checkpoint newest first, logging a warning
        for each one skipped. Raises CheckpointError if checkpoints exist but none is valid.
        """
        candidates: builtins.list[Path] = []
        if (self.directory / "last").exists():
            last = self.last_path
            if last is None:
                logger.warning("ignoring %s: it names no checkpoint", self.directory / "last")
            else:
                candidates.append(last)
        candidates += [i.path for i in reversed(self.list()) if i.path not in candidates]
        if not candidates:
            return None
        failures = []
        for path in candidates:
            try:
                return self.load(path)
            except CheckpointError as exc:
                logger.warning("%s; falling back to an older checkpoint", exc)
                failures.append(f"  - {exc}")
        raise CheckpointError(f"no valid checkpoint in {self.directory}:\n" + "\n".join(failures))

    def load_best(self) -> dict[str, Any] | None:
        """Load the checkpoint named by ``best``; None when no metric was ever recorded."""
        best = self.best_path
        return None if best is None else self.load(best)

    # ------------------------------------------------------------------ helpers

    def _read_pointer(self, name: str) -> Path | None:
        try:
            target = (self.directory / name).read_text(encoding="utf-8").strip()
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        # A pointer only ever names a checkpoint in this directory, never an arbitrary path.
        return self.directory / target if _NAME_RE.match(target) else None

    def _write_pointer(self, name: str, target: Path) -> None:
        atomic_write_text((self.directory / name), target.name + "\n")

    @staticmethod
    def _read_sidecar(path: Path) -> dict[str, Any] | None:
        try:
            info = json.loads(path.with_name(path.name + _SIDECAR_SUFFIX).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) and info.get("file") == path.name else None


def _as_metric(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
