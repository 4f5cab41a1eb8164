"""NT3: a 1D convolutional network that tells normal from tumor tissue by gene expression.

After CANDLE's Pilot1 NT3 benchmark. The network reads a sample's expression profile
(60,483 genes in the original) as a one-channel sequence: convolution layers (``conv``:
filters, kernel, stride triples; each followed by ``activation`` and max-pooling ``pool``),
then dense layers (``dense``, each followed by ``activation`` and ``dropout``), then
``classes`` logits (softmax + categorical cross-entropy, as the original).

Data (``data``):

- ``synthetic`` (default): samples drawn with a planted class signal (marker genes whose mean
  depends on the class), ``synthetic_samples`` of them, at the original width unless
  ``feature_subsample`` is set.
- a folder holding the original files ``train_data`` and ``test_data`` (``nt_train2.csv``,
  ``nt_test2.csv``): CSV (or TSV by extension), one sample per row, the class label in the
  first column and the features after it, no header (a header row, one with gene names, is skipped).
  Labels are class ids ``0..classes-1`` or names (then numbered in sorted order). Features are
  scaled by ``scaling`` with training-set statistics; the test file is the validation set.

Run it: ``python -m candle train --trainer candle.models.nt3:NT3 epochs=5 feature_subsample=2000``,
or a study with ``trainer: nt3``. A legacy ``nt3_default_model.txt`` loads as a config file.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from candle import ConfigError, DataError, Trainer
from candle.config import param
from candle.models._common import (
    ACTIVATIONS,
    SCALINGS,
    LegacyParams,
    activation,
    base_field,
    data_file,
    first_features,
    initialize,
    log,
    numeric,
    read_table,
    scale,
)

__all__ = ["NT3", "ConvClassifier", "NT3Params", "read_labeled_csv", "synthetic_classes"]

ORIGINAL_FEATURES = 60483


@dataclass
class NT3Params(LegacyParams):
    data: str = param("synthetic", help="'synthetic', or the folder with train_data/test_data")
    train_data: str = param("nt_train2.csv", help="training file, in the `data` folder")
    test_data: str = param("nt_test2.csv", help="test file (the validation set)")
    conv: list[int] = param(
        [128, 20, 1, 128, 10, 1], min=1, help="convolutions: filters, kernel, stride per layer"
    )
    pool: list[int] = param([1, 10], min=1, help="max-pool size after each conv (1 = none)")
    dense: list[int] = param([200, 20], min=1, help="dense layer widths after the convolutions")
    activation: str = param("relu", choices=tuple(ACTIVATIONS), help="hidden activation")
    dropout: float = param(0.1, min=0.0, max=0.99, aliases=("drop",), help="after dense layers")
    classes: int = param(2, min=2, help="number of classes")
    out_activation: str = param(
        "softmax", choices=("softmax",), aliases=("out_act",), help="as the original"
    )
    loss: str = param("categorical_crossentropy", choices=("categorical_crossentropy",))
    metrics: str = param("accuracy", choices=("accuracy",), help="reported with val_loss")
    scaling: str = param("maxabs", choices=SCALINGS, help="feature scaling (train statistics)")
    feature_subsample: int = param(
        0, min=0, help="use the first N features (synthetic data: N features); 0 = all"
    )
    synthetic_samples: int = param(1400, min=4, help="synthetic data: train + val samples")
    val_split: float = param(0.2, min=0.01, max=0.99, help="synthetic data: validation share")
    # the original's training settings
    optimizer: str = base_field("optimizer", "sgd")
    learning_rate: float | None = base_field("learning_rate", 0.001)
    batch_size: int = base_field("batch_size", 20)
    epochs: int = base_field("epochs", 400)

    def validate(self) -> None:
        super().validate()
        if len(self.conv) % 3:
            raise ConfigError(
                f"'conv' must hold (filters, kernel, stride) triples, got {self.conv} "
                f"({len(self.conv)} numbers); e.g. conv=[128, 20, 1, 128, 10, 1]"
            )
        layers = len(self.conv) // 3
        if layers and len(self.pool) not in (1, layers):
            raise ConfigError(
                f"'pool' needs one size per conv layer ({layers}) or one for all, got {self.pool}"
            )


class ConvClassifier(nn.Module):
    """Conv1d blocks, then dense blocks, then class logits.

    Input ``b x features``; output ``b x classes`` logits.
    """

    def __init__(
        self,
        features: int,
        conv: list[int],
        pool: list[int],
        dense: list[int],
        classes: int,
        act: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels, length = 1, features
        triples = [conv[i : i + 3] for i in range(0, len(conv), 3)]
        for i, (filters, kernel, stride) in enumerate(triples):
            size = pool[i] if len(pool) > 1 else pool[0]
            length = (length - kernel) // stride + 1  # 'valid' padding, as the original
            length = length // size
            if length < 1:
                raise ConfigError(
                    f"conv layer {i + 1} (kernel {kernel}, stride {stride}, pool {size}) leaves "
                    f"no positions of a {features}-feature input; use smaller kernels or pools"
                )
            layers += [nn.Conv1d(channels, filters, kernel, stride), activation(act)]
            if size > 1:
                layers.append(nn.MaxPool1d(size))
            channels = filters
        layers.append(nn.Flatten())
        width = channels * length
        for units in dense:
            layers += [nn.Linear(width, units), activation(act)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = units
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)
        self.has_conv = bool(triples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.unsqueeze(1) if self.has_conv else x)


def build_network(p: NT3Params, features: int, outputs: int | None = None) -> ConvClassifier:
    """The network of ``p`` on ``features`` inputs, with ``outputs`` outputs (default
    ``p.classes``; a UQ member asks for its head's width)."""
    classes = outputs or p.classes
    net = ConvClassifier(features, p.conv, p.pool, p.dense, classes, p.activation, p.dropout)
    return initialize(net, p.initialization)


# --------------------------------------------------------------------------- data


def read_labeled_csv(path) -> tuple[np.ndarray, np.ndarray]:
    """(features ``n x d`` float32, labels ``n``) of a label-first CSV/TSV file."""
    frame = read_table(path, header=None, low_memory=False)
    if frame.shape[1] < 2:
        raise DataError(
            f"'{path}' has {frame.shape[1]} column(s); expected the label first, then features"
        )
    first = frame.iloc[0, 1:]
    # the original files have no header; skip one if the first row is not numbers
    body = frame if _numbers(first) else frame.iloc[1:].reset_index(drop=True)
    return numeric(body.iloc[:, 1:], path, "feature"), body.iloc[:, 0].to_numpy()


def _numbers(row) -> bool:
    try:
        row.astype(np.float64)
    except (ValueError, TypeError):
        return False
    return True


def encode_labels(train, test, classes: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Class ids ``0..classes-1`` for label arrays of ids or of names (sorted order)."""
    both = np.concatenate([train, test])
    try:
        ids = both.astype(np.float64)
        if not np.all(ids == np.round(ids)):
            raise DataError(f"{where}: class labels must be whole numbers, got {both[:5]}")
        codes = ids.astype(np.int64)
    except ValueError:
        names, codes = np.unique(both.astype(str), return_inverse=True)
        log.info("%s: %d class names, numbered in sorted order: %s", where, len(names), names)
    bad = (codes < 0) | (codes >= classes)
    if bad.any():
        raise DataError(
            f"{where}: class label {both[np.argmax(bad)]} is outside 0..{classes - 1}; "
            f"set classes to the number of classes in the data (found {len(np.unique(codes))})"
        )
    return codes[: len(train)], codes[len(train) :]


def synthetic_classes(
    n: int, features: int, classes: int, seed: int = 0, markers: float = 0.05, block: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples (``n x features`` float32) with balanced labels and a planted signal.

    A ``markers`` share of the genes (at least ``classes`` blocks of ``block`` neighbouring
    genes, like co-regulated gene modules) has a class-dependent mean drawn from N(0, 1);
    every gene has unit Gaussian noise around its mean.
    """
    rng = np.random.default_rng(seed)
    block = min(block, features)
    n_blocks = min(features // block, max(classes, int(features * markers) // block))
    starts = rng.choice(features // block, size=n_blocks, replace=False) * block
    means = np.zeros((classes, features), np.float32)
    levels = rng.normal(0.0, 1.0, (classes, n_blocks)).astype(np.float32)
    means[:, (starts[:, None] + np.arange(block)).ravel()] = np.repeat(levels, block, axis=1)
    y = rng.permutation(np.arange(n) % classes)
    x = means[y] + rng.standard_normal((n, features), dtype=np.float32)
    return x, y.astype(np.int64)


# --------------------------------------------------------------------------- trainer


class NT3(Trainer):
    params_class = NT3Params

    @functools.cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x_train, y_train, x_val, y_val): features scaled, labels as class ids."""
        p = self.params
        if p.data == "synthetic":
            features = p.feature_subsample or ORIGINAL_FEATURES
            x, y = synthetic_classes(
                p.synthetic_samples, features, p.classes, seed=p.synthetic_seed
            )
            n_val = max(1, round(len(x) * p.val_split))
            x_tr, y_tr, x_va, y_va = x[n_val:], y[n_val:], x[:n_val], y[:n_val]
        else:
            x_tr, y_tr, x_va, y_va = self.read_files()
            x_tr = first_features(x_tr, p.feature_subsample)
            x_va = first_features(x_va, p.feature_subsample)
        x_tr, x_va = scale(x_tr, x_va, how=p.scaling)
        return x_tr, y_tr, x_va, y_va

    def read_files(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x_train, y_train, x_val, y_val) of the original files, unscaled."""
        p = self.params
        train = data_file(p.data, p.train_data, "train_data")
        test = data_file(p.data, p.test_data, "test_data")
        x_tr, labels_tr = read_labeled_csv(train)
        x_va, labels_va = read_labeled_csv(test)
        if x_tr.shape[1] != x_va.shape[1]:
            raise DataError(
                f"'{test}' has {x_va.shape[1]} feature columns but '{train}' has "
                f"{x_tr.shape[1]}; both files must hold the same features, label first"
            )
        y_tr, y_va = encode_labels(labels_tr, labels_va, p.classes, f"'{train}', '{test}'")
        return x_tr, y_tr, x_va, y_va

    def build_model(self) -> nn.Module:
        return build_network(self.params, self.arrays[0].shape[1])

    def build_data(self):
        x_tr, y_tr, x_va, y_va = (torch.from_numpy(a) for a in self.arrays)
        return TensorDataset(x_tr, y_tr), TensorDataset(x_va, y_va)

    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def validation_step(self, batch):
        x, y = batch
        logits = self.model(x)
        return {
            "loss": F.cross_entropy(logits, y),
            "accuracy": (logits.argmax(-1) == y).float().mean(),
        }
