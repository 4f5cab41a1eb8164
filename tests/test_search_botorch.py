"""The BoTorch sampler: pending points, failed trials, sample efficiency, the large-n policy,
mixed and conditional spaces, restore and warm start. (The shared sampler suite in
test_search.py runs it too.)"""

from __future__ import annotations

import math

import numpy as np
import pytest

from candle.search.samplers import RandomSampler
from candle.search.samplers.botorch import BoTorchSampler
from candle.search.space import Space

SQUARE = Space.from_dict(
    {
        "x": {"type": "float", "low": 0.0, "high": 1.0},
        "y": {"type": "float", "low": 0.0, "high": 1.0},
    }
)


def _xy(config: dict) -> np.ndarray:
    return np.array([config["x"], config["y"]])


def _quadratic(config: dict, at=(0.3, 0.7)) -> float:
    return float(((_xy(config) - np.array(at)) ** 2).sum())


def _branin(config: dict) -> float:
    """Branin on [-5, 10] x [0, 15] from the unit square; minimum 0.397887."""
    x1, x2 = 15 * config["x"] - 5, 15 * config["y"]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def _run(sampler, objective, evaluations: int, batch: int = 4) -> float:
    best = math.inf
    while sampler.asked < evaluations:
        for s in sampler.ask(min(batch, evaluations - sampler.asked)):
            value = objective(s.config)
            best = min(best, value)
            sampler.tell(s.config, value)
    return best


def _told(sampler, points, objective=_quadratic) -> None:
    """As if the sampler had suggested ``points`` and been told their values."""
    configs = [{"x": float(x), "y": float(y)} for x, y in points]
    sampler.restore(len(configs), [(c, objective(c)) for c in configs])


def test_pending_points_make_parallel_suggestions_differ():
    sampler = BoTorchSampler(SQUARE, seed=0, background=False)
    _told(sampler, np.random.default_rng(0).random((10, 2)))
    alone = sampler.ask(1)[0].config
    beside = sampler.ask(1, pending=[alone])[0].config
    assert np.linalg.norm(_xy(alone) - _xy(beside)) > 0.02, (alone, beside)
    batch = [s.config for s in sampler.ask(4)]
    pts = np.array([_xy(c) for c in batch])
    gaps = [np.linalg.norm(pts[i] - pts[j]) for i in range(4) for j in range(i)]
    assert min(gaps) > 0.01, pts
    assert sampler.stats["model"] == 6 and sampler.stats["sobol"] == 0


def test_failed_trials_do_not_attract_suggestions():
    """Values fall towards the corner (1, 1), but every trial near it failed: the model must
    not send the next trials there (a sampler that dropped the failures would)."""
    sampler = BoTorchSampler(SQUARE, seed=1, background=False)
    rng = np.random.default_rng(1)
    failed = 0.8 + 0.2 * rng.random((12, 2))
    told = [({"x": float(x), "y": float(y)}, -float(x + y)) for x, y in rng.random((16, 2)) * 0.7]
    for i, (x, y) in enumerate(failed):
        told.append(({"x": float(x), "y": float(y)}, None if i % 2 else math.nan))
    sampler.restore(len(told), told)
    suggested = np.array([_xy(s.config) for s in sampler.ask(4)])
    assert (suggested.min(axis=1) < 0.8).all(), suggested  # none in the failed square


def test_beats_random_on_branin_in_a_small_budget():
    # 8 Sobol points, then 4 batches of 4. (Over seeds 0-5 the BO wins 5 times: random search
    # has a lucky seed now and then, so one fixed seed is checked here and the benchmarks
    # compare medians over 10 seeds.)
    ours = BoTorchSampler(SQUARE, seed=1, background=False)
    best_bo = _run(ours, _branin, 24)
    best_random = _run(RandomSampler(SQUARE, seed=1), _branin, 24)
    assert best_bo < best_random
    assert best_bo < 0.397887 + 1.0, best_bo


