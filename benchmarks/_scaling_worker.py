"""One rank of a ``scaling.py`` job: started by ``horovodrun`` or ``torchrun``, never by hand.

usage: <launcher> python benchmarks/_scaling_worker.py {trainer,raw} OUT_DIR [options]

- ``trainer``: a ``candle.Trainer`` subclass (``strategy=auto``: Horovod under ``horovodrun``,
  DDP under ``torchrun``), timed by a ``Callback``.
- ``raw``: the loop a Horovod user writes by hand (``hvd.init``, ``DistributedOptimizer``,
  broadcasts, each rank's slice of a shuffled order in whole batches), no candle. With
  ``--no-allreduce`` (a diagnostic) the optimizer is not distributed: two ranks that only
  share the machine.

Both train the same MLP with the same per-rank batch and optimizer on synthetic data, run
``--warmup`` + ``--steps`` optimizer steps, and write ``OUT_DIR/rank<R>.json``: per-step end
timestamps (``time.perf_counter``), the CPU time of the training thread per step, and the
phases of each step (data + forward + backward, waiting for the gradient all-reduce, the
optimizer step and the rest). The raw script then times the same all-reduces alone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

torch.set_num_threads(1)  # one thread per rank (OMP_NUM_THREADS=1 is set by the driver too)


def build_mlp(dims: list[int]) -> nn.Module:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def make_data(n: int, dims: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic regression data, the same on every rank (its own generator)."""
    g = torch.Generator().manual_seed(12345)
    x = torch.randn(n, dims[0], generator=g)
    y = torch.randn(n, dims[-1], generator=g)
    return x, y


