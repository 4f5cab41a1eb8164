"""The registry of trainer names: ``trainer: nt3`` in a study, ``--trainer nt3`` on the command
line, and each workflow's variant of a reference model (``trainer: nt3`` in a UQ file names
:class:`candle.uq.models.NT3Member`, in a TDA plan :class:`candle.tda.models.NT3TDA`).

The registry holds ``module:Class`` strings and imports nothing: a model's module is imported
only when it is used. :mod:`candle.models` re-exports it.
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
    "uq": {name: f"candle.uq.models:{cls}Member" for name, cls in _NAMES.items()},
    "tda": {name: f"candle.tda.models:{cls}TDA" for name, cls in _NAMES.items()},
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
