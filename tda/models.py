"""The reference models in training data analysis (:mod:`candle.tda`): ``trainer: uno`` in a plan.

Each class is the model's own Trainer with :class:`~candle.tda.TDATrainer` mixed in front, which
is how a user brings a research model to a training data analysis: ``load_data()`` returns the
WHOLE data set as a :class:`~candle.tda.GroupedData` (every sample, with its group), and the
base class draws each trial's training, validation and test rows from it (per group, by the
plan), standardizes features and regression targets, and writes the test predictions. The
model keeps its network and parameters; only its data split and loss are TDA's.

- :class:`NT3TDA`, :class:`TC1TDA`: classification of the model's samples (its training and
  validation samples together); one group.
- :class:`P1B1TDA`: regression of each expression profile on itself (reconstruction); one group.
- :class:`UnoTDA`, :class:`ComboTDA`: regression of the response on the cell, drug (and dose)
  features; the groups are the studies (the response table's ``Source`` column, or
  ``synthetic_sources`` studies of synthetic data).

A params class lists the model's params first, so that the model's defaults (its original
optimizer, learning rate, batch size, epochs) win over the generic ones that
:class:`~candle.tda.TDAParams` inherits, and restates the fields where TDA's meaning or
default wins: ``split_seed`` (which fixed test/validation split of every group) and
``tensorboard`` (off: a plan runs many small trials). The synthetic data depend on
``synthetic_seed`` only: every trial of a plan sees the same data whatever its ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from candle import ConfigError
from candle.models._common import field_of, first_features
from candle.models.combo import Combo, ComboParams
from candle.models.nt3 import NT3, NT3Params, encode_labels
from candle.models.p1b1 import P1B1, P1B1Params
from candle.models.tc1 import TC1, TC1Params, load_nci60
from candle.models.uno import Uno, UnoParams
from candle.tda import GroupedData, TDAParams, TDATrainer

__all__ = [
    "NT3TDA",
    "P1B1TDA",
    "TC1TDA",
    "ComboTDA",
    "ComboTDAParams",
    "NT3TDAParams",
    "P1B1TDAParams",
    "TC1TDAParams",
    "UnoTDA",
    "UnoTDAParams",
]


# --------------------------------------------------------------------------- classifiers


def _classified(x: np.ndarray, y: np.ndarray, classes: int, who: str) -> GroupedData:
    """One group of samples ``x`` with class ids ``y``, which the network's ``classes``
    logits must cover."""
    present = int(y.max()) + 1
    if present > classes:
        raise ConfigError(
            f"{who}: the data has class ids up to {present - 1} but the network has "
            f"classes={classes} outputs; set classes >= {present}"
        )
    return GroupedData(x, y)


@dataclass
class NT3TDAParams(NT3Params, TDAParams):
    split_seed: int = field_of(TDAParams, "split_seed")
    tensorboard: bool = field_of(TDAParams, "tensorboard")


class NT3TDA(TDATrainer, NT3):
    """NT3's samples (``data``: synthetic, or its training and test files together), classified
    normal vs tumor (``classes`` logits); one group."""

    params_class = NT3TDAParams
    task = "classification"

    def load_data(self) -> GroupedData:
        x_train, y_train, x_val, y_val = self.arrays
        x, y = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])
        return _classified(x, y, self.params.classes, type(self).__name__)


@dataclass
class TC1TDAParams(TC1Params, TDAParams):
    split_seed: int = field_of(TDAParams, "split_seed")
    tensorboard: bool = field_of(TDAParams, "tensorboard")


class TC1TDA(NT3TDA, TC1):
    """TC1's samples classified by tumor type (``data``: synthetic, ``nci60``: all 64 NCI60
    cell lines, 14 labels, or its training and test files together); one group."""

    params_class = TC1TDAParams

    def load_data(self) -> GroupedData:
        p = self.params
        if p.data != "nci60":
            return super().load_data()
        # all 64 samples in the package's order (TC1 itself holds some out, by split_seed),
        # unscaled: TDA standardizes them with its training rows' statistics
        x, labels = load_nci60()
        y, _ = encode_labels(labels, labels[:0], p.classes, "NCI60 (ISLP)")
        x = first_features(x, p.feature_subsample)
        return _classified(x, y, p.classes, type(self).__name__)


# --------------------------------------------------------------------------- autoencoder


@dataclass
class P1B1TDAParams(P1B1Params, TDAParams):
    split_seed: int = field_of(TDAParams, "split_seed")
    tensorboard: bool = field_of(TDAParams, "tensorboard")

    def validate(self) -> None:
        super().validate()
        if self.loss != "mse":
            raise ConfigError(
                f"P1B1TDA reconstructs standardized profiles with loss=mse, got "
                f"loss={self.loss!r} (binary cross-entropy needs values in [0, 1]); set loss=mse"
            )


class P1B1TDA(TDATrainer, P1B1):
    """P1B1's expression profiles (``data``: synthetic, or its training and test files
    together), each the target of its own reconstruction: a regression with ``y = x``
    (``n x genes``), scored in the profiles' units; one group. Training adds ``noise_factor``
    noise to the inputs (denoising); the VAE adds its KL term."""

    params_class = P1B1TDAParams
    task = "regression"

    def load_data(self) -> GroupedData:
        x = np.concatenate(self.arrays)
        return GroupedData(x, x)

    # The autoencoder returns (reconstruction, code mean, code log-variance): the three steps
    # change together. y is the profile standardized as a target (the same numbers as x).
    def training_step(self, batch) -> torch.Tensor:
        x, y = batch
        if self.params.noise_factor > 0:  # a denoising autoencoder: reconstruct the clean y
            x = x + self.params.noise_factor * torch.randn_like(x)
        return self.losses(y, given=x)[0]

    def validation_step(self, batch) -> dict[str, torch.Tensor]:
        x, y = batch
        loss, corr = self.losses(y, given=x)
        return {"loss": loss, "corr": corr.mean()}

    def predict_step(self, batch) -> torch.Tensor:
        return self.model(batch[0])[0]  # the reconstruction, b x genes


# --------------------------------------------------------------------------- drug response


class _ResponseTDA(TDATrainer):
    """Uno and Combo: every response row (``x`` the dict of its inputs, ``n x width`` each),
    a regression of the response, grouped by study (``dataset.sources``: the ``Source`` column,
    or ``synthetic_sources``; None: one group)."""

    task = "regression"

    def load_data(self) -> GroupedData:
        data = self.dataset
        x, y = data[list(range(len(data)))]
        return GroupedData({name: t.numpy() for name, t in x.items()}, y.numpy(), data.sources)

    def build_model(self) -> nn.Module:
        return self.build_network(outputs=1)  # b x 1: TDA's regression targets are n x o


@dataclass
class UnoTDAParams(UnoParams, TDAParams):
    split_seed: int = field_of(TDAParams, "split_seed")
    tensorboard: bool = field_of(TDAParams, "tensorboard")


class UnoTDA(_ResponseTDA, Uno):
    """Uno's drug response rows (cell, drug and dose inputs), a regression of the growth (or
    ``agg_dose``) grouped by study."""

    params_class = UnoTDAParams


@dataclass
class ComboTDAParams(ComboParams, TDAParams):
    split_seed: int = field_of(TDAParams, "split_seed")
    tensorboard: bool = field_of(TDAParams, "tensorboard")


class ComboTDA(_ResponseTDA, Combo):
    """Combo's drug pair response rows (cell and both drugs' inputs), a regression of the growth
    (or ``ComboScore``) grouped by study."""

    params_class = ComboTDAParams
