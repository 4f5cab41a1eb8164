"""Plan files: which subsets to train on, as sections of a study file.

A plan is a workflow study file (``candle.workflow.study``: name, trainer, directory, params,
resources, executor, retries, time_limit) whose trainer is a :class:`~candle.tda.TDATrainer`,
plus a ``data`` section and one or more plan sections::

    data: {splits: 1, test_fraction: 0.2, val_fraction: 0.1}   # fixed per-group splits
    learning_curve:
      groups: [a, b]              # train and test on these groups' rows (default: all)
      sizes: {min: 20, count: 5, spacing: log}   # max: default the training pool; or a list
      repeats: 3                  # different subsets (subset_seed) and seeds per size
      metric: mse                 # fitted: a lower-is-better metric (default mse / log_loss)
      ci: covariance              # or bootstrap (over repeats); level: 0.95
      flatten_gain: 0.01          # flat where doubling n gains < 1 % (candle.tda.fit)
    cross_study: {groups: [a, b, c], repeats: 1, train_size: 0}   # train on each, test on all
    logo: {groups: [a, b, c], repeats: 1}                        # leave one group out
    transfer:
      source: [a, b]
      target: c
      sizes: [10, 20, 40]         # target rows to fine-tune on (same forms as above)
      repeats: 2
      finetune: {learning_rate: 0.001}   # params of the fine-tune trials only
    compare:
      models: {linear: {hidden: 0}, mlp: {hidden: 32}}   # named parameter sets
      groups: [a, b]              # train on these groups' pool and test on their test rows
      train_size: 0
      repeats: 1

Every trial of every section is planned here (:func:`plan_trials`), after the trainer's data
has been loaded once in the driver to learn the groups and their pool sizes, so a bad group
name or size fails before any trial starts.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from candle.errors import ConfigError
from candle.tda._splits import split_groups
from candle.tda.metrics import LOWER_IS_BETTER, metric_names
from candle.workflow.study import StudyConfig, load_study_config, read_study_file

__all__ = ["SECTIONS", "PlannedTrial", "TDAPlan", "load_plan", "plan_trials"]

SECTIONS = ("learning_curve", "cross_study", "logo", "transfer", "compare")
_SECTION_KEYS = {
    "learning_curve": {"groups", "sizes", "repeats", "metric", "ci", "level", "flatten_gain"},
    "cross_study": {"groups", "repeats", "train_size"},
    "logo": {"groups", "repeats"},
    "transfer": {"source", "target", "sizes", "repeats", "finetune", "metric"},
    "compare": {"models", "groups", "train_size", "repeats"},
}
_DATA_KEYS = {"splits", "test_fraction", "val_fraction"}
_PLANNED = ("split_seed", "train_groups", "train_size", "subset_seed", "init_from")


@dataclass
class PlannedTrial:
    key: str
    params: dict[str, Any]
    extra: dict[str, Any]  # section, split, repeat, size, arm, train, model
    after: str | None = None  # key of the trial whose checkpoint init_from must point to


@dataclass
class TDAPlan:
    study: StudyConfig
    sections: dict[str, dict[str, Any]]
    data: dict[str, Any]
    resolved: dict[str, Any] = field(default_factory=dict)  # filled by plan_trials

    @property
    def where(self) -> str:
        return self.study.source


def _unknown(where: str, given: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}{hint}; known: {', '.join(sorted(known))}"
        )


def _int(where: str, value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{where} must be an integer >= {low}, got {value!r}")
    return value


def load_plan(config: str | os.PathLike | Mapping[str, Any]) -> TDAPlan:
    """Split a plan file into the engine's study and the plan sections; check both (the parts
    that need no data: the data-dependent checks are in :func:`plan_trials`)."""
    data, source = read_study_file(config, "plan")
    where = str(source or "plan")
    sections = {k: data.pop(k) for k in list(data) if k in SECTIONS}
    data_section = data.pop("data", None) or {}
    for key in ("grid", "trials", "repeats"):
        if key in data:
            raise ConfigError(
                f"{where}: `{key}` belongs to plain studies; a plan's trials come from its "
                f"sections ({', '.join(SECTIONS)})"
            )
    study = load_study_config(data)  # unknown top-level keys are reported here
    if source is not None:
        study.source = where
    if not sections:
        raise ConfigError(f"{where}: a plan needs at least one of {', '.join(SECTIONS)}")
    if not isinstance(data_section, dict):
        raise ConfigError(f"{where}: `data` must be a mapping")
    _unknown(f"{where}: data", data_section, _DATA_KEYS)
    clash = sorted(set(study.params) & (set(_PLANNED) | {"test_fraction", "val_fraction"}))
    if clash:
        raise ConfigError(
            f"{where}: params.{clash[0]} is set by the plan for every trial; remove it from "
            "`params` (test_fraction and val_fraction go in `data:`)"
        )
    d = {
        "splits": _int(f"{where}: data.splits", data_section.get("splits", 1), 1),
        "test_fraction": float(data_section.get("test_fraction", 0.2)),
        "val_fraction": float(data_section.get("val_fraction", 0.1)),
    }
    if not (0 < d["test_fraction"] < 1 and 0 <= d["val_fraction"] < 1):
        raise ConfigError(
            f"{where}: data.test_fraction must be in (0, 1) and data.val_fraction in [0, 1), "
            f"got {d['test_fraction']} and {d['val_fraction']}"
        )
    if d["test_fraction"] + d["val_fraction"] >= 1:
        raise ConfigError(f"{where}: data.test_fraction + data.val_fraction must be < 1")
    checked = {}
    for name, section in sections.items():
        at = f"{where}: {name}"
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise ConfigError(f"{at} must be a mapping, got {section!r}")
        _unknown(at, section, _SECTION_KEYS[name])
        section = dict(section)
        section["repeats"] = _int(f"{at}.repeats", section.get("repeats", 1), 1)
        if "train_size" in section:
            _int(f"{at}.train_size", section["train_size"], 0)
        checked[name] = section
    if "transfer" in checked:
        t = checked["transfer"]
        for key in ("source", "target", "sizes"):
            if key not in t:
                raise ConfigError(f"{where}: transfer.{key} is required")
        if not isinstance(t.get("finetune", {}), dict):
            raise ConfigError(f"{where}: transfer.finetune must be a mapping of params")
    if "learning_curve" in checked and "sizes" not in checked["learning_curve"]:
        raise ConfigError(f"{where}: learning_curve.sizes is required")
    if "compare" in checked:
        models = checked["compare"].get("models")
        if not isinstance(models, dict) or not models:
            raise ConfigError(
                f"{where}: compare.models must map model names to params, e.g. "
                "{small: {hidden: 8}, large: {hidden: 64}}"
            )
        for name, params in models.items():
            if not isinstance(params, dict):
                raise ConfigError(f"{where}: compare.models.{name} must be a mapping of params")
    lc = checked.get("learning_curve", {})
    if lc.get("ci", "covariance") not in ("covariance", "bootstrap"):
        raise ConfigError(
            f"{where}: learning_curve.ci must be covariance or bootstrap, got {lc['ci']!r}"
        )
    gain = lc.get("flatten_gain", 0.01)
    if not isinstance(gain, int | float) or not 0 < gain < 1:
        raise ConfigError(f"{where}: learning_curve.flatten_gain must be in (0, 1), got {gain!r}")
    level = lc.get("level", 0.95)
    if not isinstance(level, int | float) or not 0 < level < 1:
        raise ConfigError(f"{where}: learning_curve.level must be in (0, 1), got {level!r}")
    return TDAPlan(study=study, sections=checked, data=d)


# --------------------------------------------------------------------------- planning


def _groups(where: str, value: Any, known: list[str], default: list[str]) -> list[str]:
    if value is None or value == "all":
        return list(default)
    if isinstance(value, str | int):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a list of group names or 'all', got {value!r}")
    names = [str(v) for v in value]
    unknown = [g for g in names if g not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{where}: unknown group {unknown[0]!r}{hint}; the data's groups are {', '.join(known)}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"{where} lists a group twice: {names}")
    return names


def _sizes(where: str, spec: Any, pool: int) -> list[int]:
    """Training sizes from a list or {min, max, count, spacing}; each in [1, pool]."""
    if isinstance(spec, list):
        sizes = spec
    elif isinstance(spec, dict):
        _unknown(where, spec, {"min", "max", "count", "spacing"})
        low = _int(f"{where}.min", spec.get("min"), 1)
        high = _int(f"{where}.max", spec.get("max", pool), 1)
        count = _int(f"{where}.count", spec.get("count", 5), 2)
        spacing = spec.get("spacing", "log")
        if spacing not in ("log", "linear"):
            raise ConfigError(f"{where}.spacing must be log or linear, got {spacing!r}")
        if low >= high:
            raise ConfigError(f"{where}: min ({low}) must be < max ({high})")
        values = (
            np.geomspace(low, high, count) if spacing == "log" else np.linspace(low, high, count)
        )
        sizes = sorted({round(float(v)) for v in values})
    else:
        raise ConfigError(f"{where} must be a list of sizes or {{min, max, count, spacing}}")
    for s in sizes:
        _int(f"{where} (each size)", s, 1)
    bad = [s for s in sizes if s > pool]
    if bad:
        raise ConfigError(
            f"{where}: size {bad[0]} is more than the {pool} training rows available; use sizes "
            f"<= {pool} (or lower data.test_fraction / val_fraction)"
        )
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"{where} lists a size twice: {sizes}")
    return sorted(sizes)


def plan_trials(
    plan: TDAPlan, groups: np.ndarray, task: str, labels: np.ndarray | None = None
) -> list[PlannedTrial]:
    """Every trial of the plan, given the data's group labels (``n``), task and class labels
    (``n``, classification: the splits are stratified). Fills ``plan.resolved`` (group lists,
    sizes, metrics) for the analysis."""
    where, d = plan.where, plan.data
    splits = split_groups(groups, 0, d["test_fraction"], d["val_fraction"], labels)
    known = list(splits)
    pool = {g: int(s.train.size) for g, s in splits.items()}
    base_seed = int(plan.study.params.get("seed", 0))
    default_metric = "mse" if task == "regression" else "log_loss"
    out: list[PlannedTrial] = []
    resolved: dict[str, Any] = {"task": task, "groups": known, "data": dict(d)}

    def add(key: str, params: dict[str, Any], extra: dict[str, Any], after: str | None = None):
        out.append(PlannedTrial(key, params, extra, after))

    def metric(section: str, value: Any) -> str:
        value = value or default_metric
        if value not in metric_names(task) or not LOWER_IS_BETTER[value]:
            fits = [m for m in metric_names(task) if LOWER_IS_BETTER[m]]
            raise ConfigError(
                f"{where}: {section}.metric must be a lower-is-better {task} metric "
                f"({', '.join(fits)}), got {value!r}"
            )
        return value

    s = plan.sections
    if "transfer" in s:  # pretraining first: the fine-tune trials wait for it
        t = s["transfer"]
        at = f"{where}: transfer"
        source = _groups(f"{at}.source", t["source"], known, known)
        target = _groups(f"{at}.target", t["target"], known, known)
        if len(target) != 1:
            raise ConfigError(f"{at}.target must be one group, got {target}")
        target_name = target[0]
        if target_name in source:
            raise ConfigError(f"{at}: target {target_name!r} is also a source group")
        sizes = _sizes(f"{at}.sizes", t["sizes"], pool[target_name])
        finetune = dict(t.get("finetune") or {})
        clash = sorted(set(finetune) & set(_PLANNED))
        if clash:
            raise ConfigError(f"{at}.finetune.{clash[0]} is set by the plan; remove it")
        resolved["transfer"] = {
            "source": source,
            "target": target_name,
            "sizes": sizes,
            "repeats": t["repeats"],
            "metric": metric("transfer", t.get("metric")),
        }
        for split in range(d["splits"]):
            pre = f"tf/s{split}/pre"
            extra = {"section": "transfer", "split": split, "repeat": 0, "arm": "pretrained"}
            add(pre, {"split_seed": split, "train_groups": source, "seed": base_seed}, extra)
            for size in sizes:
                for r in range(t["repeats"]):
                    common = {
                        "split_seed": split,
                        "train_groups": [target_name],
                        "train_size": size,
                        "subset_seed": r,
                        "seed": base_seed + r,
                    }
                    extra = {"section": "transfer", "split": split, "repeat": r, "size": size}
                    add(
                        f"tf/s{split}/ft/n{size}/r{r}",
                        {**finetune, **common, "init_from": ""},
                        {**extra, "arm": "finetune"},
                        after=pre,
                    )
                    add(f"tf/s{split}/scratch/n{size}/r{r}", common, {**extra, "arm": "scratch"})
    if "learning_curve" in s:
        lc = s["learning_curve"]
        at = f"{where}: learning_curve"
        names = _groups(f"{at}.groups", lc.get("groups"), known, known)
        sizes = _sizes(f"{at}.sizes", lc["sizes"], sum(pool[g] for g in names))
        resolved["learning_curve"] = {
            "groups": names,
            "sizes": sizes,
            "repeats": lc["repeats"],
            "metric": metric("learning_curve", lc.get("metric")),
            "ci": lc.get("ci", "covariance"),
            "level": float(lc.get("level", 0.95)),
            "flatten_gain": float(lc.get("flatten_gain", 0.01)),
        }
        for split in range(d["splits"]):
            for size in sizes:
                for r in range(lc["repeats"]):
                    params = {
                        "split_seed": split,
                        "train_groups": names,
                        "train_size": size,
                        "subset_seed": r,
                        "seed": base_seed + r,
                    }
                    extra = {"section": "learning_curve", "split": split, "repeat": r}
                    add(f"lc/s{split}/n{size}/r{r}", params, {**extra, "size": size})
    for section, prefix in (("cross_study", "cs"), ("logo", "logo")):
        if section not in s:
            continue
        c = s[section]
        names = _groups(f"{where}: {section}.groups", c.get("groups"), known, known)
        if len(names) < 2:
            raise ConfigError(f"{where}: {section} needs >= 2 groups, got {names}")
        size = int(c.get("train_size", 0))
        for g in names:
            if size > pool[g]:
                raise ConfigError(
                    f"{where}: {section}.train_size={size} is more than group {g!r}'s "
                    f"{pool[g]} training rows"
                )
        resolved[section] = {"groups": names, "repeats": c["repeats"], "train_size": size}
        for split in range(d["splits"]):
            for g in names:
                train = [g] if section == "cross_study" else [h for h in names if h != g]
                for r in range(c["repeats"]):
                    params = {
                        "split_seed": split,
                        "train_groups": train,
                        "subset_seed": r,
                        "seed": base_seed + r,
                    }
                    if size:
                        params["train_size"] = size
                    extra = {"section": section, "split": split, "repeat": r, "group": g}
                    add(f"{prefix}/s{split}/{g}/r{r}", params, extra)
    if "compare" in s:
        c = s["compare"]
        names = _groups(f"{where}: compare.groups", c.get("groups"), known, known)
        size = int(c.get("train_size", 0))
        if size > sum(pool[g] for g in names):
            raise ConfigError(f"{where}: compare.train_size={size} is more than the pool")
        models = {str(k): dict(v) for k, v in c["models"].items()}
        for name, params in models.items():
            clash = sorted(set(params) & set(_PLANNED))
            if clash:
                raise ConfigError(f"{where}: compare.models.{name}.{clash[0]} is set by the plan")
        resolved["compare"] = {
            "groups": names,
            "models": models,
            "repeats": c["repeats"],
            "train_size": size,
        }
        for split in range(d["splits"]):
            for name, model_params in models.items():
                for r in range(c["repeats"]):
                    params = {
                        **model_params,
                        "split_seed": split,
                        "train_groups": names,
                        "train_size": size,
                        "subset_seed": r,
                        "seed": base_seed + r,
                    }
                    extra = {"section": "compare", "split": split, "repeat": r, "model": name}
                    add(f"cmp/s{split}/{name}/r{r}", params, extra)
    plan.resolved = resolved
    return out
