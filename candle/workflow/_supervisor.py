"""The trial supervisor: runs one trial command and keeps it accountable.

    python .../candle/workflow/_supervisor.py --watch-fd FD --time-limit S --grace S -- CMD ...

The trial command (``python -m candle train ...``, or ``horovodrun``/``torchrun``/``mpiexec``
around it) runs in its own session, so the whole process tree can be signalled at once. The
supervisor kills that tree when

- the time limit passes (SIGTERM, then SIGKILL after the grace period; exit status 124), or
- the process that started it dies: it holds the read end of a pipe whose write end only the
  starter has, so end-of-file means the driver (or the Parsl worker) is gone, even after SIGKILL.
  A trial is never left running unwatched, and a restarted driver never finds two copies of
  one trial writing the same directory.

It imports only the standard library and is started by its path, not with ``-m`` (which would
import the candle package, and torch with it): it costs a bare Python start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

EXIT_TIME_LIMIT = 124  # as coreutils `timeout`
EXIT_ORPHANED = 125


def _kill_tree(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the command's process group, then SIGKILL whatever is left after ``grace``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # also children that outlived the leader
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="candle/workflow/_supervisor.py")
    ap.add_argument("--watch-fd", type=int, default=-1)
    ap.add_argument("--time-limit", type=float, default=0.0)
    ap.add_argument("--grace", type=float, default=10.0)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command after --")
    proc = subprocess.Popen(cmd, start_new_session=True)
    why: list[str] = []
    done = threading.Event()

    def stop(reason: str) -> None:
        if not why:
            why.append(reason)
            _kill_tree(proc, args.grace)
        done.set()

    def watch_parent() -> None:
        try:
            while os.read(args.watch_fd, 4096):  # nothing is ever written: wait for EOF
                pass
        except OSError:
            pass
        if proc.poll() is None:
            stop("orphaned")

    def on_term(signum: int, frame: object) -> None:
        threading.Thread(target=stop, args=("terminated",), daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if args.watch_fd >= 0:
        threading.Thread(target=watch_parent, daemon=True).start()
    deadline = time.monotonic() + args.time_limit if args.time_limit > 0 else None
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            rc = proc.wait(timeout)
            break
        except subprocess.TimeoutExpired:
            stop("time_limit")
    done.wait(timeout=args.grace + 5 if why else 0)
    # stop the rest of the tree (e.g. ranks a launcher left behind)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if why and why[0] == "time_limit":
        return EXIT_TIME_LIMIT
    if why and why[0] == "orphaned":
        return EXIT_ORPHANED
    return rc if rc >= 0 else 128 - rc  # a signal as the shell reports it (SIGKILL: 137)


if __name__ == "__main__":
    sys.exit(main())
