"""Search spaces: float, int, log scale, categorical, fixed and conditional parameters.

In a study file::

    space:
      learning_rate: {type: float, low: 1.0e-4, high: 0.1, log: true}
      hidden: {type: int, low: 8, high: 256, log: true}
      optimizer: {type: categorical, choices: [sgd, adam]}
      momentum: {type: float, low: 0.0, high: 0.99, when: {optimizer: [sgd]}}
      epochs: 20                                   # fixed (or {type: fixed, value: 20})

``when`` makes a parameter active only for some values of another (categorical or fixed)
parameter; an inactive parameter is left out of the trial's params (the Trainer's default
applies).

Samplers see two views of a space:

- ``from_unit(u)``: one coordinate in [0, 1) per searched parameter (a categorical by
  ``floor(u * k)``), for random and quasi-random designs;
- ``encode``/``decode``: a model's view, one column per float or int (log scale where asked;
  an int by its cell centre) and one one-hot column per category, all in [0, 1]. Inactive
  parameters encode to 0.5 (one-hot: all zeros), so every config has one encoding.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from candle.errors import ConfigError

__all__ = ["Categorical", "Fixed", "Float", "Int", "Space"]


@dataclass(frozen=True)
class _Param:
    name: str
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Float(_Param):
    low: float = 0.0
    high: float = 1.0
    log: bool = False

    def from_unit(self, u: float) -> float:
        if u <= 0.0 or u >= 1.0:  # the bounds exactly, not exp(log(x)) rounded
            return self.low if u <= 0.0 else self.high
        if self.log:
            a, b = math.log(self.low), math.log(self.high)
            return float(min(max(math.exp(a + u * (b - a)), self.low), self.high))
        return float(self.low + u * (self.high - self.low))

    def to_unit(self, value: float) -> float:
        if self.high == self.low:
            return 0.5
        if self.log:
            a, b = math.log(self.low), math.log(self.high)
            return (math.log(value) - a) / (b - a)
        return (value - self.low) / (self.high - self.low)


@dataclass(frozen=True)
class Int(_Param):
    low: int = 0
    high: int = 1
    log: bool = False

    def from_unit(self, u: float) -> int:
        u = min(max(u, 0.0), 1.0 - 1e-12)
        if self.log:  # uniform in log over [low - 0.5, high + 0.5), then rounded
            a, b = math.log(self.low - 0.5), math.log(self.high + 0.5)
            return int(min(max(round(math.exp(a + u * (b - a))), self.low), self.high))
        return int(self.low + math.floor(u * (self.high - self.low + 1)))

    def to_unit(self, value: int) -> float:
        if self.log:
            a, b = math.log(self.low - 0.5), math.log(self.high + 0.5)
            return (math.log(value) - a) / (b - a)
        return (value - self.low + 0.5) / (self.high - self.low + 1)


@dataclass(frozen=True)
class Categorical(_Param):
    choices: tuple[Any, ...] = ()

    def from_unit(self, u: float) -> Any:
        k = len(self.choices)
        return self.choices[min(math.floor(u * k), k - 1)]


@dataclass(frozen=True)
class Fixed(_Param):
    value: Any = None


Param = Float | Int | Categorical | Fixed
_TYPES = ("float", "int", "categorical", "fixed")


class Space:
    """An ordered set of parameters; see the module docstring."""

    def __init__(self, params: Sequence[Param]):
        self.params: list[Param] = _dependency_order(list(params))
        self.by_name = {p.name: p for p in self.params}
        self.searched: list[Float | Int | Categorical] = [
            p for p in self.params if not isinstance(p, Fixed)
        ]
        self.names = [p.name for p in self.searched]
        self.fixed = {p.name: p.value for p in self.params if isinstance(p, Fixed)}
        self.columns: dict[str, list[int]] = {}
        col = 0
        for p in self.searched:
            width = len(p.choices) if isinstance(p, Categorical) else 1
            self.columns[p.name] = list(range(col, col + width))
            col += width
        self.dim = col
        self.categorical_columns = [
            self.columns[p.name] for p in self.searched if isinstance(p, Categorical)
        ]
        self._check_conditions()

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str = "space") -> Space:
        if not isinstance(spec, Mapping) or not spec:
            raise ConfigError(f"{where} must be a non-empty mapping of parameter names")
        return cls([_parse(str(name), value, f"{where}.{name}") for name, value in spec.items()])

    def _check_conditions(self) -> None:
        for p in self.params:
            for other, values in p.when.items():
                if other == p.name:
                    raise ConfigError(f"space.{p.name}: `when` cannot refer to itself")
                target = self.by_name.get(other)
                if target is None:
                    raise ConfigError(
                        f"space.{p.name}: `when` refers to {other!r}, which is not in the space "
                        f"(parameters: {', '.join(self.by_name)})"
                    )
                if not isinstance(target, Categorical | Fixed):
                    raise ConfigError(
                        f"space.{p.name}: `when` must refer to a categorical or fixed parameter; "
                        f"{other!r} is a {type(target).__name__.lower()}"
                    )
                allowed = target.choices if isinstance(target, Categorical) else (target.value,)
                bad = [v for v in values if v not in allowed]
                if bad:
                    raise ConfigError(
                        f"space.{p.name}: `when` {other}: {bad} not among {other}'s values "
                        f"{list(allowed)}"
                    )

    def check_names(self, params_class: type, where: str = "space") -> None:
        """Every parameter must be one the Trainer knows (its params class's fields)."""
        import dataclasses

        known = {f.name for f in dataclasses.fields(params_class)}
        for name in self.by_name:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"{where}.{name}: {params_class.__name__} has no parameter {name!r}{hint}"
                )

    # ------------------------------------------------------------------ views
    @property
    def n_raw(self) -> int:
        return len(self.searched)

    def is_active(self, p: Param, config: Mapping[str, Any]) -> bool:
        return all(config.get(other) in values for other, values in p.when.items())

    def from_unit(self, u: Sequence[float]) -> dict[str, Any]:
        """A config from one coordinate in [0, 1) per searched parameter."""
        if len(u) != self.n_raw:
            raise ValueError(f"expected {self.n_raw} coordinates, got {len(u)}")
        config: dict[str, Any] = {}
        it = iter(u)
        for p in self.params:
            x = None if isinstance(p, Fixed) else float(next(it))
            if not self.is_active(p, config):
                continue
            config[p.name] = p.value if isinstance(p, Fixed) else p.from_unit(x)
        return config

    def encode(self, config: Mapping[str, Any]) -> np.ndarray:
        x = np.full(self.dim, 0.5)
        for p in self.searched:
            cols = self.columns[p.name]
            if isinstance(p, Categorical):
                x[cols] = 0.0
                if p.name in config and config[p.name] in p.choices:
                    x[cols[p.choices.index(config[p.name])]] = 1.0
            elif p.name in config:
                x[cols[0]] = min(max(p.to_unit(config[p.name]), 0.0), 1.0)
        return x

    def decode(self, x: Sequence[float]) -> dict[str, Any]:
        x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
        if x.shape != (self.dim,):
            raise ValueError(f"expected an encoding of {self.dim} columns, got {x.shape}")
        config: dict[str, Any] = {}
        for p in self.params:
            if not self.is_active(p, config):
                continue
            if isinstance(p, Fixed):
                config[p.name] = p.value
                continue
            cols = self.columns[p.name]
            if isinstance(p, Categorical):
                config[p.name] = p.choices[int(np.argmax(x[cols]))]
            elif isinstance(p, Int):
                config[p.name] = p.from_unit(float(x[cols[0]]))
            else:
                config[p.name] = p.from_unit(float(x[cols[0]]))
        return config

    def canonical(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The config with inactive parameters dropped and fixed ones set (as samplers give)."""
        out: dict[str, Any] = {}
        for p in self.params:
            if self.is_active(p, out):
                out[p.name] = p.value if isinstance(p, Fixed) else config.get(p.name)
        return out

    def grid(self, points: int = 5) -> list[dict[str, Any]]:
        """Every combination of: all choices of each categorical, ``points`` evenly spaced
        values of each float (log-spaced for log ones), and of each int (all values when there
        are at most ``points``). Conditional parameters appear only where active."""
        axes: list[list[Any]] = []
        for p in self.searched:
            if isinstance(p, Categorical):
                axes.append(list(p.choices))
            elif isinstance(p, Int) and p.high - p.low + 1 <= points:
                axes.append(list(range(p.low, p.high + 1)))
            else:
                units = [0.5] if points == 1 else [i / (points - 1) for i in range(points)]
                if isinstance(p, Int):
                    values = [_int_at(p, u) for u in units]
                else:
                    values = [p.from_unit(u) for u in units]
                axes.append(sorted(set(values), key=values.index))
        import itertools

        seen, out = set(), []
        for combo in itertools.product(*axes):
            raw = dict(zip(self.names, combo, strict=True))
            config = self.canonical({**raw, **self.fixed})
            key = tuple(sorted((k, repr(v)) for k, v in config.items()))
            if key not in seen:
                seen.add(key)
                out.append(config)
        return out

    def __repr__(self) -> str:
        return f"Space({', '.join(self.by_name)})"


def _dependency_order(params: list[Param]) -> list[Param]:
    """The parameters as given, except that each comes after those its ``when`` names (so a
    file or a store that sorted the keys reads the same); a cycle is an error."""
    names = {p.name for p in params}
    placed: list[Param] = []
    done: set[str] = set()
    rest = list(params)
    while rest:
        ready = [p for p in rest if all(o in done or o not in names for o in p.when)]
        if not ready:
            cycle = ", ".join(p.name for p in rest)
            raise ConfigError(f"space: the `when` conditions of {cycle} depend on each other")
        for p in ready:
            placed.append(p)
            done.add(p.name)
        rest = [p for p in rest if p.name not in done]
    return placed


def _int_at(p: Int, u: float) -> int:
    if p.log:
        return int(
            min(max(round(math.exp(math.log(p.low) + u * math.log(p.high / p.low))), p.low), p.high)
        )
    return round(p.low + u * (p.high - p.low))


def _parse(name: str, value: Any, where: str) -> Param:
    if not isinstance(value, Mapping):
        return Fixed(name, value=value)
    spec = dict(value)
    kind = spec.pop("type", None)
    if kind is None:
        kind = "categorical" if "choices" in spec else "fixed" if "value" in spec else None
    if kind is None and {"low", "high"} <= set(spec):
        both_int = all(
            isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("low", "high")
        )
        kind = "int" if both_int else "float"
    if kind not in _TYPES:
        raise ConfigError(f"{where}: type must be one of {', '.join(_TYPES)}, got {kind!r}")
    when = _parse_when(spec.pop("when", None), where)
    allowed = {
        "float": {"low", "high", "log"},
        "int": {"low", "high", "log"},
        "categorical": {"choices"},
        "fixed": {"value"},
    }[kind]
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} for type {kind}; known: "
            f"{', '.join(sorted(allowed | {'type', 'when'}))}"
        )
    if kind == "fixed":
        if "value" not in spec:
            raise ConfigError(f"{where}: type fixed needs `value`")
        return Fixed(name, when, value=spec["value"])
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list | tuple) or not choices:
            raise ConfigError(f"{where}: `choices` must be a non-empty list, got {choices!r}")
        if len({repr(c) for c in choices}) != len(choices):
            raise ConfigError(f"{where}: `choices` has duplicates: {list(choices)}")
        return Categorical(name, when, choices=tuple(choices))
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(f"{where}: type {kind} needs `low` and `high`")
        v = spec[key]
        ok = isinstance(v, int) if kind == "int" else isinstance(v, int | float)
        if not ok or isinstance(v, bool) or (isinstance(v, float) and not math.isfinite(v)):
            want = "an integer" if kind == "int" else "a finite number"
            raise ConfigError(f"{where}.{key} must be {want}, got {v!r}")
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log must be true or false, got {log!r}")
    if low > high:
        raise ConfigError(f"{where}: low ({low}) is greater than high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: log scale needs low > 0, got low = {low}")
    if kind == "int":
        return Int(name, when, low=int(low), high=int(high), log=log)
    return Float(name, when, low=float(low), high=float(high), log=log)


def _parse_when(when: Any, where: str) -> dict[str, tuple[Any, ...]]:
    if when is None:
        return {}
    if not isinstance(when, Mapping) or not when:
        raise ConfigError(
            f"{where}.when must map a parameter to its value(s), e.g. {{optimizer: [sgd]}}"
        )
    return {str(k): tuple(v) if isinstance(v, list | tuple) else (v,) for k, v in when.items()}
