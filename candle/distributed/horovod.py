"""Horovod: data-parallel training started by ``horovodrun`` (Gloo or MPI, CPUs or GPUs).

Launch any Trainer under ``horovodrun``; ``strategy=auto`` sees ``HOROVOD_RANK``/``HOROVOD_SIZE``
and picks this strategy::

    horovodrun -np 4 -H host1:2,host2:2 python -m candle train --trainer mypkg.models:MyTrainer
    horovodrun -np 2 -H localhost:2 --gloo python train.py lr_scaling=linear   # one machine

``-H host:slots`` starts ``slots`` processes on ``host``; give each node as many slots as it has
GPUs. Every process pins the GPU of its *local* rank (``torch.cuda.set_device(local_rank)``) and
trains on ``cuda:<local_rank>``; without CUDA every process trains on the CPU. Only rank 0
writes the run directory (logs, metrics, checkpoints); it must be on a filesystem every node
sees, because a resumed job reads the checkpoint on every rank.

``batch_size`` is per process, so N processes take steps N times as large. Horovod's advice is
to scale the learning rate with them; candle does it only when asked: ``lr_scaling=linear``
(x N) or ``sqrt`` (x sqrt N), logged at start, best with ``warmup_steps``. Gradients are
averaged, so ``np=N`` with batch ``b`` follows the same trajectory as one process with batch
``N*b``. ``fp16_allreduce=true`` halves the all-reduce traffic; ``adasum=true`` reduces with
Adasum instead of averaging (needs Horovod's MPI controller; not with ``grad_clip`` or fp16
gradient scaling, because Adasum applies the optimizer before reducing).

Building Horovod: ``scripts/install_horovod.sh .venv`` builds 0.28.1 against the installed
torch with Gloo for CPU collectives. On a GPU cluster export the build variables first, e.g.
``HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_WITH_MPI=1 HOROVOD_FORCE_REBUILD=1
scripts/install_horovod.sh .venv`` (``HOROVOD_NCCL_HOME`` if NCCL is not on a system path);
``horovodrun --check-build`` lists what was built in.

Elastic training: started with ``--min-np``/``--max-np`` and a ``--host-discovery-script``
(a script that prints one ``host:slots`` line per available host), horovodrun sets
``HOROVOD_ELASTIC=1`` and ``strategy=auto`` picks ``ElasticHorovodStrategy``::

    horovodrun -np 4 --min-np 2 --max-np 4 --host-discovery-script ./hosts.sh \
        python -m candle train --trainer mypkg.models:MyTrainer elastic_commit_steps=100

Every rank keeps an in-memory copy of the whole training state (model, optimizer, scheduler,
epoch and micro-batch, per-rank RNG and loss sums, callbacks) and renews it every
``elastic_commit_steps`` optimizer steps and at each epoch end. When a host leaves the
discovery output, or a worker dies, the remaining workers go back to that copy and carry on
with fewer ranks: from the same sample of the epoch, with ``lr_scaling`` applied for the new
number of ranks (logged). Steps after the last commit are redone. On a single machine
``--network-interface lo`` is needed (horovodrun otherwise wants two hosts to find a common
interface). The job can shrink, not grow: workers that come to join a running job are
turned away (see ``ElasticHorovodStrategy``); to use more, restart with ``resume=true``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import horovod.torch as hvd
import torch
from horovod.common.elastic import State
from torch import nn

from candle.callbacks import Callback
from candle.distributed.base import clip_and_step
from candle.errors import ConfigError, StrategyError

__all__ = ["ElasticHorovodStrategy", "HorovodStrategy"]

if TYPE_CHECKING:
    from candle.trainer import Trainer

log = logging.getLogger("candle.distributed")

_OPS = {"mean": hvd.Average, "sum": hvd.Sum, "min": hvd.Min, "max": hvd.Max}


CPU_CYCLE_TIME_MS = "10"


def _default_cycle_time() -> None:
    """On CPU ranks, wake Horovod's background thread every 10 ms instead of every 1 ms.

    The thread polls the other ranks each cycle even with nothing to reduce; with one core per
    rank that time comes out of training. benchmarks/scaling.py measured weak-scaling efficiency
    0.775 at the 1 ms default and 0.969 at 10 ms (2 ranks, 2 cores). A value the user set
    (``horovodrun --cycle-time-ms`` or ``HOROVOD_CYCLE_TIME``) is kept; GPU jobs are untouched.
    """
    if torch.cuda.is_available() or "HOROVOD_CYCLE_TIME" in os.environ:
        return
    os.environ["HOROVOD_CYCLE_TIME"] = CPU_CYCLE_TIME_MS
    log.info(
        "HOROVOD_CYCLE_TIME=%s ms for CPU ranks (Horovod's default is 1 ms; set "
        "HOROVOD_CYCLE_TIME or --cycle-time-ms to override)",
        CPU_CYCLE_TIME_MS,
    )


class HorovodStrategy:
    """One process per device under ``horovodrun``; gradients all-reduced by
    ``hvd.DistributedOptimizer``. The model itself is not wrapped."""

    def __init__(self, *, fp16_allreduce: bool = False, adasum: bool = False):
        self.fp16_allreduce = fp16_allreduce
        self.adasum = adasum
        # What the launcher says until setup() asks Horovod itself.
        env = os.environ
        self.rank = int(env.get("HOROVOD_RANK", "0"))
        self.local_rank = int(env.get("HOROVOD_LOCAL_RANK", "0"))
        self.world_size = int(env.get("HOROVOD_SIZE", "1"))
        # user optimizer -> its distributed twin, so a second wrap() returns the first result
        self._wrapped: weakref.WeakKeyDictionary[torch.optim.Optimizer, torch.optim.Optimizer]
        self._wrapped = weakref.WeakKeyDictionary()

    @classmethod
    def from_params(cls, params: object | None = None) -> HorovodStrategy:
        """Options from the run's Params (``fp16_allreduce``, ``adasum``); None -> defaults."""
        adasum = bool(getattr(params, "adasum", False))
        if adasum and getattr(params, "grad_clip", 0.0) > 0:
            raise ConfigError(
                f"adasum=true cannot be combined with grad_clip={params.grad_clip}: Adasum "
                "applies the optimizer to each rank's own gradients before reducing, so there "
                "is no global gradient to clip; set grad_clip=0 or adasum=false"
            )
        return cls(fp16_allreduce=bool(getattr(params, "fp16_allreduce", False)), adasum=adasum)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self) -> None:
        if not hvd.is_initialized():  # a second fit() in the same process reuses the job
            _default_cycle_time()
            hvd.init()
        self.rank, self.local_rank, self.world_size = hvd.rank(), hvd.local_rank(), hvd.size()
        if self.adasum and not hvd.mpi_enabled():
            raise StrategyError(
                "adasum=true needs Horovod's MPI controller (Horovod built with "
                "HOROVOD_WITH_MPI=1, started with `horovodrun --mpi`), but this job runs on "
                "Gloo; set adasum=false or rebuild Horovod with MPI"
            )
        if torch.cuda.is_available():
            torch.cuda.set_device(self._gpu())

    def device(self, requested: str) -> torch.device:
        if requested == "cpu":
            return torch.device("cpu")
        if not torch.cuda.is_available():
            if requested == "auto":
                return torch.device("cpu")
            raise StrategyError(
                f"device={requested!r} was asked for but CUDA is not available on this machine "
                f"(rank {self.rank}); use device=auto or device=cpu"
            )
        # "auto" and "cuda" mean this process's GPU; "cuda:N" is taken as given.
        return torch.device(requested if ":" in requested else f"cuda:{self._gpu()}")

    def _gpu(self) -> int:
        count = torch.cuda.device_count()
        if self.local_rank < count:
            return self.local_rank
        if count == 1:  # the scheduler shows each process only its own GPU
            return 0
        raise StrategyError(
            f"local rank {self.local_rank} has no GPU: {count} are visible on this node; start "
            "at most one process per GPU (horovodrun -H host:<number of GPUs>)"
        )

    def wrap(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, accum_steps: int
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """``hvd.DistributedOptimizer`` around ``optimizer``: gradients of each parameter are
        all-reduced (averaged) in the background once ``accum_steps`` backward passes have
        accumulated them. Wrapping the same optimizer again returns the same object; an
        already distributed optimizer is returned as it is."""
        wrapped = self._wrapped.get(optimizer)
        if wrapped is None and _is_distributed(optimizer):
            wrapped = optimizer  # ours from an earlier call, or one the user made
        if wrapped is not None:
            _fit_torch_contract(type(wrapped))
            if wrapped.backward_passes_per_step != accum_steps:
                raise StrategyError(
                    f"the optimizer was already wrapped for {wrapped.backward_passes_per_step} "
                    f"backward passes per step, now asked for {accum_steps}; wrap the "
                    "unwrapped optimizer once, with the final grad_accum_steps"
                )
            return model, wrapped
        try:
            wrapped = hvd.DistributedOptimizer(
                optimizer,
                named_parameters=model.named_parameters(),
                backward_passes_per_step=accum_steps,
                compression=hvd.Compression.fp16 if self.fp16_allreduce else hvd.Compression.none,
                op=hvd.Adasum if self.adasum else hvd.Average,
            )
        except ValueError as e:
            raise StrategyError(
                f"Horovod cannot wrap this optimizer ({e}); build_optimizer() must optimize "
                "parameters of the model it is given (model.parameters())"
            ) from e
        _fit_torch_contract(type(wrapped))
        if optimizer.state:  # e.g. loaded before wrapping: keep it
            wrapped.load_state_dict(optimizer.state_dict())
        self._wrapped[optimizer] = wrapped
        return model, wrapped

    def broadcast_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Rank 0's optimizer state, then its parameters and buffers, to every rank.

        A fresh optimizer has no state, and ``hvd.broadcast_optimizer_state`` would create it
        with a zero-gradient step: that counts an Adam step (changing its bias correction) and
        applies weight decay. So only the hyperparameters are sent then; the state follows
        once there is one (after a resume).
        """
        root_has_state = self.broadcast_object(len(optimizer.state) > 0)
        if root_has_state:
            # a rank without state makes it with that zero step; the broadcast overwrites it
            hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        else:
            optimizer.state.clear()
            groups = optimizer.param_groups
            options = [{k: v for k, v in g.items() if k != "params"} for g in groups]
            for group, root in zip(groups, self.broadcast_object(options), strict=True):
                group.update(root)
        # last: the zero step above may have moved parameters (weight decay)
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Nothing to do: the DistributedOptimizer counts backward passes itself.

        Each parameter's all-reduce starts in the background on the ``accum_steps``-th backward
        pass. A shorter last group of an epoch never reaches that count; its gradients are
        then reduced in ``optimizer_step`` (``synchronize()`` reduces whatever has not been,
        and resets every count), so each optimizer step still reduces each gradient once.
        """
        return contextlib.nullcontext()

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        parameters: Sequence[torch.Tensor],
        *,
        scaler: torch.amp.GradScaler | None,
        max_norm: float,
    ) -> torch.Tensor | None:
        if not _is_distributed(optimizer):
            raise StrategyError("optimizer_step() needs the optimizer that wrap() returned")
        if self.adasum and self.world_size > 1:
            if scaler is not None or max_norm > 0:
                raise StrategyError(
                    "adasum=true works without gradient clipping and fp16 gradient scaling "
                    "only; set grad_clip=0 and precision=32 or bf16, or adasum=false"
                )
            optimizer.step()  # Adasum's step applies the optimizer, then reduces the deltas
            return None
        # Wait for the all-reduces: from here the gradients are the average over ranks, so
        # unscaling, the inf check and the clipping norm are the same on every rank.
        optimizer.synchronize()
        with optimizer.skip_synchronize():  # do not reduce (the clipped gradients) again
            return clip_and_step(optimizer, parameters, scaler=scaler, max_norm=max_norm)

    # Collectives. Horovod matches operations across ranks by name; its default names come
    # from the object's type or a per-process counter, which differ between ranks when, say,
    # rank 0 broadcasts a str and the others pass None. Fixed names are safe because every
    # call here completes before it returns.
    def all_reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        if op not in _OPS:
            raise ValueError(f"all_reduce op must be one of {sorted(_OPS)}, got {op!r}")
        return hvd.allreduce(tensor, name=f"candle.all_reduce.{op}", op=_OPS[op])

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return hvd.broadcast_object(obj, root_rank=src, name="candle.broadcast_object")

    def all_gather_object(self, obj: Any) -> list[Any]:
        return hvd.allgather_object(obj, name="candle.all_gather_object")

    def barrier(self) -> None:
        hvd.barrier()

    def shutdown(self) -> None:
        """Nothing: ``hvd.init()`` registered ``hvd.shutdown`` to run at exit, the right time.
        Earlier would pull the job out from under a second ``fit()`` or the user's own ``hvd``
        calls; with MPI, Horovod finalizes MPI if it initialised it, and MPI cannot be
        initialised twice in one process."""

    def run(self, trainer: Trainer, loop: Callable[[], None]) -> None:
        loop()


