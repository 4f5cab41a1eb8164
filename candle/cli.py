"""``python -m candle``: the command line.

    python -m candle train --trainer MODULE:CLASS [CONFIG_FILE] [--key value | key=value ...]
    python -m candle train --trainer path/to/file.py:CLASS --help     (lists the parameters)

Exit status of ``train``: 0 completed, 1 failed, 2 bad configuration, 75 interrupted by the
time limit (resume with ``resume=true`` to continue; 75 is EX_TEMPFAIL, "try again").
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from candle.errors import CandleError, ConfigError

__all__ = ["EXIT_CONFIG", "EXIT_INTERRUPTED", "import_trainer", "main"]

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 75

USAGE = """\
usage: python -m candle <command> [options]

commands:
  train   train a Trainer subclass:
          python -m candle train --trainer MODULE:CLASS [CONFIG] [--key value | key=value ...]
          (MODULE may be a dotted module name or a path to a .py file; add --help to list
          the Trainer's parameters)
  data    HDF5 shard datasets: pack INPUT --out DIR, verify DIR, info DIR, split DIR
          (python -m candle data --help)
  study   run a study (many trials in parallel, recorded in DIR/study.db):
          python -m candle study STUDY.yaml [--resume] [--slots N] [--executor local|parsl
          --site local|slurm|pbs | --parsl-config FILE.py]
  runs    query a study: list DIR, show DIR TRIAL_ID, export DIR --out FILE.csv|.parquet

Parameters come from, lowest to highest precedence: the params class's defaults, the CONFIG
file (YAML, TOML, JSON or a CANDLE *_default_model.txt), CANDLE_<NAME> environment variables,
and the command line.
"""


def import_trainer(spec: str) -> type:
    """Import ``module:Class`` or ``path/to/file.py:Class`` and check it is a Trainer subclass."""
    from candle.trainer import Trainer

    if ":" not in spec:  # a registered model name such as nt3
        from candle.registry import trainer_path

        spec = trainer_path(spec)
    module_name, sep, class_name = spec.rpartition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError(
            f"--trainer {spec!r} must look like 'package.module:ClassName' or 'file.py:ClassName'"
        )
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"--trainer {spec!r}: file {path} does not exist")
            name = f"_candle_user_{path.stem}"
            mod_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = module  # dataclasses and pickling look the module up by name
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"--trainer {spec!r}: cannot import {module_name!r}: {e}") from e
    cls = getattr(module, class_name, None)
    if cls is None:
        found = sorted(
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and issubclass(v, Trainer) and v is not Trainer
        )
        raise ConfigError(
            f"--trainer {spec!r}: {module_name} has no class {class_name!r}"
            + (f"; Trainer subclasses there: {', '.join(found)}" if found else "")
        )
    if not (isinstance(cls, type) and issubclass(cls, Trainer)):
        raise ConfigError(f"--trainer {spec!r}: {class_name} is not a subclass of candle.Trainer")
    return cls


def _split_trainer_arg(argv: list[str]) -> tuple[str | None, bool, list[str]]:
    trainer, want_help, rest = None, False, []
    it = iter(argv)
    for tok in it:
        if tok == "--trainer":
            trainer = next(it, None)
        elif tok.startswith("--trainer="):
            trainer = tok.split("=", 1)[1]
        elif tok in ("-h", "--help"):
            want_help = True
        else:
            rest.append(tok)
    return trainer, want_help, rest


def _train(argv: list[str]) -> int:
    from candle.config import describe_params, load_params

    spec, want_help, rest = _split_trainer_arg(argv)
    if spec is None:
        if want_help:
            print(USAGE)
            return 0
        raise ConfigError(
            "train needs --trainer MODULE:CLASS (for example examples/quickstart.py:BreastCancer)"
        )
    cls = import_trainer(spec)
    if want_help:
        print(f"parameters of {cls.__name__} ({cls.params_class.__name__}):\n")
        print(describe_params(cls.params_class))
        return 0
    params = load_params(cls.params_class, argv=rest)
    trainer = cls(params)
    try:
        result = trainer.fit()
    finally:
        trainer.strategy.shutdown()
    if not trainer.strategy.is_main:
        return EXIT_INTERRUPTED if result.status == "interrupted" else 0
    shown = ", ".join(f"{k}={v:.4g}" for k, v in result.last_metrics.items() if k != "epoch")
    print(f"{result.status} ({result.stop_reason}) after {len(result.history)} epochs: {shown}")
    if result.objective is not None:
        print(f"best {result.monitor} = {result.objective:.6g} at epoch {result.best_epoch}")
    print(f"run directory: {result.run_dir}")
    print(f"TensorBoard:   tensorboard --logdir {result.run_dir.parent}")
    return EXIT_INTERRUPTED if result.status == "interrupted" else 0


def _study(argv: list[str]) -> int:
    import argparse

    from candle.workflow.executors import add_executor_arguments, executor_from_arguments
    from candle.workflow.study import Study, load_study_config

    ap = argparse.ArgumentParser(
        prog="python -m candle study", description="Run a study: many trials, in parallel."
    )
    ap.add_argument("study", help="study file (YAML, JSON or TOML)")
    ap.add_argument("--resume", action="store_true", help="continue the study in its directory")
    add_executor_arguments(ap)
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    cfg = load_study_config(args.study)
    executor = executor_from_arguments(args, cfg.executor)
    cfg.executor = executor
    summary = Study(cfg, resume=args.resume, progress=not args.quiet).run()
    counts = ", ".join(f"{n} {status}" for status, n in summary.counts.items() if n)
    print(f"study {cfg.name}: {counts or 'no trials'} in {summary.wall_s:.1f} s")
    if summary.best is not None:
        print(
            f"best: trial {summary.best.trial_id} objective {summary.best.objective:.6g} "
            f"params {summary.best.params}"
        )
    print(
        f"store: {summary.directory / 'study.db'} (python -m candle runs list {summary.directory})"
    )
    return 0 if summary.counts.get("done", 0) else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "train":
            return _train(rest)
        if command == "data":
            from candle.data._cli import main as data_main

            return data_main(rest)
        if command == "study":
            return _study(rest)
        if command == "runs":
            from candle.workflow._runs_cli import main as runs_main

            return runs_main(rest)
        raise ConfigError(
            f"unknown command {command!r}; commands: train, data, study, runs (see --help)"
        )
    except ConfigError as e:
        print(f"candle: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except CandleError as e:
        print(f"candle: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
