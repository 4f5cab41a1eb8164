"""Quickstart: a Trainer for breast cancer diagnosis (scikit-learn's Wisconsin data set).

From the command line:

    python -m candle train --trainer examples/quickstart.py:BreastCancer epochs=30 --lr 0.003

From Python:

    from quickstart import BreastCancer
    result = BreastCancer(epochs=30).fit()
"""

from dataclasses import dataclass

import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from candle import Params, Trainer, param


@dataclass
class BreastCancerParams(Params):
    hidden: int = param(32, min=1, help="hidden units per layer")
    dropout: float = param(0.2, min=0.0, max=1.0)
    epochs: int = 30
    monitor: str = "val_loss"


class BreastCancer(Trainer):
    params_class = BreastCancerParams

    def build_model(self):
        h = self.params.hidden
        return nn.Sequential(
            nn.Linear(30, h), nn.ReLU(), nn.Dropout(self.params.dropout), nn.Linear(h, 1)
        )

    def build_data(self):
        x, y = load_breast_cancer(return_X_y=True)
        x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
        mean, std = x_tr.mean(0), x_tr.std(0)  # standardize with training statistics only

        def tensors(a, b):
            return TensorDataset(
                torch.tensor((a - mean) / std, dtype=torch.float32),
                torch.tensor(b, dtype=torch.float32),
            )

        return tensors(x_tr, y_tr), tensors(x_va, y_va)

    def training_step(self, batch):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self.model(x).squeeze(-1), y)

    def validation_step(self, batch):
        x, y = batch
        logits = self.model(x).squeeze(-1)
        return {
            "loss": F.binary_cross_entropy_with_logits(logits, y),
            "accuracy": ((logits > 0).float() == y).float().mean(),
        }
