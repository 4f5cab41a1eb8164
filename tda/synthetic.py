"""Multi-study data with known answers, and a small Trainer on it, for tests and benchmarks.

Group ``k`` of ``G`` (named ``g0``, ``g1``, ...) draws ``x ~ N(mu_k, I_d)`` and
``y = x . w_k + noise * eps`` with ``eps ~ N(0, 1)``, where

- ``w_k = w + label_shift * e_k`` (``e_k`` the k-th unit vector; needs ``d >= G``): the label
  shift, so ``||w_g - w_h||^2 = 2 label_shift^2`` for ``g != h``;
- ``mu_k = covariate_shift * (k - (G - 1) / 2) * e_{d-1}``: the covariate shift, along a
  direction the label shift does not touch (needs ``d > G`` to stay orthogonal).

Known answers (:class:`MultiStudy`):

- a model with the true weights of group ``g`` has test MSE on group ``h`` of
  ``noise^2 + (w_g - w_h)^T (I + mu_h mu_h^T) (w_g - w_h)`` (:meth:`MultiStudy.excess` is the
  second term): the cross-study matrix's off-diagonal is worse than its diagonal by it;
- least squares with an intercept on ``n`` rows of one group has expected test MSE
  ``noise^2 * (1 + (d + 1) / (n - d - 2))`` on that group (Gaussian design, approximately; exact
  without the intercept with ``d / (n - d - 1)``), so the learning curve is a power law in ``n``
  with exponent 1 (:attr:`MultiStudy.exponent`) and floor ``c = noise^2`` as ``n`` grows.

:class:`SyntheticTrainer` is a linear model (``hidden: 0``) or a small MLP on this data; by
default it keeps its lowest-training-loss checkpoint so that it behaves like least squares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn

from candle.config import param
from candle.errors import ConfigError
from candle.tda.trainer import GroupedData, TDAParams, TDATrainer

__all__ = ["MultiStudy", "SyntheticParams", "SyntheticTrainer", "make_multistudy"]


@dataclass
class MultiStudy:
    x: np.ndarray  # n x d
    y: np.ndarray  # n
    groups: np.ndarray  # n labels
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # d each
    means: dict[str, np.ndarray] = field(default_factory=dict)  # d each
    noise: float = 0.0
    exponent: float = 1.0  # of the learning curve's excess error (least squares)

    @property
    def names(self) -> list[str]:
        return list(self.weights)

    def excess(self, train: str, test: str) -> float:
        """Excess test MSE on group ``test`` of the true model of group ``train``."""
        delta = self.weights[train] - self.weights[test]
        mu = self.means[test]
        return float(delta @ delta + (delta @ mu) ** 2)

    def mean_off_diagonal_excess(self) -> float:
        names = self.names
        pairs = [(g, h) for g in names for h in names if g != h]
        return float(np.mean([self.excess(g, h) for g, h in pairs])) if pairs else 0.0

    def expected_mse(self, n: float | np.ndarray, intercept: bool = True) -> np.ndarray:
        """Expected in-group test MSE of least squares on ``n`` rows (Gaussian design)."""
        d = self.x.shape[1] + (1 if intercept else 0)
        n = np.asarray(n, dtype=np.float64)
        return self.noise**2 * (1.0 + d / (n - d - 1.0))

    def to_grouped(self) -> GroupedData:
        return GroupedData(self.x, self.y, self.groups)


def make_multistudy(
    groups: int = 3,
    rows_per_group: int = 400,
    features: int = 4,
    noise: float = 0.5,
    label_shift: float = 1.0,
    covariate_shift: float = 1.0,
    seed: int = 0,
) -> MultiStudy:
    """Draw a :class:`MultiStudy`; see the module docstring for the model."""
    if groups < 1 or rows_per_group < 2:
        raise ConfigError(
            f"need groups >= 1 and rows_per_group >= 2, got {groups}, {rows_per_group}"
        )
    if features <= groups and (label_shift or covariate_shift) and groups > 1:
        raise ConfigError(
            f"features={features} must be > groups={groups} so the label and covariate shifts "
            "stay orthogonal; add features"
        )
    rng = np.random.default_rng(seed)
    base = rng.normal(size=features)
    xs, ys, labels, weights, means = [], [], [], {}, {}
    for k in range(groups):
        name = f"g{k}"
        w = base.copy()
        mu = np.zeros(features)
        if groups > 1:
            w[k] += label_shift
            mu[-1] = covariate_shift * (k - (groups - 1) / 2)
        x = mu + rng.normal(size=(rows_per_group, features))
        xs.append(x)
        ys.append(x @ w + noise * rng.normal(size=rows_per_group))
        labels += [name] * rows_per_group
        weights[name], means[name] = w, mu
    return MultiStudy(
        x=np.concatenate(xs).astype(np.float32),
        y=np.concatenate(ys),
        groups=np.array(labels),
        weights=weights,
        means=means,
        noise=noise,
    )


@dataclass
class SyntheticParams(TDAParams):
    groups: int = param(3, min=1, help="number of groups (studies)")
    rows_per_group: int = param(400, min=2, help="rows drawn per group")
    features: int = param(4, min=1, help="input features")
    noise: float = param(0.5, min=0.0, help="label noise standard deviation")
    label_shift: float = param(1.0, min=0.0, help="per-group weight offset")
    covariate_shift: float = param(1.0, min=0.0, help="spacing of the groups' feature means")
    data_seed: int = param(0, min=0, help="seed of the generator")
    hidden: int = param(0, min=0, help="hidden units; 0 = a linear model")
    # Enough steps at the smallest sizes, and a decaying rate, to land near least squares. The
    # kept checkpoint is the one with the lowest training loss: choosing it on the fixed
    # validation rows (many more than a small subset's) would shrink small-n models like a
    # tuned ridge penalty, and the known curve is that of least squares.
    learning_rate: float = 0.05
    batch_size: int = 16
    epochs: int = 30
    lr_schedule: str = "cosine"
    monitor: str = "train_loss"
    # one checkpoint, at the end (the lowest training loss is the last one's, near enough): a
    # checkpoint per epoch costs more than these trials' training on a small machine
    checkpoint_every: int = 0


class SyntheticTrainer(TDATrainer):
    """A linear model or a one-hidden-layer MLP on :func:`make_multistudy` data."""

    params_class = SyntheticParams
    task = "regression"

    def study(self) -> MultiStudy:
        p = self.params
        return make_multistudy(
            p.groups,
            p.rows_per_group,
            p.features,
            p.noise,
            p.label_shift,
            p.covariate_shift,
            p.data_seed,
        )

    def load_data(self) -> GroupedData:
        return self.study().to_grouped()

    def build_model(self) -> nn.Module:
        p = self.params
        if p.hidden == 0:
            return nn.Linear(p.features, 1)
        return nn.Sequential(nn.Linear(p.features, p.hidden), nn.ReLU(), nn.Linear(p.hidden, 1))
