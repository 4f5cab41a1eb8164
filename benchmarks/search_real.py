"""Search: a real training task, an MLP on scikit-learn's breast cancer data.

Data: ``load_breast_cancer`` (569 x 30), a fixed stratified 70/30 train/validation split
(``random_state=0``), features standardized on the training part. A trial trains
``30 -> hidden -> ReLU -> dropout -> 1`` with AdamW (minibatches of 64, 15 epochs) from
3 fixed initializations (the same 3 for every trial) and returns the mean validation BCE
loss after the last epoch (~0.2 s). Searched: ``lr`` (1e-4..1, log), ``hidden`` (2..512,
int, log), ``dropout`` (0..0.9), ``weight_decay`` (1e-6..10, log): wide ranges, as set by
someone who does not know the good values, with diverging corners (lr 1, weight decay 10).

40 trials in rounds of 4 (as in search_hartmann.py), 10 seeds (``--quick``: 3), for our
``BoTorchSampler`` (fitting inside ``ask``, as in search_hartmann.py), our
``RandomSampler`` and Optuna's ``TPESampler``: median and quartiles of the best validation
loss. Target: our BO's median <= both others'.

    python benchmarks/search_real.py [--quick] [--seeds N] [--jobs N]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _search import METHODS, comparison_results, cpu_line, run_all, run_study, summarize

NAME = "search_real"
TRIALS, BATCH, EPOCHS, INITS = 40, 4, 15, 3

SPEC = {
    "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "hidden": {"type": "int", "low": 2, "high": 512, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.9},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 10.0, "log": True},
}


@cache
def data():
    import torch
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xva, ytr, yva = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    scaler = StandardScaler().fit(Xtr)

    def t(a):
        return torch.as_tensor(a, dtype=torch.float32)

    return t(scaler.transform(Xtr)), t(ytr)[:, None], t(scaler.transform(Xva)), t(yva)[:, None]


def validation_loss(config: dict) -> float:
    """The mean over ``INITS`` weight initializations of the validation loss after training:
    one initialization alone moves the loss by ~0.005 (sd) at good configs, as much as the
    samplers differ, and would make this a lottery of initializations."""
    losses = [train_once(config, init) for init in range(INITS)]
    mean = sum(losses) / INITS
    return mean if math.isfinite(mean) else math.inf  # diverged (NaN): the worst


def train_once(config: dict, init: int) -> float:
    import torch
    from torch import nn

    Xtr, ytr, Xva, yva = data()
    torch.manual_seed(init)  # weights and batch order
    model = nn.Sequential(
        nn.Linear(30, config["hidden"]),
        nn.ReLU(),
        nn.Dropout(config["dropout"]),
        nn.Linear(config["hidden"], 1),
    )
    opt = torch.optim.AdamW(
        model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"]
    )
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(EPOCHS):
        model.train()
        for idx in torch.randperm(len(Xtr)).split(64):
            opt.zero_grad()
            loss_fn(model(Xtr[idx]), ytr[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float(loss_fn(model(Xva), yva))


class Job:
    def __call__(self, task: tuple[str, int]) -> dict:
        from candle.search.space import Space

        method, seed = task
        return run_study(method, Space.from_dict(SPEC), validation_loss, seed, TRIALS, BATCH)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 seeds")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default 10, --quick 3)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (processes)")
    args = ap.parse_args()
    seeds = args.seeds or (3 if args.quick else 10)
    methods = METHODS
    try:
        import optuna  # noqa: F401
    except ImportError:
        print("optuna is not installed: its TPE sampler is skipped", flush=True)
        methods = tuple(m for m in METHODS if m != "tpe")
    print(cpu_line(NAME), flush=True)
    t0 = time.perf_counter()
    default = validation_loss({"lr": 1e-3, "hidden": 64, "dropout": 0.0, "weight_decay": 1e-2})
    print(
        f"breast cancer MLP: {TRIALS} trials in rounds of {BATCH}, seeds 0-{seeds - 1}; "
        f"one trial {time.perf_counter() - t0:.2f} s (incl. data), validation loss "
        f"{default:.4f} at lr 1e-3, hidden 64, no dropout, wd 1e-2",
        flush=True,
    )
    start = time.perf_counter()
    rows = run_all(Job(), methods, range(seeds), args.jobs)
    stats = summarize(rows, lambda r: r["best"], "best val loss")
    print(f"{NAME}: {time.perf_counter() - start:.0f} s", flush=True)

    results = comparison_results(
        NAME,
        "best_val_loss",
        stats,
        strict=False,
        seeds=seeds,
        trials=TRIALS,
        batch=BATCH,
    )
    for line in results:
        print(line, flush=True)
    return 1 if any(" FAIL" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
