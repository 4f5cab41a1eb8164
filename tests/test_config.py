"""Tests of candle.config: typed parameters from defaults, files, environment and argv."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from candle.config import (
    Params,
    describe_params,
    field_names,
    load_params,
    param,
    params_from_dict,
    params_to_dict,
    parse_argv,
    parse_duration,
    read_config_file,
    save_params,
)
from candle.errors import CandleError, ConfigError


@dataclass
class MyParams(Params):
    hidden: list[int] = param([64, 32], min=1, help="hidden layer widths")
    dropout: float = param(0.1, min=0.0, max=1.0, aliases=("drop",))
    names: list[str] = param(["a"])
    scale: float | None = None
    mode: Literal["fast", "slow"] = "fast"
    shape: tuple[int, int] = (2, 3)
    extra: dict[str, Any] = param({})


@dataclass
class NT3Params(Params):
    data_url: str = ""
    train_data: str = ""
    model_name: str = ""
    conv: list[int] = param([])
    dense: list[int] = param([])
    activation: str = "relu"
    out_activation: str = "softmax"
    loss: str = "mse"
    metrics: str = "accuracy"
    dropout: float = param(0.0, min=0.0, max=1.0)
    classes: int = param(2, min=1)
    pool: list[int] = param([])
    save_path: str = ""
    timeout: int = param(-1)


@dataclass
class CheckedParams(Params):
    low: int = 0
    high: int = 10

    def validate(self) -> None:
        if self.low > self.high:
            raise ConfigError(f"'low' ({self.low}) must not exceed 'high' ({self.high})")


@dataclass
class PlainValueErrorParams(Params):
    def validate(self) -> None:
        if self.epochs == 7:
            raise ValueError("seven epochs are unlucky")


NT3_INI = """\
[Global_Params]
data_url = 'ftp://ftp.mcs.anl.gov/pub/candle/public/benchmarks/Pilot1/normal-tumor/'
train_data = 'nt_train2.csv'
model_name = 'nt3'
conv=[128, 20, 1, 128, 10, 1]
dense=[200,20]
activation='relu'
out_activation='softmax'
loss='categorical_crossentropy'
optimizer='sgd'
metrics='accuracy'
epochs=400
batch_size=20
learning_rate=0.001
dropout=0.1
classes=2
pool=[1, 10]
save_path='save/'
timeout=3600
"""


def load(cls: type = Params, **kw: Any) -> Any:
    kw.setdefault("env", {})
    return load_params(cls, **kw)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- defaults, files


def test_defaults_and_field_names() -> None:
    p = load()
    assert p == Params()
    assert (p.epochs, p.batch_size, p.learning_rate, p.optimizer) == (10, 32, 1e-3, "adam")
    assert p.device == "auto" and p.deterministic is True and p.time_limit == 0.0
    assert field_names(Params)[:4] == ["experiment", "run_id", "output_dir", "run_dir"]
    assert "learning_rate" in field_names(Params) and "lr" not in field_names(Params)
    assert isinstance(ConfigError("x"), CandleError) and isinstance(ConfigError("x"), ValueError)


def test_param_metadata_and_mutable_default() -> None:
    f = {f.name: f for f in dataclasses.fields(MyParams)}
    assert f["learning_rate"].metadata["aliases"] == ("lr",)
    assert f["dropout"].metadata["max"] == 1.0
    assert f["optimizer"].metadata["choices"] == ("sgd", "adam", "adamw", "rmsprop")
    a, b = MyParams(), MyParams()
    a.hidden.append(1)
    assert b.hidden == [64, 32]


def test_yaml_file(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "cfg.yaml",
        "epochs: 3\nlr: 1e-2\nprecision: 32\nhidden: [8, 4]\nscale: null\nmode: slow\n"
        "extra: {a: 1}\nshape: [4, 5]\ntime_limit: '01:00:00'\n",
    )
    p = load(MyParams, file=cfg)
    assert (p.epochs, p.learning_rate, p.precision) == (3, 0.01, "32")
    assert p.hidden == [8, 4] and p.scale is None and p.mode == "slow"
    assert p.extra == {"a": 1} and p.shape == (4, 5) and p.time_limit == 3600.0


def test_json_with_byte_order_mark(tmp_path: Path) -> None:
    cfg = tmp_path / "bom.json"
    cfg.write_bytes(b'\xef\xbb\xbf{"epochs": 2}')
    assert load(file=cfg).epochs == 2


def test_empty_yaml_gives_defaults(tmp_path: Path) -> None:
    assert load(file=write(tmp_path / "empty.yml", "# nothing\n")) == Params()


def test_toml_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "cfg.toml", 'epochs = 4\noptimizer = "sgd"\nhidden = [16]\n')
    p = load(MyParams, file=cfg)
    assert (p.epochs, p.optimizer, p.hidden) == (4, "sgd", [16])


def test_json_file(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "cfg.json", json.dumps({"epochs": 5, "learning_rate": 1, "resume": True})
    )
    p = load(file=cfg)
    assert p.epochs == 5 and p.resume is True
    assert p.learning_rate == 1.0 and isinstance(p.learning_rate, float)


def test_legacy_ini_nt3(tmp_path: Path) -> None:
    cfg = write(tmp_path / "nt3_default_model.txt", NT3_INI)
    p = load(NT3Params, file=cfg)
    assert p.data_url.startswith("ftp://ftp.mcs.anl.gov/")
    assert (p.train_data, p.model_name, p.save_path) == ("nt_train2.csv", "nt3", "save/")
    assert p.conv == [128, 20, 1, 128, 10, 1] and p.dense == [200, 20] and p.pool == [1, 10]
    assert (p.loss, p.optimizer, p.metrics) == ("categorical_crossentropy", "sgd", "accuracy")
    assert (p.epochs, p.batch_size, p.learning_rate) == (400, 20, 0.001)
    assert (p.dropout, p.classes, p.timeout) == (0.1, 2, 3600)


def test_legacy_ini_sections_comments_and_bare_words(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "model.ini",
        "# a comment\n[Global_Params]\noptimizer=sgd   # bare word\nrng_seed = 7\n"
        "; another comment\n[Monitor_Params]\nresume = True\nhidden = [10,\n    20]\n"
        "scale = None\ntensorboard = false\nmetrics_log = 'csv'  ; quoted, then a comment\n",
    )
    raw = read_config_file(cfg)
    assert raw["optimizer"] == "sgd" and raw["rng_seed"] == 7 and raw["resume"] is True
    p = load(MyParams, file=cfg)
    assert (p.optimizer, p.seed, p.resume, p.hidden) == ("sgd", 7, True, [10, 20])
    assert p.scale is None and p.tensorboard is False and p.metrics_log == "csv"


def test_ini_payload_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "hacked"
    payload = f"__import__('os').system('touch {marker}')"
    cfg = write(tmp_path / "x_default_model.txt", f"[Global_Params]\nmodel_name = {payload}\n")
    p = load(NT3Params, file=cfg)
    assert p.model_name == payload  # kept as a plain string
    assert not marker.exists()


# --------------------------------------------------------------------------- precedence, env


def test_precedence_of_all_five_levels(tmp_path: Path) -> None:
    cfg = write(tmp_path / "cfg.yaml", "epochs: 20\n")
    env = {"CANDLE_EPOCHS": "30"}
    argv = [str(cfg), "--epochs", "40"]
    assert load(argv=argv, env=env, overrides={"epochs": 50}).epochs == 50
    assert load(argv=argv, env=env).epochs == 40
    assert load(argv=[str(cfg)], env=env).epochs == 30
    assert load(file=cfg).epochs == 20
    assert load().epochs == 10


def test_env_reads_os_environ_and_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANDLE_LR", "0.5")
    monkeypatch.setenv("CANDLE_DEVICE", "cpu")
    monkeypatch.setenv("CANDLE_TENSORBOARD", "off")
    p = load_params()
    assert (p.learning_rate, p.device, p.tensorboard) == (0.5, "cpu", False)


def test_unknown_candle_env_var_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    env = {"CANDLE_CACHE_DIR": "/tmp/x", "CANDLE_DATA_DIR": "/d", "CANDLE_EPOCHZ": "3"}
    with caplog.at_level(logging.WARNING, logger="candle.config"):
        p = load(env=env)
    assert p == Params()
    assert "CANDLE_EPOCHZ" in caplog.text and "CANDLE_EPOCHS" in caplog.text
    assert "CANDLE_CACHE_DIR" not in caplog.text


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    "argv",
    [
        ["--lr", "0.01"],
        ["--lr=0.01"],
        ["lr=0.01"],
        ["--learning-rate", "0.01"],
        ["learning_rate=1e-2"],
    ],
)
def test_cli_learning_rate_forms(argv: list[str]) -> None:
    assert load(argv=argv).learning_rate == 0.01


def test_cli_forms() -> None:
    argv = ["--batch-size", "8", "--resume", "--no-tensorboard", "--progress-bar=no"]
    argv += ["--deterministic", "false", "rng_seed=3", "--epochs", "2"]
    p = load(argv=argv)
    assert (p.batch_size, p.resume, p.tensorboard, p.progress_bar) == (8, True, False, False)
    assert (p.deterministic, p.seed, p.epochs) == (False, 3, 2)


def test_parse_argv_returns_config_and_raw_values() -> None:
    cfg, values = parse_argv(["run.yaml", "--batch-size", "8", "--resume", "--no-progress-bar"])
    assert cfg == "run.yaml"
    assert values == {"batch_size": "8", "resume": "true", "progress_bar": "false"}
    assert parse_argv(["--config", "a.toml", "hidden=1,2"], MyParams) == (
        "a.toml",
        {"hidden": "1,2"},
    )
    assert parse_argv(["--epochs", "-1"]) == (None, {"epochs": "-1"})


def test_cli_config_file_and_subclass_lists(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.json", '{"hidden": [1, 2, 3], "dropout": 0.2}')
    p = load(MyParams, argv=[str(cfg), "names=x,y", "--drop", "0.3", "shape=(7, 8)"])
    assert p.hidden == [1, 2, 3] and p.names == ["x", "y"] and p.dropout == 0.3
    assert p.shape == (7, 8)
    assert load(MyParams, argv=["hidden=[5, 6]"]).hidden == [5, 6]
    assert load(MyParams, argv=["hidden=5"]).hidden == [5]
    assert load(MyParams, overrides={"hidden": 5, "names": ()}).hidden == [5]
    assert load(MyParams, argv=["scale=none"]).scale is None
    assert load(MyParams, argv=["scale=2"]).scale == 2.0
    assert load(file=cfg, argv=[str(cfg)], cls=MyParams).hidden == [1, 2, 3]  # same file twice


def test_coercion_from_text() -> None:
    p = load(argv=["epochs=10.0", "learning_rate=1e-3", "resume=yes", "tensorboard=0"])
    assert (p.epochs, p.learning_rate, p.resume, p.tensorboard) == (10, 1e-3, True, False)
    assert isinstance(p.epochs, int)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("01:30:00", 5400),
        ("1-00:00:00", 86400),
        ("3600", 3600),
        ("0", 0),
    ],
)
def test_time_limit_strings(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert load(argv=["--time-limit", text]).time_limit == seconds
    assert load(env={"CANDLE_TIME_LIMIT": text}).time_limit == seconds


# --------------------------------------------------------------------------- validate, api


def test_subclass_validate_override() -> None:
    assert load(CheckedParams, argv=["low=3"]).low == 3
    with pytest.raises(ConfigError, match=r"'low' \(11\) must not exceed 'high' \(10\)"):
        load(CheckedParams, argv=["low=11"])
    with pytest.raises(
        ConfigError, match="invalid PlainValueErrorParams parameters: seven epochs are unlucky"
    ):
        load(PlainValueErrorParams, overrides={"epochs": 7})


def test_required_field_without_default() -> None:
    @dataclass
    class Needs:
        data: str
        epochs: int = 1

    with pytest.raises(ConfigError, match=r"'data' is required.*CANDLE_DATA.*--data"):
        load(Needs)
    assert load(Needs, argv=["data=x.csv"]) == Needs("x.csv")


def test_params_from_dict_and_replace() -> None:
    p = params_from_dict(MyParams, {"hidden": [3], "lr": 0.1})
    assert p.hidden == [3] and p.learning_rate == 0.1
    q = dataclasses.replace(p, epochs=1)
    assert q.epochs == 1 and q.hidden == [3]
    with pytest.raises(ConfigError, match=r"'epochs' must be >= 0, got -2 \(from my dict\)"):
        params_from_dict(Params, {"epochs": -2}, source="my dict")


@pytest.mark.parametrize("name", ["params.yaml", "params.yml", "params.json"])
def test_save_params_round_trip(tmp_path: Path, name: str) -> None:
    p = params_from_dict(
        MyParams,
        {"epochs": 3, "hidden": [7], "precision": "32", "time_limit": "1h", "extra": {"k": [1]}},
    )
    p.scale, p.shape, p.run_id = 0.5, (1, 2), "2024"
    path = tmp_path / "sub" / name
    save_params(p, path)
    assert load(MyParams, file=path) == p
    assert read_config_file(path) == params_to_dict(p)
    assert not [f for f in path.parent.iterdir() if f.name.endswith(".tmp")]
    assert params_to_dict(p)["shape"] == [1, 2]


def test_save_params_rejects_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.yaml, \.yml or \.json"):
        save_params(Params(), tmp_path / "p.toml")


def test_describe_params_lists_every_field() -> None:
    text = describe_params(MyParams)
    for name in field_names(MyParams):
        assert "--" + name.replace("_", "-") in text
    assert "--learning-rate float  (default: 0.001; >= 0.0; alias: lr)" in text
    assert "one of: sgd, adam, adamw, rmsprop" in text
    assert "--resume / --no-resume" in text and "hidden layer widths" in text


def test_all_problems_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        load(argv=["--epochs", "-1", "--optimizer", "adamm", "--batch-size", "x"])
    msg = str(info.value)
    assert msg.startswith("3 problems")
    assert "'epochs'" in msg and "'optimizer'" in msg and "'batch_size'" in msg


# --------------------------------------------------------------------------- malformed input


def _yaml(text: str) -> Any:
    return lambda tmp: {"file": write(tmp / "config.yaml", text)}


def _ini(text: str, name: str = "model.txt") -> Any:
    return lambda tmp: {"file": write(tmp / name, text)}


BAD_CASES: dict[str, tuple[Any, list[str]]] = {
    "unknown_key_suggestion": (
        _yaml("learing_rate: 0.1\n"),
        ["unknown parameter 'learing_rate'", "config.yaml", "did you mean 'learning_rate'?"],
    ),
    "unknown_key_no_match": (
        lambda tmp: {"argv": ["zzqqxx=1"]},
        ["unknown parameter 'zzqqxx'", "command line", "hidden", "--help"],
    ),
    "unknown_flag_suggestion": (
        lambda tmp: {"argv": ["--epoch", "3"]},
        ["unknown parameter 'epoch'", "did you mean 'epochs'?"],
    ),
    "str_for_int": (
        lambda tmp: {"argv": ["--epochs", "ten"]},
        ["'epochs' must be of type int, got 'ten' (from command line)", "whole number"],
    ),
    "float_for_int": (
        _yaml("batch_size: 2.5\n"),
        ["'batch_size' must be of type int, got 2.5", "config.yaml", "fractional part"],
    ),
    "bool_for_int": (
        lambda tmp: {"overrides": {"epochs": True}},
        ["'epochs' must be of type int, got True (from overrides)", "bool"],
    ),
    "out_of_range_low": (
        lambda tmp: {"argv": ["--epochs", "-1"]},
        ["'epochs' must be >= 0, got -1 (from command line)"],
    ),
    "out_of_range_high": (
        lambda tmp: {"file": write(tmp / "cfg.json", '{"lr_min_ratio": 2}')},
        ["'lr_min_ratio' must be <= 1.0, got 2.0", "cfg.json"],
    ),
    "list_item_out_of_range": (
        lambda tmp: {"argv": ["hidden=[4, 0]"]},
        ["'hidden' must have every item >= 1, got [4, 0]"],
    ),
    "bad_choice": (
        lambda tmp: {"argv": ["--optimizer", "adamm"]},
        [
            "'optimizer' must be one of sgd, adam, adamw, rmsprop, got 'adamm'",
            "did you mean 'adam'?",
        ],
    ),
    "bad_literal": (
        lambda tmp: {"argv": ["mode=medium"]},
        ["'mode' must be one of 'fast', 'slow', got 'medium'"],
    ),
    "list_given_unparsable_scalar": (
        lambda tmp: {"argv": ["hidden=abc"]},
        ["'hidden' must be of type list[int], got 'abc'", "item 'abc' is not of type int"],
    ),
    "list_given_mapping": (
        _yaml("hidden: {a: 1}\n"),
        ["'hidden' must be of type list[int], got {'a': 1}", "config.yaml", "[1, 2]"],
    ),
    "tuple_wrong_length": (
        lambda tmp: {"argv": ["shape=1,2,3"]},
        ["'shape' must be of type tuple[int, int]", "exactly 2 items"],
    ),
    "bad_bool": (
        lambda tmp: {"argv": ["--resume=maybe"]},
        ["'resume' must be of type bool, got 'maybe'", "true/false"],
    ),
    "bad_time_limit": (
        lambda tmp: {"argv": ["time_limit=soon"]},
        ["'time_limit' must be seconds or a duration", "'soon'", "command line"],
    ),
    "yaml_list_not_mapping": (
        _yaml("- 1\n- 2\n"),
        ["config.yaml", "must hold a mapping", "got a list"],
    ),
    "yaml_syntax": (
        _yaml("epochs: [1, 2\nlr: 3\n"),
        ["config.yaml", "not valid YAML at line"],
    ),
    "json_malformed": (
        lambda tmp: {"file": write(tmp / "cfg.json", '{"epochs": 3,}')},
        ["cfg.json", "not valid JSON at line 1"],
    ),
    "toml_malformed": (
        lambda tmp: {"file": write(tmp / "cfg.toml", "epochs = = 3\n")},
        ["cfg.toml", "not valid TOML", "line 1"],
    ),
    "missing_file": (
        lambda tmp: {"file": tmp / "nope.yaml"},
        ["config file", "nope.yaml", "not found"],
    ),
    "unsupported_extension": (
        lambda tmp: {"file": write(tmp / "cfg.xml", "<a/>")},
        ["cfg.xml", "unsupported type '.xml'", ".yaml"],
    ),
    "ini_eval_payload_for_int": (
        _ini("[Global_Params]\nepochs = __import__('os').system('echo hacked')\n"),
        ["'epochs' must be of type int", "__import__('os').system('echo hacked')", "model.txt"],
    ),
    "ini_duplicate_across_sections": (
        _ini("[Global_Params]\nepochs=3\n[Monitor_Params]\nepochs=4\n"),
        ["'epochs'", "[Global_Params]", "[Monitor_Params]", "model.txt", "keep one"],
    ),
    "ini_line_without_equals": (
        _ini("[Global_Params]\nepochs 3\n", "model.ini"),
        ["model.ini", "line 2", "key = value"],
    ),
    "two_config_files_on_command_line": (
        lambda tmp: {"argv": ["a.yaml", "b.yaml"]},
        ["two config files", "'a.yaml'", "'b.yaml'"],
    ),
    "file_and_positional_config": (
        lambda tmp: {"file": "a.yaml", "argv": ["b.yaml"]},
        ["two config files", "'a.yaml'", "'b.yaml'"],
    ),
    "name_and_alias_both": (
        lambda tmp: {"argv": ["--lr", "0.1", "--learning-rate", "0.2"]},
        ["'learning_rate' is given twice", "'lr'", "command line", "keep one"],
    ),
    "name_and_alias_in_env": (
        lambda tmp: {"env": {"CANDLE_SEED": "1", "CANDLE_RNG_SEED": "2"}},
        ["'seed' is given twice", "CANDLE_SEED", "CANDLE_RNG_SEED"],
    ),
    "bad_device": (
        lambda tmp: {"argv": ["--device", "gpu0"]},
        ["'device' must be auto, cpu, cuda or cuda:N, got 'gpu0' (from command line)", "cuda:0"],
    ),
    "env_bad_value": (
        lambda tmp: {"env": {"CANDLE_EPOCHS": "many"}},
        ["'epochs' must be of type int, got 'many'", "environment variable CANDLE_EPOCHS"],
    ),
    "option_without_value": (
        lambda tmp: {"argv": ["--epochs"]},
        ["option '--epochs' needs a value"],
    ),
    "single_dash_option": (
        lambda tmp: {"argv": ["-e", "3"]},
        ["unrecognized option '-e'", "--name VALUE"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_malformed_input_is_explained(tmp_path: Path, case: str) -> None:
    make_kwargs, fragments = BAD_CASES[case]
    kwargs = {"env": {}, **make_kwargs(tmp_path)}
    with pytest.raises(ConfigError) as info:
        load_params(MyParams, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"
