"""The run directory and its ``result.json``: the contract that search, UQ and data analysis read.

A run directory holds::

    params.yaml        the fully resolved parameters
    train.log          the log of the main process
    metrics.jsonl      one line of metrics per epoch (or metrics.csv)
    tensorboard/       TensorBoard event files
    checkpoints/       full-state checkpoints with checksums and `last`/`best` pointers
    result.json        status, metrics, objective, timings, provenance
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from candle.checkpoint import atomic_write_text

__all__ = [
    "RESULT_FILE",
    "new_run_id",
    "provenance",
    "read_result",
    "resolve_run_dir",
    "write_result",
]

RESULT_FILE = "result.json"


def new_run_id() -> str:
    """A sortable, unique run id: ``20261127-134005-1a2b``."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]


def resolve_run_dir(
    output_dir: str, experiment: str, run_id: str, run_dir: str, resume: bool
) -> Path:
    """Where a run writes. An explicit ``run_dir`` wins; else ``output_dir/experiment/run_id``.

    With ``resume`` and no id, the newest run of the experiment is continued (a job script can
    always pass ``resume=true``: the first submission starts fresh, a requeued one continues).
    """
    if run_dir:
        return Path(run_dir)
    base = Path(output_dir) / experiment
    if not run_id and resume and base.is_dir():
        previous = sorted(p for p in base.iterdir() if (p / "checkpoints").is_dir())
        if previous:
            return previous[-1]
    return base / (run_id or new_run_id())


def _git_commit(cwd: Path) -> dict[str, Any] | None:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict[str, Any]:
    """Package versions, host and git commit (of the working directory), recorded with each run."""
    import numpy
    import torch

    import candle

    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {
            "candle": candle.__version__,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "cuda": torch.version.cuda,
        },
        "git": _git_commit(Path.cwd()),
        "argv": sys.argv,
        "pid": os.getpid(),
    }


def _jsonable(value: Any) -> Any:
    """NaN and inf are not JSON: write them as strings so the file stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_result(run_dir: Path, result: dict[str, Any]) -> Path:
    """Write ``result.json`` atomically (a reader never sees half a file)."""
    path = Path(run_dir) / RESULT_FILE
    atomic_write_text(path, json.dumps(_jsonable(result), indent=2, sort_keys=True) + "\n")
    return path


def read_result(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read a run's ``result.json``."""
    with open(Path(run_dir) / RESULT_FILE, encoding="utf-8") as f:
        return json.load(f)
