"""``DDPStrategy``: data-parallel training with ``torch.distributed`` under ``torchrun``.

Launch one process per GPU (or a few per CPU machine) with ``torchrun``; with the default
``strategy=auto`` the Trainer sees ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and picks this
strategy, so the same command line trains on one process or many::

    torchrun --nproc-per-node 4 -m candle train --trainer examples/quickstart.py:BreastCancer
    torchrun --nproc-per-node 4 my_script.py epochs=20       # a script that calls fit()

Several nodes: start the same command on every node, with a shared rendezvous endpoint::

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \\
        --rdzv-endpoint node001:29500 --rdzv-id $SLURM_JOB_ID -m candle train ...

(or the static form ``--nnodes 2 --node-rank R --master-addr node001 --master-port 29500``).
The run directory must be on a filesystem every node sees: rank 0 writes it, and on resume
every rank reads the same checkpoint from it. A script may end with
``trainer.strategy.shutdown()`` to destroy the process group (NCCL warns at exit otherwise);
``fit()`` leaves it up, so a script can evaluate or fit again on every rank.

What each rank does:

- **Backend and GPU pinning.** With CUDA (and ``device`` not ``cpu``) the backend is NCCL and
  rank ``r`` uses ``cuda:LOCAL_RANK`` (``torch.cuda.set_device`` before the process group is
  created); otherwise gloo on the CPU. Run at most as many processes per node as it has GPUs.
- **Data.** ``batch_size`` is per process: ``N`` ranks train on ``N x batch_size`` samples per
  step, each rank on its own shard of every epoch (see ``candle.distributed.rank_indices``).
- **Learning rate.** Never changed behind your back: ``lr_scaling=linear`` multiplies
  ``learning_rate`` by ``N`` (``sqrt``: by ``sqrt(N)``, ``none``, the default: unchanged);
  the Trainer logs the factor at the start, and pairs well with ``warmup_steps``.
- **Gradients** are averaged by ``DistributedDataParallel`` during ``backward``; micro-batches
  of a ``grad_accum_steps`` group run under ``no_sync`` so only the last one communicates.
  ``fp16_allreduce=true`` sends them as fp16 (DDP's ``fp16_compress_hook``): half the traffic,
  for fp16 rounding of the averaged gradient.
- **Run files** (logs, TensorBoard, metrics, checkpoints, ``result.json``) are written by rank 0
  alone; checkpoints hold every rank's RNG state, so a killed job resumed with ``resume=true``
  on the same number of ranks continues exactly where it stopped (on another number it
  continues from the same sample, no longer bitwise).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from candle.distributed.base import clip_and_step
from candle.errors import StrategyError

if TYPE_CHECKING:
    from candle.trainer import Trainer

__all__ = ["DDPStrategy"]

log = logging.getLogger("candle.distributed")

_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_OPS = {
    "mean": dist.ReduceOp.SUM,  # divided by world_size after (gloo has no AVG)
    "sum": dist.ReduceOp.SUM,
    "min": dist.ReduceOp.MIN,
    "max": dist.ReduceOp.MAX,
}


class DDPStrategy:
    """One process per device, started by ``torchrun``; ``DistributedDataParallel`` inside.

    ``fp16_allreduce``: compress gradients to fp16 for the all-reduce. ``requested_device``:
    the ``device`` param (``cpu`` forces the gloo backend on a machine with GPUs).
    """

    _groups_created: ClassVar[int] = 0  # process groups setup() created in this process

    def __init__(self, fp16_allreduce: bool = False, requested_device: str = "auto"):
        self.fp16_allreduce = fp16_allreduce
        self.requested_device = requested_device
        # From the launcher's environment until setup() asks the process group itself.
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self._owns_group = False  # destroy the process group at shutdown only if we made it
        self._device: torch.device | None = None

    @classmethod
    def from_params(cls, params: Any | None = None) -> DDPStrategy:
        """The strategy for a run's Params (``fp16_allreduce``, ``device``); None: defaults."""
        return cls(
            fp16_allreduce=bool(getattr(params, "fp16_allreduce", False)),
            requested_device=str(getattr(params, "device", "auto")),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Join the process group torchrun described (or reuse one that already exists)."""
        if not dist.is_available():
            raise StrategyError(
                "strategy=ddp needs torch.distributed, which this torch build lacks; "
                "use strategy=single"
            )
        if not dist.is_initialized():
            missing = [name for name in _LAUNCH_VARS if name not in os.environ]
            if missing:
                raise StrategyError(
                    f"strategy=ddp needs the environment torchrun sets up, but "
                    f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; "
                    "launch with `torchrun --nproc-per-node N ...`, or use strategy=auto "
                    "(single process when no launcher is present)"
                )
            self.local_rank = int(os.environ["LOCAL_RANK"])
            use_cuda = torch.cuda.is_available() and self.requested_device != "cpu"
            device_id = None
            if use_cuda:
                device_id = self._cuda_device()
                torch.cuda.set_device(device_id)  # before NCCL touches any device
            # The store torchrun's agent serves outlives our process groups; a group created
            # after shutdown() would find the old group's keys in it and connect to dead
            # peers, so every group this process creates gets keys of its own.
            store, rank, world_size = next(dist.rendezvous("env://"))
            dist.init_process_group(
                backend="nccl" if use_cuda else "gloo",
                store=dist.PrefixStore(f"candle_pg{DDPStrategy._groups_created}", store),
                rank=rank,
                world_size=world_size,
                device_id=device_id,
            )
            DDPStrategy._groups_created += 1
            self._owns_group = True
            # A gloo group still alive when the interpreter finalizes can abort the process
            # ("terminate called without an active exception") after training succeeded;
            # destroy it at exit if the script never called shutdown(). Idempotent.
            atexit.register(self.shutdown)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        if dist.get_backend() == "nccl" and self._device is None:
            self._device = self._cuda_device()
        log.debug(
            "rank %d/%d (local %d) joined, backend %s",
            self.rank,
            self.world_size,
            self.local_rank,
            dist.get_backend(),
        )

    def _cuda_device(self) -> torch.device:
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise StrategyError(
                f"LOCAL_RANK={self.local_rank} but this node has {count} visible GPU(s): each "
                "rank pins the GPU of its local rank, so start at most that many processes per "
                "node (`torchrun --nproc-per-node <= GPUs`), or use device=cpu"
            )
        return torch.device("cuda", self.local_rank)

    def device(self, requested: str) -> torch.device:
        self._require_group()
        nccl = dist.get_backend() == "nccl"
        if requested == "cpu":
            if nccl:
                raise StrategyError(
                    "device=cpu, but the process group uses NCCL (GPU only); build the strategy "
                    "from the same params (DDPStrategy.from_params(params)) so it picks gloo"
                )
            self._device = torch.device("cpu")
        elif requested == "auto":
            self._device = self._cuda_device() if nccl else torch.device("cpu")
        elif requested.startswith("cuda"):
            if not nccl:
                raise StrategyError(
                    f"device={requested!r} was asked for but CUDA is not available on this "
                    "machine; use device=auto or device=cpu"
                )
            pinned = self._cuda_device()
            if requested not in ("cuda", str(pinned)):
                raise StrategyError(
                    f"device={requested!r}: under torchrun every rank uses the GPU of its "
                    f"LOCAL_RANK (this one: {pinned}); use device=cuda or device=auto, and "
                    "CUDA_VISIBLE_DEVICES to choose which GPUs a node uses"
                )
            self._device = pinned
        else:
            raise StrategyError(f"device={requested!r}: use auto, cpu, cuda or cuda:N")
        return self._device

    def _require_group(self) -> None:
        if not dist.is_initialized():
            raise StrategyError("DDPStrategy: call setup() first (Trainer.fit does)")

    # ------------------------------------------------------------------ model
    def wrap(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, accum_steps: int
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """``DistributedDataParallel(model)``; a model that is one already is returned as is
        (wrapping twice would all-reduce every gradient twice). The optimizer is unchanged:
        DDP averages the gradients in ``backward``, and accumulation uses ``no_sync``."""
        if isinstance(model, DistributedDataParallel):
            log.debug("wrap: model is already DistributedDataParallel; left as is")
            return model, optimizer
        self._require_group()
        on_gpu = next(model.parameters(), torch.empty(0)).device.type == "cuda"
        ddp = DistributedDataParallel(
            model, device_ids=[self._cuda_device()] if on_gpu else None
        )  # broadcasts rank 0's parameters and buffers to every rank
        if self.fp16_allreduce:
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            ddp.register_comm_hook(state=None, hook=default_hooks.fp16_compress_hook)
        return ddp, optimizer

    def broadcast_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Make rank 0's parameters, buffers and optimizer state every rank's.

        DDP already broadcast the parameters when it wrapped the model, but the Trainer loads
        a checkpoint (on resume) after that, on every rank from the same file; broadcasting
        again here makes "identical on every rank" a guarantee rather than an assumption about
        the filesystem and the user's ``load_state_dict``. It happens once per ``fit``.
        """
        self._require_group()
        if self.world_size == 1:
            return
        module = getattr(model, "module", model)
        with torch.no_grad():
            for tensor in module.state_dict().values():
                if isinstance(tensor, torch.Tensor):
                    self._broadcast_tensor(tensor)
        # The optimizer's state is a nested structure whose shape may differ between ranks
        # (say, empty on a rank that could not read the checkpoint), so it travels as one
        # object; tensors go through the CPU so each rank rebuilds them on its own device.
        state = _to_cpu(optimizer.state_dict()) if self.rank == 0 else None
        state = self.broadcast_object(state)
        if self.rank != 0:
            optimizer.load_state_dict(state)

    def _broadcast_tensor(self, tensor: torch.Tensor) -> None:
        if tensor.is_contiguous():
            dist.broadcast(tensor, src=0)
            return
        buffer = tensor.contiguous()
        dist.broadcast(buffer, src=0)
        tensor.copy_(buffer)

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        if isinstance(model, DistributedDataParallel):
            return model.no_sync()  # accumulate locally; the group's last backward reduces
        return contextlib.nullcontext()

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        parameters: Sequence[torch.Tensor],
        *,
        scaler: torch.amp.GradScaler | None,
        max_norm: float,
    ) -> torch.Tensor | None:
        # DDP averaged the gradients during backward, so they are equal on every rank and so
        # are the clip norm, the scaler's inf check and the step.
        return clip_and_step(optimizer, parameters, scaler=scaler, max_norm=max_norm)

    # ------------------------------------------------------------------ collectives
    def all_reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        if op not in _OPS:
            raise ValueError(f"all_reduce op must be one of {', '.join(_OPS)}, got {op!r}")
        self._require_group()
        # A copy, on a device the backend can reduce on (NCCL: this rank's GPU).
        out = tensor.detach().to(self._comm_device(), copy=True)
        dist.all_reduce(out, op=_OPS[op])
        if op == "mean":
            out = out / self.world_size
        return out.to(tensor.device)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        self._require_group()
        box = [obj]
        dist.broadcast_object_list(box, src=src, device=self._comm_device())
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        self._require_group()
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        self._require_group()
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[self._comm_device().index])
        else:
            dist.barrier()

    def run(self, trainer: Trainer, loop: Callable[[], None]) -> None:
        loop()  # a fixed set of ranks: nothing to re-enter

    def shutdown(self) -> None:
        """Destroy the process group if ``setup`` created it (one someone else made is left to
        them); a later ``setup`` joins a fresh one."""
        if self._owns_group and dist.is_initialized():
            if self.world_size > 1:
                # Every rank reaches this point before any closes its connections: a gloo rank
                # whose peer tore down while it was still finishing the last collective aborted
                # at exit ("terminate called without an active exception"). Bounded, so a rank
                # whose peer died still gets out.
                try:
                    if dist.get_backend() == "gloo":
                        dist.monitored_barrier(timeout=datetime.timedelta(seconds=10))
                    else:
                        dist.barrier()
                except Exception as e:  # a peer that died: nothing left to wait for
                    log.warning("rank %d: barrier before shutdown failed (%s)", self.rank, e)
            dist.destroy_process_group()
        self._owns_group = False

    def _comm_device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return self._device if self._device is not None else self._cuda_device()
        return torch.device("cpu")


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
