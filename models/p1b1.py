"""P1B1: an autoencoder of gene expression profiles, plain (``model=ae``) or variational (``vae``).

After CANDLE's Pilot1 P1B1 benchmark. The encoder is dense layers (``dense``, each followed by
``activation``, optional batch normalization and ``dropout``, optionally ``residual``) down to
``latent_dim`` numbers (through ``activation`` too, for the plain autoencoder); the decoder
mirrors it back to the input width, with ``out_activation`` on the output (linear, as the
original). The VAE's encoder gives a mean and a log-variance and samples the code with noise
of standard deviation ``epsilon_std``. With ``noise_factor`` it is a denoising autoencoder.

Loss: ``loss`` (mse or binary cross-entropy) averaged over the features, plus for the VAE the
KL divergence to N(0, I) divided by the number of features (the original's VAE used binary
cross-entropy whatever ``loss`` said). Validation also reports ``corr``: the Pearson
correlation between a sample and its reconstruction, averaged over samples.

Data (``data``):

- ``synthetic`` (default): ``synthetic_samples`` profiles with low-rank structure (a few hidden
  factors times random gene loadings, plus noise), at 60,483 genes unless
  ``feature_subsample`` says fewer.
- a folder holding ``train_data`` and ``test_data`` (``P1B1.dev.train.csv``,
  ``P1B1.dev.test.csv``): CSV or TSV with a header; the ``meta_columns`` found (sample id,
  cancer type) are set aside and every other column is a gene. The test file is the
  validation set and must have the training file's genes. Scaled by ``scaling`` (train stats).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from candle import DataError, Trainer
from candle.config import param
from candle.models._common import (
    ACTIVATIONS,
    SCALINGS,
    DenseBlock,
    LegacyParams,
    activation,
    base_field,
    data_file,
    first_features,
    initialize,
    numeric,
    read_table,
    scale,
)

__all__ = ["P1B1", "AutoEncoder", "P1B1Params", "read_expression", "synthetic_expression"]

ORIGINAL_FEATURES = 60483


@dataclass
class P1B1Params(LegacyParams):
    data: str = param("synthetic", help="'synthetic', or the folder with train_data/test_data")
    train_data: str = param("P1B1.dev.train.csv", help="training file, in the `data` folder")
    test_data: str = param("P1B1.dev.test.csv", help="test file (the validation set)")
    meta_columns: list[str] = param(
        ["case_id", "cancer_type"], help="non-feature columns of the data files (when present)"
    )
    model: str = param("ae", choices=("ae", "vae"), help="plain or variational autoencoder")
    dense: list[int] = param([2000, 600], min=1, help="encoder widths (the decoder mirrors them)")
    latent_dim: int = param(2, min=1, help="code size")
    activation: str = param("relu", choices=tuple(ACTIVATIONS), help="hidden activation")
    out_activation: str = param("linear", choices=tuple(ACTIVATIONS), help="decoder output")
    dropout: float = param(0.0, min=0.0, max=0.99, aliases=("drop",))
    batch_normalization: bool = param(False, help="batch norm after each hidden dense layer")
    residual: bool = param(False, help="add each hidden layer's input to its output (same width)")
    noise_factor: float = param(
        0.0, min=0.0, help="denoising: Gaussian noise of this std added to training inputs"
    )
    epsilon_std: float = param(1.0, min=0.0, help="vae: std of the sampling noise")
    loss: str = param("mse", choices=("mse", "binary_crossentropy"), help="reconstruction loss")
    scaling: str = param("minmax", choices=SCALINGS, help="feature scaling (train statistics)")
    feature_subsample: int = param(
        0, min=0, help="use the first N genes (synthetic data: N genes); 0 = all"
    )
    synthetic_samples: int = param(3000, min=4, help="synthetic data: train + val samples")
    val_split: float = param(
        0.1, min=0.01, max=0.99, aliases=("validation_split",), help="synthetic: validation share"
    )
    optimizer: str = base_field("optimizer", "adam")
    learning_rate: float | None = base_field("learning_rate", 0.001)
    batch_size: int = base_field("batch_size", 100)
    epochs: int = base_field("epochs", 100)


def _dense_stack(widths: list[int], p: P1B1Params) -> nn.Sequential:
    """Hidden layers from ``widths[0]`` through each of ``widths[1:]``."""
    return nn.Sequential(
        *(
            DenseBlock(a, b, p.activation, p.dropout, p.residual, p.batch_normalization)
            for a, b in itertools.pairwise(widths)
        )
    )


class AutoEncoder(nn.Module):
    """``forward(x: b x features)`` -> (reconstruction ``b x features``, code mean
    ``b x latent``, code log-variance ``b x latent`` or None for the plain autoencoder).

    With ``outputs``, the decoder ends in that many raw outputs instead (no output
    activation): the head of a UQ member, e.g. a mean and a variance per gene."""

    def __init__(self, features: int, p: P1B1Params, outputs: int | None = None):
        super().__init__()
        widths = [features, *p.dense]
        self.encoder = _dense_stack(widths, p)
        self.variational, self.epsilon_std = p.model == "vae", p.epsilon_std
        if self.variational:
            self.z_mean = nn.Linear(widths[-1], p.latent_dim)
            self.z_log_var = nn.Linear(widths[-1], p.latent_dim)
        else:
            self.z_mean = nn.Sequential(
                nn.Linear(widths[-1], p.latent_dim), activation(p.activation)
            )
        back = [p.latent_dim, *reversed(p.dense)]
        self.decoder = nn.Sequential(
            _dense_stack(back, p),
            nn.Linear(back[-1], outputs or features),
            activation("linear" if outputs else p.out_activation),
        )

    def forward(self, x: torch.Tensor):
        h = self.encoder(x)
        mean = self.z_mean(h)
        if not self.variational:
            return self.decoder(mean), mean, None
        log_var = self.z_log_var(h)
        z = mean
        if self.training:  # the reparameterization trick: sample, keep the gradient
            z = mean + self.epsilon_std * torch.exp(0.5 * log_var) * torch.randn_like(mean)
        return self.decoder(z), mean, log_var


def build_network(p: P1B1Params, features: int, outputs: int | None = None) -> AutoEncoder:
    return initialize(AutoEncoder(features, p, outputs), p.initialization)


def correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``x`` with the same row of ``y`` (``b x d`` -> ``b``)."""
    xc, yc = x - x.mean(-1, keepdim=True), y - y.mean(-1, keepdim=True)
    return (xc * yc).sum(-1) / (xc.norm(dim=-1) * yc.norm(dim=-1)).clamp_min(1e-12)


