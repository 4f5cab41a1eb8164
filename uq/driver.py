"""A UQ study: ensemble members (and sensitivity sweeps) as trials on the workflow engine.

The study file is a workflow study (``candle.workflow.study``: trainer, params, resources,
executor, retries, time_limit, directory) plus::

    ensemble:
      kind: seeds            # seeds | bootstrap | mc_dropout | search
      members: 5             # M (for mc_dropout: 1 network, `samples` passes)
      samples: 20            # mc_dropout: stochastic passes at prediction
      search: {study: studies/my-search, top: 10, select: greedy}   # kind: search
    levels: [0.5, 0.8, 0.9, 0.95, 0.99]   # interval levels reported
    interval: 0.95                        # the level of the intervals in predictions.csv
    recalibration: [variance, isotonic, conformal]   # classification: [temperature]
    sensitivity:                          # optional: ensembles on perturbed training data
      members: 3                          # default: ensemble.members
      label_noise: [0.1, 0.3, 1.0]        # in target standard deviations (regression)
      feature_noise: [0.1, 0.5]           # in feature standard deviations
      label_flip: [0.1, 0.3]              # fraction of labels flipped (classification)
      subsample: [0.5, 0.25]              # fraction of the training split kept
      bootstrap: true                     # also: bootstrap members at every level

The Trainer must be a :class:`~candle.uq.member.UQTrainer`. Members differ by ``seed``
(kind seeds), by ``data_seed`` with ``bootstrap: true`` (kind bootstrap, different seeds too),
or by configuration: kind search takes the ``top`` best done trials of an earlier search's
store (their parameters over the search file's ``params``, over this file's) and either keeps
the best ``members`` (``select: top``) or chooses ``members`` of them greedily, with
replacement, by the validation NLL of the growing ensemble (``select: greedy``, Caruana et al.
2004). Trial keys: ``m<i>`` (members), ``c<trial id>`` (search candidates) and
``<perturbation>=<level>/m<i>`` (sensitivity).

After the trials, :func:`candle.uq.analysis.analyze` combines the members' predictions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from candle.errors import ConfigError
from candle.workflow.store import Store, TrialRecord
from candle.workflow.study import (
    ListSource,
    Proposal,
    Study,
    StudyConfig,
    StudySummary,
    load_study_config,
    read_study_file,
)

__all__ = ["UQConfig", "UQSource", "load_uq_config", "run_uq"]

_UQ_KEYS = {"ensemble", "levels", "interval", "recalibration", "sensitivity"}
KINDS = ("seeds", "bootstrap", "mc_dropout", "search")
PERTURBATIONS = ("label_noise", "feature_noise", "label_flip", "subsample")
RECALIBRATIONS = ("variance", "isotonic", "conformal", "temperature")
# parameters of a search trial that belong to that trial's run, not to an ensemble member
_RUN_KEYS = ("run_id", "run_dir", "output_dir", "resume", "stop_at_epoch", "experiment")


def _keys(where: str, section: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: {section}: unknown key(s) {', '.join(unknown)} (allowed: "
            f"{', '.join(sorted(allowed))})"
        )


def _levels(where: str, key: str, values: Any) -> list[float]:
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(f"{where}: {key} must be a non-empty list of levels, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ConfigError(f"{where}: {key}: every level must be in (0, 1), got {v!r}")
        out.append(float(v))
    return sorted(set(out))


class UQConfig:
    """The UQ sections of a study file, checked (see the module docstring)."""

    def __init__(self, data: Mapping[str, Any], study: StudyConfig):
        where = self.where = study.source
        self.study = study
        ens = dict(data.get("ensemble") or {})
        _keys(where, "ensemble", ens, {"kind", "members", "samples", "search"})
        self.kind = ens.get("kind", "seeds")
        if self.kind not in KINDS:
            raise ConfigError(
                f"{where}: ensemble.kind must be one of {', '.join(KINDS)}, got {self.kind!r}"
            )
        self.members = ens.get("members", 1 if self.kind == "mc_dropout" else 5)
        if not isinstance(self.members, int) or isinstance(self.members, bool) or self.members < 1:
            raise ConfigError(
                f"{where}: ensemble.members must be an integer >= 1, got {self.members!r}"
            )
        self.samples = ens.get("samples", 20 if self.kind == "mc_dropout" else 0)
        if not isinstance(self.samples, int) or self.samples < 0:
            raise ConfigError(f"{where}: ensemble.samples must be an integer >= 0")
        if self.kind == "mc_dropout" and self.samples < 2:
            raise ConfigError(f"{where}: ensemble.samples must be >= 2 for kind mc_dropout")
        search = dict(ens.get("search") or {})
        if self.kind == "search":
            _keys(where, "ensemble.search", search, {"study", "top", "select"})
            if "study" not in search:
                raise ConfigError(
                    f"{where}: ensemble.kind search needs ensemble.search.study (the directory "
                    "of an earlier search)"
                )
        elif search:
            raise ConfigError(f"{where}: ensemble.search is only read with kind: search")
        self.search_study = str(search.get("study", ""))
        self.search_top = int(search.get("top", self.members))
        self.search_select = search.get("select", "top")
        if self.search_select not in ("top", "greedy"):
            raise ConfigError(
                f"{where}: ensemble.search.select must be top or greedy, got {self.search_select!r}"
            )
        if self.kind == "search" and self.search_select == "top":
            self.search_top = max(self.search_top, self.members)
        self.levels = _levels(where, "levels", data.get("levels", [0.5, 0.8, 0.9, 0.95, 0.99]))
        self.interval = float(data.get("interval", 0.95))
        if not 0 < self.interval < 1:
            raise ConfigError(f"{where}: interval must be in (0, 1), got {self.interval!r}")
        if self.interval not in self.levels:
            self.levels = sorted({*self.levels, self.interval})
        recal = data.get("recalibration")
        self.recalibration = None if recal is None else list(recal)
        for r in self.recalibration or []:
            if r not in RECALIBRATIONS:
                raise ConfigError(
                    f"{where}: recalibration: unknown method {r!r} (choose from "
                    f"{', '.join(RECALIBRATIONS)})"
                )
        sens = dict(data.get("sensitivity") or {})
        _keys(where, "sensitivity", sens, {*PERTURBATIONS, "members", "bootstrap"})
        self.sensitivity_members = int(sens.pop("members", min(self.members, 5)))
        self.sensitivity_bootstrap = bool(sens.pop("bootstrap", False))
        self.sensitivity: dict[str, list[float]] = {}
        for name, values in sens.items():
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"{where}: sensitivity.{name} must be a non-empty list")
            for v in values:
                bad = isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0
                if bad or (name in ("label_flip", "subsample") and v > 1):
                    raise ConfigError(
                        f"{where}: sensitivity.{name}: levels must be numbers "
                        f"{'in [0, 1]' if name in ('label_flip', 'subsample') else '>= 0'}, "
                        f"got {v!r}"
                    )
                if name == "subsample" and v == 0:
                    raise ConfigError(f"{where}: sensitivity.subsample: 0 keeps no data")
            self.sensitivity[name] = [float(v) for v in values]

    def to_dict(self) -> dict[str, Any]:
        """What goes into the study's stored config (read back by ``report``)."""
        ensemble: dict[str, Any] = {"kind": self.kind, "members": self.members}
        if self.samples:
            ensemble["samples"] = self.samples
        if self.kind == "search":
            ensemble["search"] = {
                "study": self.search_study,
                "top": self.search_top,
                "select": self.search_select,
            }
        sensitivity: dict[str, Any] = dict(self.sensitivity)
        if sensitivity:
            sensitivity["members"] = self.sensitivity_members
            sensitivity["bootstrap"] = self.sensitivity_bootstrap
        return {
            "ensemble": ensemble,
            "levels": self.levels,
            "interval": self.interval,
            "recalibration": self.recalibration,
            "sensitivity": sensitivity,
        }


