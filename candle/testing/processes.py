"""Processes of a launched job: find and kill a launcher with all of its workers.

``horovodrun`` and ``torchrun`` start their workers in sessions of their own, so killing the
launcher's process group leaves them running; these helpers walk ``/proc`` instead (Linux).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path

__all__ = ["descendants", "find_launcher", "kill_tree"]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue
            # the parent pid is the 2nd field after the command name, which may hold spaces
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and everything below it at once, as a node failure would."""
    for p in [*descendants(pid), pid]:  # collected first: children of a dead parent move
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def find_launcher(name: str) -> str | None:
    """Path of a launcher (``horovodrun``, ``torchrun``): the one installed beside this Python
    first (a venv's), then ``PATH``; None when there is none."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
