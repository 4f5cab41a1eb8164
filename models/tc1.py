"""TC1: a 1D convolutional classifier of tumor type from gene expression.

After CANDLE's Pilot1 TC1 benchmark (18 tumor types, 60,483 genes). The network is NT3's
(:class:`~candle.models.nt3.ConvClassifier`): the original's default config builds the same
two convolution layers and 36 outputs (its data holds 18 types, labels 0-17), trained with
Keras' default SGD learning rate (0.01). This module only changes those defaults and adds
one more data source.

Data (``data``):

- ``synthetic`` (default): ``synthetic_samples`` samples of ``classes`` types with a planted
  signal (see :func:`~candle.models.nt3.synthetic_classes`); set ``classes=18`` for the
  original's 18 types.
- ``nci60``: the NCI60 cancer cell line panel (64 samples x 6,830 genes, 14 labels) that
  ships inside the ISLP package (``pip install --no-deps ISLP``); a stratified
  ``val_split`` holds out the validation samples. Set ``classes`` to at least 14.
- a folder holding ``train_data`` and ``test_data`` in NT3's format (label first, then
  features; ``type_18_300_train.csv`` and ``type_18_300_test.csv`` in the original).

Run it: ``python -m candle train --trainer candle.models.tc1:TC1 data=nci60 classes=14 ...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd

from candle import ConfigError
from candle.config import param
from candle.data.splits import split_indices
from candle.models._common import base_field
from candle.models.nt3 import NT3, NT3Params, encode_labels

__all__ = ["TC1", "TC1Params", "load_nci60"]


@dataclass
class TC1Params(NT3Params):
    data: str = param(
        "synthetic", help="'synthetic', 'nci60' (ISLP package), or the folder of train/test_data"
    )
    train_data: str = param("type_18_300_train.csv", help="training file, in the `data` folder")
    test_data: str = param("type_18_300_test.csv", help="test file (the validation set)")
    classes: int = param(36, min=2, help="output classes (the original data has 18 types)")
    synthetic_samples: int = param(5400, min=4, help="synthetic data: train + val samples")
    learning_rate: float | None = base_field("learning_rate", 0.01)  # unset: Keras' SGD default


def load_nci60() -> tuple[np.ndarray, np.ndarray]:
    """NCI60 from the installed ISLP package: (expression ``64 x 6830`` float32, 64 labels)."""
    try:
        folder = resources.files("ISLP") / "data"
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"data=nci60 reads NCI60 from the ISLP package, which cannot be imported ({exc}); "
            "install it with `pip install --no-deps ISLP` (only its data files are used)"
        ) from None
    with resources.as_file(folder / "NCI60data.npy") as path:
        x = np.load(path).astype(np.float32)
    with resources.as_file(folder / "NCI60labs.csv") as path:
        labels = pd.read_csv(path).iloc[:, 0].to_numpy(dtype=str)
    return x, labels


class TC1(NT3):
    params_class = TC1Params

    def read_files(self):
        p = self.params
        if p.data != "nci60":
            return super().read_files()
        x, labels = load_nci60()
        parts = split_indices(
            len(x),
            kind="stratified",
            seed=p.split_seed,
            fractions=(1 - p.val_split, p.val_split),
            labels=labels,
        )
        train, val = parts["train"], parts["test"]
        y_tr, y_va = encode_labels(labels[train], labels[val], p.classes, "NCI60 (ISLP)")
        return x[train], y_tr, x[val], y_va
