"""Output heads and their losses: heteroscedastic Gaussian, quantile, classification.

A UQ model ends in a plain ``nn.Linear`` with :func:`head_size` outputs; these functions read
its raw output ``n x k`` as a predictive distribution:

- ``gaussian``: ``k = 2o``, the first ``o`` columns are means, the last ``o`` raw variances
  mapped through ``softplus(raw) + floor`` (positive, never below ``floor``);
- ``quantile``: ``k = q * o``, one column per (quantile level, output), levels outermost;
- ``classification``: ``k = c`` logits.

MC dropout needs no head of its own: any model with dropout layers, predicted with dropout
left on (:func:`mc_dropout`), gives one sample per forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from candle.errors import ConfigError

__all__ = [
    "HEADS",
    "beta_nll_loss",
    "gaussian_nll_loss",
    "head_size",
    "mc_dropout",
    "pinball_loss",
    "split_gaussian",
    "split_quantiles",
]

HEADS = ("gaussian", "quantile", "classification")
_LOG_2PI = 1.8378770664093453


def head_size(head: str, outputs: int = 1, classes: int = 2, quantiles: int = 3) -> int:
    """Width of the last layer for ``head`` with ``outputs`` targets (or ``classes``)."""
    if head == "gaussian":
        return 2 * outputs
    if head == "quantile":
        return quantiles * outputs
    if head == "classification":
        return classes
    raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {head!r}")


def split_gaussian(out: torch.Tensor, floor: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw output ``n x 2o`` -> (mean ``n x o``, variance ``n x o``), variance >= ``floor``."""
    if out.shape[-1] % 2:
        raise ConfigError(
            f"a gaussian head needs an even number of outputs (means, then variances), got "
            f"{out.shape[-1]}; end the model in nn.Linear(h, self.head_outputs)"
        )
    mean, raw = out.chunk(2, dim=-1)
    return mean, F.softplus(raw) + floor


def gaussian_nll_loss(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood, constant included. All ``n x o``."""
    return 0.5 * (torch.log(var) + (y - mean) ** 2 / var + _LOG_2PI).mean()


def beta_nll_loss(
    mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor, beta: float = 0.5
) -> torch.Tensor:
    """beta-NLL (Seitzer et al. 2022): each sample's NLL weighted by ``var.detach() ** beta``.

    ``beta = 0`` is the NLL; ``beta = 1`` gives the mean the gradient of a squared error, which
    stops the fit from explaining hard points away with a large variance. All ``n x o``.
    """
    nll = 0.5 * (torch.log(var) + (y - mean) ** 2 / var + _LOG_2PI)
    return (nll * var.detach() ** beta).mean()


def split_quantiles(out: torch.Tensor, levels: int) -> torch.Tensor:
    """Raw output ``n x (q*o)`` -> ``n x q x o`` (sorted along q, so quantiles never cross)."""
    if out.shape[-1] % levels:
        raise ConfigError(
            f"a quantile head with {levels} levels needs a multiple of {levels} outputs, got "
            f"{out.shape[-1]}"
        )
    values = out.reshape(out.shape[0], levels, -1)
    return values.sort(dim=1).values


def pinball_loss(pred: torch.Tensor, y: torch.Tensor, levels: Sequence[float]) -> torch.Tensor:
    """Mean pinball (quantile) loss. ``pred``: ``n x q x o``; ``y``: ``n x o``; ``levels``: q."""
    tau = torch.as_tensor(levels, dtype=pred.dtype, device=pred.device).view(1, -1, 1)
    diff = y.unsqueeze(1) - pred
    return torch.maximum(tau * diff, (tau - 1) * diff).mean()


@torch.no_grad()
def mc_dropout(model: nn.Module, forward: Callable[[], torch.Tensor], samples: int) -> torch.Tensor:
    """``samples`` stochastic passes of ``forward()`` with only the dropout layers in train
    mode -> ``samples x ...`` (batch norm and the rest stay in eval mode)."""
    was_training = model.training
    model.eval()
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if not dropouts:
        raise ConfigError(
            "mc_samples > 0 needs dropout layers in the model (MC dropout samples them at "
            "prediction time); add nn.Dropout or set mc_samples: 0"
        )
    for m in dropouts:
        m.train()
    try:
        return torch.stack([forward() for _ in range(samples)])
    finally:
        model.train(was_training)