class ElasticHorovodStrategy(HorovodStrategy):
    """Horovod's elastic mode (``HOROVOD_ELASTIC=1``): training goes on when workers leave.

    Every rank commits the trainer's state in memory every ``commit_steps`` optimizer steps
    (0: never between epoch ends) and at each epoch end; a commit also checks for host changes
    that horovodrun announced. On a change, or when a collective fails because a worker died,
    Horovod is re-initialised on the remaining workers, each loads the last commit for the new
    world size (``Trainer.load_state_dict``: same sample position, loss sums on rank 0, learning
    rates rescaled per ``lr_scaling``) and the epoch loop runs again. After a failure rank 0's
    commit is broadcast first, so every rank continues from the same state.

    The job can shrink, not grow. A worker that horovodrun starts for a running job would begin
    ``fit()`` from scratch, and its set-up collectives cannot match those of the running
    workers. So the first collective after every (re-)initialisation tells the two apart: a
    newcomer among running workers raises ``StrategyError`` and exits, horovodrun blacklists
    its host, and the others reset once more without it.
    """

    def __init__(self, *, commit_steps: int = 0, **options: Any):
        super().__init__(**options)
        self.commit_steps = commit_steps

    @classmethod
    def from_params(cls, params: object | None = None) -> ElasticHorovodStrategy:
        """As ``HorovodStrategy.from_params``, plus ``elastic_commit_steps``."""
        strategy = super().from_params(params)
        strategy.commit_steps = int(getattr(params, "elastic_commit_steps", 0))
        return strategy

    def setup(self) -> None:
        super().setup()
        if self.count_starting(True) < self.world_size:
            raise StrategyError(
                f"this worker (rank {self.rank}) was started for an elastic job that is "
                "already training; candle's elastic mode can lose workers but not take new "
                "ones in, so it stops and the job goes on without it. To train on more "
                "workers, restart the job with resume=true"
            )

    def count_starting(self, starting: bool) -> int:
        """How many workers are starting ``fit()`` (``starting``) rather than going on after a
        reset. Collective: the first one after every (re-)initialisation, on every worker."""
        flag = torch.tensor([float(starting)])
        return int(hvd.allreduce(flag, op=hvd.Sum, name="candle.elastic.hello").item())

    def run(self, trainer: Trainer, loop: Callable[[], None]) -> None:
        state = _TrainerState(trainer, self)

        def train(state: _TrainerState) -> None:
            state.load_after_reset()  # in Horovod's retry loop: a failure here resets again
            loop()

        trainer.callbacks.append(state)  # last: a commit holds every other callback's work
        try:
            hvd.elastic.run(train)(state)
        finally:
            trainer.callbacks.remove(state)


