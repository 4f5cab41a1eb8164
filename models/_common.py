"""What the reference models share: legacy CANDLE key names, layers, scaling and table reading.

Private to ``candle.models``: each model module reads like a user's own code and imports the
few helpers it needs from here.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler
from torch import nn

from candle import ConfigError, DataError, Params
from candle.config import param

log = logging.getLogger("candle.models")

ACTIVATIONS = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "softplus": nn.Softplus,
    "linear": nn.Identity,
}
INITIALIZERS = (
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_uniform",
    "lecun_normal",
    "torch_default",
)
SCALINGS = ("maxabs", "minmax", "std", "none")


_UNSET = object()


def field_of(cls: type, name: str, default: Any = _UNSET, aliases: tuple[str, ...] = ()) -> Any:
    """The params class ``cls``'s field ``name`` again (same help, range and names), with
    another ``default`` and/or extra names: to restate a field in a params class that mixes
    two (a model's and a workflow's) and must say whose meaning wins."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    meta = {**field.metadata, "aliases": (*field.metadata.get("aliases", ()), *aliases)}
    value = field.default if default is _UNSET else default
    return dataclasses.field(default=value, metadata=meta)


def base_field(name: str, default: Any = _UNSET, aliases: tuple[str, ...] = ()) -> Any:
    """:class:`~candle.Params`' own field ``name`` again, with another ``default`` (a model's
    original setting) and/or extra (legacy CANDLE) names."""
    return field_of(Params, name, default, aliases)


# Keras' default learning rates, used when a legacy config says `learning_rate = None`
KERAS_LEARNING_RATES = {"sgd": 0.01, "adam": 0.001, "adamw": 0.001, "rmsprop": 0.001}


@dataclass
class LegacyParams(Params):
    """:class:`~candle.Params` that also reads the common keys of CANDLE's
    ``*_default_model.txt`` files: ``model_name`` (our ``experiment``), ``save`` and
    ``save_path`` (``output_dir``), ``timeout`` (``time_limit``, seconds), ``verbose``
    (``progress_bar``), ``learning_rate = None`` (the optimizer's Keras default), ``base_lr``,
    ``data_url`` and ``solr_root`` (both recorded, not used). Also the data seeds shared by the
    models: ``synthetic_seed`` and ``split_seed``, apart from ``seed``, so that the trials of an
    ensemble or a search that differ in ``seed`` see the same data."""

    experiment: str = base_field("experiment", aliases=("model_name",))
    output_dir: str = base_field("output_dir", aliases=("save_path", "save"))
    time_limit: float = base_field("time_limit", aliases=("timeout",))
    progress_bar: bool = base_field("progress_bar", aliases=("verbose",))
    learning_rate: float | None = base_field("learning_rate")
    base_lr: float | None = param(
        None, min=0.0, help="CANDLE's base_lr: the learning rate when learning_rate is None"
    )
    data_url: str = param(
        "",
        help="where the original data set can be downloaded; recorded only: candle downloads "
        "nothing, fetch the files and point `data` at their folder",
    )
    solr_root: str = param("", help="CANDLE's run-monitor address; recorded only (not used)")
    synthetic_seed: int = param(
        0,
        min=0,
        help="seed of the synthetic data: every trial sees the same data (seed sets "
        "the weights and the sample order)",
    )
    split_seed: int = param(0, min=0, help="seed of the validation split, where it is random")
    initialization: str = param(
        "glorot_uniform",
        choices=INITIALIZERS,
        help="weight initialization of dense and convolution layers (biases start at 0); "
        "glorot_uniform is Keras' default, as in the original",
    )

    def validate(self) -> None:
        super().validate()  # a workflow's params mixed in after these check their own fields
        if self.learning_rate is None:  # as CANDLE: base_lr, else the optimizer's default
            self.learning_rate = self.base_lr or KERAS_LEARNING_RATES[self.optimizer]


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def initialize(model: nn.Module, scheme: str) -> nn.Module:
    """Initialize every Linear and Conv1d weight of ``model`` as Keras would (zero biases)."""
    if scheme == "torch_default":
        return model
    kind, dist = scheme.split("_")
    for m in model.modules():
        if not isinstance(m, (nn.Linear, nn.Conv1d)) or m.weight.is_meta:
            continue
        if kind == "glorot":
            (nn.init.xavier_uniform_ if dist == "uniform" else nn.init.xavier_normal_)(m.weight)
        else:  # he (relu gain) or lecun (gain 1), both on fan-in
            gain = "relu" if kind == "he" else "linear"
            init = nn.init.kaiming_uniform_ if dist == "uniform" else nn.init.kaiming_normal_
            init(m.weight, nonlinearity=gain)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    return model


