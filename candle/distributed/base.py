"""The ``Strategy`` protocol: everything the Trainer needs to know about processes and ranks.

The Trainer is written only against this protocol, so a single process, Horovod and
torch.distributed look the same to it. No ``if horovod`` outside this package.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from candle.trainer import Trainer

__all__ = ["SingleProcess", "Strategy", "clip_and_step", "rank_indices"]


@runtime_checkable
class Strategy(Protocol):
    """How training is spread over processes.

    ``rank``/``world_size`` count processes of the job; ``local_rank`` counts them on this node
    and picks the GPU. ``is_main`` is the one process that writes run files.
    """

    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool: ...

    def setup(self) -> None:
        """Initialise the backend; called once by ``Trainer.fit`` before any model is built."""

    def device(self, requested: str) -> torch.device:
        """The device this rank trains on (``requested`` is the ``device`` param)."""

    def wrap(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, accum_steps: int
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Make model and optimizer distributed; must be idempotent or refuse a second call."""

    def broadcast_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Copy parameters and optimizer state from rank 0 to all ranks (start and resume)."""

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Context for micro-batches that only accumulate gradients (no all-reduce)."""

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        parameters: Sequence[torch.Tensor],
        *,
        scaler: torch.amp.GradScaler | None,
        max_norm: float,
    ) -> torch.Tensor | None:
        """Reduce gradients, unscale, clip to ``max_norm`` (0 = off) and step; returns the norm."""

    def all_reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        """Reduce ``tensor`` over ranks (``op``: mean, sum, min or max); returns the result."""

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Send a picklable object from ``src`` to every rank."""

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""

    def barrier(self) -> None: ...

    def shutdown(self) -> None: ...

    def run(self, trainer: Trainer, loop: Callable[[], None]) -> None:
        """Run ``loop`` (``trainer``'s epoch loop) to its end: ``loop()``. An elastic strategy
        commits the trainer's state as it trains and, after the set of ranks changed, loads the
        last commit and runs ``loop`` again."""


def rank_indices(
    n: int, *, seed: int, epoch: int, rank: int, world_size: int, shuffle: bool, pad: bool = True
) -> list[int]:
    """Sample indices for one rank and epoch: a deterministic function of (seed, epoch, world size).

    Rank ``r`` takes every ``world_size``-th sample of the epoch's order, starting at ``r``, so
    after ``k`` samples on every rank exactly the first ``k * world_size`` of the order are done.
    With ``pad`` (training) every rank gets the same number of indices (the order wraps around,
    as ``DistributedSampler`` does) so ranks run equal batch counts and never deadlock; without
    it (evaluation) no sample is counted twice.
    """
    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    if world_size > 1 and n > 0:
        if pad:
            total = -(-n // world_size) * world_size
            order = (order * (total // n + 1))[:total]
        order = order[rank::world_size]
    return order


def clip_and_step(
    optimizer: torch.optim.Optimizer,
    parameters: Sequence[torch.Tensor],
    *,
    scaler: torch.amp.GradScaler | None,
    max_norm: float,
) -> torch.Tensor | None:
    """Unscale (fp16 AMP), clip the global norm to ``max_norm`` (0 = off), then step: the part
    of an optimizer step every strategy shares once gradients are reduced. Returns the norm."""
    norm = None
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    if scaler is not None:
        scaler.step(optimizer)  # skips the step if the unscaled gradients hold inf/NaN
        scaler.update()
    else:
        optimizer.step()
    return norm


class SingleProcess:
    """One process, one device: the default when no launcher is detected."""

    rank = 0
    local_rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        return True

    def setup(self) -> None:
        pass

    def device(self, requested: str) -> torch.device:
        if requested == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(requested)
        if dev.type == "cuda" and not torch.cuda.is_available():
            from candle.errors import StrategyError

            raise StrategyError(
                f"device={requested!r} was asked for but CUDA is not available on this machine; "
                "use device=auto or device=cpu"
            )
        return dev

    def wrap(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, accum_steps: int
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        return model, optimizer

    def broadcast_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        parameters: Sequence[torch.Tensor],
        *,
        scaler: torch.amp.GradScaler | None,
        max_norm: float,
    ) -> torch.Tensor | None:
        return clip_and_step(optimizer, parameters, scaler=scaler, max_norm=max_norm)

    def all_reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        return tensor

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def run(self, trainer: Trainer, loop: Callable[[], None]) -> None:
        loop()
