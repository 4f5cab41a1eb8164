"""The ensemble member: a Trainer whose model predicts a distribution.

Subclass :class:`UQTrainer`, implement ``build_model()`` ending in
``nn.Linear(h, self.head_outputs)`` and ``load_data()``; the rest is provided. Inputs are one
tensor per sample or, for a model with several inputs, a dict of tensors (the model's
``forward`` then takes the dict)::

    class Diabetes(UQTrainer):
        def build_model(self):
            return nn.Sequential(nn.Linear(10, 50), nn.ReLU(), nn.Linear(50, self.head_outputs))

        def load_data(self):
            ...  # -> ((x_train, y_train), (x_val, y_val), (x_test, y_test))

What the base class does with the parameters of :class:`UQParams`:

- targets are standardized with the (unperturbed) training split's mean and standard
  deviation for training; every prediction it writes is back in the original units;
- the training split alone is perturbed, reproducibly from ``data_seed``: ``bootstrap``
  (resample with replacement), ``subsample`` (keep a fraction), ``label_noise`` (Gaussian
  noise on the targets, in target standard deviations), ``feature_noise`` (Gaussian noise on
  the features, in each feature's standard deviation) and ``label_flip`` (a fraction of the
  class labels replaced by another class);
- the loss follows ``head``: Gaussian NLL or beta-NLL, pinball loss, or cross-entropy;
- at the end of a completed ``fit()`` the best (or, with ``predict_checkpoint: last``, the
  last) checkpoint predicts the validation and test splits into ``predictions.npz`` in the
  run directory (see :func:`read_predictions`), which the UQ driver combines across members.
  ``mc_samples > 0`` predicts with MC dropout, one sample per stochastic pass.

Data are held in memory as tensors (UQ data sets are tables of modest size).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from candle.checkpoint import atomic_write_bytes
from candle.config import Params, param
from candle.data.rows import Inputs, RowDataset, map_inputs, num_rows, take_rows
from candle.errors import ConfigError
from candle.trainer import FitResult, Trainer
from candle.uq.heads import (
    HEADS,
    beta_nll_loss,
    gaussian_nll_loss,
    head_size,
    mc_dropout,
    pinball_loss,
    split_gaussian,
    split_quantiles,
)

__all__ = ["PREDICTIONS", "UQData", "UQParams", "UQTrainer", "read_predictions"]

PREDICTIONS = "predictions.npz"
_SPLITS = ("train", "val", "test")


@dataclass
class UQParams(Params):
    head: str = param("gaussian", choices=HEADS, help="predictive distribution of the model")
    loss: str = param("nll", choices=("nll", "beta_nll"), help="gaussian head: NLL or beta-NLL")
    beta: float = param(0.5, min=0.0, max=1.0, help="beta of the beta-NLL loss")
    variance_floor: float = param(1e-6, min=0.0, help="variance = softplus(raw) + floor")
    quantile_levels: list[float] = param(
        [0.025, 0.5, 0.975], min=0.0, max=1.0, help="quantile head: levels predicted"
    )
    mc_samples: int = param(0, min=0, help="MC dropout passes at prediction; 0 = off")
    predict_checkpoint: str = param(
        "best", choices=("best", "last"), help="checkpoint whose weights predict: best or last"
    )
    standardize_target: bool = param(True, help="train on standardized regression targets")
    # perturbations of the training split (sensitivity studies, bootstrap ensembles)
    data_seed: int = param(0, min=0, help="seed of the training-data perturbations")
    bootstrap: bool = param(False, help="train on a bootstrap resample of the training split")
    subsample: float = param(1.0, min=0.0, max=1.0, help="fraction of the training split kept")
    label_noise: float = param(0.0, min=0.0, help="target noise, in target standard deviations")
    feature_noise: float = param(0.0, min=0.0, help="feature noise, in feature std deviations")
    label_flip: float = param(0.0, min=0.0, max=1.0, help="fraction of class labels flipped")

    def validate(self) -> None:
        super().validate()  # a params class mixed in after this one checks its own fields
        levels = self.quantile_levels
        if self.head == "quantile" and (
            len(levels) < 2 or any(not 0 < q < 1 for q in levels) or sorted(levels) != levels
        ):
            raise ConfigError(
                f"quantile_levels must be at least 2 increasing levels strictly between 0 and 1, "
                f"got {levels}"
            )
        if self.subsample <= 0:
            raise ConfigError("subsample must be > 0 (a fraction of the data), got 0")
        if self.label_flip and self.head != "classification":
            raise ConfigError("label_flip applies to classification; use label_noise instead")
        if self.label_noise and self.head == "classification":
            raise ConfigError("label_noise applies to regression; use label_flip instead")


@dataclass
class UQData:
    """The member's splits as tensors: ``x`` is ``n x ...`` (or a dict of such tensors); ``y`` is
    ``n x o`` (regression, standardized for training) or ``n`` (class indices)."""

    x: dict[str, Inputs]
    y: dict[str, torch.Tensor]
    outputs: int  # o for regression, c (classes) for classification
    target_mean: torch.Tensor  # o (zeros for classification)
    target_std: torch.Tensor  # o (ones for classification)
    y_was_1d: bool


class UQTrainer(Trainer):
    """A Trainer whose model predicts a distribution; see the module docstring."""

    params_class = UQParams

    def load_data(self) -> Any:
        """``(train, val, test)`` (or a dict with those keys; ``test`` optional), each an
        ``(x, y)`` pair of arrays/tensors (``x`` may be a dict of them) or a Dataset of
        ``(x, y)`` samples (read whole, once)."""
        raise NotImplementedError(f"{type(self).__name__} must define load_data()")

    # ------------------------------------------------------------------ provided hooks
    @property
    def head_outputs(self) -> int:
        """Width of the model's last layer for this head and data."""
        p, data = self.params, self.uq_data
        return head_size(p.head, data.outputs, data.outputs, len(p.quantile_levels))

    @property
    def uq_data(self) -> UQData:
        if getattr(self, "_uq_data", None) is None:
            self._uq_data = self._prepare_data()
        return self._uq_data

    def build_data(self) -> dict[str, Dataset]:
        d = self.uq_data
        return {s: RowDataset(d.x[s], d.y[s]) for s in d.x}

    def head_forward(self, x: Inputs, model: torch.nn.Module | None = None) -> torch.Tensor:
        """The raw head outputs (``n x head_outputs``) of ``model`` (default ``self.model``)
        at ``x``. Override it when the model returns more than the head, e.g. a tuple."""
        return (self.model if model is None else model)(x)

    def training_step(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return self.head_loss(self.head_forward(x), y)

    def validation_step(self, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch
        out = self.head_forward(x)
        metrics = {"loss": self.head_loss(out, y)}
        if self.params.head == "classification":
            metrics["accuracy"] = (out.argmax(-1) == y).float().mean()
        elif self.params.head == "gaussian":
            mean, var = split_gaussian(out, self.params.variance_floor)
            metrics["nll"] = gaussian_nll_loss(mean, var, y)
            metrics["mse"] = ((mean - y) ** 2).mean()
        return metrics

    def fit(self) -> FitResult:
        result = super().fit()
        if result.status == "completed" and self.strategy.is_main:
            last = self.params.predict_checkpoint == "last"
            self.load_checkpoint(result.last_checkpoint_path if last else None)
            self.write_predictions(result.run_dir / PREDICTIONS)
        return result

    # ------------------------------------------------------------------ predictions
    @torch.no_grad()
    def predict_distribution(self, x: Inputs) -> dict[str, torch.Tensor]:
        """The model's predictive distribution at ``x`` (``n x d``, or a dict of tensors of
        ``n`` rows) in original units.

        Returns ``mean`` and ``var`` (``k x n x o``), or ``quantiles`` (``k x n x q x o``), or
        ``logits`` (``k x n x c``); ``k`` is ``mc_samples`` with MC dropout, else 1.
        """
        p, d = self.params, self.uq_data
        model = getattr(self.model, "module", self.model)  # a DDP wrapper's module
        device = next(model.parameters()).device
        bs = p.eval_batch_size or max(p.batch_size, 1024)

        def forward() -> torch.Tensor:
            outs = []
            for i in range(0, num_rows(x), bs):
                batch = map_inputs(take_rows(x, slice(i, i + bs)), lambda t: t.to(device))
                outs.append(self.head_forward(batch, model).float().cpu())
            return torch.cat(outs)

        if p.mc_samples:
            raw = mc_dropout(model, forward, p.mc_samples)
        else:
            was_training = model.training
            model.eval()
            raw = forward().unsqueeze(0)
            model.train(was_training)
        raw = raw.double()
        if p.head == "classification":
            return {"logits": raw}
        mu, sd = d.target_mean.double(), d.target_std.double()
        if p.head == "quantile":
            q = torch.stack([split_quantiles(r, len(p.quantile_levels)) for r in raw])
            return {"quantiles": q * sd + mu}
        mean, var = split_gaussian(raw, p.variance_floor)
        return {"mean": mean * sd + mu, "var": var * sd**2}

    def write_predictions(self, path: str | Path) -> Path:
        """Predict the validation and test splits into ``path`` (see :func:`read_predictions`)."""
        d, p = self.uq_data, self.params
        arrays: dict[str, np.ndarray] = {
            "head": np.array(p.head),
            "target_mean": d.target_mean.numpy(),
            "target_std": d.target_std.numpy(),
            "quantile_levels": np.asarray(p.quantile_levels, dtype=np.float64),
        }
        for split in ("val", "test"):
            if split not in d.x:
                continue
            for name, value in self.predict_distribution(d.x[split]).items():
                arrays[f"{split}_{name}"] = value.numpy()
            arrays[f"{split}_target"] = self._original_targets(split).numpy()
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return atomic_write_bytes(path, buffer.getvalue())

    # ------------------------------------------------------------------ internals
    def head_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The head's loss of raw outputs ``out`` for (standardized) targets ``y``."""
        p = self.params
        if p.head == "classification":
            return F.cross_entropy(out, y)
        if p.head == "quantile":
            return pinball_loss(split_quantiles(out, len(p.quantile_levels)), y, p.quantile_levels)
        mean, var = split_gaussian(out, p.variance_floor)
        if p.loss == "beta_nll":
            return beta_nll_loss(mean, var, y, p.beta)
        return gaussian_nll_loss(mean, var, y)

    def _original_targets(self, split: str) -> torch.Tensor:
        d = self.uq_data
        y = d.y[split]
        if self.params.head == "classification":
            return y
        return y.double() * d.target_std.double() + d.target_mean.double()

    def _prepare_data(self) -> UQData:
        p = self.params
        raw = self.load_data()
        if isinstance(raw, dict):
            unknown = sorted(set(raw) - set(_SPLITS))
            if unknown or "train" not in raw or "val" not in raw:
                raise ConfigError(
                    f"load_data() returned keys {sorted(raw)}; expected train, val and "
                    "optionally test"
                )
            splits = {k: v for k, v in raw.items() if v is not None}
        elif isinstance(raw, (tuple, list)) and len(raw) in (2, 3):
            splits = {k: v for k, v in zip(_SPLITS, raw, strict=False) if v is not None}
        else:
            raise ConfigError(
                f"load_data() returned {type(raw).__name__}; return (train, val, test) with each "
                "split an (x, y) pair or a Dataset of (x, y)"
            )
        x, y = {}, {}
        for name, split in splits.items():
            x[name], y[name] = _tensors(split, name)
        classification = p.head == "classification"
        y_was_1d = y["train"].dim() == 1
        if classification:
            for name, t in y.items():
                if t.dim() != 1 or (t.dtype.is_floating_point and not torch.all(t == t.round())):
                    raise ConfigError(
                        f"load_data(): head classification needs class indices (a 1-D integer "
                        f"vector) as {name} targets, got shape {tuple(t.shape)} {t.dtype}"
                    )
                y[name] = t.long()
            outputs = int(max(int(t.max()) for t in y.values() if len(t)) + 1)
            mean, std = torch.zeros(1), torch.ones(1)
        else:
            for name, t in y.items():
                y[name] = (t.unsqueeze(-1) if t.dim() == 1 else t).float()
            outputs = y["train"].shape[-1]
            if p.standardize_target:
                mean = y["train"].double().mean(0)
                std = y["train"].double().std(0).clamp_min(1e-12)
            else:
                mean, std = torch.zeros(outputs), torch.ones(outputs)
            for name in y:
                y[name] = ((y[name].double() - mean) / std).float()
        for name, inputs in x.items():  # features as float32; a dict's integer inputs (ids,
            if isinstance(inputs, dict):  # indices into a table) stay integers
                x[name] = {k: t.float() if t.is_floating_point() else t for k, t in inputs.items()}
            else:
                x[name] = inputs.float()
        x["train"], y["train"] = self._perturb(x["train"], y["train"], outputs)
        return UQData(x, y, outputs, mean.double(), std.double(), y_was_1d)

    def _perturb(self, x: Inputs, y: torch.Tensor, classes: int) -> tuple[Inputs, torch.Tensor]:
        """The training split after ``subsample``, ``bootstrap`` and the noise parameters.
        Feature noise applies to floating-point inputs (every tensor of a dict)."""
        p = self.params
        gen = torch.Generator().manual_seed(1_000_003 * p.data_seed + 17)
        n = num_rows(x)

        def spread(t: torch.Tensor) -> torch.Tensor:
            if not t.is_floating_point():
                return t
            return t.std(0, keepdim=True) if n > 1 else torch.ones_like(t[:1])

        x_std = map_inputs(x, spread)
        if p.subsample < 1.0:
            keep = max(1, round(p.subsample * n))
            idx = torch.randperm(n, generator=gen)[:keep].sort().values
            x, y, n = take_rows(x, idx), y[idx], keep
        if p.bootstrap:
            idx = torch.randint(n, (n,), generator=gen)
            x, y = take_rows(x, idx), y[idx]
        if p.feature_noise:

            def noisy(t: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
                if not t.is_floating_point():
                    return t
                return t + p.feature_noise * std * torch.randn(t.shape, generator=gen)

            if isinstance(x, dict):
                x = {name: noisy(t, x_std[name]) for name, t in x.items()}
            else:
                x = noisy(x, x_std)
        if p.label_noise:  # targets are standardized: one unit is one target std
            y = y + p.label_noise * torch.randn(y.shape, generator=gen)
        if p.label_flip:
            flip = torch.zeros(len(y), dtype=torch.bool)  # exactly this fraction of labels
            flip[torch.randperm(len(y), generator=gen)[: round(p.label_flip * len(y))]] = True
            shift = torch.randint(1, max(classes, 2), (len(y),), generator=gen)
            y = torch.where(flip, (y + shift) % max(classes, 2), y)
        return x, y


def _tensor(a: Any) -> torch.Tensor:
    return a if torch.is_tensor(a) else torch.as_tensor(np.asarray(a))


def _tensors(split: Any, name: str) -> tuple[Inputs, torch.Tensor]:
    if isinstance(split, Dataset) and not isinstance(split, (tuple, list)):
        size = len(split)  # type: ignore[arg-type]
        if size == 0:
            raise ConfigError(f"load_data(): the {name} split is empty")
        if getattr(split, "supports_batch_indexing", False):
            split = split[list(range(size))]  # the whole split in one read
        else:
            split = next(iter(DataLoader(split, batch_size=size)))
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise ConfigError(
            f"load_data(): the {name} split must be an (x, y) pair or a Dataset of (x, y), got "
            f"{type(split).__name__}"
        )
    x, y = split
    x = {str(k): _tensor(v) for k, v in x.items()} if isinstance(x, dict) else _tensor(x)
    y = _tensor(y)
    try:
        n = num_rows(x)
    except ValueError as e:
        raise ConfigError(f"load_data(): the {name} split's inputs: {e}") from None
    if n != len(y):
        raise ConfigError(f"load_data(): the {name} split has {n} inputs but {len(y)} targets")
    if n == 0:
        raise ConfigError(f"load_data(): the {name} split is empty")
    return x, y


def read_predictions(path: str | Path) -> dict[str, Any]:
    """A member's ``predictions.npz`` as a dict of arrays.

    Keys: ``head``; ``<split>_target`` (``n x o`` or ``n``); and per head
    ``<split>_mean``/``<split>_var`` (``k x n x o``), ``<split>_quantiles`` (``k x n x q x o``)
    or ``<split>_logits`` (``k x n x c``), for the splits val and test (when present);
    ``target_mean``/``target_std`` (the standardization, ``o``) and ``quantile_levels``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no member predictions at {path} (did the member finish?)")
    with np.load(path) as data:
        out = {k: data[k] for k in data.files}
    out["head"] = str(out["head"])
    return out