class _TrainerState(State, Callback):
    """Horovod's elastic ``State`` for a Trainer, committed from the step and epoch ends.

    ``save`` is collective (``Trainer.state_dict`` gathers every rank's RNG and loss sums), so
    every rank commits at the same step. Horovod's retry loop (``run_fn`` in
    ``horovod.common.elastic``) calls ``restore`` after a failed collective, ``reset`` once
    Horovod is re-initialised, ``sync`` unless workers were only removed, then the training
    function, which starts with ``load_after_reset``.
    """

    def __init__(self, trainer: Trainer, strategy: ElasticHorovodStrategy):
        bcast = functools.partial(hvd.broadcast_object, name="candle.elastic.hosts")
        super().__init__(bcast_object=bcast, get_rank=hvd.rank)
        self.trainer, self.strategy = trainer, strategy
        self._saved: dict[str, Any] = {}
        self._resets = 0
        self._failed = False  # a collective failed: sync() hands rank 0's commit to all
        self._reload = False
        self.save()

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        every = self.strategy.commit_steps
        if every and trainer.global_step % every == 0:
            self.commit()

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.commit()

    def save(self) -> None:
        self._saved = copy.deepcopy(self.trainer.state_dict())

    def restore(self) -> None:
        self._failed = True

    def reset(self) -> None:
        s = self.strategy
        before = s.world_size
        s.rank, s.local_rank, s.world_size = hvd.rank(), hvd.local_rank(), hvd.size()
        newcomers = s.count_starting(False)  # first collective: newcomers make it in setup()
        self._resets += 1
        self._reload = True
        log.warning(
            "elastic reset %d after %s: %d -> %d rank(s), this process is rank %d",
            self._resets,
            "a failed collective" if self._failed else "a change of hosts",
            before,
            s.world_size,
            s.rank,
        )
        if newcomers:
            log.warning(
                "%d new worker(s) came to join; they stop (see ElasticHorovodStrategy) and "
                "the job resets again without them",
                newcomers,
            )

    def sync(self) -> None:
        if self._resets == 0:
            return  # first entry: Trainer._setup has just broadcast rank 0's state
        self._saved = hvd.broadcast_object(self._saved, name="candle.elastic.sync")
        self._failed = False

    def load_after_reset(self) -> None:
        """Load the last commit for the new set of ranks. Only hosts removed: every rank
        holds that same commit (the change surfaced in it); else sync() broadcast rank 0's."""
        if self._reload:
            # a copy: loaded tensors may alias the saved ones, and training changes them in place
            self.trainer.load_state_dict(copy.deepcopy(self._saved))
            self._reload = False


