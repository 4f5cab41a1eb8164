"""Typed hyperparameters: dataclasses filled from defaults, files, environment and command line.

A model declares its hyperparameters as a dataclass that extends :class:`Params`::

    @dataclass
    class MyParams(Params):
        hidden: list[int] = param([64, 32], min=1, help="hidden layer widths")
        dropout: float = param(0.1, min=0.0, max=1.0)

    params = load_params(MyParams, argv=sys.argv[1:])

Sources, lowest to highest precedence: dataclass defaults < config file (YAML, TOML, JSON or
legacy CANDLE INI) < environment (``CANDLE_<NAME>``) < command line < ``overrides``.
Every value is coerced to its field's type and checked against ``min``/``max``/``choices``;
all problems of one load are reported together in one :class:`~candle.errors.ConfigError`.
Text is never evaluated as code: it is parsed with ``ast.literal_eval``, ``json``,
``yaml.safe_load`` or ``tomllib``.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
import difflib
import functools
import json
import logging
import os
import re
import sys
import tempfile
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from candle.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

__all__ = [
    "ENV_PREFIX",
    "Params",
    "describe_params",
    "field_names",
    "load_params",
    "param",
    "params_from_dict",
    "params_to_dict",
    "parse_argv",
    "parse_duration",
    "read_config_file",
    "save_params",
]

log = logging.getLogger("candle.config")

ENV_PREFIX = "CANDLE_"
_TRUE = frozenset({"true", "yes", "y", "on", "1", "t"})
_FALSE = frozenset({"false", "no", "n", "off", "0", "f"})
_INI_SUFFIXES = (".ini", ".txt", ".cfg")
_HELP_HINT = "see `python -m candle train --help`"


# --------------------------------------------------------------------------- fields


def _param(default: Any, meta: Mapping[str, Any]) -> Any:
    if isinstance(default, (list, dict, set)):
        factory = functools.partial(copy.deepcopy, default)
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _meta(
    min: Any = None,
    max: Any = None,
    choices: Sequence[Any] | None = None,
    help: str = "",
    aliases: Sequence[str] = (),
) -> dict[str, Any]:
    choices = tuple(choices) if choices is not None else None
    return {"min": min, "max": max, "choices": choices, "help": help, "aliases": tuple(aliases)}


def param(
    default: Any,
    *,
    min: Any = None,
    max: Any = None,
    choices: Sequence[Any] | None = None,
    help: str = "",
    aliases: Sequence[str] = (),
) -> Any:
    """A dataclass field (``dataclasses.Field``) carrying validation metadata.

    ``min``/``max`` bound numbers (each item, for a list); ``choices`` lists the allowed
    values; ``aliases`` are other accepted names (e.g. legacy CANDLE keys). List, dict and set
    defaults are copied per instance through ``default_factory``. Typed ``Any`` so that
    ``epochs: int = param(10, min=0)`` type-checks.
    """
    return _param(default, _meta(min, max, choices, help, aliases))


class _Invalid(Exception):
    """A value does not fit its field: ``rule`` states what is expected, ``hint`` how to fix."""

    def __init__(self, rule: str, hint: str = "", got: Any = dataclasses.MISSING) -> None:
        super().__init__(rule)
        self.rule, self.hint, self.got = rule, hint, got

    def message(self, name: str, raw: Any, source: str) -> str:
        got = raw if self.got is dataclasses.MISSING else self.got
        hint = f"; {self.hint}" if self.hint else ""
        return f"'{name}' {self.rule}, got {got!r} (from {source}){hint}"


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([dhms])")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``"3600"``, ``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"``, ``"1d"``,
    ``"HH:MM:SS"`` or ``"D-HH:MM:SS"``. Raises ``ValueError`` on anything else."""
    s = text.strip().lower()
    with contextlib.suppress(ValueError):
        return float(s)
    clock = re.fullmatch(r"(?:(\d+)-)?(\d+):([0-5]?\d):([0-5]?\d(?:\.\d*)?)", s)
    if clock:
        days, hours, minutes, seconds = clock.groups()
        return ((int(days or 0) * 24 + int(hours)) * 60 + int(minutes)) * 60 + float(seconds)
    compact = s.replace(" ", "")
    if compact and _DURATION_PART.sub("", compact) == "":
        units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
        return sum(float(n) * units[u] for n, u in _DURATION_PART.findall(compact))
    raise ValueError(f"cannot read {text!r} as a duration")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        rule = "must be seconds or a duration like '90s', '30m', '2h', '1h30m' or 'HH:MM:SS'"
        raise _Invalid(rule) from None


