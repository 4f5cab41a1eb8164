"""The reference models as UQ ensemble members (:mod:`candle.uq`): ``trainer: nt3`` in a UQ file.

Each member is the model's own Trainer with :class:`~candle.uq.UQTrainer` mixed in front, which
is how a user turns a research model into a member: the network ends in ``self.head_outputs``
outputs, and ``load_data()`` returns the train, validation and test splits. The splits, the
same for every member (they depend on ``split_seed`` and ``synthetic_seed``, never on ``seed``):

- test: the model's own validation rows (the original's test file, or its held-out share);
- validation (recalibration, and the checkpoint with ``predict_checkpoint: best``): a
  ``calibration_split`` share of the model's training rows, drawn as the model draws its
  validation rows (stratified by class for NT3/TC1; by ``partition_by`` for Uno/Combo, so
  that with whole cell lines held out for test the calibration rows are unseen cell lines
  too, and conformal intervals keep their coverage);
- train: the rest.

Heads: NT3 and TC1 default to ``head: classification``; Uno and Combo to ``gaussian`` (or
``quantile``) over the response; P1B1 predicts a distribution for every gene of the
reconstruction (``gaussian``: a mean and a variance per gene), its targets being its inputs.
Each model's ``loss`` key is the head's here (``nll`` or ``beta_nll``); every other key keeps
the model's default (its original optimizer, learning rate, batch size and epochs).

A member's params class lists the model's params first, so that their defaults win over the
generic ones that :class:`~candle.uq.UQParams` inherits, and then restates the fields both
define with the UQ meaning (``loss``; ``head`` where the model's default head differs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from candle.config import param
from candle.data.rows import take_rows
from candle.data.splits import split_indices
from candle.models import nt3, p1b1
from candle.models._common import field_of
from candle.models.combo import Combo, ComboParams
from candle.models.nt3 import NT3, NT3Params
from candle.models.p1b1 import P1B1, P1B1Params
from candle.models.tc1 import TC1, TC1Params
from candle.models.uno import Uno, UnoParams
from candle.uq.member import UQParams, UQTrainer

__all__ = [
    "ComboMember",
    "MemberParams",
    "NT3Member",
    "P1B1Member",
    "TC1Member",
    "UnoMember",
]


@dataclass
class MemberParams(UQParams):
    calibration_split: float = param(
        0.2,
        min=0.01,
        max=0.9,
        help="share of the model's training rows held out as the UQ validation split "
        "(recalibration); the model's validation rows are the test split",
    )


def holdout_pairs(x: Any, y: torch.Tensor, fraction: float, seed: int, stratify: bool):
    """``((x, y) kept, (x, y) held out)``: a ``fraction`` of the rows, at random or stratified
    by the class labels ``y``."""
    parts = split_indices(
        len(y),
        kind="stratified" if stratify else "random",
        seed=seed,
        fractions=(1 - fraction, fraction),
        labels=y.numpy() if stratify else None,
    )
    kept, held = (torch.as_tensor(parts[k]) for k in ("train", "test"))
    return (take_rows(x, kept), y[kept]), (take_rows(x, held), y[held])


# --------------------------------------------------------------------------- NT3, TC1


@dataclass
class NT3MemberParams(NT3Params, MemberParams):
    head: str = field_of(UQParams, "head", "classification")
    loss: str = field_of(UQParams, "loss")


class NT3Member(UQTrainer, NT3):
    """NT3 as a classification member: tumor vs normal, with class probabilities."""

    params_class = NT3MemberParams

    def load_data(self):
        p = self.params
        x_tr, y_tr, x_te, y_te = (torch.from_numpy(a) for a in self.arrays)
        train, val = holdout_pairs(x_tr, y_tr, p.calibration_split, p.split_seed, stratify=True)
        return train, val, (x_te, y_te)

    def build_model(self) -> nn.Module:
        return nt3.build_network(self.params, self.arrays[0].shape[1], self.head_outputs)


@dataclass
class TC1MemberParams(TC1Params, NT3MemberParams):
    head: str = field_of(UQParams, "head", "classification")
    loss: str = field_of(UQParams, "loss")


class TC1Member(NT3Member, TC1):
    """TC1 as a classification member (tumor type), on synthetic data, NCI60 or files."""

    params_class = TC1MemberParams


# --------------------------------------------------------------------------- P1B1


@dataclass
class P1B1MemberParams(P1B1Params, MemberParams):
    loss: str = field_of(UQParams, "loss")


class P1B1Member(UQTrainer, P1B1):
    """P1B1 as a member: a predictive distribution for every gene of the reconstruction."""

    params_class = P1B1MemberParams

    def load_data(self):
        p = self.params
        x_tr, x_te = (torch.from_numpy(a) for a in self.arrays)
        train, val = holdout_pairs(x_tr, x_tr, p.calibration_split, p.split_seed, stratify=False)
        return train, val, (x_te, x_te)

    def build_model(self) -> nn.Module:
        return p1b1.build_network(self.params, self.arrays[0].shape[1], self.head_outputs)

    def head_forward(self, x, model=None):
        return (self.model if model is None else model)(x)[0]  # (head outputs, mean, log_var)

    def training_step(self, batch):
        x, y = batch
        given = x
        if self.params.noise_factor > 0:  # denoising: reconstruct the clean profile
            given = x + self.params.noise_factor * torch.randn_like(x)
        out, mean, log_var = self.model(given)
        loss = self.head_loss(out, y)
        if log_var is not None:  # the VAE's KL divergence, per feature as P1B1's loss
            kl = -0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum(-1).mean()
            loss = loss + kl / x.shape[-1]
        return loss


# --------------------------------------------------------------------------- Uno, Combo


class _ResponseMember(UQTrainer):
    """Uno and Combo: the response's distribution; splits follow ``partition_by``."""

    def load_data(self):
        p, data = self.params, self.dataset
        train, test = self.holdout(torch.arange(len(data)), p.val_split)
        train, val = self.holdout(train, p.calibration_split)
        return data.subset(train), data.subset(val), data.subset(test)

    def build_model(self) -> nn.Module:
        return self.build_network(outputs=self.head_outputs)


@dataclass
class UnoMemberParams(UnoParams, MemberParams):
    loss: str = field_of(UQParams, "loss")


class UnoMember(_ResponseMember, Uno):
    """Uno as a member: the growth (or ``agg_dose`` response) as a distribution."""

    params_class = UnoMemberParams


@dataclass
class ComboMemberParams(ComboParams, MemberParams):
    loss: str = field_of(UQParams, "loss")


class ComboMember(_ResponseMember, Combo):
    """Combo as a member: the drug pair's growth (or ComboScore) as a distribution."""

    params_class = ComboMemberParams
