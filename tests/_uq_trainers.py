"""Small UQ members for the tests: a heteroscedastic 1-D regression and a 3-class problem."""

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

from candle import Trainer
from candle.config import param
from candle.uq import UQParams, UQTrainer


@dataclass
class ToyParams(UQParams):
    n: int = param(300, min=10)
    hidden: int = 32
    dropout: float = 0.0
    offset: float = param(1000.0, help="added to every target: checks the units")
    scale: float = param(50.0, help="multiplies every target")
    epochs: int = 30
    batch_size: int = 50
    learning_rate: float = 0.02
    tensorboard: bool = False
    progress_bar: bool = False
    threads: int = 1


class ToyRegression(UQTrainer):
    """y = offset + scale * (x + noise), noise std 0.1 + 0.4 * |x|: heteroscedastic."""

    params_class = ToyParams

    def build_model(self):
        p = self.params
        return nn.Sequential(
            nn.Linear(1, p.hidden),
            nn.Tanh(),
            nn.Dropout(p.dropout),
            nn.Linear(p.hidden, self.head_outputs),
        )

    def load_data(self):
        p = self.params
        gen = torch.Generator().manual_seed(12345)  # the same data for every member
        x = torch.rand(p.n, 1, generator=gen) * 2 - 1
        noise = (0.1 + 0.4 * x.abs()) * torch.randn(p.n, 1, generator=gen)
        y = p.offset + p.scale * (x + noise)
        a, b = int(0.6 * p.n), int(0.8 * p.n)
        return (x[:a], y[:a, 0]), (x[a:b], y[a:b, 0]), (x[b:], y[b:, 0])


@dataclass
class ToyClassParams(UQParams):
    head: str = "classification"
    hidden: int = 16
    epochs: int = 20
    batch_size: int = 50
    learning_rate: float = 0.02
    tensorboard: bool = False
    progress_bar: bool = False
    threads: int = 1


class ToyClasses(UQTrainer):
    """Three Gaussian blobs in 2-D."""

    params_class = ToyClassParams

    def build_model(self):
        h = self.params.hidden
        return nn.Sequential(nn.Linear(2, h), nn.ReLU(), nn.Linear(h, self.head_outputs))

    def load_data(self):
        gen = torch.Generator().manual_seed(7)
        labels = torch.arange(300) % 3
        centers = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
        x = centers[labels] + torch.randn(300, 2, generator=gen)
        return (x[:180], labels[:180]), (x[180:240], labels[180:240]), (x[240:], labels[240:])


class NotUQ(Trainer):
    """A plain Trainer: UQ studies must refuse it."""

    def build_model(self):
        return nn.Linear(1, 1)

    def build_data(self):
        x = torch.zeros(4, 1)
        return TensorDataset(x, x), TensorDataset(x, x)

    def training_step(self, batch):
        x, y = batch
        return ((self.model(x) - y) ** 2).mean()
