"""A testing kit: a tiny regression problem and Trainer, and helpers later suites reuse.

``TinyTrainer`` is small enough that a whole fit takes well under a second on a CPU, yet it has
dropout (so RNG restore matters) and shuffled data (so data-order restore matters).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from candle.config import Params, param
from candle.trainer import Trainer

__all__ = ["TinyParams", "TinyTrainer", "free_port", "regression_data"]


def regression_data(
    n: int = 256, d: int = 8, noise: float = 0.1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A linear regression problem with known weights.

    Returns ``X`` (``n x d``), ``y`` (``n x 1``) and the true weights ``w`` (``d x 1``), where
    ``y = X @ w + noise * eps``.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    y = x @ w + noise * torch.randn(n, 1, generator=g)
    return x, y, w


@dataclass
class TinyParams(Params):
    hidden: int = param(16, min=1, help="hidden units")
    dropout: float = param(0.1, min=0.0, max=1.0, help="dropout probability")
    n_samples: int = param(256, min=2, help="training + validation samples")
    n_features: int = param(8, min=1, help="input features")
    noise: float = param(0.1, min=0.0, help="label noise")


class TinyTrainer(Trainer):
    """An MLP with dropout on ``regression_data``; 80/20 train/validation split."""

    params_class = TinyParams

    def build_model(self) -> nn.Module:
        p = self.params
        return nn.Sequential(
            nn.Linear(p.n_features, p.hidden),
            nn.ReLU(),
            nn.Dropout(p.dropout),
            nn.Linear(p.hidden, 1),
        )

    def build_data(self) -> tuple[TensorDataset, TensorDataset]:
        p = self.params
        x, y, _ = regression_data(p.n_samples, p.n_features, p.noise, seed=1234)
        cut = int(0.8 * p.n_samples)
        return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.model(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        pred = self.model(x)
        return {"loss": F.mse_loss(pred, y), "mae": (pred - y).abs().mean()}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for launchers and servers in tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