def test_large_n_switches_to_a_local_model_and_stays_valid():
    space = Space.from_dict(
        {f"x{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(4)}
        | {"c": {"choices": ["a", "b"]}}
    )
    sampler = BoTorchSampler(space, seed=0, max_points=128)  # fits in a worker process
    rng = np.random.default_rng(0)
    told = []
    for u in rng.random((1000, 5)):
        config = space.from_unit(u)
        told.append(
            (config, sum((config[f"x{i}"] - 0.5) ** 2 for i in range(4)) + (config["c"] == "b"))
        )
    best = min(told, key=lambda t: t[1])[0]
    sampler.restore(1000, told)  # one fit, in-process
    pending = [space.from_unit(u) for u in rng.random((20, 5))]
    batch = sampler.ask(3, pending)
    assert [s.index for s in batch] == [1000, 1001, 1002]
    assert sampler.stats["local"] == 3
    lo, hi = sampler.last_box
    assert (hi - lo).max() < 1.0  # a trust region, not the whole cube
    for s in batch:
        assert set(s.config) == {"x0", "x1", "x2", "x3", "c"}
        x = space.encode(s.config)
        assert (x >= lo - 1e-9).all() and (x <= hi + 1e-9).all()
    assert np.linalg.norm(space.encode(best) - space.encode(batch[0].config)) < 0.6
    for s in batch:  # refits go to the worker; the next ask does not wait for them
        sampler.tell(s.config, 0.5)
    assert sampler.ask(1, pending)[0].index == 1003 and sampler.stats["local"] == 4
    sampler.close()


def test_mixed_and_conditional_space_gives_valid_configs():
    space = Space.from_dict(
        {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "hidden": {"type": "int", "low": 8, "high": 256, "log": True},
            "layers": {"type": "int", "low": 1, "high": 3},
            "opt": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop"]},
            "momentum": {"type": "float", "low": 0.0, "high": 0.99, "when": {"opt": ["sgd"]}},
            "epochs": 10,
        }
    )
    sampler = BoTorchSampler(space, seed=2, n_initial=6, background=False)
    for round_ in range(4):
        batch = sampler.ask(3)
        for i, s in enumerate(batch):
            c = s.config
            assert c["epochs"] == 10 and c["opt"] in ("sgd", "adam", "rmsprop")
            assert ("momentum" in c) == (c["opt"] == "sgd")
            assert 1e-4 <= c["lr"] <= 1e-1 and isinstance(c["hidden"], int)
            assert 8 <= c["hidden"] <= 256 and c["layers"] in (1, 2, 3)
            value = (math.log10(c["lr"]) + 2) ** 2 + (c["opt"] != "adam") + c["layers"] / 10
            sampler.tell(c, math.nan if (round_, i) == (2, 0) else value)
    assert sampler.stats["model"] == 6
    assert {s.config["opt"] for s in sampler.ask(2)} <= {"sgd", "adam", "rmsprop"}


def test_restore_reproduces_the_next_suggestions():
    live = BoTorchSampler(SQUARE, seed=4, n_initial=4, background=False)
    _run(live, _quadratic, 12)
    restored = BoTorchSampler(SQUARE, seed=4, n_initial=4, background=False)
    restored.restore(live.asked, live.observations)
    pending = [{"x": 0.5, "y": 0.5}]
    a, b = live.ask(2, pending), restored.ask(2, pending)
    assert [s.index for s in a] == [s.index for s in b] == [12, 13]
    for x, y in zip(a, b, strict=True):
        assert _xy(x.config) == pytest.approx(_xy(y.config), abs=1e-6)
    # in the middle of the Sobol design: continue the sequence
    first = BoTorchSampler(SQUARE, seed=4, n_initial=8).ask(5)
    again = BoTorchSampler(SQUARE, seed=4, n_initial=8)
    again.restore(3, [(s.config, 1.0) for s in first[:3]])
    assert [s.config for s in again.ask(2)] == [s.config for s in first[3:]]


def test_warm_start_uses_prior_observations():
    rng = np.random.default_rng(5)
    prior = []
    for x, y in rng.random((30, 2)):
        config = {"x": float(x), "y": float(y)}
        prior.append((config, _quadratic(config, at=(0.8, 0.2))))
    sampler = BoTorchSampler(SQUARE, seed=5, prior=prior, background=False)
    first = sampler.ask(1)[0]
    assert first.index == 0 and sampler.stats == {**sampler.stats, "sobol": 0, "model": 1}
    assert np.linalg.norm(_xy(first.config) - [0.8, 0.2]) < 0.15, first.config
    assert sampler.asked == 1 and len(sampler.observations) == 0


def test_background_fit_serves_asks_and_closes():
    """Fits run in a worker process; asks use the newest fit (or, before the first one is
    done, BoTorch's default hyperparameters); close() ends the worker."""
    sampler = BoTorchSampler(SQUARE, seed=6)
    best = _run(sampler, _quadratic, 20)
    fitter = sampler._fitter
    assert fitter.wait_first(60.0), fitter.last_error
    assert sampler.stats["model"] == 12 and fitter.fits >= 1 and fitter.failures == 0
    assert best < 0.05
    proc = fitter._proc
    sampler.close()
    assert not fitter._thread.is_alive() and fitter._proc is None
    assert proc is None or proc.returncode == 0


def test_same_seed_same_suggestions():
    a = BoTorchSampler(SQUARE, seed=7, n_initial=4, background=False)
    b = BoTorchSampler(SQUARE, seed=7, n_initial=4, background=False)
    ca, cb = _run(a, _quadratic, 8), _run(b, _quadratic, 8)
    assert ca == cb
    assert [c for c, _ in a.observations] == [c for c, _ in b.observations]


def test_a_fit_worker_that_cannot_start_falls_back_to_fitting_in_ask(monkeypatch):
    from candle.search.samplers import _botorch_fit

    def broken(self):
        raise OSError("no worker here")

    monkeypatch.setattr(_botorch_fit.Fitter, "_worker", broken)
    sampler = BoTorchSampler(SQUARE, seed=8, n_initial=4)
    sampler._fitter.backoff_s = 0.01
    sampler.first_fit_wait_s = 0.1
    _run(sampler, _quadratic, 8)  # Sobol, then a model round: the worker fails 3 times
    sampler._fitter._thread.join(10)
    assert not sampler._fitter.background and sampler._fitter.failures >= 3
    assert "no worker here" in sampler._fitter.last_error
    fits = sampler._fitter.fits
    _run(sampler, _quadratic, 12)  # fits now run inside ask
    assert sampler._fitter.fits > fits and sampler.stats["model"] == 8
    sampler.close()
