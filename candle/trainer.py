"""The Trainer: subclass it, override a few methods, call ``fit()``.

A minimal user Trainer::

    class MyTrainer(Trainer):
        params_class = MyParams

        def build_model(self):
            h = self.params.hidden
            return nn.Sequential(nn.Linear(30, h), nn.ReLU(), nn.Linear(h, 1))

        def build_data(self):
            return train_dataset, val_dataset          # Datasets or DataLoaders

        def training_step(self, batch):
            x, y = batch
            return F.mse_loss(self.model(x), y)       # a scalar loss

        def validation_step(self, batch):
            x, y = batch
            return {"loss": F.mse_loss(self.model(x), y)}   # logged as val_loss

Everything else (devices, gradient accumulation, AMP, clipping, LR schedule, early stopping,
time limits, checkpoints and exact resume, logging) is the framework's, in ``fit`` below.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset

from candle import callbacks as cb
from candle._batches import (
    Indices,
    Skip,
    base_dataset,
    batch_indexable,
    batch_size_of,
    normalize_data,
    to_device,
)
from candle._runtime import attach_file_log, precision_name, resolve_precision, seed_everything
from candle.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from candle.config import Params, params_from_dict, params_to_dict, save_params
from candle.distributed import Strategy, rank_indices, resolve_strategy
from candle.errors import CheckpointError, ConfigError, NonFiniteLossError
from candle.run import provenance, resolve_run_dir, write_result

__all__ = ["FitResult", "Trainer"]

log = logging.getLogger("candle.trainer")


@dataclass
class FitResult:
    """What ``fit()`` returns; ``result.json`` in the run directory holds the same."""

    status: str  # "completed", "interrupted" (time limit) or "paused" (segment); resume continues
    stop_reason: str  # "epochs", "max_steps", "early_stopping", "time_limit", "segment"
    history: list[dict[str, float]]
    best_metrics: dict[str, float]
    last_metrics: dict[str, float]
    best_epoch: int | None
    monitor: str
    checkpoint_path: Path | None  # best checkpoint (the last one if no metric was monitored)
    last_checkpoint_path: Path | None
    run_dir: Path
    elapsed_s: float
    global_step: int = 0

    @property
    def objective(self) -> float | None:
        """The best value of the monitored metric (what a search optimizes)."""
        return self.best_metrics.get(self.monitor)


class Trainer:
    """Base class for a model's training code. Override:

    - ``build_model()`` -> ``nn.Module``
    - ``build_data()`` -> ``(train, val)``, ``(train, val, test)`` or a dict with those keys;
      each a ``Dataset`` (candle makes the loaders: exact resume, per-rank shards) or a
      ``DataLoader`` of your own
    - ``training_step(batch)`` -> scalar loss tensor
    - ``validation_step(batch)`` -> dict of metrics (default: ``{"loss": training_step(batch)}``)
    - optionally ``build_optimizer(model)``, ``build_scheduler(optimizer, total_steps)``,
      ``predict_step(batch)``

    Inside them use ``self.params``, ``self.model`` and ``self.device``.
    """

    params_class: ClassVar[type[Params]] = Params

    def __init__(
        self,
        params: Params | None = None,
        *,
        callbacks: Iterable[cb.Callback] = (),
        strategy: Strategy | None = None,
        **overrides: Any,
    ):
        if params is None:
            params = params_from_dict(self.params_class, overrides, source="Trainer(...) arguments")
        elif overrides:
            merged = {**params_to_dict(params), **overrides}
            params = params_from_dict(type(params), merged, source="Trainer(...) arguments")
        if not isinstance(params, self.params_class):
            raise ConfigError(
                f"{type(self).__name__} needs params of type {self.params_class.__name__}, "
                f"got {type(params).__name__}; build them with "
                f"load_params({self.params_class.__name__}, ...)"
            )
        self.params = params
        self.user_callbacks = list(callbacks)
        self.strategy: Strategy = strategy or resolve_strategy(params.strategy, params)
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.device = torch.device("cpu")
        self.run_dir = Path(".")
        self.monitor = params.monitor
        # progress: what a checkpoint must restore for an exact resume
        self.epoch = 0  # completed epochs
        self.batch_in_epoch = 0  # micro-batches consumed in the current epoch
        self.global_step = 0  # optimizer steps
        self.history: list[dict[str, float]] = []
        self.steps_per_epoch = 0
        self._best: tuple[float, dict[str, float]] | None = None
        self._stop: tuple[str, str] | None = None
        self._epoch_loss = torch.zeros(())
        self._epoch_samples = 0
        self._elapsed_before = 0.0
        self._callbacks: list[cb.Callback] = []
        self._checkpoints: CheckpointManager | None = None
        self._data: dict[str, Dataset | DataLoader] | None = None
        self._log_handler: logging.Handler | None = None
        self._process_start = time.monotonic()

    # ------------------------------------------------------------------ user hooks
    def build_model(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must define build_model()")

    def build_data(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define build_data()")

    def training_step(self, batch: Any) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define training_step(batch)")

    def validation_step(self, batch: Any) -> Mapping[str, torch.Tensor | float]:
        return {"loss": self.training_step(batch)}

    def predict_step(self, batch: Any) -> torch.Tensor:
        inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.model(inputs)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        p = self.params
        lr, wd = p.learning_rate, p.weight_decay
        if p.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=lr, momentum=p.momentum, weight_decay=wd)
        if p.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
        if p.optimizer == "adamw":
            return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
        return torch.optim.RMSprop(model.parameters(), lr=lr, momentum=p.momentum, weight_decay=wd)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        """Per-step LR multiplier: linear warm-up, then the ``lr_schedule`` decay."""
        p, per_epoch = self.params, max(self.steps_per_epoch, 1)
        warmup = p.warmup_steps

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
            if p.lr_schedule == "cosine":
                return p.lr_min_ratio + (1 - p.lr_min_ratio) * 0.5 * (
                    1 + math.cos(math.pi * progress)
                )
            if p.lr_schedule == "linear":
                return p.lr_min_ratio + (1 - p.lr_min_ratio) * (1 - progress)
            if p.lr_schedule == "step":
                return p.lr_gamma ** ((step // per_epoch) // p.lr_step_size)
            if p.lr_schedule == "exponential":
                return p.lr_gamma ** (step / per_epoch)
            return 1.0

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # ------------------------------------------------------------------ public API
    def fit(self) -> FitResult:
        """Train for ``params.epochs`` epochs (or ``max_steps``), resuming if asked."""
        p, strategy = self.params, self.strategy
        started = self._process_start = time.monotonic()
        self._stop = None
        try:
            self._setup()
            p = self.params  # _setup fills in run_id
            self._write_result({"status": "running"}, started)
            self._fire("on_fit_start")
            # Elastic Horovod runs the loop again, from its last commit, when ranks come or go.
            strategy.run(self, self._train_epochs)
            reason = self._stop[0] if self._stop else "epochs"
            if reason == "epochs" and self.epoch < p.epochs:  # stopped by stop_at_epoch
                reason = "segment"
            result = self._make_result(reason, started)
            self._fire("on_fit_end", result)  # the final checkpoint is written here
            if self._checkpoints is not None:  # rank 0 only
                result.last_checkpoint_path = self._checkpoints.last_path
                result.checkpoint_path = self._checkpoints.best_path or result.last_checkpoint_path
            self._write_result(self._result_record(result), started)
            if strategy.is_main:
                log.info(
                    "run %s: %s (%s); run directory %s",
                    p.run_id,
                    result.status,
                    reason,
                    self.run_dir,
                )
        except BaseException as error:
            self._fail(error, started)
            raise
        finally:
            self._detach_log()
        return result

    def _train_epochs(self) -> None:
        """The training loop, from the current epoch and micro-batch to the end of training.

        Everything comes from ``epoch``, ``batch_in_epoch`` and the strategy's ranks, so an
        elastic strategy can load a committed state and enter it again on another set of ranks.
        """
        p, strategy = self.params, self.strategy
        model, optimizer, scaler = self.model, self.optimizer, self._scaler
        train_data, val_data = self._data["train"], self._data.get("val")
        accum = p.grad_accum_steps
        max_steps = p.max_steps or None
        if strategy.is_main and self._log_handler is None:
            self._become_main()  # an elastic reset made this process rank 0
        end = min(p.epochs, p.stop_at_epoch) if p.stop_at_epoch else p.epochs
        while self.epoch < end and self._stop is None:
            loader = self._loader(
                train_data, train=True, epoch=self.epoch, skip=self.batch_in_epoch
            )
            n_batches = self.batch_in_epoch + len(loader)  # micro-batches in this epoch
            self._fire("on_epoch_start")
            model.train()
            for batch in loader:
                # Micro-batches are grouped `accum` at a time into one optimizer step; the
                # last group of an epoch may be shorter, and its mean is over its own size.
                group_start = self.batch_in_epoch - self.batch_in_epoch % accum
                group_size = min(accum, n_batches - group_start)
                steps_now = self.batch_in_epoch - group_start + 1 == group_size
                batch = to_device(batch, self.device, self._pin)
                sync = contextlib.nullcontext() if steps_now else strategy.no_sync(model)
                with sync:
                    with self._autocast():
                        loss = self.training_step(batch)
                    scaled = loss / group_size
                    (scaler.scale(scaled) if scaler else scaled).backward()
                n = batch_size_of(batch)
                self._epoch_loss.add_(loss.detach().float(), alpha=n)  # in place: no temporaries
                self._epoch_samples += n
                self.batch_in_epoch += 1
                if not steps_now:
                    continue
                strategy.optimizer_step(
                    optimizer, self._parameters, scaler=scaler, max_norm=p.grad_clip
                )
                optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.global_step += 1
                if self._check_finite_every_step or self.global_step % p.log_every_steps == 0:
                    self._check_finite(loss)
                if max_steps and self.global_step >= max_steps:  # before an elastic commit
                    self.request_stop("max_steps", f"max_steps={max_steps} reached")
                self._fire("on_step_end", loss)
                if self._stop is not None:
                    break
            if self.batch_in_epoch == n_batches:  # the epoch ran to its end
                self._end_epoch(val_data)

    @torch.no_grad()
    def evaluate(self, data: str | Dataset | DataLoader = "val") -> dict[str, float]:
        """Metrics of ``validation_step`` averaged over a split ("val", "test", "train") or a
        dataset, weighted by batch size and reduced across ranks."""
        self._ensure_ready()
        dataset = self._split(data)
        model = self.model
        was_training = model.training
        model.eval()
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for batch in self._loader(dataset, train=False, epoch=0, skip=0):
            batch = to_device(batch, self.device, self._pin)
            with self._autocast():
                out = self.validation_step(batch)
            n = batch_size_of(batch)
            for name, value in out.items():
                value = torch.as_tensor(value, dtype=torch.float64, device=self.device).detach()
                sums[name] = sums.get(name, 0) + value.double() * n
            count += n
        model.train(was_training)
        if not sums:
            return {}
        names = sorted(sums)
        packed = torch.stack(
            [sums[k] for k in names]
            + [torch.tensor(float(count), device=self.device, dtype=torch.float64)]
        )
        packed = self.strategy.all_reduce(packed, op="sum").tolist()  # one sync point
        return {k: v / packed[-1] for k, v in zip(names, packed[:-1], strict=True)}

    @torch.no_grad()
    def predict(self, data: str | Dataset | DataLoader = "test") -> torch.Tensor:
        """Concatenated ``predict_step`` outputs over a split or dataset (this rank's share)."""
        self._ensure_ready()
        dataset = self._split(data)
        model = self.model
        was_training = model.training
        model.eval()
        outs = []
        for batch in self._loader(dataset, train=False, epoch=0, skip=0):
            with self._autocast():
                outs.append(
                    self.predict_step(to_device(batch, self.device, self._pin)).float().cpu()
                )
        model.train(was_training)
        return torch.cat(outs) if outs else torch.empty(0)

    def request_stop(self, reason: str, message: str = "") -> None:
        """Ask training to stop after the current step (callbacks use this)."""
        if self._stop is None:
            self._stop = (reason, message or reason)
            log.info("stopping: %s", message or reason)

    def load_checkpoint(self, path: str | os.PathLike | None = None) -> dict[str, Any]:
        """Load model weights (and nothing else) from a checkpoint file, or the run's best."""
        self._ensure_ready()
        manager = self._checkpoints
        record = manager.load(path) if path else (manager.load_best() or manager.load_latest())
        if record is None:
            raise CheckpointError(f"no checkpoint found in {manager.directory}")
        self._unwrapped().load_state_dict(record["state"]["model"])
        return record

    def save_checkpoint(self, metric: float | None = None) -> Path | None:
        """Write a full-state checkpoint now. Collective: every rank calls it (each contributes
        its RNG state and loss accumulators); only the main rank writes, and returns the path."""
        state = self.state_dict()
        if not self.strategy.is_main:
            return None
        path = self._checkpoints.save(state, epoch=self.epoch, step=self.global_step, metric=metric)
        self._fire("on_checkpoint", path)
        return path

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs. Collective under several ranks: the per-rank parts
        (RNG states, this epoch's loss sums) are gathered from every rank."""
        mine = {
            "rng": capture_rng_state(),
            "epoch_loss": self._epoch_loss.detach().cpu().clone(),
            "epoch_samples": self._epoch_samples,
        }
        return {
            "model": self._unwrapped().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self._scaler.state_dict() if self._scaler else None,
            "ranks": self.strategy.all_gather_object(mine),
            "lr_scale": self.lr_scale,
            "progress": {
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "global_step": self.global_step,
                "elapsed_s": self._elapsed(),
            },
            "history": self.history,
            "best": list(self._best) if self._best else None,
            "callbacks": {
                f"{i}:{type(c).__name__}": c.state_dict() for i, c in enumerate(self._callbacks)
            },
            "params": self.params_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._unwrapped().load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.optimizer.zero_grad(set_to_none=True)  # no half-accumulated gradients survive
        self.scheduler.load_state_dict(state["scheduler"])
        if self._scaler is not None and state["scaler"] is not None:
            self._scaler.load_state_dict(state["scaler"])
        prog = state["progress"]
        self.epoch, self.batch_in_epoch = prog["epoch"], prog["batch_in_epoch"]
        self.global_step = prog["global_step"]
        self._elapsed_before, self._process_start = prog["elapsed_s"], time.monotonic()
        self.history = list(state["history"])
        self._best = (state["best"][0], dict(state["best"][1])) if state["best"] else None
        saved = state["callbacks"]
        for i, c in enumerate(self._callbacks):
            key = f"{i}:{type(c).__name__}"
            if key in saved:
                c.load_state_dict(saved[key])
        self._rescale_lr(state.get("lr_scale", 1.0))
        ranks, rank, world = state["ranks"], self.strategy.rank, self.strategy.world_size
        if len(ranks) == world:  # the common case: an exact continuation
            self._epoch_loss = ranks[rank]["epoch_loss"].to(self.device)
            self._epoch_samples = ranks[rank]["epoch_samples"]
            restore_rng_state(ranks[rank]["rng"])  # last: building the objects drew numbers
            return
        # A different number of ranks (elastic training, or a job restarted at another size).
        # Rank r's k-th batch covers order[k*W + r], so k batches on each of W ranks cover the
        # first k*W*batch_size samples of the epoch's order: continue from the same sample on
        # the new ranks. The epoch's loss sums move to rank 0 (the epoch end sums over ranks).
        accum = self.params.grad_accum_steps
        done = self.batch_in_epoch * len(ranks)
        self.batch_in_epoch = -(-done // world // accum) * accum
        self.steps_per_epoch = -(-self._loader_len(self._data["train"]) // accum)
        if rank == 0:
            self._epoch_loss = sum(r["epoch_loss"] for r in ranks).to(self.device)
            self._epoch_samples = sum(r["epoch_samples"] for r in ranks)
        else:
            self._epoch_loss = torch.zeros((), device=self.device)
            self._epoch_samples = 0
        restore_rng_state(ranks[min(rank, len(ranks) - 1)]["rng"])
        if rank >= len(ranks):
            torch.manual_seed(self.params.seed + 7919 * rank + self.global_step)
        log.warning(
            "state was saved by %d rank(s), continuing on %d: epoch %d from micro-batch %d of "
            "each rank (%d steps per epoch); the run is no longer bitwise reproducible",
            len(ranks),
            world,
            self.epoch + 1,
            self.batch_in_epoch,
            self.steps_per_epoch,
        )

    @property
    def callbacks(self) -> list[cb.Callback]:
        """The run's callbacks in event order (built-in ones first); valid during ``fit``."""
        return self._callbacks

    def params_dict(self) -> dict[str, Any]:
        return params_to_dict(self.params)

    @property
    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # ------------------------------------------------------------------ internals
    def _setup(self) -> None:
        """Build everything ``fit`` needs, then restore the latest checkpoint if resuming."""
        p, strategy = self.params, self.strategy
        strategy.setup()
        if p.threads:
            torch.set_num_threads(p.threads)
        seed_everything(p.seed, p.deterministic)
        self.device = strategy.device(p.device)
        self._pin = self.device.type == "cuda"
        self._check_finite_every_step = self.device.type == "cpu"  # no sync cost on CPU
        self.run_dir = resolve_run_dir(p.output_dir, p.experiment, p.run_id, p.run_dir, p.resume)
        self.run_dir = Path(strategy.broadcast_object(str(self.run_dir)))
        if not p.run_id:
            self.params = dataclasses.replace(p, run_id=self.run_dir.name)
            p = self.params
        if strategy.is_main:  # only rank 0 writes into the run directory
            self._open_run_files()
        strategy.barrier()
        self._precision = resolve_precision(p.precision, self.device)
        self.model = self.build_model().to(self.device)
        self._data = normalize_data(self.build_data())
        train_len = self._loader_len(self._data["train"])
        if train_len == 0:
            raise ConfigError("build_data(): the training data is empty")
        self.steps_per_epoch = -(-train_len // p.grad_accum_steps)
        total_steps = p.max_steps or self.steps_per_epoch * p.epochs
        self.optimizer = self.build_optimizer(self.model)
        self._scale_lr(self.optimizer)
        # Wrap first: Horovod's DistributedOptimizer is a new object, and the LR scheduler
        # must drive the optimizer that actually steps.
        self.model, self.optimizer = strategy.wrap(self.model, self.optimizer, p.grad_accum_steps)
        self.scheduler = self.build_scheduler(self.optimizer, total_steps)
        self._scaler = torch.amp.GradScaler("cuda") if self._precision == torch.float16 else None
        self._parameters = [q for q in self.model.parameters() if q.requires_grad]
        self._epoch_loss = torch.zeros((), device=self.device)
        if "val" not in self._data and self.monitor.startswith("val_"):
            log.warning("no validation data: monitoring train_loss instead of %s", self.monitor)
            self.monitor = "train_loss"
        self._callbacks = cb.default_callbacks(self) + self.user_callbacks
        if p.resume:
            self._resume()
        strategy.broadcast_state(self.model, self.optimizer)
        if strategy.is_main:
            save_params(self.params, self.run_dir / "params.yaml")
            log.info(
                "training on %s (%s), %d steps per epoch, precision %s",
                self.device,
                type(strategy).__name__,
                self.steps_per_epoch,
                precision_name(self._precision),
            )

    def _open_run_files(self) -> None:
        p = self.params
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log_handler = attach_file_log(self.run_dir / "train.log")
        self._checkpoints = CheckpointManager(
            self.run_dir / "checkpoints", keep_last=p.keep_checkpoints, mode=p.monitor_mode
        )

    def _become_main(self) -> None:
        """Take over from a rank 0 that an elastic job lost: open the run files and add the
        loggers only rank 0 has (after Checkpointing, as ``default_callbacks`` orders them).
        They start from the restored history: ``metrics.jsonl`` is rewritten from it."""
        self._open_run_files()
        defaults = cb.default_callbacks(self)
        kinds = [type(c) for c in defaults]
        loggers = defaults[kinds.index(cb.Checkpointing) + 1 :]
        at = [type(c) for c in self._callbacks].index(cb.Checkpointing) + 1
        self._callbacks[at:at] = loggers
        log.warning(
            "this process (pid %d) is rank 0 of %d now and writes the run directory from epoch "
            "%d, step %d; learning rate %g",
            os.getpid(),
            self.strategy.world_size,
            self.epoch + 1,
            self.global_step,
            self.current_lr,
        )
        for c in loggers:
            c.on_fit_start(self)

    def _resume(self) -> None:
        """Restore the latest good checkpoint. Rank 0 chooses it (falling back past corrupt
        ones); every rank then loads that same file from the shared run directory."""
        strategy = self.strategy
        record = self._checkpoints.load_latest() if strategy.is_main else None
        where = None
        if record is not None:
            where = str(self._checkpoints.path_for(record["epoch"], record["step"]))
        where = strategy.broadcast_object(where)
        if where is None:
            log.info("resume: no checkpoint in %s, starting fresh", self.run_dir)
            return
        if record is None:
            reader = CheckpointManager(Path(where).parent, mode=self.params.monitor_mode)
            record = reader.load(where)
        try:
            self.load_state_dict(record["state"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint {where} does not fit this run's model or optimizer ({e}); resume "
                "with the params it was written with, or start a new run (resume=false or "
                "another run_id)"
            ) from e
        log.info("resumed from %s (epoch %d, step %d)", where, self.epoch, self.global_step)

    @property
    def lr_scale(self) -> float:
        """The factor ``lr_scaling`` applies to the learning rate for this many ranks."""
        n = self.strategy.world_size
        return {"none": 1.0, "linear": float(n), "sqrt": math.sqrt(n)}[self.params.lr_scaling]

    def _rescale_lr(self, saved_scale: float) -> None:
        """After loading a checkpoint written at another world size, move every learning rate
        (current, initial and the scheduler's base) from the saved scale to this one."""
        ratio = self.lr_scale / saved_scale
        if ratio == 1.0:
            return
        for group in self.optimizer.param_groups:
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] *= ratio
        if hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [lr * ratio for lr in self.scheduler.base_lrs]
        log.info("learning rates rescaled x %g for %d ranks", ratio, self.strategy.world_size)

    def _scale_lr(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply ``lr_scaling`` for the number of ranks: explicit and logged, never silent."""
        p, n, factor = self.params, self.strategy.world_size, self.lr_scale
        for group in optimizer.param_groups:
            group["lr"] *= factor
        if n > 1 or factor != 1.0:
            log.info(
                "lr_scaling=%s: %d rank(s), learning rate %g x %g = %g (warmup_steps=%d)",
                p.lr_scaling,
                n,
                p.learning_rate,
                factor,
                p.learning_rate * factor,
                p.warmup_steps,
            )

    def _end_epoch(self, val_data: Any) -> None:
        """Reduce the epoch's metrics across ranks, then hand them to the callbacks."""
        totals = torch.stack(
            [
                self._epoch_loss.double(),
                torch.tensor(float(self._epoch_samples), device=self.device, dtype=torch.float64),
            ]
        )
        loss_sum, samples = self.strategy.all_reduce(totals, op="sum").tolist()
        metrics: dict[str, float] = {
            "epoch": self.epoch + 1,
            "train_loss": loss_sum / max(samples, 1),
        }
        metrics["lr"] = self.current_lr
        if val_data is not None:
            val = self.evaluate("val")
            metrics.update({f"val_{k}": v for k, v in val.items()})
            self._fire("on_evaluate_end", metrics)
        if self.monitor not in metrics:
            raise ConfigError(
                f"monitor={self.monitor!r} is not among the epoch metrics "
                f"({', '.join(sorted(metrics))}); set `monitor` to one of them"
            )
        self.epoch += 1
        self.batch_in_epoch = 0
        self._epoch_loss = torch.zeros((), device=self.device)
        self._epoch_samples = 0
        self.history.append(metrics)
        value = metrics[self.monitor]
        if cb._improved(value, self._best[0] if self._best else None, self.params.monitor_mode):
            self._best = (value, dict(metrics))
        if self.strategy.is_main:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch")
            log.info("epoch %d/%d: %s", self.epoch, self.params.epochs, shown)
        self._fire("on_epoch_end", metrics)

    def _check_finite(self, loss: torch.Tensor) -> None:
        value = loss.detach()
        finite = math.isfinite(value.item()) if value.numel() == 1 else bool(value.isfinite().all())
        if not finite:
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at epoch {self.epoch + 1}, step "
                f"{self.global_step}; lower learning_rate, set grad_clip, or check the data "
                f"for NaN/inf (run directory: {self.run_dir})"
            )

    def _fail(self, error: BaseException, started: float) -> None:
        for c in self._callbacks:
            with contextlib.suppress(Exception):
                c.on_exception(self, error)
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        record = {
            "status": status,
            "error": {"type": type(error).__name__, "message": str(error)},
            "history": self.history,
            "epoch": self.epoch,
            "global_step": self.global_step,
        }
        with contextlib.suppress(Exception):
            self._write_result(record, started)
        log.error("run failed: %s: %s", type(error).__name__, error)

    def _make_result(self, reason: str, started: float) -> FitResult:
        last = self.history[-1] if self.history else {}
        best = self._best[1] if self._best else {}
        return FitResult(
            status={"time_limit": "interrupted", "segment": "paused"}.get(reason, "completed"),
            stop_reason=reason,
            history=list(self.history),
            best_metrics=best,
            last_metrics=last,
            best_epoch=int(best["epoch"]) if best else None,
            monitor=self.monitor,
            checkpoint_path=None,
            last_checkpoint_path=None,
            run_dir=self.run_dir,
            elapsed_s=self._elapsed(),
            global_step=self.global_step,
        )

    def _result_record(self, result: FitResult) -> dict[str, Any]:
        return {
            "status": result.status,
            "stop_reason": result.stop_reason,
            "objective": {
                "name": result.monitor,
                "mode": self.params.monitor_mode,
                "value": result.objective,
            },
            "metrics": result.last_metrics,
            "best_metrics": result.best_metrics,
            "best_epoch": result.best_epoch,
            "history": result.history,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "checkpoint": str(result.checkpoint_path) if result.checkpoint_path else None,
            "last_checkpoint": str(result.last_checkpoint_path)
            if result.last_checkpoint_path
            else None,
        }

    def _write_result(self, record: dict[str, Any], started: float) -> None:
        if not (self.strategy.is_main and self._log_handler is not None):
            return  # not the writing rank, or failed before the run directory existed
        record = {
            **record,
            "run_id": self.params.run_id,
            "experiment": self.params.experiment,
            "trainer": f"{type(self).__module__}:{type(self).__qualname__}",
            "timings": {
                "elapsed_s": self._elapsed(),
                "this_process_s": time.monotonic() - started,
                "steps_per_epoch": self.steps_per_epoch,
            },
            "world_size": self.strategy.world_size,
            "provenance": {**provenance(), "data": self._data_provenance()},
        }
        write_result(self.run_dir, record)

    def _data_provenance(self) -> dict[str, Any]:
        """Checksums of the datasets this run read (shard datasets carry one), per split."""
        out: dict[str, Any] = {}
        for split, data in (self._data or {}).items():
            base = base_dataset(data)
            checksum = getattr(base, "checksum", None)
            if isinstance(checksum, str):
                out[split] = {
                    "checksum": checksum,
                    "source": str(getattr(base, "source", "")),
                    "rows": len(data.dataset if isinstance(data, DataLoader) else data),
                }
        return out

    def _elapsed(self) -> float:
        """Training time over all segments of the run (resumes add to it)."""
        return self._elapsed_before + time.monotonic() - self._process_start

    def _detach_log(self) -> None:
        handler, self._log_handler = self._log_handler, None
        if handler is not None:
            logging.getLogger("candle").removeHandler(handler)
            handler.close()

    def _fire(self, event: str, *args: Any) -> None:
        for c in self._callbacks:
            getattr(c, event)(self, *args)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._precision == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._precision)

    def _unwrapped(self) -> nn.Module:
        return getattr(self.model, "module", self.model)

    def _ensure_ready(self) -> None:
        if self.model is None:
            raise RuntimeError("call fit() first (the model and data are built there)")

    # --------------------------------------------------------------- data plumbing
    def _split(self, data: str | Dataset | DataLoader) -> Any:
        if not isinstance(data, str):
            return data
        if data not in self._data:
            raise ConfigError(f"no {data!r} split: build_data() gave {sorted(self._data)}")
        return self._data[data]

    def _loader_len(self, data: Any) -> int:
        """Number of training micro-batches per epoch on this rank (equal on every rank)."""
        if isinstance(data, DataLoader):
            if self.strategy.world_size == 1:
                return len(data)
            # A user's per-rank loaders may differ in length; a rank that runs more steps than
            # the others would wait forever in an all-reduce, so every rank runs the shortest.
            n = torch.tensor([float(len(data))], device=self.device)
            shortest = int(self.strategy.all_reduce(n, op="min").item())
            if shortest < len(data):
                log.warning(
                    "rank %d: training loader has %d batches, the shortest rank's has %d; "
                    "using %d per epoch on every rank",
                    self.strategy.rank,
                    len(data),
                    shortest,
                    shortest,
                )
            return shortest
        per_rank = -(-len(data) // self.strategy.world_size)  # padded, see rank_indices
        return -(-per_rank // self.params.batch_size)

    def _loader(self, data: Any, *, train: bool, epoch: int, skip: int) -> Iterable[Any]:
        """Batches for one epoch, after skipping ``skip`` micro-batches (mid-epoch resume).

        For a Dataset the order is a pure function of (seed, epoch, rank, world size), and the
        loader gets its own generator, so creating it never draws from the global RNG (which
        would make a resumed run diverge from an uninterrupted one).
        """
        p = self.params
        if isinstance(data, DataLoader):
            sampler = getattr(data, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            return Skip(data, skip, self._loader_len(data) if train else len(data))
        bs = p.batch_size if train else (p.eval_batch_size or p.batch_size)
        s = self.strategy
        indices = rank_indices(
            len(data),
            seed=p.seed,
            epoch=epoch,
            rank=s.rank,
            world_size=s.world_size,
            shuffle=train,
            pad=train,
        )[skip * bs :]
        gen = torch.Generator()
        gen.manual_seed(p.seed * 7919 + epoch)
        common = {"num_workers": p.num_workers, "pin_memory": self._pin, "generator": gen}
        if batch_indexable(data):
            # Whole-batch indexing: one gather per tensor instead of per-sample + collate.
            batches = BatchSampler(Indices(indices), bs, drop_last=False)
            return DataLoader(data, batch_size=None, sampler=batches, **common)
        return DataLoader(data, batch_size=bs, sampler=Indices(indices), **common)