_TIME_LIMIT = {
    **_meta(min=0.0, help="wall-clock limit: seconds, '30m', '2h', 'HH:MM:SS'; 0 = none"),
    "converter": _duration,
}
_DEVICE = {
    **_meta(help="auto, cpu, cuda or cuda:N"),
    "pattern": r"auto|cpu|cuda(:\d+)?",
    "pattern_rule": "auto, cpu, cuda or cuda:N",
    "pattern_examples": ("auto", "cpu", "cuda", "cuda:0"),
}


@dataclass
class Params:
    """The common hyperparameters. Extend it with ``@dataclass class MyParams(Params): ...``.

    Override :meth:`validate` for cross-field checks; it runs at the end of every load.
    """

    # run identity / output
    experiment: str = param(
        "default", help="experiment name: runs go to <output_dir>/<experiment>/"
    )
    run_id: str = param("", help="run name; empty = a timestamp chosen by the trainer")
    output_dir: str = param("runs", help="root folder of all runs")
    run_dir: str = param("", help="explicit run folder; empty = <output_dir>/<experiment>/<run_id>")
    # optimization
    epochs: int = param(10, min=0, help="passes over the training data")
    max_steps: int = param(0, min=0, help="stop after this many optimizer steps; 0 = no limit")
    stop_at_epoch: int = param(
        0,
        min=0,
        help="end this segment after this epoch, status 'paused' (resume=true continues it to "
        "`epochs` with the same schedule); 0 = run to the end",
    )
    batch_size: int = param(32, min=1, help="training batch size (per process)")
    eval_batch_size: int = param(0, min=0, help="evaluation batch size; 0 = batch_size")
    learning_rate: float = param(1e-3, min=0.0, aliases=("lr",), help="base learning rate")
    optimizer: str = param("adam", choices=("sgd", "adam", "adamw", "rmsprop"), help="optimizer")
    momentum: float = param(0.0, min=0.0, help="momentum (sgd, rmsprop)")
    weight_decay: float = param(0.0, min=0.0, help="weight decay")
    grad_accum_steps: int = param(1, min=1, help="batches accumulated per optimizer step")
    grad_clip: float = param(0.0, min=0.0, help="max global gradient norm; 0 = off")
    precision: str = param(
        "auto", choices=("auto", "32", "bf16", "fp16"), help="mixed precision (CUDA only)"
    )
    lr_schedule: str = param(
        "constant",
        choices=("constant", "cosine", "linear", "step", "exponential"),
        help="learning-rate schedule after warmup",
    )
    warmup_steps: int = param(0, min=0, help="linear warmup length in optimizer steps")
    lr_min_ratio: float = param(0.0, min=0.0, max=1.0, help="final lr as a fraction of base lr")
    lr_step_size: int = param(1, min=1, help="epochs between decays for the 'step' schedule")
    lr_gamma: float = param(0.1, min=0.0, max=1.0, help="decay factor (step, exponential)")
    # stopping
    early_stopping_patience: int = param(0, min=0, help="epochs without improvement; 0 = off")
    early_stopping_min_delta: float = param(0.0, min=0.0, help="smallest change that counts")
    monitor: str = param("val_loss", help="metric watched by early stopping and best checkpoint")
    monitor_mode: str = param(
        "min", choices=("min", "max"), help="whether lower or higher is better"
    )
    time_limit: float = _param(0.0, _TIME_LIMIT)
    # reproducibility / hardware
    seed: int = param(0, min=0, aliases=("rng_seed",), help="random seed")
    deterministic: bool = param(True, help="use deterministic algorithms")
    device: str = _param("auto", _DEVICE)
    threads: int = param(0, min=0, help="torch.set_num_threads; 0 = leave as is")
    num_workers: int = param(0, min=0, help="DataLoader worker processes")
    strategy: str = param(
        "auto",
        choices=("auto", "single", "horovod", "ddp"),
        help="distributed strategy; auto detects horovodrun / torchrun from the environment",
    )
    lr_scaling: str = param(
        "none",
        choices=("none", "linear", "sqrt"),
        help="scale learning_rate by the number of ranks (x N or x sqrt N); logged at start",
    )
    elastic_commit_steps: int = param(
        0,
        min=0,
        help="elastic Horovod: optimizer steps between in-memory commits of the training state "
        "(also committed at every epoch end); 0 = at epoch ends only",
    )
    fp16_allreduce: bool = param(False, help="compress gradients to fp16 for the all-reduce")
    adasum: bool = param(False, help="Horovod: Adasum reduction instead of averaging")
    # checkpoints and logs
    checkpoint_every: int = param(1, min=0, help="epochs between checkpoints; 0 = only at the end")
    checkpoint_every_steps: int = param(
        0, min=0, help="optimizer steps between checkpoints; 0 = off"
    )
    keep_checkpoints: int = param(2, min=1, help="how many recent checkpoints to keep")
    resume: bool = param(False, help="resume from the latest checkpoint in the run folder")
    log_every_steps: int = param(50, min=1, help="optimizer steps between metric logs")
    tensorboard: bool = param(True, help="write TensorBoard event files")
    progress_bar: bool = param(True, help="show a progress bar")
    metrics_log: str = param("jsonl", choices=("jsonl", "csv", "off"), help="metrics file format")

    def validate(self) -> None:
        """Cross-field checks; override and raise :class:`ConfigError` to reject a combination."""


