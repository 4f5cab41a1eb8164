"""Samplers: random, Sobol, grid and BoTorch Bayesian optimization, one ask/tell interface."""

from __future__ import annotations

from typing import Any

from candle.errors import ConfigError
from candle.search.samplers.base import Sampler, Suggestion
from candle.search.samplers.simple import GridSampler, RandomSampler, SobolSampler
from candle.search.space import Space

__all__ = [
    "SAMPLERS",
    "GridSampler",
    "RandomSampler",
    "Sampler",
    "SobolSampler",
    "Suggestion",
    "make_sampler",
]

SAMPLERS = ("random", "sobol", "grid", "botorch")


def make_sampler(name: str, space: Space, seed: int = 0, **options: Any) -> Sampler:
    """A sampler by name; options are its keyword arguments (e.g. grid ``points``)."""
    if name == "random":
        cls: Any = RandomSampler
    elif name == "sobol":
        cls = SobolSampler
    elif name == "grid":
        cls = GridSampler
    elif name == "botorch":
        from candle.search.samplers.botorch import BoTorchSampler

        cls = BoTorchSampler
    else:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    try:
        return cls(space, seed=seed, **options)
    except TypeError as e:
        raise ConfigError(f"sampler {name}: bad option(s) {sorted(options)}: {e}") from None
