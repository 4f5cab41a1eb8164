"""Shared helpers of the benchmark scripts: the ``RESULT`` line they print and its parser.

Every benchmark prints one ``RESULT`` line per checked metric, last in its output::

    RESULT <benchmark> <metric>=<value> target<op><number> <PASS|FAIL> [key=value ...]
    RESULT <benchmark> <metric>=<value> target=none INFO [key=value ...]

``<op>`` is ``<=``, ``>=``, ``<`` or ``>``. ``INFO`` lines carry a figure that has no target
(or whose target does not apply on this machine); they never fail a run. ``run_all.py``
collects these lines from every script and fails if any says ``FAIL``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "Result",
    "current_rss_mb",
    "format_result",
    "minor_faults",
    "parse_result",
    "peak_rss_mb",
    "reset_peak_rss",
    "steady_malloc",
]

_RESULT_RE = re.compile(
    r"^RESULT\s+(?P<bench>\S+)\s+(?P<metric>[^=\s]+)=(?P<value>\S+)\s+"
    r"target(?P<target>(?:<=|>=|<|>|=)\S+)\s+(?P<status>PASS|FAIL|INFO)(?P<extra>(?:\s+\S+)*)\s*$"
)


@dataclass
class Result:
    benchmark: str
    metric: str
    value: str
    target: str  # "<=1.03", ">=100", or "none"
    status: str  # PASS, FAIL or INFO
    extra: dict[str, str] = field(default_factory=dict)


def format_result(
    benchmark: str,
    metric: str,
    value: float | int | str,
    *,
    target: str | None,
    status: str,
    **extra: object,
) -> str:
    """One ``RESULT`` line. ``target`` is like ``"<=1.03"``, or None for an INFO figure."""
    if status not in ("PASS", "FAIL", "INFO"):
        raise ValueError(f"status must be PASS, FAIL or INFO, got {status!r}")
    shown = f"{value:.6g}" if isinstance(value, float) else str(value)
    tgt = f"target{target}" if target else "target=none"
    tail = "".join(
        f" {k}={v:.6g}" if isinstance(v, float) else f" {k}={v}" for k, v in extra.items()
    )
    return f"RESULT {benchmark} {metric}={shown} {tgt} {status}{tail}"


def parse_result(line: str) -> Result | None:
    """The ``Result`` of a ``RESULT`` line, or None if ``line`` is not one."""
    m = _RESULT_RE.match(line.strip())
    if m is None:
        return None
    target = m["target"]
    target = "none" if target == "=none" else target
    extra = {}
    for item in m["extra"].split():
        key, _, val = item.partition("=")
        extra[key] = val
    return Result(m["bench"], m["metric"], m["value"], target, m["status"], extra)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    On Linux, ``VmHWM`` from ``/proc/self/status``, not ``getrusage``'s ``ru_maxrss``: in a
    process started by ``subprocess`` (vfork + exec), ``ru_maxrss`` also counts the *parent's*
    peak (the kernel keeps the pre-exec address space's high-water mark), so a small child of
    a big parent reports the parent's figure. Elsewhere, ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB else


def current_rss_mb() -> float | None:
    """This process's resident set size now, in MiB (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Reset the peak RSS (``VmHWM``) to the current RSS, so a later
    ``peak_rss_mb()`` covers only what ran since (Linux >= 4.0). False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def steady_malloc() -> bool:
    """Make glibc's malloc keep freed memory instead of returning it to the OS each time.

    By default glibc serves blocks above a (moving) threshold of a few MB with ``mmap`` and
    unmaps them on ``free``; PyTorch's CPU tensors go through ``malloc``, so a training step
    whose gradients and optimizer temporaries are that large maps, faults in and unmaps them
    again every step. How often that happens depends on the process's allocation history and
    moves step times by 15-20 % between otherwise identical runs. Fixing the thresholds
    (``mallopt``, as the ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` environment
    variables would at start-up) removes that noise. Returns False where not glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_mmap_threshold, 32 << 20) == 1  # glibc's maximum on 64-bit
    return mallopt(m_trim_threshold, 1 << 30) == 1 and ok


def minor_faults() -> int:
    """Minor page faults of this process so far (``getrusage``)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