P = TypeVar("P", bound=Params)


# --------------------------------------------------------------------------- coercion


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if get_origin(tp) is None and isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _literal_text(text: str) -> Any:
    """A Python literal in ``text``, or ``text`` itself when it is not one (never evaluated)."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to type ``tp``; strings are parsed. Raises :class:`_Invalid`."""
    if tp is Any or tp is object:
        return value
    origin, args = get_origin(tp), get_args(tp)
    example = {int: "a whole number like 10", float: "a number like 0.001 or 1e-3"}.get(tp)
    wrong = _Invalid(f"must be of type {_type_name(tp)}", f"write {example}" if example else "")
    if origin is Union or origin is types.UnionType:
        text_none = isinstance(value, str) and value.strip().lower() in ("none", "null")
        if type(None) in args and (value is None or text_none):
            return None
        for arm in (a for a in args if a is not type(None)):
            with contextlib.suppress(_Invalid):
                return _coerce(value, arm)
        raise wrong
    if origin is Literal:
        for a in args:
            same = value == a and isinstance(value, bool) == isinstance(a, bool)
            if same or (isinstance(value, str) and value.strip() == str(a)):
                return a
        raise _Invalid("must be one of " + ", ".join(map(repr, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _Invalid("must be of type bool", "use true/false, yes/no, on/off or 1/0")
    if tp in (int, float) and isinstance(value, bool):
        raise _Invalid(f"must be of type {tp.__name__}", "a bool is not accepted as a number")
    if tp is int:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value.strip())
            try:
                value = float(value.strip())
            except ValueError:
                raise wrong from None
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            raise _Invalid("must be of type int", "a number with a fractional part is not an int")
        raise wrong
    if tp is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return float(value.strip())
        raise wrong
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)):  # e.g. YAML `precision: 32`
            return str(value)
        raise wrong
    if origin in (list, tuple, set) or tp in (list, tuple, set):
        return _coerce_sequence(value, tp, origin or tp, args)
    if origin is dict or tp is dict:
        if isinstance(value, str):
            parsed = _literal_text(value)
            if parsed is value:
                with contextlib.suppress(ValueError):
                    parsed = json.loads(value)
            value = parsed
        if not isinstance(value, Mapping):
            raise _Invalid(f"must be of type {_type_name(tp)}", "write a mapping like {'a': 1}")
        key_type, value_type = args or (Any, Any)
        return {_coerce(k, key_type): _coerce(v, value_type) for k, v in value.items()}
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise wrong


