"""Search: how long ``BoTorchSampler.ask`` keeps the driver waiting as a study grows.

For 100, 1,000 and 10,000 observations (``--quick``: 100 and 1,000) of a 6-D Hartmann
function (random points in the unit cube, 5 % of them failed trials), with 100 trials
running (pending, around the 20 best points): the sampler is rebuilt as on ``--resume``
(``restore``, which fits once, timed apart), then 20 rounds of what the driver does when a
trial ends: ``ask(1, pending)`` (timed), the new config replaces the oldest pending one,
and the oldest one's result is told (which starts a refit in the sampler's worker
process). Target at 10,000 observations: ask p50 <= 1 s and p99 <= 5 s (with 20 asks, p99
is the slowest).

Beside it, INFO: an exact GP over every observation (``fit_gpytorch_mll`` then
``optimize_acqf`` of qLogNEI, q=1, 100 random pending, 10 restarts, 512 raw samples) at
100, 1,000, 2,000, 4,000 observations, up to the largest size whose predicted time fits the
``--exact-budget`` (default 240 s, ``--quick`` 40 s).

``torch.set_num_threads(1)``: the driver's ask and the sampler's fitting thread then run
side by side on the 2 cores instead of fighting over them.

    python benchmarks/search_latency.py [--quick] [--exact-budget SECONDS]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_result

from candle.search.samplers.botorch import BoTorchSampler
from candle.search.space import Space

NAME = "search_latency"
P50_TARGET_S, P99_TARGET_S = 1.0, 5.0
PENDING, ASKS, DIM = 100, 20, 6

SPACE = Space.from_dict({f"x{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(DIM)})


def hartmann6(x: np.ndarray) -> np.ndarray:
    """The 6-D Hartmann function (minimum -3.32237), rows of ``x`` in [0, 1]^6."""
    from botorch.test_functions import Hartmann

    with torch.no_grad():
        return Hartmann(dim=DIM)(torch.as_tensor(x, dtype=torch.float64)).numpy()


def config(u: np.ndarray) -> dict:
    return {f"x{i}": float(u[i]) for i in range(DIM)}


def observations(n: int, rng: np.random.Generator) -> list[tuple[dict, float | None]]:
    X = rng.random((n, DIM))
    y = hartmann6(X)
    failed = rng.random(n) < 0.05
    return [(config(x), None if f else float(v)) for x, v, f in zip(X, y, failed, strict=True)]


def near_best(told: list[tuple[dict, float | None]], rng: np.random.Generator) -> list[dict]:
    """``PENDING`` configs around the 20 best told (Gaussian, sd 0.05): where a search's
    running trials are, and the pending points that cost the acquisition the most."""
    finite = [(v, c) for c, v in told if v is not None]
    top = [SPACE.encode(c) for _, c in sorted(finite, key=lambda t: t[0])[:20]]
    return [
        config(np.clip(top[i % len(top)] + 0.05 * rng.standard_normal(DIM), 0.0, 1.0))
        for i in range(PENDING)
    ]


def bench_ask(n: int) -> tuple[dict, list[str]]:
    rng = np.random.default_rng(n)
    told = observations(n, rng)
    sampler = BoTorchSampler(SPACE, seed=0)  # the defaults: background fitting
    t0 = time.perf_counter()
    sampler.restore(n, told)
    restore_s = time.perf_counter() - t0
    pending = near_best(told, rng)
    times = []
    for _ in range(ASKS):
        t0 = time.perf_counter()
        (s,) = sampler.ask(1, pending)
        times.append(time.perf_counter() - t0)
        done = pending.pop(0)
        pending.append(s.config)
        sampler.tell(done, float(hartmann6(SPACE.encode(done)[None])[0]))
    fits, last_fit = sampler._fitter.fits, sampler._fitter.last_fit_s
    stats = dict(sampler.stats)
    sampler.close()
    times.sort()
    p50, p99 = statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]
    row = {
        "n": n,
        "p50": p50,
        "p99": p99,
        "restore_s": restore_s,
        "fits": fits,
        "last_fit_s": last_fit,
        **stats,
    }
    print(
        f"{n:>6,} observations, {PENDING} pending: ask p50 {p50:.3f} s, p99 {p99:.3f} s, "
        f"mean {statistics.fmean(times):.3f} s; restore (one fit) {restore_s:.2f} s; "
        f"background fits during the asks {fits - 1}, last {last_fit:.2f} s; "
        f"model asks {stats['model']} (local {stats['local']}, "
        f"before any fit {stats['unfitted_asks']})",
        flush=True,
    )
    return row, []


def exact_gp_seconds(n: int) -> tuple[float, float]:
    """Fit and acquisition-optimization seconds of an exact GP over ``n`` observations."""
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.optim import optimize_acqf
    from gpytorch.mlls import ExactMarginalLogLikelihood

    rng = np.random.default_rng(n)
    X = torch.as_tensor(rng.random((n, DIM)))
    Y = -torch.as_tensor(hartmann6(X.numpy()))[:, None]
    pending = torch.as_tensor(rng.random((PENDING, DIM)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        model = SingleTaskGP(X, Y)
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        acq = qLogNoisyExpectedImprovement(model, X_baseline=X, X_pending=pending)
        bounds = torch.stack([torch.zeros(DIM), torch.ones(DIM)]).double()
        optimize_acqf(acq, bounds=bounds, q=1, num_restarts=10, raw_samples=512)
        acq_s = time.perf_counter() - t0
    return fit_s, acq_s


def bench_exact(budget: float, sizes: tuple[int, ...]) -> tuple[int, float, float]:
    """An exact GP at each of ``sizes`` while the predicted time (the last one's x (n ratio)^2
    below 1,000, ^3 above, as the Cholesky takes over) fits what is left of ``budget``;
    the (n, fit s, acquisition s) of the largest one run."""
    spent, best = 0.0, (0, 0.0, 0.0)
    last_n, last_s = 0, 0.0
    for n in sizes:
        if last_n:
            predicted = last_s * (n / last_n) ** (2 if n <= 1000 else 3)
            if predicted > budget - spent:
                print(
                    f"exact GP at {n:,}: predicted {predicted:.0f} s, over the budget left "
                    f"({budget - spent:.0f} s): not run",
                    flush=True,
                )
                break
        fit_s, acq_s = exact_gp_seconds(n)
        print(
            f"exact GP at {n:>6,} observations, {PENDING} pending: fit {fit_s:.1f} s, "
            f"optimize_acqf {acq_s:.1f} s, total {fit_s + acq_s:.1f} s",
            flush=True,
        )
        spent += fit_s + acq_s
        best, last_n, last_s = (n, fit_s, acq_s), n, fit_s + acq_s
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100 and 1,000 observations only")
    ap.add_argument(
        "--exact-budget",
        type=float,
        default=None,
        help="seconds for the exact-GP comparison (default 240, --quick 40)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    sizes = (100, 1000) if args.quick else (100, 1000, 10000)
    budget = args.exact_budget or (40.0 if args.quick else 240.0)
    print(
        f"{NAME}: python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    start = time.perf_counter()
    rows = [bench_ask(n)[0] for n in sizes]
    exact_n, exact_fit, exact_acq = bench_exact(budget, (100, 1000, 2000, 4000))
    print(f"{NAME}: {time.perf_counter() - start:.0f} s", flush=True)
    results = []
    for row in rows:
        extra = dict(
            observations=row["n"],
            pending=PENDING,
            asks=ASKS,
            local_model=int(row["local"] > 0),
            restore_s=round(row["restore_s"], 2),
            fit_s=round(row["last_fit_s"], 2),
        )
        if row["n"] == 10000:
            for metric, value, target in (
                ("ask_p50_s", row["p50"], P50_TARGET_S),
                ("ask_p99_s", row["p99"], P99_TARGET_S),
            ):
                results.append(
                    format_result(
                        NAME,
                        metric,
                        value,
                        target=f"<={target:g}",
                        status="PASS" if value <= target else "FAIL",
                        **extra,
                    )
                )
        else:
            results.append(
                format_result(
                    NAME,
                    "ask_p50_s",
                    row["p50"],
                    target=None,
                    status="INFO",
                    p99_s=round(row["p99"], 3),
                    **extra,
                )
            )
    largest = rows[-1]
    results.append(
        format_result(
            NAME,
            "exact_gp_s",
            exact_fit + exact_acq,
            target=None,
            status="INFO",
            observations=exact_n,
            fit_s=round(exact_fit, 1),
            optimize_acqf_s=round(exact_acq, 1),
            pending=PENDING,
            our_ask_p50_s=round(largest["p50"], 3),
            our_ask_at=largest["n"],
        )
    )
    for line in results:
        print(line, flush=True)
    return 1 if any(" FAIL" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
