"""Search: sample efficiency on BoTorch's Hartmann6 (6-D, minimum -3.32237).

100 evaluations in rounds of 4 parallel suggestions (ask 4, the earlier ones of the round
known as running; then tell 4), 10 seeds; the best regret (best value - minimum) of

- ``botorch``: our ``BoTorchSampler`` (defaults: 12 Sobol points, then GP + qLogNEI),
  fitting inside ``ask`` (``background=False``): these evaluations return at once, and with
  a worker process the model would lag a round behind for that reason alone;
- ``random``: our ``RandomSampler``;
- ``tpe``: Optuna's ``TPESampler(seed=seed)`` through ``study.ask``/``study.tell`` (4 asks,
  then 4 tells).

Printed: median and quartiles of the regret per sampler, and the wall time per run. Target:
our BO's median regret below both others'. Runs two seeds at a time in worker processes,
one torch thread each. ``--quick``: 3 seeds, 40 evaluations.

    python benchmarks/search_hartmann.py [--quick] [--seeds N] [--jobs N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _search import METHODS, comparison_results, cpu_line, run_all, run_study, summarize

NAME = "search_hartmann"
F_OPT = -3.32237
BATCH = 4


def space():
    from candle.search.space import Space

    return Space.from_dict({f"x{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(6)})


def hartmann6(config: dict) -> float:
    import torch
    from botorch.test_functions import Hartmann

    x = torch.tensor([[config[f"x{i}"] for i in range(6)]], dtype=torch.float64)
    with torch.no_grad():
        return float(Hartmann(dim=6)(x))  # BoTorch's Hartmann is the minimization form


class Job:
    def __init__(self, evaluations: int):
        self.evaluations = evaluations

    def __call__(self, task: tuple[str, int]) -> dict:
        method, seed = task
        return run_study(method, space(), hartmann6, seed, self.evaluations, BATCH)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 seeds, 40 evaluations")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default 10, --quick 3)")
    ap.add_argument("--evaluations", type=int, default=None, help="default 100, --quick 40")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (processes)")
    args = ap.parse_args()
    seeds = args.seeds or (3 if args.quick else 10)
    evaluations = args.evaluations or (40 if args.quick else 100)
    methods = METHODS
    try:
        import optuna  # noqa: F401
    except ImportError:
        print("optuna is not installed: its TPE sampler is skipped", flush=True)
        methods = tuple(m for m in METHODS if m != "tpe")
    print(cpu_line(NAME), flush=True)
    print(
        f"Hartmann6, {evaluations} evaluations in rounds of {BATCH}, seeds 0-{seeds - 1}, "
        f"{args.jobs} runs at a time",
        flush=True,
    )
    start = time.perf_counter()
    rows = run_all(Job(evaluations), methods, range(seeds), args.jobs)
    stats = summarize(rows, lambda r: r["best"] - F_OPT, "regret")
    print(f"{NAME}: {time.perf_counter() - start:.0f} s", flush=True)

    results = comparison_results(
        NAME,
        "regret",
        stats,
        strict=True,
        seeds=seeds,
        evaluations=evaluations,
        batch=BATCH,
    )
    for line in results:
        print(line, flush=True)
    return 1 if any(" FAIL" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