def _coerce_sequence(value: Any, tp: Any, kind: type, args: tuple[Any, ...]) -> Any:
    name = _type_name(tp)
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("[", "("):
            value = _literal_text(text)
            if value is text:
                raise _Invalid(f"must be of type {name}", "write a list like [1, 2] or 1,2")
        else:
            value = [part.strip() for part in text.split(",")] if text else []
    if isinstance(value, (int, float, bool)):
        value = [value]  # a lone scalar is a one-item list, as `hidden=5` on the command line
    if not isinstance(value, (list, tuple, set)):
        raise _Invalid(f"must be of type {name}", "write a list like [1, 2] or 1,2")
    fixed = kind is tuple and args and not (len(args) == 2 and args[1] is Ellipsis)
    if fixed and len(value) != len(args):
        raise _Invalid(f"must be of type {name}", f"give exactly {len(args)} items")
    item_types = args if fixed else [args[0] if args else Any] * len(value)
    items = []
    for item, item_type in zip(value, item_types, strict=True):
        try:
            items.append(_coerce(item, item_type))
        except _Invalid:
            hint = f"item {item!r} is not of type {_type_name(item_type)}"
            raise _Invalid(f"must be of type {name}", hint) from None
    return kind(items)


@dataclass(frozen=True)
class _Spec:
    name: str
    type: Any
    meta: Mapping[str, Any]


def _convert(spec: _Spec, value: Any) -> Any:
    """Coerce ``value`` to the field and check its range, choices and pattern."""
    meta = spec.meta
    converter: Callable[[str], Any] | None = meta.get("converter")
    if converter is not None and isinstance(value, str):
        value = converter(value)
    value = _coerce(value, spec.type)
    if value is None:
        return value
    many = isinstance(value, (list, tuple, set))
    items = value if many else [value]
    must = "must have every item" if many else "must be"
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and any(v < lo for v in items):
        raise _Invalid(f"{must} >= {lo}", got=value)
    if hi is not None and any(v > hi for v in items):
        raise _Invalid(f"{must} <= {hi}", got=value)
    choices = meta.get("choices")
    if choices is not None and any(v not in choices for v in items):
        rule = "must be one of " + ", ".join(map(str, choices))
        raise _Invalid(rule, _did_you_mean(str(value), [str(c) for c in choices]), got=value)
    if meta.get("pattern") and not re.fullmatch(meta["pattern"], str(value)):
        examples = meta.get("pattern_examples", ())
        hint = _did_you_mean(str(value), examples) or "e.g. " + ", ".join(examples)
        raise _Invalid(f"must be {meta['pattern_rule']}", hint, got=value)
    return value


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not match:
        lowered = {o.lower(): o for o in options}
        match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
        match = [lowered[m] for m in match]
    return f"did you mean '{match[0]}'?" if match else ""


# --------------------------------------------------------------------------- schema


def _specs(cls: type) -> dict[str, _Spec]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type such as Params, got {cls!r}")
    try:
        hints = get_type_hints(cls)
    except NameError as exc:  # a string annotation naming something not importable
        raise TypeError(f"cannot resolve the type hints of {cls.__name__}: {exc}") from exc
    return {
        f.name: _Spec(f.name, hints.get(f.name, Any), f.metadata)
        for f in dataclasses.fields(cls)
        if f.init
    }


def _alias_map(specs: Mapping[str, _Spec]) -> dict[str, str]:
    return {a: s.name for s in specs.values() for a in s.meta.get("aliases", ()) or ()}


