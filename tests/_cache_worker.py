"""Separate processes for tests/test_data_cache.py: fetch shards, or hold leases on them.

    python tests/_cache_worker.py '<json>'

JSON keys: ``cache_dir``; ``procs``: one list of ``[url, checksum, size]`` per process;
optional ``budget``, ``ready`` (file created once every process is started, or once the leases
are held), ``start`` (file to wait for before fetching), ``hold`` (keep the leases until this
file exists), ``out`` (process i writes its JSON result to ``<out>.<i>``).

With several ``procs``, this process imports candle once and forks them (after the import, so
they start in milliseconds, not seconds each); with one, it does the work itself, so that
killing it kills the copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

from candle.data._hash import file_checksum
from candle.data.cache import ShardCache


def _wait_for(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.001)


def run(args: dict, shards: list, out: str) -> None:
    cache = ShardCache(args["cache_dir"], budget_bytes=args.get("budget"))
    if args.get("start"):
        _wait_for(args["start"])
    results = []
    with contextlib.ExitStack() as leases:
        for url, checksum, size in shards:
            # read under a lease, so that no other process evicts the copy meanwhile
            lease = cache.leased(url, checksum=checksum, size=size)
            with contextlib.ExitStack() as this_one:
                path = (leases if args.get("hold") else this_one).enter_context(lease)
                st = path.stat()
                results.append({"path": str(path), "inode": st.st_ino, "read": file_checksum(path)})
        if args.get("hold"):
            Path(args["ready"]).touch()
            _wait_for(args["hold"])
    result = {"fills": cache.stats.fills, "hits": cache.stats.hits, "results": results}
    Path(out).write_text(json.dumps(result))


def main() -> None:
    args = json.loads(sys.argv[1])
    if len(args["procs"]) == 1:
        if args.get("ready") and not args.get("hold"):
            Path(args["ready"]).touch()
        run(args, args["procs"][0], f"{args['out']}.0")
        return
    pids = []
    for i, shards in enumerate(args["procs"]):
        pid = os.fork()
        if pid == 0:  # the child: never returns into the parent's code
            code = 1
            try:
                run(args, shards, f"{args['out']}.{i}")
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    if args.get("ready"):
        Path(args["ready"]).touch()
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    sys.exit(1 if any(codes) else 0)


if __name__ == "__main__":
    main()