def load_uq_config(config: str | os.PathLike | Mapping[str, Any]) -> UQConfig:
    """Split a UQ study file into the engine's part and the UQ part; check both."""
    data, source = read_study_file(config, "UQ study")
    uq = {k: data.pop(k) for k in list(data) if k in _UQ_KEYS}
    for key in ("grid", "trials", "repeats", "segment_epochs"):
        if key in data:
            raise ConfigError(
                f"{source or 'uq'}: `{key}` belongs to plain studies; a UQ study makes its trials "
                "from `ensemble` and `sensitivity`"
            )
    study = load_study_config(data)
    if source is not None:
        study.source = str(source)
    cfg = UQConfig(uq, study)
    study.extra = {"uq": cfg.to_dict()}
    return cfg


class UQSource(ListSource):
    """The engine's trial source for a UQ study: a fixed list of members, each run once."""

    def __init__(self, cfg: UQConfig):
        self.cfg = cfg
        super().__init__(self._members())

    def _members(self) -> list[Proposal]:
        cfg, base = self.cfg, int(self.cfg.study.params.get("seed", 0))
        out: list[Proposal] = []
        if cfg.kind == "search":
            for rank, (rec, params) in enumerate(self.search_candidates()):
                extra = {"role": "candidate", "rank": rank, "search_objective": rec.objective}
                out.append(Proposal(params, key=f"c{rec.trial_id}", extra=extra))
        else:
            for i in range(cfg.members):
                params: dict[str, Any] = {"seed": base + i}
                if cfg.kind == "bootstrap":
                    params.update(bootstrap=True, data_seed=i)
                if cfg.kind == "mc_dropout":
                    params["mc_samples"] = cfg.samples
                out.append(Proposal(params, key=f"m{i}", extra={"role": "member"}))
        for name, levels in cfg.sensitivity.items():
            for level in levels:
                for i in range(cfg.sensitivity_members):
                    # same seeds and data seeds at every level: only the perturbation changes
                    params = {"seed": base + i, name: level, "data_seed": i}
                    if cfg.sensitivity_bootstrap:
                        params["bootstrap"] = True
                    out.append(
                        Proposal(
                            params,
                            key=f"{name}={level:g}/m{i}",
                            extra={"role": "sensitivity", "perturbation": name, "level": level},
                        )
                    )
        return out

    def search_candidates(self) -> list[tuple[TrialRecord, dict[str, Any]]]:
        """The ``top`` best done trials of the search, with the parameters each member gets."""
        cfg = self.cfg
        db = Path(cfg.search_study) / "study.db"
        if not db.exists():
            raise ConfigError(f"{cfg.where}: ensemble.search.study: no study store at {db}")
        with Store(db, readonly=True) as store:
            study = store.study(store.study_id())
            config = study["config"]
            mode = (config.get("objective") or {}).get("mode", "min")
            done = [t for t in store.trials(status="done") if t.objective is not None]
        if not done:
            raise ConfigError(
                f"{cfg.where}: ensemble.search.study {cfg.search_study} has no done trial with an "
                "objective"
            )
        done.sort(key=lambda t: t.objective if mode == "min" else -t.objective)
        base = {k: v for k, v in (config.get("params") or {}).items() if k not in _RUN_KEYS}
        out = []
        for t in done[: cfg.search_top]:
            params = {**base, **{k: v for k, v in t.params.items() if k not in _RUN_KEYS}}
            out.append((t, params))
        return out


