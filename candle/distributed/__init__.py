"""Distributed strategies. The Trainer talks to processes and ranks only through ``Strategy``.

``strategy=auto`` (the default) reads the launcher's environment:

- ``horovodrun`` exports ``HOROVOD_RANK``/``HOROVOD_SIZE`` -> ``HorovodStrategy``, or
  ``ElasticHorovodStrategy`` when it also sets ``HOROVOD_ELASTIC=1`` (``--min-np``/``--max-np``
  with a ``--host-discovery-script``)
- ``torchrun`` exports ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` -> ``DDPStrategy``
- neither -> ``SingleProcess``
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from candle.distributed.base import SingleProcess, Strategy, rank_indices
from candle.errors import StrategyError

__all__ = ["SingleProcess", "Strategy", "detect_launcher", "rank_indices", "resolve_strategy"]

HOROVOD_INSTALL_HINT = (
    "Horovod is not installed in this environment. Install it with "
    "`scripts/install_horovod.sh .venv` (builds Horovod 0.28.1 from source against the "
    "installed torch; `make test` does this too), or set strategy=single / strategy=ddp"
)


def detect_launcher(env: Mapping[str, str] | None = None) -> str:
    """``horovod``, ``ddp`` or ``single``, from the environment a launcher set up."""
    env = os.environ if env is None else env
    if "HOROVOD_RANK" in env and "HOROVOD_SIZE" in env:
        return "horovod"
    if "RANK" in env and "WORLD_SIZE" in env and "LOCAL_RANK" in env:
        return "ddp"
    return "single"


def resolve_strategy(name: str = "auto", params: object | None = None) -> Strategy:
    """The strategy for ``name`` (the ``strategy`` param); ``auto`` detects the launcher.

    ``params`` (the run's Params) carries strategy options such as ``fp16_allreduce``.
    """
    if name == "auto":
        name = detect_launcher()
    if name == "single":
        return SingleProcess()
    if name == "horovod":
        try:
            from candle.distributed.horovod import ElasticHorovodStrategy, HorovodStrategy
        except ImportError as e:
            raise StrategyError(f"{HOROVOD_INSTALL_HINT} (import failed: {e})") from e
        if os.environ.get("HOROVOD_ELASTIC") == "1":  # horovodrun's elastic mode
            return ElasticHorovodStrategy.from_params(params)
        return HorovodStrategy.from_params(params)
    if name == "ddp":
        from candle.distributed.ddp import DDPStrategy

        return DDPStrategy.from_params(params)
    raise StrategyError(f"unknown strategy {name!r}; use auto, single, horovod or ddp")
