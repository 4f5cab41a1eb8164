"""Parsl on this machine: one block of workers started here, all traffic on 127.0.0.1.

For trying a study with the Parsl executor before it goes to a cluster, and for tests::

    executor:
      kind: parsl
      site: local
      options: {max_workers_per_node: 4}

Options (all optional):

- ``max_workers_per_node`` (2): trials that run at once.
- ``cores_per_worker``: CPUs Parsl counts per worker; the pool starts
  ``min(max_workers_per_node, CPUs / cores_per_worker)`` workers. Default: this machine's CPUs
  divided by ``max_workers_per_node``, so exactly ``max_workers_per_node`` workers start. It
  only counts: a trial's threads are its ``resources.threads``.
- ``available_accelerators``: GPUs to hand out, an int N (GPUs 0..N-1) or a list of ids; each
  worker then sees one GPU through ``CUDA_VISIBLE_DEVICES`` and at most that many workers start.
- ``heartbeat_period`` (2) / ``heartbeat_threshold`` (10), seconds: how often the worker pool
  and the interchange check on each other and how long a silent one is taken for dead. A
  worker process that dies is restarted by its pool within ``heartbeat_period`` and its task
  fails with ``WorkerLost``; a pool that dies is noticed after ``heartbeat_threshold`` and its
  tasks fail with ``ManagerLost``.
- ``worker_init`` (""): shell lines run before the pool starts (after this Python's ``bin/``
  is put first on ``PATH``).
- ``label`` ("candle-local"): the executor's name in Parsl's logs.
"""

from __future__ import annotations

import os
from typing import Any

from candle.workflow.sites import venv_path_init


def make_config(
    run_dir: str,
    *,
    max_workers_per_node: int = 2,
    cores_per_worker: float | None = None,
    available_accelerators: int | list[str] | None = None,
    heartbeat_period: int = 2,
    heartbeat_threshold: int = 10,
    worker_init: str = "",
    label: str = "candle-local",
) -> Any:
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.jobs.error_handlers import windowed_error_handler
    from parsl.providers import LocalProvider

    if cores_per_worker is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        cores_per_worker = max(1, cpus or 1) / max_workers_per_node
    accelerators: Any = ()
    if available_accelerators is not None:
        accelerators = available_accelerators
        if isinstance(accelerators, list):
            accelerators = [str(a) for a in accelerators]
    htex = HighThroughputExecutor(
        label=label,
        address="127.0.0.1",
        loopback_address="127.0.0.1",
        max_workers_per_node=max_workers_per_node,
        cores_per_worker=float(cores_per_worker),
        available_accelerators=accelerators,
        heartbeat_period=heartbeat_period,
        heartbeat_threshold=heartbeat_threshold,
        worker_debug=False,
        # a worker pool that dies (killed, out of memory) is replaced by a new block; the
        # executor gives up (failing every task) only when the last 3 blocks all failed
        block_error_handler=windowed_error_handler,
        provider=LocalProvider(
            init_blocks=1,
            min_blocks=1,
            max_blocks=1,
            nodes_per_block=1,
            worker_init="; ".join(x for x in (venv_path_init(), worker_init) if x),
        ),
    )
    return Config(executors=[htex], run_dir=run_dir, retries=0, strategy_period=2)
