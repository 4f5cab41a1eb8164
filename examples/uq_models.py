"""Ensemble members for UQ on data that ship with scikit-learn (see examples/uq.yaml).

- ``Diabetes``: regression of disease progression (442 patients x 10 features) with a
  heteroscedastic Gaussian head; the deep-ensembles recipe of Lakshminarayanan et al. (2017):
  one hidden layer of 50 ReLU units, Adam, 40 epochs, batch 100 (learning rate 0.001, see
  below).
- ``BreastCancer``: benign vs malignant (569 x 30), softmax classification.

Each takes ``split``: the seed of a random 90/10 train/test split; a fifth of the training part
is held out as validation data (recalibration is fitted there). Features are standardized with
training statistics only.

    python -m candle train --trainer examples/uq_models.py:Diabetes epochs=40
    python -m candle.uq examples/uq.yaml
"""

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes
from torch import nn

from candle.config import param
from candle.uq import UQParams, UQTrainer


@dataclass
class TabularParams(UQParams):
    split: int = param(0, min=0, help="seed of the random 90/10 train/test split")
    test_fraction: float = param(0.1, min=0.01, max=0.9)
    val_fraction: float = param(0.2, min=0.01, max=0.9, help="of the training part")
    hidden: int = param(50, min=1, help="hidden units")
    dropout: float = param(0.0, min=0.0, max=0.9, help="dropout (MC dropout needs > 0)")
    epochs: int = 40
    batch_size: int = 100
    # The recipe's 0.01 overfits these 282 training points: over the diabetes splits 0-9 the
    # 5-member NLL was 5.54 at 0.01 and 5.41 at 0.001 (linear model: 5.44); 0.001 was then
    # confirmed on splits 10-19 (5.43 vs linear 5.48), in an exploratory in-process run; see
    # benchmarks/README.md, uq_diabetes (rerun with --learning-rate 0.01 to compare).
    learning_rate: float = 0.001


def _splits(x, y, p):
    rng = np.random.default_rng(p.split)
    order = rng.permutation(len(x))
    n_test = round(p.test_fraction * len(x))
    test, rest = order[:n_test], order[n_test:]
    n_val = round(p.val_fraction * len(rest))
    val, train = rest[:n_val], rest[n_val:]
    mean, std = x[train].mean(0), x[train].std(0) + 1e-12
    return tuple(((x[i] - mean) / std, y[i]) for i in (train, val, test))


def _mlp(inputs, p, outputs):
    return nn.Sequential(
        nn.Linear(inputs, p.hidden), nn.ReLU(), nn.Dropout(p.dropout), nn.Linear(p.hidden, outputs)
    )


class Diabetes(UQTrainer):
    params_class = TabularParams

    def build_model(self):
        return _mlp(10, self.params, self.head_outputs)

    def load_data(self):
        x, y = load_diabetes(return_X_y=True)
        return _splits(x, y, self.params)


@dataclass
class BreastCancerParams(TabularParams):
    head: str = param("classification", choices=("classification",))


class BreastCancer(UQTrainer):
    params_class = BreastCancerParams

    def build_model(self):
        return _mlp(30, self.params, self.head_outputs)

    def load_data(self):
        x, y = load_breast_cancer(return_X_y=True)
        return _splits(x, y, self.params)