def _is_distributed(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` came from ``hvd.DistributedOptimizer`` (its class is made there)."""
    return type(optimizer).__module__ == hvd.DistributedOptimizer.__module__


def _fit_torch_contract(cls: type) -> None:
    """Make a DistributedOptimizer class honour two parts of ``torch.optim.Optimizer``'s
    contract that Horovod 0.28.1 breaks. ``cls`` is made anew by each DistributedOptimizer call,
    so this changes that one optimizer only.

    - ``zero_grad(set_to_none=...)``: Horovod's override takes no argument.
    - ``load_state_dict`` replaces the param-group dicts, which the optimizer it wraps (and an
      LR scheduler built on that one) share with it: after a resume the scheduler would set
      learning rates the optimizer no longer reads. Keep the dicts, update their contents.
    """
    if cls.__dict__.get("_candle_fitted"):
        return
    load = cls.load_state_dict

    def zero_grad(self: Any, set_to_none: bool = True) -> None:
        if self._handles:
            raise StrategyError(
                "optimizer.zero_grad() was called after backward() but before step(): "
                "gradients are being all-reduced; step (or synchronize) first"
            )
        super(cls, self).zero_grad(set_to_none=set_to_none)

    def load_state_dict(self: Any, state_dict: dict[str, Any]) -> None:
        groups = self.param_groups
        load(self, state_dict)
        for shared, loaded in zip(groups, self.param_groups, strict=True):
            shared.clear()
            shared.update(loaded)
        self.param_groups = groups

    cls.zero_grad = zero_grad
    cls.load_state_dict = load_state_dict
    cls._candle_fitted = True