def _machine_cpu_s() -> tuple[float, float]:
    """CPU seconds all processes of the machine have used since boot, and those of them that
    niced processes used (``/proc/stat``)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return float("nan"), float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / tick, nice / tick


class Timeline:
    """Per-step timestamps: ``end_step`` after each optimizer step, the phases in between."""

    def __init__(self) -> None:
        self.step_end: list[float] = []  # perf_counter at the end of each optimizer step
        self.cpu_end: list[float] = []  # thread_time (the training thread) at the same moments
        self.proc_cpu_end: list[float] = []  # process_time (all threads of this rank)
        self.busy_end: list[float] = []  # CPU seconds of the whole machine (/proc/stat)
        self.nice_end: list[float] = []  # the part of them niced processes used
        self.niceness = os.nice(0)
        self.compute_start: list[float] = []  # training_step entered (data fetched)
        self.sync_start: list[float] = []  # backward done, waiting for the all-reduce
        self.sync_end: list[float] = []  # all-reduce done
        self.t0 = time.perf_counter()
        self.c0 = time.thread_time()

    def end_step(self) -> None:
        self.step_end.append(time.perf_counter())
        self.cpu_end.append(time.thread_time())
        self.proc_cpu_end.append(time.process_time())
        busy, nice = _machine_cpu_s()
        self.busy_end.append(busy)
        self.nice_end.append(nice)

    def as_dict(self) -> dict:
        return dict(vars(self))


def _write(out: Path, rank: int, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".rank{rank}.json.tmp"
    tmp.write_text(json.dumps(record))
    tmp.replace(out / f"rank{rank}.json")


# --------------------------------------------------------------------------- the Trainer


def run_trainer(args: argparse.Namespace) -> None:
    from torch.utils.data import TensorDataset

    from candle import Callback, Trainer

    timeline = Timeline()

    class Recorder(Callback):
        """Step ends, and (Horovod) the wait in ``optimizer.synchronize()``: the optimizer that
        ``wrap()`` returned gets a timing wrapper around that one method."""

        def on_fit_start(self, trainer: Trainer) -> None:
            opt = trainer.optimizer
            sync = getattr(opt, "synchronize", None)
            if sync is not None:

                def timed_synchronize() -> None:
                    timeline.sync_start.append(time.perf_counter())
                    sync()
                    timeline.sync_end.append(time.perf_counter())

                opt.synchronize = timed_synchronize

        def on_epoch_start(self, trainer: Trainer) -> None:
            timeline.t0, timeline.c0 = time.perf_counter(), time.thread_time()

        def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
            timeline.end_step()

    class MLPTrainer(Trainer):
        def build_model(self) -> nn.Module:
            return build_mlp(args.dims)

        def build_data(self):
            n = self.strategy.world_size * args.batch * (args.warmup + args.steps)
            return TensorDataset(*make_data(n, args.dims))  # no validation split

        def training_step(self, batch):
            timeline.compute_start.append(time.perf_counter())
            x, y = batch
            return F.mse_loss(self.model(x), y)

    trainer = MLPTrainer(
        callbacks=[Recorder()],
        run_dir=str(args.out / "run"),
        epochs=1,  # the data hold exactly warmup + steps batches per rank
        batch_size=args.batch,
        optimizer=args.optimizer,
        learning_rate=args.lr,
        device="cpu",
        threads=1,
        monitor="train_loss",  # no validation set
        progress_bar=False,  # a batch job has no terminal (the bar is silent there anyway)
        checkpoint_every=0,  # no per-epoch checkpoint; the one at the end is after the timing
        # otherwise what a user gets: tensorboard=True, metrics_log="jsonl",
        # log_every_steps=50, lr_scaling="none", strategy="auto"
    )
    result = trainer.fit()
    s = trainer.strategy
    record = {
        "mode": "trainer",
        "strategy": type(s).__name__,
        "rank": s.rank,
        "world_size": s.world_size,
        "status": result.status,
        "global_step": result.global_step,
        "callbacks": [type(c).__name__ for c in trainer._callbacks],
        "params": sum(p.numel() for p in trainer.model.parameters()),
        **timeline.as_dict(),
    }
    _write(args.out, s.rank, record)


# --------------------------------------------------------------------------- raw Horovod


def run_raw(args: argparse.Namespace) -> None:
    import horovod.torch as hvd

    hvd.init()
    torch.manual_seed(0)
    rank, size = hvd.rank(), hvd.size()
    n = size * args.batch * (args.warmup + args.steps)
    x_all, y_all = make_data(n, args.dims)
    model = build_mlp(args.dims)
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    reduce = not args.no_allreduce  # False: a diagnostic, two ranks that never communicate
    if reduce:
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    timeline = Timeline()
    model.train()
    # this rank's slice of the epoch's shuffled order, in whole batches
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))[rank::size]
    batches = order.split(args.batch)
    timeline.t0, timeline.c0 = time.perf_counter(), time.thread_time()
    for idx in batches:
        x, y = x_all[idx], y_all[idx]
        timeline.compute_start.append(time.perf_counter())
        loss = F.mse_loss(model(x), y)
        loss.backward()  # each gradient's all-reduce starts in the background here
        timeline.sync_start.append(time.perf_counter())
        if reduce:
            optimizer.synchronize()  # wait for the all-reduces still running
        timeline.sync_end.append(time.perf_counter())
        if reduce:
            with optimizer.skip_synchronize():
                optimizer.step()
        else:
            optimizer.step()
        optimizer.zero_grad()
        timeline.end_step()

    # The same all-reduces alone (no compute to hide them behind): one per parameter, as the
    # DistributedOptimizer issues them, fused by Horovod's background thread.
    bufs = [(name, torch.randn_like(p)) for name, p in model.named_parameters()]
    alone, alone_cpu = [], []
    for i in range(args.allreduce_repeats):
        hvd.barrier()
        t, c = time.perf_counter(), time.process_time()  # process: Horovod's threads too
        handles = [
            hvd.allreduce_async_(b, name=f"alone.{i}.{name}", op=hvd.Average) for name, b in bufs
        ]
        for h in handles:
            hvd.synchronize(h)
        alone.append(time.perf_counter() - t)
        alone_cpu.append(time.process_time() - c)
    record = {
        "mode": "raw",
        "strategy": "horovod",
        "rank": rank,
        "world_size": size,
        "status": "completed",
        "global_step": len(timeline.step_end),
        "params": sum(p.numel() for p in model.parameters()),
        "allreduce_alone_s": alone,
        "allreduce_alone_cpu_s": alone_cpu,
        "allreduce_alone_median_s": statistics.median(alone[1:] or alone),
        **timeline.as_dict(),
    }
    _write(args.out, rank, record)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("trainer", "raw"))
    ap.add_argument("out", type=Path)
    ap.add_argument("--dims", type=lambda s: [int(d) for d in s.split("-")], required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--warmup", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--optimizer", choices=("sgd", "adam"), required=True)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--allreduce-repeats", type=int, default=6)
    ap.add_argument("--no-allreduce", action="store_true", help="raw: diagnostic, no reduction")
    ap.add_argument("--malloc", choices=("steady", "default"), default="steady")
    args = ap.parse_args()
    if os.environ.get("OMP_NUM_THREADS") != "1":
        raise SystemExit("_scaling_worker.py: run with OMP_NUM_THREADS=1 (scaling.py sets it)")
    if args.malloc == "steady":
        from _common import steady_malloc  # benchmarks/ is this script's folder: on sys.path

        steady_malloc()
    run_trainer(args) if args.mode == "trainer" else run_raw(args)


if __name__ == "__main__":
    main()
