"""Search spaces, the shared sampler suite (every sampler passes it), and the search driver."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from candle.errors import ConfigError
from candle.search.samplers import make_sampler
from candle.search.space import Categorical, Fixed, Float, Int, Space
from candle.testing import TinyParams
from candle.workflow.store import Store

ROOT = Path(__file__).parent.parent
QUICKSTART = f"{ROOT / 'examples' / 'quickstart.py'}:BreastCancer"

FULL = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "width": {"type": "int", "low": 8, "high": 256, "log": True},
    "layers": {"type": "int", "low": 1, "high": 4},
    "drop": {"type": "float", "low": 0.0, "high": 0.5},
    "opt": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop"]},
    "momentum": {"type": "float", "low": 0.0, "high": 0.99, "when": {"opt": ["sgd", "rmsprop"]}},
    "nesterov": {"type": "categorical", "choices": [True, False], "when": {"opt": "sgd"}},
    "epochs": 10,
}


def check_config(space: Space, config: dict) -> None:
    """Within bounds, the right types, and conditional params present exactly when active."""
    assert config["epochs"] == 10
    for p in space.params:
        active = all(config.get(k) in v for k, v in p.when.items())
        assert (p.name in config) == active, (p.name, config)
        if not active:
            continue
        value = config[p.name]
        if isinstance(p, Float):
            assert isinstance(value, float) and p.low <= value <= p.high
        elif isinstance(p, Int):
            assert isinstance(value, int) and p.low <= value <= p.high
        elif isinstance(p, Categorical):
            assert value in p.choices
        elif isinstance(p, Fixed):
            assert value == p.value


# --------------------------------------------------------------------------- spaces


def test_space_types_encoding_and_log_scale():
    space = Space.from_dict(FULL)
    assert space.names == ["lr", "width", "layers", "drop", "opt", "momentum", "nesterov"]
    assert space.fixed == {"epochs": 10}
    assert space.dim == 1 + 1 + 1 + 1 + 3 + 1 + 2
    assert space.categorical_columns == [[4, 5, 6], [8, 9]]
    rng = np.random.default_rng(0)
    lrs = []
    for _ in range(2000):
        config = space.from_unit(rng.random(space.n_raw))
        check_config(space, config)
        assert space.decode(space.encode(config)) == pytest.approx(config)
        lrs.append(config["lr"])
    # log-uniform: a quarter of the decades each
    decades = np.histogram(np.log10(lrs), bins=[-4, -3, -2, -1])[0] / len(lrs)
    assert decades == pytest.approx([1 / 3] * 3, abs=0.04)
    layers = {
        space.from_unit([0.5, 0.5, u, 0.5, 0.5, 0.5, 0.5])["layers"]
        for u in np.linspace(0, 0.999, 40)
    }
    assert layers == {1, 2, 3, 4}  # every int value reachable, ends included
    inactive = space.encode({"lr": 0.01, "width": 16, "layers": 1, "drop": 0.1, "opt": "adam"})
    assert inactive[7] == 0.5 and list(inactive[8:]) == [0, 0]


def test_conditions_do_not_depend_on_the_order_of_the_keys():
    """A store or a YAML dump may sort the keys: a condition may name a later parameter."""
    spec = {"momentum": {"low": 0.0, "high": 0.9, "when": {"opt": ["sgd"]}}}
    space = Space.from_dict({**spec, "opt": {"choices": ["sgd", "adam"]}})
    assert space.names == ["opt", "momentum"]
    assert space.from_unit([0.1, 0.5]) == {"opt": "sgd", "momentum": 0.45}
    assert space.from_unit([0.9, 0.5]) == {"opt": "adam"}


def test_space_grid_covers_choices_and_respects_conditions():
    space = Space.from_dict(
        {
            "lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
            "opt": {"choices": ["sgd", "adam"]},
            "momentum": {"low": 0.0, "high": 0.9, "when": {"opt": ["sgd"]}},
        }
    )
    grid = space.grid(3)
    assert {round(c["lr"], 6) for c in grid} == {0.001, 0.01, 0.1}
    assert len(grid) == 3 * 3 + 3  # sgd x 3 momenta, adam without
    assert all(("momentum" in c) == (c["opt"] == "sgd") for c in grid)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"lr": {"type": "float", "low": 1, "high": 0.1}}, "low (1) is greater than high (0.1)"),
        ({"lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "log scale needs low > 0"),
        ({"opt": {"type": "categorical", "choices": []}}, "`choices` must be a non-empty list"),
        ({"x": {"type": "gaussian", "low": 0, "high": 1}}, "type must be one of"),
        ({"x": {"type": "int", "low": 0.5, "high": 3}}, "x.low must be an integer"),
        ({"x": {"type": "float", "low": 0, "high": 1, "step": 2}}, "unknown key(s) step"),
        ({"m": {"low": 0, "high": 1, "when": {"opt": ["sgd"]}}}, "refers to 'opt', which is not"),
        (
            {"opt": {"choices": ["a"]}, "m": {"low": 0.0, "high": 1.0, "when": {"opt": "b"}}},
            "not among opt's values",
        ),
        ({}, "non-empty mapping"),
        (
            {
                "a": {"choices": [1, 2], "when": {"b": [1]}},
                "b": {"choices": [1, 2], "when": {"a": [1]}},
            },
            "depend on each other",
        ),
    ],
)
def test_bad_spaces_are_config_errors_naming_the_parameter(spec, message):
    with pytest.raises(ConfigError) as e:
        Space.from_dict(spec)
    assert message in str(e.value)


def test_space_names_must_be_trainer_params():
    Space.from_dict({"hidden": {"low": 2, "high": 8}}).check_names(TinyParams)
    with pytest.raises(ConfigError, match="has no parameter 'hiden'; did you mean 'hidden'"):
        Space.from_dict({"hiden": {"low": 2, "high": 8}}).check_names(TinyParams)


# --------------------------------------------------------------------------- sampler suite

SAMPLER_NAMES = ["random", "sobol", "grid"]
try:
    import candle.search.samplers.botorch  # noqa: F401

    SAMPLER_NAMES.append("botorch")
except ImportError:
    pass


def _objective(config: dict) -> float:
    """A known function of every parameter type: min at lr=0.01, width=64, drop=0, adam."""
    value = (math.log10(config["lr"]) + 2) ** 2 + (math.log2(config["width"]) - 6) ** 2 / 4
    value += config["drop"] + {"sgd": 0.5, "adam": 0.0, "rmsprop": 0.3}[config["opt"]]
    return value + 0.1 * config.get("momentum", 0.0)


def _sampler(name, space, seed=0):
    return make_sampler(name, space, seed=seed, **({"points": 2} if name == "grid" else {}))


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_sampler_suite_every_type_conditions_nan_and_batches(name):
    space = Space.from_dict(FULL)
    sampler = _sampler(name, space)
    seen, pending = [], []
    for round_ in range(4):
        batch = sampler.ask(3, pending=pending)
        assert 1 <= len(batch) <= 3
        assert [s.index for s in batch] == list(range(len(seen), len(seen) + len(batch)))
        for s in batch:
            check_config(space, s.config)
        keys = {json.dumps(s.config, sort_keys=True) for s in batch}
        assert len(keys) == len(batch), "a batch repeats a config"
        for i, s in enumerate(batch):  # one NaN and one crash (None) per round
            value = math.nan if i == 0 and round_ % 2 else None if i == 1 else _objective(s.config)
            sampler.tell(s.config, value)
        seen += batch
    assert len(seen) >= 8
    sampler.close()


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_sampler_suite_restore_continues_where_it_was(name):
    """After a restart the sampler, rebuilt from (asked, observations), suggests what the
    uninterrupted one would have."""
    space = Space.from_dict({k: v for k, v in FULL.items() if k not in ("nesterov",)})
    live = _sampler(name, space, seed=3)
    told = []
    for _ in range(4):
        for s in live.ask(2):
            value = _objective(s.config)
            live.tell(s.config, value)
            told.append((s.config, value))
    restored = _sampler(name, space, seed=3)
    restored.restore(live.asked, told)
    a, b = live.ask(2), restored.ask(2)
    assert [s.index for s in a] == [s.index for s in b] == [8, 9][: len(a)]
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.config.keys() == y.config.keys()
        for k in x.config:
            if isinstance(x.config[k], float):
                assert x.config[k] == pytest.approx(y.config[k], rel=1e-6), k
            else:
                assert x.config[k] == y.config[k], k
    live.close()
    restored.close()


def test_grid_sampler_is_exhausted_after_its_grid():
    space = Space.from_dict(
        {"opt": {"choices": ["a", "b"]}, "x": {"type": "int", "low": 1, "high": 3}}
    )
    sampler = make_sampler("grid", space)
    configs = [s.config for s in sampler.ask(100)]
    assert len(configs) == 6 and sampler.exhausted() and sampler.ask(1) == []


def test_random_and_sobol_are_seeded():
    space = Space.from_dict(FULL)
    for name in ("random", "sobol"):
        a = [s.config for s in make_sampler(name, space, seed=1).ask(5)]
        b = [s.config for s in make_sampler(name, space, seed=1).ask(5)]
        c = [s.config for s in make_sampler(name, space, seed=2).ask(5)]
        assert a == b and a != c


# --------------------------------------------------------------------------- driver


def _search_file(tmp_path, **changes) -> Path:
    import yaml

    cfg = yaml.safe_load((ROOT / "examples" / "search.yaml").read_text())
    cfg.update(
        trainer=QUICKSTART,
        directory=str(tmp_path / "search"),
        sampler={"type": "random", "seed": 0},
        budget={"trials": 6},
        grace=2,
    )
    cfg["params"]["epochs"] = 3
    cfg.update(changes)
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": {"learning_rat": {"low": 0.1, "high": 0.2}}}, "did you mean 'learning_rate'"),
        (
            {"objective": {"metric": "val_loss", "mode": "down"}},
            "objective.mode must be min or max",
        ),
        ({"budget": {}}, "give a budget"),
        ({"sampler": {"type": "tpe"}}, "sampler must be one of"),
        ({"scheduler": {"type": "asha", "reduction": 1}}, "reduction"),
        ({"grid": {"seed": [1]}}, "belong to plain studies"),
    ],
)
def test_bad_search_files_fail_before_any_trial(tmp_path, change, message):
    from candle.search.__main__ import main

    rc = main([str(_search_file(tmp_path, **change))])
    assert rc == 2
    assert not (tmp_path / "search").exists()
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from candle.search.driver import run_search

        run_search(_search_file(tmp_path, **change), progress=False)


def _trial_pids(trial_dir: Path) -> list[int]:
    import psutil

    out = []
    for p in psutil.process_iter():
        try:
            cmd = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        ours = "-m candle train" in cmd and str(trial_dir) in cmd
        if ours and "_supervisor.py" not in cmd:
            out.append(p.pid)
    return out


@pytest.mark.slow
def test_search_end_to_end_with_asha_a_killed_trial_and_a_killed_driver(tmp_path):
    """A real search (quickstart model, breast cancer data, BoTorch sampler, ASHA, 2 slots):
    one trial's process is SIGKILLed (retried from its checkpoint), the driver is SIGKILLed and
    resumed; the store ends with every trial exactly once, ASHA pruned some, and the report and
    status work."""
    path = _search_file(
        tmp_path,
        budget={"trials": 9},  # ASHA (eta 3): 9 at epoch 1 -> 3 at epoch 3 -> 1 at epoch 9
        sampler={"type": "botorch", "seed": 0, "n_initial": 3},  # the model from the 4th trial
        scheduler={"type": "asha", "min_epochs": 1, "reduction": 3},
    )
    data = __import__("yaml").safe_load(path.read_text())
    data["params"]["epochs"] = 9
    path.write_text(__import__("yaml").safe_dump(data))
    db = tmp_path / "search" / "study.db"
    cmd = [sys.executable, "-m", "candle.search", str(path), "--quiet"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def counts():
        try:
            with Store(db, readonly=True) as store:
                return store.counts(store.study_id()), store.trials()
        except Exception:
            return {}, []

    # kill the first trial's training process once it has a checkpoint
    deadline = time.monotonic() + 120
    first = tmp_path / "search" / "trials" / "00001"
    while not list((first / "checkpoints").glob("ckpt-*.pt")) or not _trial_pids(first):
        assert time.monotonic() < deadline, "trial 1 never had a checkpoint while running"
        time.sleep(0.05)
    for pid in _trial_pids(first):
        __import__("os").kill(pid, signal.SIGKILL)
    # then the driver, after 3 trials have ended (done or pruned)
    while sum(counts()[0].get(s, 0) for s in ("done", "pruned")) < 3:
        assert time.monotonic() < deadline + 120 and driver.poll() is None
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final, trials = counts()
    assert len(trials) == 9 and sorted(t.key for t in trials) == [f"s{i}" for i in range(9)]
    assert final["done"] >= 1 and final["pruned"] >= 1 and final["failed"] == 0, final
    with Store(db, readonly=True) as store:
        statuses = [a["status"] for a in store.attempts(1)]
        assert "killed" in statuses, statuses
        for t in trials:  # ASHA: a trial's segments end at rungs 1, 3, 9
            segments = [a["segment"] for a in store.attempts(t.trial_id) if a["segment"]]
            assert set(segments) <= {1, 3, 9}, (t.key, segments)
            if t.status == "done":
                assert t.segment == 9
    status = subprocess.run(
        [sys.executable, "-m", "candle.search", "status", str(tmp_path / "search")],
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0 and "best: trial" in status.stdout


def test_warm_start_evaluates_the_best_of_an_earlier_study_first(tmp_path):
    from candle.search.driver import run_search

    first = _search_file(tmp_path, budget={"trials": 3}, scheduler=None)
    data = __import__("yaml").safe_load(first.read_text())
    data["params"]["epochs"] = 1
    first.write_text(__import__("yaml").safe_dump(data))
    run_search(first, progress=False)
    with Store(tmp_path / "search" / "study.db", readonly=True) as store:
        best = min(store.trials(status="done"), key=lambda t: t.objective)
    data.update(
        directory=str(tmp_path / "second"),
        budget={"trials": 2},
        warm_start={"studies": [str(tmp_path / "search")], "top": 1},
        enqueue=[{"learning_rate": 0.002, "hidden": 8, "dropout": 0.1, "optimizer": "adam"}],
    )
    second = tmp_path / "second.yaml"
    second.write_text(__import__("yaml").safe_dump(data))
    run_search(second, progress=False)
    with Store(tmp_path / "second" / "study.db", readonly=True) as store:
        trials = {t.key: t for t in store.trials()}
    assert sorted(trials) == ["q0", "q1"]  # the budget went to the points given first
    assert trials["q0"].params["hidden"] == 8  # enqueue first, then the earlier best
    assert trials["q1"].params == pytest.approx(best.params)
    # top without the prior: still the earlier best first (the GP gets no prior points)
    from candle.search.driver import SearchSource, load_search_config

    data["warm_start"] = {"studies": [str(tmp_path / "search")], "top": 1, "prior": False}
    data["enqueue"] = []
    source = SearchSource(load_search_config(dict(data)), max_epochs=1)
    assert len(source.first) == 1 and source.first[0] == pytest.approx(best.params)
    source.sampler.close()
    with pytest.raises(ConfigError, match="no study store"):
        data["warm_start"] = {"studies": [str(tmp_path / "nowhere")]}
        data["directory"] = str(tmp_path / "third")
        (tmp_path / "third.yaml").write_text(__import__("yaml").safe_dump(data))
        run_search(tmp_path / "third.yaml", progress=False)