# --------------------------------------------------------------------------- data


def read_expression(path, meta_columns: list[str]) -> tuple[np.ndarray, list[str]]:
    """(expression ``n x genes`` float32, gene names) of a CSV/TSV file with a header."""
    frame = read_table(path, low_memory=False)
    genes = frame.drop(columns=[c for c in meta_columns if c in frame.columns])
    if genes.shape[1] == 0:
        raise DataError(f"'{path}' has no gene columns besides {meta_columns}")
    return numeric(genes, path, "gene"), [str(c) for c in genes.columns]


def synthetic_expression(n: int, features: int, factors: int = 2, seed: int = 0) -> np.ndarray:
    """``n x features`` float32 profiles: ``factors`` hidden N(0, 1) variables per sample times
    random gene loadings, plus Gaussian noise of a third of the signal's scale."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(0.0, 1.0, (factors, features)).astype(np.float32)
    hidden = rng.normal(0.0, 1.0, (n, factors)).astype(np.float32)
    noise = rng.standard_normal((n, features), dtype=np.float32)
    return hidden @ loadings / np.sqrt(factors) + noise / 3


# --------------------------------------------------------------------------- trainer


class P1B1(Trainer):
    params_class = P1B1Params

    @functools.cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(x_train, x_val), scaled with the training statistics."""
        p = self.params
        if p.data == "synthetic":
            x = synthetic_expression(
                p.synthetic_samples,
                p.feature_subsample or ORIGINAL_FEATURES,
                seed=p.synthetic_seed,
            )
            n_val = max(1, round(len(x) * p.val_split))
            x_tr, x_va = x[n_val:], x[:n_val]
        else:
            train = data_file(p.data, p.train_data, "train_data")
            test = data_file(p.data, p.test_data, "test_data")
            x_tr, genes = read_expression(train, p.meta_columns)
            x_va, test_genes = read_expression(test, p.meta_columns)
            if test_genes != genes:
                missing = sorted(set(genes) - set(test_genes))[:5]
                raise DataError(
                    f"'{test}' has {len(test_genes)} gene columns and '{train}' {len(genes)}; "
                    f"they must be the same, in the same order (missing from the test file, "
                    f"first 5: {missing})"
                )
            x_tr = first_features(x_tr, p.feature_subsample)
            x_va = first_features(x_va, p.feature_subsample)
        x_tr, x_va = scale(x_tr, x_va, how=p.scaling)
        return x_tr, x_va

    def build_model(self) -> nn.Module:
        return build_network(self.params, self.arrays[0].shape[1])

    def build_data(self):
        x_tr, x_va = (torch.from_numpy(a) for a in self.arrays)
        return TensorDataset(x_tr), TensorDataset(x_va)

    def losses(self, x: torch.Tensor, given=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, per-sample correlation ``b``) of reconstructing ``x`` from ``given`` (x)."""
        recon, mean, log_var = self.model(x if given is None else given)
        if self.params.loss == "mse":
            loss = F.mse_loss(recon, x)
        else:
            # written out: F.binary_cross_entropy refuses to run under CUDA autocast
            r, t = recon.float().clamp(1e-7, 1 - 1e-7), x.float().clamp(0, 1)
            loss = -(t * r.log() + (1 - t) * (1 - r).log()).mean()
        if log_var is not None:
            kl = -0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum(-1).mean()
            loss = loss + kl / x.shape[-1]
        return loss, correlation(x, recon)

    def training_step(self, batch):
        x = batch[0]
        if self.params.noise_factor > 0:  # a denoising autoencoder: reconstruct the clean x
            return self.losses(x, x + self.params.noise_factor * torch.randn_like(x))[0]
        return self.losses(x)[0]

    def validation_step(self, batch):
        loss, corr = self.losses(batch[0])
        return {"loss": loss, "corr": corr.mean()}

    def predict_step(self, batch):
        return self.model(batch[0])[0]  # the reconstruction
