"""candle.models: reference applications, and the registry that lets workflows name them.

A study can say ``trainer: nt3`` instead of ``trainer: candle.models.nt3:NT3``. The models
themselves are added by their own issue; :func:`register` also takes a user's own Trainers.
"""

from __future__ import annotations

from candle.errors import ConfigError

__all__ = ["REGISTRY", "register", "trainer_path"]

REGISTRY: dict[str, str] = {}


def register(name: str, target: str) -> None:
    """Let studies name ``target`` (``module:Class``) as ``name``."""
    if ":" in name or not name:
        raise ConfigError(f"a registered model name must be a plain word, got {name!r}")
    REGISTRY[name.lower()] = target


def trainer_path(name: str) -> str:
    """``module:Class`` (or ``file.py:Class``) for a study's ``trainer:`` value."""
    if ":" in name:
        return name
    try:
        return REGISTRY[name.lower()]
    except KeyError:
        known = ", ".join(sorted(REGISTRY)) or "none registered yet"
        raise ConfigError(
            f"trainer {name!r} is neither 'module:Class' nor a registered model name "
            f"(registered: {known})"
        ) from None