def run_uq(
    config: str | os.PathLike | Mapping[str, Any],
    *,
    resume: bool = False,
    progress: bool = True,
    executor: Any = None,
    executor_override: dict[str, Any] | None = None,
) -> StudySummary:
    """Load, check and train a UQ study's members; -> the engine's summary.

    :func:`candle.uq.analysis.analyze` then turns the members' predictions into metrics.
    """
    from candle.cli import import_trainer
    from candle.uq.member import UQTrainer
    from candle.workflow.study import resolve_trainer

    cfg = load_uq_config(config)
    study_cfg = cfg.study
    if executor_override:
        study_cfg.executor = executor_override
    study_cfg.trainer = resolve_trainer(study_cfg, workflow="uq")  # nt3: its UQ member
    cls = import_trainer(study_cfg.trainer)
    if not (isinstance(cls, type) and issubclass(cls, UQTrainer)):
        raise ConfigError(
            f"{study_cfg.source}: trainer {study_cfg.trainer!r} is not a candle.uq.UQTrainer; "
            "UQ members must predict a distribution (subclass UQTrainer, see candle.uq.member)"
        )
    head = {**study_cfg.params}.get("head", cls.params_class().head)
    if head == "classification" and "label_noise" in cfg.sensitivity:
        raise ConfigError(
            f"{study_cfg.source}: sensitivity.label_noise applies to regression; use label_flip "
            "for a classification head"
        )
    if head != "classification" and "label_flip" in cfg.sensitivity:
        raise ConfigError(
            f"{study_cfg.source}: sensitivity.label_flip applies to classification; use "
            "label_noise for a regression head"
        )
    source = UQSource(cfg)
    study = Study(study_cfg, source=source, executor=executor, resume=resume, progress=progress)
    return study.run()
