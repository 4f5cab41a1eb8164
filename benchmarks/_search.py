"""Helpers of the search benchmarks: one study loop for our samplers and Optuna's TPE, run
over seeds in worker processes, and the quartile summary they print."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from candle.search.space import Categorical, Float, Int, Space

METHODS = ("botorch", "random", "tpe")


def run_study(
    method: str,
    space: Space,
    objective: Callable[[dict], float],
    seed: int,
    evaluations: int,
    batch: int,
) -> dict[str, Any]:
    """``evaluations`` trials in rounds of ``batch``: ask ``batch`` configs (each knowing the
    ones before it as running), evaluate them, tell all. The best value and the wall time."""
    import torch

    torch.set_num_threads(1)  # two runs share the 2 cores
    best, t0 = math.inf, time.perf_counter()
    if method == "tpe":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        dists = optuna_distributions(space)
        while len(study.trials) < evaluations:
            trials = [study.ask(dists) for _ in range(min(batch, evaluations - len(study.trials)))]
            for trial in trials:  # all asked before any is told: running in parallel
                value = objective({**trial.params, **space.fixed})
                best = min(best, value)
                study.tell(trial, value)
    else:
        from candle.search.samplers import make_sampler

        # the objectives here return at once: fit inside ask, as a study whose trials take
        # longer than a fit (seconds) sees it; with background fitting the model would lag a
        # round behind only because these trials are instant
        options = {"background": False} if method == "botorch" else {}
        sampler = make_sampler(method, space, seed=seed, **options)
        while sampler.asked < evaluations:
            for s in sampler.ask(min(batch, evaluations - sampler.asked)):
                value = objective(s.config)
                best = min(best, value)
                sampler.tell(s.config, value)
        sampler.close()
    return {"method": method, "seed": seed, "best": best, "wall_s": time.perf_counter() - t0}


def optuna_distributions(space: Space) -> dict[str, Any]:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for p in space.searched:
        if p.when:
            raise ValueError("conditional parameters are not used in these benchmarks")
        if isinstance(p, Float):
            out[p.name] = FloatDistribution(p.low, p.high, log=p.log)
        elif isinstance(p, Int):
            out[p.name] = IntDistribution(p.low, p.high, log=p.log)
        elif isinstance(p, Categorical):
            out[p.name] = CategoricalDistribution(list(p.choices))
    return out


def run_all(
    job: Callable[[tuple[str, int]], dict], methods: tuple[str, ...], seeds: range, jobs: int
) -> list[dict]:
    """``job((method, seed))`` for every method and seed, ``jobs`` at a time (processes)."""
    tasks = [(m, s) for s in seeds for m in methods]
    if jobs <= 1:
        out = []
        for t in tasks:
            out.append(job(t))
            report(out[-1])
        return out
    ctx = mp.get_context("spawn")  # no fork of a process that has started torch threads
    with ctx.Pool(jobs) as pool:
        out = []
        for r in pool.imap_unordered(job, tasks):
            report(r)
            out.append(r)
    return out


def report(r: dict) -> None:
    print(
        f"  {r['method']:>8} seed {r['seed']:>2}: best {r['best']:.5f} ({r['wall_s']:.1f} s)",
        flush=True,
    )


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(q2), float(q3)


def summarize(rows: list[dict], key: Callable[[dict], float], label: str) -> dict[str, dict]:
    """Per method: quartiles of ``key`` and the median wall time; printed as a table."""
    out = {}
    print(
        f"\n{'method':>8}  {label + ' median':>22}  {'[q1, q3]':<24}  wall s/run (median)",
        flush=True,
    )
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        q1, q2, q3 = quartiles([key(r) for r in mine])
        wall = statistics.median(r["wall_s"] for r in mine)
        out[method] = {"q1": q1, "median": q2, "q3": q3, "wall_s": wall, "runs": len(mine)}
        quart = f"[{q1:.4g}, {q3:.4g}]"
        print(f"{method:>8}  {q2:>22.4g}  {quart:<24}  {wall:.1f}", flush=True)
    return out


def cpu_line(name: str) -> str:
    import sys

    import torch

    return (
        f"{name}: python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )


def comparison_results(
    bench: str, figure: str, stats: dict[str, dict], *, strict: bool, **extra: Any
) -> list[str]:
    """RESULT lines: ours (botorch) against the best of the others' medians (PASS/FAIL; ``<``
    when ``strict``, else ``<=``), then each other method's median as INFO."""
    from _common import format_result

    seeds = extra.pop("seeds")
    ours = stats["botorch"]
    others = {m: s["median"] for m, s in stats.items() if m != "botorch"}
    bar = min(others.values())
    passed = ours["median"] < bar if strict else ours["median"] <= bar
    results = [
        format_result(
            bench,
            f"botorch_{figure}_median",
            ours["median"],
            target=f"{'<' if strict else '<='}{bar:.6g}",
            status="PASS" if passed else "FAIL",
            q1=ours["q1"],
            q3=ours["q3"],
            **{f"{m}_median": v for m, v in others.items()},
            seeds=seeds,
            **extra,
            wall_s_per_run=round(ours["wall_s"], 1),
        )
    ]
    for m, s in stats.items():
        if m != "botorch":
            results.append(
                format_result(
                    bench,
                    f"{m}_{figure}_median",
                    s["median"],
                    target=None,
                    status="INFO",
                    q1=s["q1"],
                    q3=s["q3"],
                    seeds=seeds,
                    wall_s_per_run=round(s["wall_s"], 2),
                )
            )
    return results