def _defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def field_names(cls: type = Params) -> list[str]:
    """Names of the settable fields of dataclass ``cls``, in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _is_bool(spec: _Spec | None) -> bool:
    return spec is not None and spec.type is bool


def _unknown(key: str, source: str, specs: Mapping[str, _Spec], aliases: Mapping[str, str]) -> str:
    msg = f"unknown parameter '{key}' (from {source})"
    match = difflib.get_close_matches(key, [*specs, *aliases], n=1, cutoff=0.6)
    if match:
        return f"{msg}; did you mean '{match[0]}'?"
    own = [n for n in specs if n not in _PARAMS_FIELDS]
    shown = [*own, *(n for n in specs if n not in own)][:8]
    return f"{msg}; valid parameters include {', '.join(shown)}, ... ({_HELP_HINT} for all)"


_Entry = tuple[str, Any, str]  # (key as given, value, source)


def _resolve(
    entries: Sequence[_Entry],
    specs: Mapping[str, _Spec],
    aliases: Mapping[str, str],
    problems: list[str],
) -> dict[str, Any]:
    """Validated values of one source, keyed by field name; problems are appended."""
    seen: dict[str, tuple[str, str]] = {}  # name -> (key as given, source)
    out: dict[str, Any] = {}
    for key, raw, source in entries:
        norm = key.replace("-", "_")
        name = norm if norm in specs else aliases.get(norm)
        if name is None:
            problems.append(_unknown(key, source, specs, aliases))
            continue
        if name in seen:
            prev_key, prev_source = seen[name]
            problems.append(
                f"'{name}' is given twice, as '{prev_key}' (from {prev_source}) and as "
                f"'{key}' (from {source}); keep one"
            )
            continue
        seen[name] = (key, source)
        try:
            out[name] = _convert(specs[name], raw)
        except _Invalid as exc:
            problems.append(exc.message(name, raw, source))
    return out


def _build(cls: type[P], layers: Sequence[Sequence[_Entry]]) -> P:
    specs = _specs(cls)
    aliases = _alias_map(specs)
    problems: list[str] = []
    values: dict[str, Any] = {}
    for entries in layers:
        values.update(_resolve(entries, specs, aliases, problems))
    for name in sorted(specs.keys() - values.keys() - _defaults(cls).keys()):
        problems.append(
            f"'{name}' is required and has no default; set it in a config file, "
            f"as {ENV_PREFIX}{name.upper()} or on the command line (--{name.replace('_', '-')})"
        )
    if problems:
        head = f"{len(problems)} problems with the parameters:\n  - " if len(problems) > 1 else ""
        raise ConfigError(head + "\n  - ".join(problems))
    try:
        obj = cls(**values)
        validate = getattr(obj, "validate", None)
        if callable(validate):
            validate()
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"invalid {cls.__name__} parameters: {exc}") from exc
    return obj


def params_from_dict(cls: type[P], data: Mapping[str, Any], *, source: str = "dict") -> P:
    """A validated ``cls`` instance from ``data`` (defaults fill the rest)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"parameters from {source} must be a mapping, got {type(data).__name__}")
    return _build(cls, [[(str(k), v, source) for k, v in data.items()]])


def params_to_dict(params: Any) -> dict[str, Any]:
    """A plain dict (lists, dicts, str, numbers, bools, None) of a params instance."""
    if not dataclasses.is_dataclass(params) or isinstance(params, type):
        raise TypeError(f"expected a dataclass instance, got {params!r}")
    return {f.name: _plain(getattr(params, f.name)) for f in dataclasses.fields(params) if f.init}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


