"""Parsl on a PBS Pro cluster: blocks of nodes from ``qsub``, trials on their workers.

A template. Use it as it is with options::

    executor:
      kind: parsl
      site: pbs
      options:
        queue: prod
        account: my_project
        walltime: "02:00:00"
        nodes_per_block: 4
        select_options: "ngpus=4"
        workers_per_node: 4
        available_accelerators: 4
        worker_init: "module load conda; conda activate /path/to/env"
        scheduler_options: "#PBS -l filesystems=home:eagle"

or copy this file, edit it and pass ``executor: {kind: parsl, config: my_pbs.py}``. The lines a
site usually changes are marked ``# EDIT``:

- ``queue``/``account``: ``qsub -q``/``-A``.
- ``walltime``: one block's (one batch job's) time limit, ``HH:MM:SS``; give it time for
  several trials.
- ``nodes_per_block``/``init_blocks``/``max_blocks``: nodes per batch job, jobs started at once
  and at most. ``cpus_per_node`` and ``select_options`` (e.g. ``"ngpus=4"``) go into
  ``#PBS -l select=N:ncpus=C:<select_options>``.
- ``workers_per_node``: trials at once per node; ``available_accelerators`` gives each worker
  one GPU (``CUDA_VISIBLE_DEVICES``).
- ``worker_init``: shell lines run before Parsl's worker pool starts (modules, the virtual
  environment with candle and Parsl). Default: this Python's ``bin/`` first on ``PATH``.
- ``scheduler_options``: extra ``#PBS`` lines.
- ``launcher_overrides`` ("--ppn 1"): with several nodes per block Parsl starts one worker pool
  per node with ``mpiexec``; this makes it one per node for MPICH/PALS ``mpiexec``. For Open
  MPI use ``"--map-by ppr:1:node"``.
- ``address``: the IP address of the login node (where the study driver runs) that compute
  nodes reach; in a copied profile e.g. ``parsl.addresses.address_by_interface("bond0")``.
  Default: workers try every IPv4 address of the login node.
- ``mpi`` (false): MPI mode, for trials with ``resources.nodes > 1`` (multi-node Horovod or
  ``mpiexec`` trials). Each block runs ONE worker pool on its first node, and a trial's
  command is started with ``mpiexec -n R -ppn P -hosts ...`` (Parsl's ``$PARSL_MPI_PREFIX``)
  over the nodes Parsl gave it. ``max_workers_per_block`` trials run at once in a block;
  ``nodes_per_block`` must be >= the largest ``resources.nodes``. ``mpi_launcher`` may be
  ``mpiexec`` (default), ``srun`` or ``aprun``.
"""

from __future__ import annotations

from typing import Any

from candle.workflow.sites import set_addresses, venv_path_init


def make_config(
    run_dir: str,
    *,
    queue: str | None = None,  # EDIT: qsub -q
    account: str | None = None,  # EDIT: qsub -A
    walltime: str = "01:00:00",  # EDIT: one block's time limit
    nodes_per_block: int = 1,
    init_blocks: int = 1,
    min_blocks: int = 0,
    max_blocks: int = 1,
    cpus_per_node: int = 1,
    select_options: str = "",  # EDIT: e.g. "ngpus=4"
    workers_per_node: int = 1,
    available_accelerators: int | list[str] | None = None,
    worker_init: str | None = None,  # EDIT: module load ...; source venv/bin/activate
    scheduler_options: str = "",  # EDIT: extra #PBS lines
    launcher_overrides: str = "--ppn 1",
    address: str | None = None,
    mpi: bool = False,
    mpi_launcher: str = "mpiexec",
    max_workers_per_block: int = 1,
    heartbeat_period: int = 30,
    heartbeat_threshold: int = 120,
    label: str = "candle-pbs",
) -> Any:
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor, MPIExecutor
    from parsl.launchers import MpiExecLauncher, SimpleLauncher, SingleNodeLauncher
    from parsl.providers import PBSProProvider

    if mpi:
        launcher: Any = SimpleLauncher()  # one pool on the first node; trials mpiexec out
    elif nodes_per_block > 1:
        launcher = MpiExecLauncher(overrides=launcher_overrides)  # one pool per node
    else:
        launcher = SingleNodeLauncher()
    provider = PBSProProvider(
        queue=queue,
        account=account,
        walltime=walltime,
        nodes_per_block=nodes_per_block,
        init_blocks=init_blocks,
        min_blocks=min_blocks,
        max_blocks=max_blocks,
        cpus_per_node=cpus_per_node,
        select_options=select_options,
        scheduler_options=scheduler_options,
        worker_init=venv_path_init() if worker_init is None else worker_init,
        launcher=launcher,
    )
    common: dict[str, Any] = dict(
        label=label,
        provider=provider,
        address="127.0.0.1",  # set below
        heartbeat_period=heartbeat_period,
        heartbeat_threshold=heartbeat_threshold,
        worker_debug=False,
    )
    accelerators: Any = ()
    if available_accelerators is not None:
        accelerators = (
            [str(a) for a in available_accelerators]
            if isinstance(available_accelerators, list)
            else available_accelerators
        )
    if mpi:
        executor: Any = MPIExecutor(
            mpi_launcher=mpi_launcher, max_workers_per_block=max_workers_per_block, **common
        )
    else:
        executor = HighThroughputExecutor(
            max_workers_per_node=workers_per_node,
            available_accelerators=accelerators,
            **common,
        )
    set_addresses(executor, address)
    return Config(executors=[executor], run_dir=run_dir, retries=0)
