"""Parsl site profiles for ``executor: {kind: parsl, site: NAME}``.

Each module here defines ``make_config(run_dir: str, **options) -> parsl.config.Config``;
``options`` come from the executor section's ``options:`` mapping.

- :mod:`~candle.workflow.sites.local`: this machine (workers on 127.0.0.1), for testing a study
  before it goes to a cluster.
- :mod:`~candle.workflow.sites.slurm`: blocks of nodes from Slurm (``sbatch``).
- :mod:`~candle.workflow.sites.pbs`: blocks of nodes from PBS Pro (``qsub``).

The cluster profiles are templates: copy one, edit it (the comments at its top say which lines
matter) and pass the copy as ``executor: {kind: parsl, config: my_site.py}``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import sys
from typing import Any

SITES = ("local", "slurm", "pbs")


def venv_path_init() -> str:
    """A ``worker_init`` line that puts this Python's ``bin/`` first on ``PATH``.

    Parsl starts its workers as ``process_worker_pool.py``, a script installed next to the
    Python that has Parsl; on a cluster whose compute nodes see the same file system (the
    usual case) this finds the same virtual environment there.
    """
    return f'export PATH="{os.path.dirname(sys.executable)}:$PATH"'


def worker_addresses() -> list[str]:
    """This machine's IPv4 addresses, for workers to try when no ``address`` is given.

    What Parsl itself does without ``address``, less its query of a web service for the public
    address (which can hang for 30 s on a login node without internet, and is rarely the one
    compute nodes reach) and the sockets it leaves unclosed.
    """
    import psutil  # a dependency of Parsl

    found: list[str] = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                found.append(a.address)
    with contextlib.suppress(OSError):
        found.append(socket.gethostbyname(platform.node()))
    return sorted(set(found)) or ["127.0.0.1"]


def set_addresses(executor: Any, address: str | None) -> None:
    """Make a HighThroughputExecutor (made with a placeholder address) listen on all
    interfaces and tell its workers ``address``, or else every address of this machine."""
    executor.address = address  # None: the interchange binds to all interfaces
    executor.all_addresses = {address} if address else set(worker_addresses())