# --------------------------------------------------------------------------- sources


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The flat ``{name: value}`` mapping in a .yaml/.yml, .toml, .json or legacy CANDLE INI
    (.ini, .cfg, .txt such as ``nt3_default_model.txt``) file. Values are not yet validated."""
    p = Path(path)
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "not found"
        raise ConfigError(f"config file '{p}' {what} (looked at {p.resolve()}); check the path")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file '{p}': {exc}") from exc
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(f"config file '{p}' is not valid YAML{where}: {problem}") from None
        data = {} if data is None else data
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            raise ConfigError(
                f"config file '{p}' is not valid JSON at {where}: {exc.msg}"
            ) from None
    elif suffix == ".toml":
        if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
            raise ConfigError(f"reading '{p}' needs Python >= 3.11 or `pip install tomli`")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file '{p}' is not valid TOML: {exc}") from None
    elif suffix in _INI_SUFFIXES:
        return _read_ini(text, p)
    else:
        raise ConfigError(
            f"config file '{p}' has an unsupported type '{suffix}'; "
            "use .yaml, .yml, .toml, .json, or .ini/.cfg/.txt for legacy CANDLE files"
        )
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"config file '{p}' must hold a mapping of parameter names to values at the top "
            f"level, got a {type(data).__name__}; write e.g. `epochs: 10`"
        )
    return {str(k): v for k, v in data.items()}


def _read_ini(text: str, path: Path) -> dict[str, Any]:
    """Legacy CANDLE ``[Section]`` / ``key = value`` files; sections are merged."""
    raw: dict[str, str] = {}
    where: dict[str, str] = {}  # key -> section it came from
    section, last = "(no section)", None
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            section, last = stripped, None
            continue
        if line[0].isspace() and last is not None and "=" not in stripped:
            raw[last] += " " + stripped  # continuation of a multi-line value
            continue
        key, eq, value = stripped.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(
                f"config file '{path}' line {lineno}: expected `key = value`, got {stripped!r}"
            )
        if key in raw:
            raise ConfigError(
                f"config file '{path}': '{key}' is set in both {where[key]} and {section} "
                f"(line {lineno}); keep one"
            )
        raw[key], where[key], last = value.strip(), section, key
    out: dict[str, Any] = {}
    for key, value in raw.items():
        parsed = _literal_text(value)
        if parsed is value:  # drop a trailing `# comment`; a bare word like sgd stays a str
            parsed = _literal_text(re.sub(r"\s+[#;].*$", "", value))
        out[key] = parsed
    return out


def _env_entries(
    env: Mapping[str, str], specs: Mapping[str, _Spec], aliases: Mapping[str, str]
) -> list[_Entry]:
    known = {n.upper(): n for n in [*specs, *aliases]}
    entries: list[_Entry] = []
    for var, value in sorted(env.items()):
        if not var.startswith(ENV_PREFIX):
            continue
        key = known.get(var[len(ENV_PREFIX) :])
        if key is not None:
            entries.append((key, value, f"environment variable {var}"))
            continue
        close = difflib.get_close_matches(var, [ENV_PREFIX + k for k in known], n=1, cutoff=0.85)
        if close:
            log.warning("ignoring %s: no such parameter; did you mean %s?", var, close[0])
    return entries


_KEY_VALUE = re.compile(r"([A-Za-z_][\w-]*)=(.*)", re.DOTALL)


def parse_argv(argv: Sequence[str], cls: type = Params) -> tuple[str | None, dict[str, str]]:
    """Split command-line tokens into (config file or None, {key: raw value}).

    Forms: ``--key value``, ``--key=value``, ``key=value``, bare ``--flag`` (true) and
    ``--no-flag`` (false) for bool fields, ``--config FILE`` and one positional config file.
    Dashes in keys become underscores; keys are not validated here (``load_params`` does).
    """
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of tokens, not a str; use shlex.split()")
    specs = _specs(cls)
    aliases = _alias_map(specs)

    def spec_of(key: str) -> _Spec | None:
        return specs.get(key) or specs.get(aliases.get(key, ""))

    config: str | None = None
    out: dict[str, str] = {}
    tokens, i = list(argv), 0

    def set_config(path: str) -> None:
        nonlocal config
        if config is not None:
            raise ConfigError(
                f"two config files on the command line: '{config}' and '{path}'; give one "
                "and pass other values as key=value"
            )
        config = path

    while i < len(tokens):
        tok, i = tokens[i], i + 1
        nxt = tokens[i] if i < len(tokens) else None
        if tok.startswith("--") and len(tok) > 2:
            key, eq, value = tok[2:].partition("=")
            key = key.replace("-", "_")
            if key in ("config", "config_file") and spec_of(key) is None:
                if not eq and nxt is None:
                    raise ConfigError(f"'{tok}' needs a file name, e.g. {tok} params.yaml")
                set_config(value if eq else tokens[i])
                i += 0 if eq else 1
                continue
            if not eq:
                if _is_bool(spec_of(key)):
                    value = "true"
                    if nxt is not None and nxt.strip().lower() in _TRUE | _FALSE:
                        value, i = nxt, i + 1
                elif key.startswith("no_") and _is_bool(spec_of(key[3:])):
                    key, value = key[3:], "false"
                elif nxt is not None and not nxt.startswith("--"):
                    value, i = nxt, i + 1
                elif spec_of(key) is None:
                    value = "true"  # unknown: load_params reports it with a suggestion
                else:
                    raise ConfigError(f"option '{tok}' needs a value: {tok} VALUE or {tok}=VALUE")
            out[key] = value
        elif match := _KEY_VALUE.fullmatch(tok):
            out[match.group(1).replace("-", "_")] = match.group(2)
        elif tok.startswith("-"):
            raise ConfigError(
                f"unrecognized option '{tok}'; write parameters as --name VALUE or name=VALUE "
                f"({_HELP_HINT})"
            )
        else:
            set_config(tok)
    return config, out


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def load_params(
    cls: type[P] = Params,  # type: ignore[assignment]
    *,
    file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    argv: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> P:
    """Build validated ``cls`` parameters from all sources.

    Precedence, lowest to highest: dataclass defaults < config file (``file=`` or one
    positional token in ``argv``) < environment ``CANDLE_<NAME>`` (``env=None`` reads
    ``os.environ``) < ``argv`` < ``overrides``. All problems are raised together as one
    :class:`ConfigError`; ``cls.validate()`` runs last.
    """
    specs = _specs(cls)
    aliases = _alias_map(specs)
    argv_file, argv_values = parse_argv(argv, cls)
    if file is not None and argv_file is not None and not _same_file(file, argv_file):
        raise ConfigError(
            f"two config files: '{file}' (file=) and '{argv_file}' (command line); give one"
        )
    path = file if file is not None else argv_file
    layers: list[list[_Entry]] = []
    if path is not None:
        layers.append([(k, v, str(path)) for k, v in read_config_file(path).items()])
    layers.append(_env_entries(os.environ if env is None else env, specs, aliases))
    layers.append([(k, v, "command line") for k, v in argv_values.items()])
    layers.append([(str(k), v, "overrides") for k, v in (overrides or {}).items()])
    return _build(cls, layers)


def save_params(params: Any, path: str | os.PathLike[str]) -> None:
    """Write ``params`` atomically as YAML (.yaml/.yml) or JSON (.json)."""
    p = Path(path)
    data = params_to_dict(params)
    suffix = p.suffix.lower()
    if suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    elif suffix in (".yaml", ".yml"):
        header = f"# {type(params).__name__} parameters written by candle\n"
        text = header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    else:
        raise ConfigError(f"save_params writes .yaml, .yml or .json files, got '{p}'")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def describe_params(cls: type = Params) -> str:
    """Help text: every field with its type, default, range or choices, aliases and help."""
    specs, defaults = _specs(cls), _defaults(cls)
    lines = [
        f"Parameters of {cls.__name__}. Set them in a config file (YAML, TOML, JSON or legacy",
        f"CANDLE INI), as {ENV_PREFIX}<NAME> environment variables, or on the command line as",
        "--name VALUE, --name=VALUE or name=VALUE (later sources win, in that order).",
        "",
    ]
    for spec in specs.values():
        meta, flag = spec.meta, "--" + spec.name.replace("_", "-")
        if _is_bool(spec):
            flag += f" / --no-{spec.name.replace('_', '-')}"
        else:
            flag += f" {_type_name(spec.type)}"
        details = [f"default: {defaults[spec.name]!r}" if spec.name in defaults else "required"]
        if meta.get("min") is not None:
            details.append(f">= {meta['min']}")
        if meta.get("max") is not None:
            details.append(f"<= {meta['max']}")
        if meta.get("choices") is not None:
            details.append("one of: " + ", ".join(map(str, meta["choices"])))
        if meta.get("aliases"):
            details.append("alias: " + ", ".join(meta["aliases"]))
        lines.append(f"  {flag}  ({'; '.join(details)})")
        if meta.get("help"):
            lines.append(f"      {meta['help']}")
    return "\n".join(lines)


_PARAMS_FIELDS = frozenset(field_names(Params))
