"""Parsl on a Slurm cluster: blocks of nodes from ``sbatch``, trials on their workers.

A template. Use it as it is with options::

    executor:
      kind: parsl
      site: slurm
      slots: 8
      options:
        partition: gpu
        account: my_allocation
        walltime: "04:00:00"
        nodes_per_block: 2
        max_blocks: 2
        workers_per_node: 4            # trials at once on one node (e.g. its GPU count)
        available_accelerators: 4      # one GPU per worker (CUDA_VISIBLE_DEVICES)
        worker_init: "module load cuda; source /path/to/venv/bin/activate"

or copy this file, edit it and pass ``executor: {kind: parsl, config: my_slurm.py}``. The lines
a site usually changes are marked ``# EDIT``:

- ``partition``/``account``/``qos``/``constraint``: what ``sbatch -p/-A/--qos/-C`` would get.
- ``walltime``: one block's (one batch job's) time limit, ``HH:MM:SS``. A block runs many
  trials one after another; give it time for several, and a study's ``time_limit`` per trial
  below it.
- ``nodes_per_block``/``init_blocks``/``max_blocks``: how many nodes one batch job asks for,
  how many jobs start at once and at most. Parsl submits more blocks while trials wait and
  cancels idle ones (after ``Config.max_idletime``, 120 s).
- ``workers_per_node``: trials at once per node; ``cores_per_node``/``mem_per_node`` (GB) and
  ``gpus_per_node`` go to ``sbatch`` as asked-for resources.
- ``worker_init``: shell lines each batch job runs before Parsl's worker pool starts: load
  modules, activate the virtual environment that has candle and Parsl. The default puts this
  Python's ``bin/`` first on ``PATH``, which is enough when the compute nodes see the same
  file system.
- ``scheduler_options``: extra ``#SBATCH`` lines, e.g. ``"#SBATCH --gres=gpu:4"``.
- ``address``: the IP address of the login node (where the study driver runs) that compute
  nodes reach; in a copied profile e.g. ``parsl.addresses.address_by_interface("ib0")``.
  Default: workers try every IPv4 address of the login node.
- ``mpi`` (false): MPI mode, for trials with ``resources.nodes > 1`` (multi-node Horovod or
  ``srun`` trials). Each block then runs ONE worker pool on its first node, and a trial's
  command is started with ``srun --ntasks R --ntasks-per-node P --nodelist ... --nodes N``
  (Parsl's ``$PARSL_MPI_PREFIX``) over the nodes Parsl gave it. ``max_workers_per_block``
  trials run at once in one block; give ``nodes_per_block`` >= the largest ``resources.nodes``.
  ``mpi_launcher`` ("srun") may be ``mpiexec`` (MPICH/PALS) or ``aprun``.
"""

from __future__ import annotations

from typing import Any

from candle.workflow.sites import set_addresses, venv_path_init


def make_config(
    run_dir: str,
    *,
    partition: str | None = None,  # EDIT: sbatch -p
    account: str | None = None,  # EDIT: sbatch -A
    qos: str | None = None,
    constraint: str | None = None,
    walltime: str = "01:00:00",  # EDIT: one block's time limit
    nodes_per_block: int = 1,
    init_blocks: int = 1,
    min_blocks: int = 0,
    max_blocks: int = 1,
    workers_per_node: int = 1,
    cores_per_node: int | None = None,
    mem_per_node: int | None = None,
    gpus_per_node: int | None = None,
    available_accelerators: int | list[str] | None = None,
    exclusive: bool = True,
    worker_init: str | None = None,  # EDIT: module load ...; source venv/bin/activate
    scheduler_options: str = "",  # EDIT: extra #SBATCH lines
    address: str | None = None,
    mpi: bool = False,
    mpi_launcher: str = "srun",
    max_workers_per_block: int = 1,
    heartbeat_period: int = 30,
    heartbeat_threshold: int = 120,
    label: str = "candle-slurm",
) -> Any:
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor, MPIExecutor
    from parsl.launchers import SimpleLauncher, SrunLauncher
    from parsl.providers import SlurmProvider

    provider = SlurmProvider(
        partition=partition,
        account=account,
        qos=qos,
        constraint=constraint,
        walltime=walltime,
        nodes_per_block=nodes_per_block,
        init_blocks=init_blocks,
        min_blocks=min_blocks,
        max_blocks=max_blocks,
        cores_per_node=cores_per_node,
        mem_per_node=mem_per_node,
        gpus_per_node=gpus_per_node,
        exclusive=exclusive,
        scheduler_options=scheduler_options,
        worker_init=venv_path_init() if worker_init is None else worker_init,
        # MPI mode: one pool on the block's first node, trials srun across the block's nodes;
        # otherwise one pool per node
        launcher=SimpleLauncher() if mpi else SrunLauncher(),
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
