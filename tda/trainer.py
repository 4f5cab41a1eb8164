"""The Trainer contract of training data analysis: one model, trained on any subset of the data.

A user subclasses :class:`TDATrainer` and overrides two methods::

    class MyModel(TDATrainer):
        params_class = MyParams           # extends TDAParams
        task = "regression"               # or "classification"

        def load_data(self) -> GroupedData:
            return GroupedData(x, y, groups)   # the WHOLE data set, every group

        def build_model(self) -> nn.Module:
            return nn.Linear(self.data.x.shape[1], 1)

``x`` is one ``n x d`` array, or a dict of ``n x d_k`` arrays (``name -> array``) for a model
whose ``forward`` takes a dict of tensors (several inputs: cell and drug features, say); its
batches are then ``({name: b x d_k}, y)``.

The base class does the rest, from the trial's parameters (:class:`TDAParams`, set by a plan):

- ``build_data()`` splits every group's rows into fixed test / validation / training-pool
  rows (``split_seed``, ``test_fraction``, ``val_fraction``; stratified by class for
  classification), takes the training subset
  (``train_groups``: empty = all; ``train_size`` rows, 0 = the whole pool, drawn by
  ``subset_seed``; nested across sizes), validates on the validation rows of the training
  groups, and keeps the test rows of EVERY group. Features (and regression targets) are
  standardized with the mean and standard deviation of the training pools of all groups of the
  split (per column; each input of a dict on its own): the same for every trial of a split (no
  test row is used), so a pretrained model and its fine-tuned copy see the same scale.
  ``init_from`` (a trial directory or a checkpoint file) starts the model from that run's best
  weights (fine-tuning); a resumed trial then continues from its own checkpoint as usual.
- ``training_step`` / ``validation_step`` / ``predict_step`` default to mean squared error
  (regression; ``y`` is ``n x o``) or cross-entropy (classification; the model gives ``n x C``
  logits, or ``n x 1`` for two classes); ``predict_step`` returns class probabilities. Override
  them together if you change one.
- At the end of a completed ``fit()``, before ``result.json`` says "completed", the best
  checkpoint's predictions on the test rows of every group are written to
  ``<run_dir>/predictions.npz`` (arrays ``pred``: ``m x o`` in the targets' units, or ``m x C``
  probabilities; ``y``; ``group``; ``row``: index into the whole data set; ``task``). The
  analysis computes every score from these files, so a model is scored on every group's test
  data without another trial.

The split and subset rules are in :mod:`candle.tda._splits`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from candle.callbacks import Callback
from candle.checkpoint import CheckpointManager
from candle.config import Params, param
from candle.data.rows import Inputs, RowDataset, map_inputs, take_rows
from candle.errors import CheckpointError, ConfigError
from candle.tda._splits import GroupSplit, check_groups, split_groups, training_subset
from candle.tda._tasks import TASKS
from candle.trainer import Trainer

__all__ = ["PREDICTIONS", "GroupedData", "TDAParams", "TDATrainer", "read_predictions"]

PREDICTIONS = "predictions.npz"


@dataclass
class TDAParams(Params):
    split_seed: int = param(0, min=0, help="which fixed test/validation split of every group")
    test_fraction: float = param(0.2, min=0.0, max=0.9, help="test rows per group")
    val_fraction: float = param(0.1, min=0.0, max=0.9, help="validation rows per group")
    train_groups: list[str] = param([], help="groups to train on; empty = all")
    train_size: int = param(0, min=0, help="training rows drawn from their pool; 0 = all")
    subset_seed: int = param(0, min=0, help="which random training subset (a repeat)")
    init_from: str = param("", help="trial directory or checkpoint to fine-tune from")
    standardize: bool = param(True, help="standardize features (and regression targets)")
    epochs: int = 20
    tensorboard: bool = False

    def validate(self) -> None:
        super().validate()  # a params class mixed in after this one checks its own fields
        if self.test_fraction + self.val_fraction >= 1.0:
            raise ConfigError(
                f"test_fraction + val_fraction must be < 1, got {self.test_fraction} + "
                f"{self.val_fraction}; lower one of them"
            )


@dataclass
class GroupedData:
    """A whole data set: ``x`` (``n x d``, or a dict ``name -> n x d_k`` for a model with
    several inputs), ``y`` (``n`` or ``n x o`` targets, class indices ``0..C-1`` for
    classification) and ``groups`` (``n`` labels: study, cell line, tissue...; None = one group
    "all")."""

    x: np.ndarray | dict[str, np.ndarray]
    y: np.ndarray
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.y = np.asarray(self.y)
        if isinstance(self.x, Mapping):
            n = self.y.shape[0]
            if not self.x:
                raise ConfigError("load_data(): x is an empty dict; give at least one input")
            self.x = {str(k): np.asarray(a, dtype=np.float32) for k, a in self.x.items()}
            rows = {name: a.shape[0] if a.ndim else 0 for name, a in self.x.items()}
            for name, a in self.x.items():
                if a.ndim != 2:
                    raise ConfigError(
                        f"load_data(): input {name!r} of x must be n x d, got shape {a.shape}"
                    )
                if a.shape[0] != n:
                    raise ConfigError(
                        f"load_data(): input {name!r} of x has {a.shape[0]} rows but y has {n}; "
                        f"every input needs one row per target (rows per input: {rows})"
                    )
        else:
            self.x = np.asarray(self.x, dtype=np.float32)
            n = self.x.shape[0]
            if self.x.ndim != 2:
                raise ConfigError(f"load_data(): x must be n x d, got shape {self.x.shape}")
            if self.y.shape[0] != n:
                raise ConfigError(f"load_data(): x has {n} rows but y has {self.y.shape[0]}")
        groups = np.full(n, "all") if self.groups is None else np.asarray(self.groups)
        if groups.shape != (n,):
            raise ConfigError(f"load_data(): groups must hold {n} labels, got {groups.shape}")
        self.groups = groups.astype(str)

    @classmethod
    def from_frame(
        cls,
        frame: Any,
        *,
        target: str,
        group: str | None = None,
        features: list[str] | None = None,
        where: str = "load_data()",
    ) -> GroupedData:
        """From a pandas DataFrame: ``target`` column, optional ``group`` column, and the
        ``features`` columns (default: every other column)."""
        columns = [str(c) for c in frame.columns]
        for role, name in (("target", target), ("group", group)):
            if name is not None and name not in columns:
                raise ConfigError(
                    f"{where}: {role} column {name!r} is not in the data; columns: "
                    f"{', '.join(columns)}"
                )
        if features is None:
            features = [c for c in columns if c not in (target, group)]
        missing = [c for c in features if c not in columns]
        if missing:
            raise ConfigError(f"{where}: feature column(s) {', '.join(missing)} not in the data")
        groups = frame[group].to_numpy() if group else None
        return cls(frame[features].to_numpy(), frame[target].to_numpy(), groups)


def _scale(a: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = a[rows].mean(0)
    std = a[rows].std(0)
    return mean, np.where(std > 0, std, 1.0)


def _standardized(a: np.ndarray, rows: np.ndarray, stats: tuple[Any, Any]) -> torch.Tensor:
    mean, std = stats
    return torch.as_tensor((a[rows] - mean) / std, dtype=torch.float32)


class _WritePredictions(Callback):
    def on_fit_end(self, trainer: Trainer, result: Any) -> None:
        if result.status == "completed" and trainer.strategy.is_main:
            trainer.write_predictions()


class TDATrainer(Trainer):
    """Base class of a model trained on subsets of one grouped data set; see the module
    docstring for the contract."""

    params_class: ClassVar[type[Params]] = TDAParams
    task: ClassVar[str] = "regression"

    def __init__(self, params: Params | None = None, **kwargs: Any):
        super().__init__(params, **kwargs)
        if self.task not in TASKS:
            raise ConfigError(
                f"{type(self).__name__}.task must be one of {', '.join(TASKS)}, got {self.task!r}"
            )
        self.user_callbacks.append(_WritePredictions())
        self._grouped: GroupedData | None = None

    # ------------------------------------------------------------------ user hook
    def load_data(self) -> GroupedData:
        raise NotImplementedError(f"{type(self).__name__} must define load_data()")

    # ------------------------------------------------------------------ data
    @property
    def data(self) -> GroupedData:
        """The whole data set (``load_data()``, loaded once)."""
        if self._grouped is None:
            data = self.load_data()
            if not isinstance(data, GroupedData):
                raise ConfigError(
                    f"{type(self).__name__}.load_data() must return a GroupedData, got "
                    f"{type(data).__name__}"
                )
            if self.task == "classification":
                try:
                    y = data.y.reshape(-1).astype(np.float64)
                except (TypeError, ValueError):
                    y = np.array([0.5])
                if not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0:
                    raise ConfigError(
                        f"{type(self).__name__}: classification targets must be class indices "
                        "0..C-1"
                    )
            self._grouped = data
        return self._grouped

    def splits(self) -> dict[str, GroupSplit]:
        """``{group: GroupSplit}`` of this trial's split."""
        p, data = self.params, self.data
        labels = data.y.reshape(-1) if self.task == "classification" else None
        return split_groups(data.groups, p.split_seed, p.test_fraction, p.val_fraction, labels)

    def build_data(self) -> dict[str, RowDataset]:
        p, data = self.params, self.data
        splits = self.splits()
        check_groups(p.train_groups, splits, "train_groups")
        train = training_subset(splits, p.train_groups, p.train_size, p.subset_seed)
        names = [g for g in splits if not p.train_groups or g in p.train_groups]
        val = np.concatenate([splits[g].val for g in names])
        test = np.concatenate([splits[g].test for g in splits])
        pool = np.concatenate([s.train for s in splits.values()])
        x, y = data.x, data.y
        if y.ndim == 1 and self.task == "regression":
            y = y[:, None]

        def stats(a: np.ndarray) -> tuple[Any, Any]:
            return _scale(a, pool) if p.standardize else (0.0, 1.0)

        self._x_stats = {k: stats(a) for k, a in x.items()} if isinstance(x, dict) else stats(x)
        regression = self.task == "regression"
        self._y_stats = _scale(y.astype(np.float64), pool) if p.standardize and regression else None
        self._test_rows = test
        if p.init_from:
            self._initialize_from(p.init_from)
        out = {"train": self._dataset(train), "test": self._dataset(test)}
        if val.size:
            out["val"] = self._dataset(val)
        return out

    def _features(self, rows: np.ndarray) -> Inputs:
        """The standardized features of ``rows``: ``m x d``, or a dict of ``m x d_k``."""
        x, stats = self.data.x, self._x_stats
        if isinstance(x, dict):
            return {k: _standardized(a, rows, stats[k]) for k, a in x.items()}
        return _standardized(x, rows, stats)

    def _dataset(self, rows: np.ndarray) -> RowDataset:
        x, y = self._features(rows), self.data.y[rows]
        if self.task == "classification":
            return RowDataset(x, torch.as_tensor(y.reshape(-1), dtype=torch.long))
        y = y.reshape(len(rows), -1).astype(np.float64)
        if self._y_stats is not None:
            y = (y - self._y_stats[0]) / self._y_stats[1]
        return RowDataset(x, torch.as_tensor(y, dtype=torch.float32))

    def _initialize_from(self, where: str) -> None:
        path = Path(where)
        try:
            if path.is_dir():
                folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
                manager = CheckpointManager(folder, mode=self.params.monitor_mode)
                record = manager.load_best() or manager.load_latest()
            elif path.is_file():
                record = CheckpointManager(path.parent, mode=self.params.monitor_mode).load(path)
            else:
                record = None
            if record is None:
                raise CheckpointError(f"no checkpoint at {where}")
            self.model.load_state_dict(record["state"]["model"])
        except (CheckpointError, KeyError, RuntimeError) as e:
            raise ConfigError(
                f"init_from={where!r}: cannot start the model from it ({e}); give a trial "
                "directory or checkpoint of the same model (same architecture parameters)"
            ) from e

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Any) -> torch.Tensor:
        x, y = batch
        out = self.model(x)
        if self.task == "regression":
            return F.mse_loss(out, y)
        if out.shape[-1] == 1:
            return F.binary_cross_entropy_with_logits(out.squeeze(-1), y.float())
        return F.cross_entropy(out, y)

    def validation_step(self, batch: Any) -> dict[str, torch.Tensor]:
        metrics = {"loss": self.training_step(batch)}
        if self.task == "classification":
            proba = self.predict_step(batch)
            metrics["accuracy"] = (proba.argmax(-1) == batch[1]).float().mean()
        return metrics

    def predict_step(self, batch: Any) -> torch.Tensor:
        """Regression: the model's output (standardized units); classification: ``n x C``
        class probabilities."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        out = self.model(x)
        if self.task == "regression":
            return out
        if out.shape[-1] == 1:
            p = torch.sigmoid(out)
            return torch.cat([1 - p, p], dim=-1)
        return torch.softmax(out, dim=-1)

    # ------------------------------------------------------------------ predictions
    @torch.no_grad()
    def write_predictions(self, path: str | os.PathLike | None = None) -> Path:
        """Predict the test rows of every group with the best checkpoint; save them as
        ``predictions.npz`` in the run directory (see the module docstring)."""
        self.load_checkpoint()  # the best weights (the last ones if nothing was monitored)
        rows, wrapped = self._test_rows, self.model
        # The main rank predicts alone: a DDP wrapper would sync buffers with ranks that are not
        # predicting, so predict_step sees the plain module for the moment.
        self.model = getattr(wrapped, "module", wrapped)
        was_training = self.model.training
        self.model.eval()
        features = self._features(rows)
        size = self.params.eval_batch_size or max(self.params.batch_size, 256)
        outs = []
        try:
            for start in range(0, len(rows), size):
                x = take_rows(features, slice(start, start + size))
                x = map_inputs(x, lambda t: t.to(self.device))
                outs.append(self.predict_step((x,)).float().cpu())
        finally:
            self.model.train(was_training)
            self.model = wrapped
        pred = torch.cat(outs).numpy().astype(np.float64)
        if self._y_stats is not None:
            pred = pred * self._y_stats[1] + self._y_stats[0]
        target = Path(path) if path else Path(self.run_dir) / PREDICTIONS
        tmp = target.with_name(target.name + ".tmp.npz")
        np.savez(
            tmp,
            pred=pred,
            y=self.data.y[rows],
            group=self.data.groups[rows],
            row=rows,
            task=np.array(self.task),
        )
        os.replace(tmp, target)
        return target


def read_predictions(trial_dir: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The arrays of a trial's ``predictions.npz``, or None when it has none."""
    path = Path(trial_dir) / PREDICTIONS
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
