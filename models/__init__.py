"""candle.models: reference applications, and the registry that lets workflows name them.

A study can say ``trainer: nt3`` instead of ``trainer: candle.models.nt3:NT3``;
:func:`register` also takes a user's own Trainers. The reference models, after the CANDLE
benchmarks (each module's docstring gives its architecture, parameters and data formats):

- ``nt3`` (:mod:`candle.models.nt3`): 1D CNN, normal vs tumor from gene expression.
- ``tc1`` (:mod:`candle.models.tc1`): 1D CNN, tumor type; also on NCI60 from the ISLP package.
- ``p1b1`` (:mod:`candle.models.p1b1`): autoencoder (plain or variational) of gene expression.
- ``uno`` (:mod:`candle.models.uno`): drug response from cell, drug and dose features.
- ``combo`` (:mod:`candle.models.combo`): drug-pair response with a shared drug tower.

Each model also comes as a UQ member (:mod:`candle.models.uq`) and as a training data analysis
trainer (:mod:`candle.models.tda`): ``trainer: nt3`` in a UQ file or a TDA plan names those.

Modules are imported only when a model is used: the registry holds ``module:Class`` strings.
"""

from __future__ import annotations

from candle.errors import ConfigError

__all__ = ["REGISTRY", "WORKFLOWS", "register", "trainer_path"]

REGISTRY: dict[str, str] = {
    "nt3": "candle.models.nt3:NT3",
    "tc1": "candle.models.tc1:TC1",
    "p1b1": "candle.models.p1b1:P1B1",
    "uno": "candle.models.uno:Uno",
    "combo": "candle.models.combo:Combo",
}

# The same models in the workflows whose trainers follow a contract of their own.
_NAMES = {"nt3": "NT3", "tc1": "TC1", "p1b1": "P1B1", "uno": "Uno", "combo": "Combo"}
WORKFLOWS: dict[str, dict[str, str]] = {
    "uq": {name: f"candle.models.uq:{cls}Member" for name, cls in _NAMES.items()},
    "tda": {name: f"candle.models.tda:{cls}TDA" for name, cls in _NAMES.items()},
}


def register(name: str, target: str, workflow: str | None = None) -> None:
    """Let studies name ``target`` (``module:Class``) as ``name``; with ``workflow`` (``uq``,
    ``tda``), only in that workflow's files."""
    if ":" in name or not name:
        raise ConfigError(f"a registered model name must be a plain word, got {name!r}")
    if workflow is None:
        REGISTRY[name.lower()] = target
    else:
        WORKFLOWS.setdefault(workflow, {})[name.lower()] = target


def trainer_path(name: str, workflow: str | None = None) -> str:
    """``module:Class`` (or ``file.py:Class``) for a study's ``trainer:`` value; ``workflow``
    (``uq``, ``tda``) picks that workflow's variant of a registered model."""
    if ":" in name:
        return name
    variant = WORKFLOWS.get(workflow or "", {}).get(name.lower())
    if variant:
        return variant
    try:
        return REGISTRY[name.lower()]
    except KeyError:
        known = ", ".join(sorted(REGISTRY)) or "none registered yet"
        raise ConfigError(
            f"trainer {name!r} is neither 'module:Class' nor a registered model name "
            f"(registered: {known})"
        ) from None
