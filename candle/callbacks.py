"""Callbacks: a small closed set of events, and the built-in loggers and policies.

Events, in the order a run meets them::

    on_fit_start
      on_epoch_start
        on_step_end          (after each optimizer step)
      on_evaluate_end        (validation metrics computed)
      on_epoch_end           (all metrics of the epoch computed; loggers write here)
      on_checkpoint          (after a checkpoint is written)
    on_fit_end               (also after an early stop or time limit)
    on_exception             (a failed run, before the exception propagates)

Metrics are always computed before any callback sees them. A callback can stop training
with ``trainer.request_stop(reason)``. Callbacks with state (early stopping) implement
``state_dict``/``load_state_dict`` and are restored on resume.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from candle.trainer import FitResult, Trainer

__all__ = [
    "Callback",
    "Checkpointing",
    "EarlyStopping",
    "MetricsLogger",
    "ProgressBar",
    "TensorBoardLogger",
    "TimeLimit",
    "default_callbacks",
]

log = logging.getLogger("candle.trainer")


class Callback:
    """Base class: override the events you need. All methods default to doing nothing."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None: ...
    def on_evaluate_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_checkpoint(self, trainer: Trainer, path: Path) -> None: ...
    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None: ...
    def on_exception(self, trainer: Trainer, error: BaseException) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor: str, mode: str = "min", patience: int = 5, min_delta: float = 0.0):
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best: float | None = None
        self.wait = 0

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        value = metrics[trainer.monitor]
        if _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.request_stop(
                "early_stopping",
                f"{trainer.monitor} did not improve for {self.patience} epochs (best {self.best})",
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state["best"], state["wait"]


class TimeLimit(Callback):
    """Stop cleanly before a wall-clock limit (a batch job's), leaving a checkpoint to resume from.

    Training stops once the elapsed time plus one more step (the slowest seen) and a margin
    for the final checkpoint would pass the limit. Clocks differ between ranks, so with several
    ranks the decision is all-reduced (any rank out of time stops all) every ``sync_every``
    steps, at the same step on every rank.
    """

    def __init__(self, seconds: float, margin_s: float = 1.0, sync_every: int = 10):
        self.seconds, self.margin_s, self.sync_every = seconds, margin_s, sync_every
        self._start = time.monotonic()
        self._last = self._start
        self._slowest_step = 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        self._start = self._last = time.monotonic()

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        now = time.monotonic()
        self._slowest_step = max(self._slowest_step, now - self._last)
        self._last = now
        sync = trainer.strategy.world_size > 1
        if sync and trainer.global_step % self.sync_every:
            return
        # look ahead over the steps until the next check
        ahead = self._slowest_step * (self.sync_every if sync else 1)
        self._decide(trainer, now - self._start + ahead + self.margin_s >= self.seconds)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._last = time.monotonic()  # validation time is not a step
        self._decide(trainer, self._last - self._start + self.margin_s >= self.seconds)

    def _decide(self, trainer: Trainer, out_of_time: bool) -> None:
        if trainer.strategy.world_size > 1:
            flag = torch.tensor([float(out_of_time)], device=trainer.device)
            out_of_time = bool(trainer.strategy.all_reduce(flag, op="max").item())
        if out_of_time:
            trainer.request_stop("time_limit", f"time limit of {self.seconds:g} s reached")


class Checkpointing(Callback):
    """Write full-state checkpoints every ``every_epochs`` epochs, every ``every_steps`` steps,
    and when training ends for any reason other than an error."""

    def __init__(self, every_epochs: int = 1, every_steps: int = 0):
        self.every_epochs, self.every_steps = every_epochs, every_steps
        self._saved_at: int | None = None

    def _save(self, trainer: Trainer, metric: float | None) -> None:
        trainer.save_checkpoint(metric=metric)
        self._saved_at = trainer.global_step

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if self.every_steps and trainer.global_step % self.every_steps == 0:
            self._save(trainer, None)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.every_epochs and trainer.epoch % self.every_epochs == 0:
            self._save(trainer, metrics.get(trainer.monitor))

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        if self._saved_at != trainer.global_step or trainer.batch_in_epoch:
            last = trainer.history[-1].get(trainer.monitor) if trainer.history else None
            metric = last if trainer.batch_in_epoch == 0 else None
            self._save(trainer, metric)


class MetricsLogger(Callback):
    """One row of metrics per epoch in ``metrics.jsonl`` or ``metrics.csv`` (main rank only).

    On resume the file is rewritten from the checkpoint's history, so rows of epochs that were
    lost with the killed process never stay in it.
    """

    def __init__(self, path: Path, fmt: str = "jsonl"):
        self.path, self.fmt = Path(path), fmt

    def on_fit_start(self, trainer: Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        for row in trainer.history:
            self._append(row)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._append(metrics)

    def _append(self, row: dict[str, float]) -> None:
        with self.path.open("a", encoding="utf-8", newline="") as f:
            if self.fmt == "jsonl":
                f.write(json.dumps(row) + "\n")
                return
            writer = csv.DictWriter(f, fieldnames=list(row))
            if f.tell() == 0:
                writer.writeheader()
            writer.writerow(row)


class TensorBoardLogger(Callback):
    """Scalars (train loss every ``every_steps`` steps, learning rate, epoch metrics) and the
    run's hyperparameters with its best metrics for the HParams dashboard."""

    def __init__(self, log_dir: Path, every_steps: int = 50):
        self.log_dir, self.every_steps = Path(log_dir), every_steps
        self.writer: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run wrote after its last checkpoint.
        purge = trainer.global_step if trainer.global_step > 0 else None
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if trainer.global_step % self.every_steps == 0:
            # .item() is a CPU-GPU sync point: only here, every `every_steps` steps.
            self.writer.add_scalar("train/loss_step", loss.item(), trainer.global_step)
            self.writer.add_scalar("train/lr", trainer.current_lr, trainer.global_step)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            if name != "epoch":
                self.writer.add_scalar(f"epoch/{name}", value, trainer.global_step)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        from torch.utils.tensorboard.summary import hparams

        hp = {
            k: v
            for k, v in trainer.params_dict().items()
            if isinstance(v, (int, float, str, bool)) and k not in ("run_id", "run_dir")
        }
        best = {f"hparam/{k}": v for k, v in result.best_metrics.items() if k != "epoch"}
        if best:
            exp, ssi, sei = hparams(hp, best)
            for summary in (exp, ssi, sei):
                self.writer.file_writer.add_summary(summary)
            for name, value in best.items():
                self.writer.add_scalar(name, value, trainer.global_step)
        self.close()

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ProgressBar(Callback):
    """A tqdm bar per epoch; silent when stderr is not a terminal (batch jobs, CI)."""

    def __init__(self, every_steps: int = 10, force: bool = False):
        self.every_steps, self.force = every_steps, force
        self.bar: Any = None

    def on_epoch_start(self, trainer: Trainer) -> None:
        if not (self.force or sys.stderr.isatty()):
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=trainer.steps_per_epoch,
            initial=trainer.batch_in_epoch // trainer.params.grad_accum_steps,
            desc=f"epoch {trainer.epoch + 1}/{trainer.params.epochs}",
            leave=False,
            dynamic_ncols=True,
        )

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if trainer.global_step % self.every_steps == 0:
            self.bar.set_postfix(loss=f"{loss.item():.4g}")  # sync point, throttled

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._close()

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        self._close()

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def default_callbacks(trainer: Trainer) -> list[Callback]:
    """The callbacks ``params`` ask for, in the order they must run at each event.

    Policies (early stopping, time limit) come first so a checkpoint taken at the same event
    already holds their decision; loggers come last.
    """
    p, run_dir = trainer.params, trainer.run_dir
    cbs: list[Callback] = []
    if p.early_stopping_patience > 0:
        cbs.append(
            EarlyStopping(
                trainer.monitor,
                p.monitor_mode,
                p.early_stopping_patience,
                p.early_stopping_min_delta,
            )
        )
    if p.time_limit > 0:
        cbs.append(TimeLimit(p.time_limit))
    # Every rank takes part in a checkpoint (it gathers per-rank state); only rank 0 writes.
    cbs.append(Checkpointing(p.checkpoint_every, p.checkpoint_every_steps))
    if not trainer.strategy.is_main:
        return cbs  # only rank 0 writes logs
    if p.metrics_log != "off":
        cbs.append(MetricsLogger(run_dir / f"metrics.{p.metrics_log}", p.metrics_log))
    if p.tensorboard:
        cbs.append(TensorBoardLogger(run_dir / "tensorboard", p.log_every_steps))
    if p.progress_bar:
        cbs.append(ProgressBar())
    return cbs