class DenseBlock(nn.Module):
    """Linear, activation, optional batch norm, dropout; with ``residual``, plus the block's
    input where the widths match (``b x n_in`` -> ``b x n_out``)."""

    def __init__(
        self,
        n_in: int,
        n_out: int,
        act: str,
        dropout: float = 0.0,
        residual: bool = False,
        batch_norm: bool = False,
    ):
        super().__init__()
        layers = [nn.Linear(n_in, n_out), activation(act)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(n_out))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.layers = nn.Sequential(*layers)
        self.residual = residual and n_in == n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(x)
        return h + x if self.residual else h


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (works on the meta device: nothing is allocated)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def scale(train: np.ndarray, *others: np.ndarray, how: str) -> list[np.ndarray]:
    """``train`` and ``others`` scaled with statistics of ``train`` only (scikit-learn)."""
    if how == "none":
        return [train, *others]
    scaler = {"maxabs": MaxAbsScaler, "minmax": MinMaxScaler, "std": StandardScaler}[how]()
    scaler.fit(train)
    return [scaler.transform(a).astype(np.float32) for a in (train, *others)]


def first_features(x: np.ndarray, keep: int) -> np.ndarray:
    """The first ``keep`` feature columns of ``x`` (CANDLE's ``feature_subsample``; 0 = all)."""
    return x[:, :keep] if keep > 0 else x


# --------------------------------------------------------------------------- files


def data_file(folder: str, name: str, key: str) -> Path:
    """``name`` (absolute, or relative to the ``data`` folder) as an existing file."""
    path = Path(name) if Path(name).is_absolute() else Path(folder) / name
    if not path.is_file():
        raise ConfigError(
            f"data file '{path}' not found (from {key}={name!r}, data={folder!r}); set `data` "
            f"to the folder holding the original files, or {key} to a file's path"
        )
    return path


def separator(path: Path) -> str:
    """Tab for .tsv/.txt (also gzipped), comma otherwise."""
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".xz", ".zip")]
    return "\t" if suffixes and suffixes[-1] in (".tsv", ".txt") else ","


def read_table(path: Path, **kwargs: Any) -> pd.DataFrame:
    """``pandas.read_csv`` of a CSV/TSV file; parse failures become a ``DataError``."""
    try:
        return pd.read_csv(path, sep=separator(path), **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read '{path}': {exc}") from None


def numeric(frame: pd.DataFrame, path: Path, what: str, missing_ok: bool = False) -> np.ndarray:
    """``frame`` as float32, or a ``DataError`` naming the first non-numeric column and row
    (or the first empty cell, unless ``missing_ok``: then it is NaN)."""
    try:
        values = np.array(frame, dtype=np.float32)  # a writable copy (pandas' may be read-only)
    except (ValueError, TypeError):
        for column in frame.columns:
            converted = pd.to_numeric(frame[column], errors="coerce")
            bad = converted.isna() & frame[column].notna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(
                    f"'{path}': {what} column {column!r} holds a non-number, "
                    f"{frame[column].iloc[row]!r} (data row {row + 1}); {what} must be numeric"
                ) from None
        raise
    if not missing_ok and np.isnan(values).any():
        row, col = np.argwhere(np.isnan(values))[0]
        raise DataError(
            f"'{path}': {what} value missing in column {frame.columns[col]!r}, data row "
            f"{row + 1}; fill or drop it"
        )
    return values
