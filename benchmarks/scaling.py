"""Weak scaling on this machine: 1 and 2 ranks of one thread each, for the Trainer under
``horovodrun``, a hand-written Horovod script, and the Trainer under ``torchrun`` (DDP).

Weak scaling: the batch per rank is fixed, so 2 ranks do twice the work per step. Efficiency
E = throughput(np=2) / (2 x throughput(np=1)) = step time(np=1) / step time(np=2), with
throughput = ranks x batch / median step time over the steady-state steps (warm-up skipped).
Each configuration runs ``rounds`` times, in an order that rotates from round to round, and
the figures are medians over rounds. Targets: Trainer+Horovod E >= 0.90, and its E within 5 %
of the hand-written Horovod script's (E_trainer / E_raw >= 0.95).

Also measured (hand-written Horovod script, np=2): the time spent waiting in
``optimizer.synchronize()`` (the all-reduce not hidden behind the backward pass), the same
all-reduces timed alone, and a diagnostic job of the script with a plain (not distributed)
optimizer: two Horovod ranks that never reduce, which shows what Horovod's background thread
costs by itself. From the gradient bytes all-reduced per step, S, the ring all-reduce bound
t = (S/B) * 2(N-1)/N estimates the efficiency at N ranks on a fabric of B = 25 GB/s
(printed for N = 8, 64, 512).

Workers are ``_scaling_worker.py``. Each job records, per step, the CPU time the whole
machine used; a job whose timed steps shared the CPUs with more than 0.25 cores of other
processes (at normal priority) is marked ``contended`` and run again (``--max-retries``).

    python benchmarks/scaling.py            # full run, 3.5-4 min on 2 quiet CPU cores
    python benchmarks/scaling.py --quick    # small sizes, one round: a smoke test (~40 s)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import format_result

from candle.testing.processes import kill_tree

NAME = "scaling"
HERE = Path(__file__).resolve().parent
WORKER = HERE / "_scaling_worker.py"
E_TARGET = 0.90
VS_RAW_TARGET = 0.95
FABRIC_BYTES_PER_S = 25e9
FABRIC_RANKS = (8, 64, 512)
MAX_OTHER_CORES = 0.25  # CPU of other processes during a job's timed steps: contended
LAUNCH_TIMEOUT_S = 300


@dataclass(frozen=True)
class Config:
    dims: tuple[int, ...] = (64, 512, 512, 512, 64)
    batch: int = 8192  # per rank
    warmup: int = 3  # steps not timed
    steps: int = 12  # timed steps
    rounds: int = 3
    optimizer: str = "sgd"
    lr: float = 1e-3


QUICK = Config(dims=(64, 256, 256, 64), batch=256, warmup=2, steps=5, rounds=1)


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    mode: str  # the worker's: trainer or raw
    launcher: str  # horovod or ddp
    nps: tuple[int, ...] = (1, 2)
    extra: tuple[str, ...] = ()


VARIANTS = (
    Variant("trainer_horovod", "Trainer + Horovod", "trainer", "horovod"),
    Variant("raw_horovod", "raw Horovod script", "raw", "horovod"),
    Variant("trainer_ddp", "Trainer + DDP", "trainer", "ddp"),
    # diagnostic: the raw script with a plain optimizer (Horovod running, nothing reduced)
    Variant("raw_horovod_idle", "raw, no all-reduce", "raw", "horovod", (2,), ("--no-allreduce",)),
)
BY_NAME = {v.name: v for v in VARIANTS}


# --------------------------------------------------------------------------- machine state


def _machine_cpu_s() -> tuple[float, float]:
    """CPU seconds used since boot by all processes, and by niced ones (``/proc/stat``)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / tick, nice / tick


def busy_cores(seconds: float = 1.0) -> tuple[float, float]:
    """Cores in use over the next ``seconds`` by processes at normal priority, and by niced
    ones (those take the CPU only when normal ones leave it idle)."""
    (b0, n0), t0 = _machine_cpu_s(), time.perf_counter()
    time.sleep(seconds)
    (b1, n1), dt = _machine_cpu_s(), time.perf_counter() - t0
    return (b1 - b0 - (n1 - n0)) / dt, (n1 - n0) / dt


def wait_until_quiet(budget_s: float, threshold: float = 0.3) -> tuple[float, float]:
    """Wait (up to ``budget_s``) until processes at normal priority use less than
    ``threshold`` cores; returns (cores in use at the last look, seconds waited)."""
    start = time.perf_counter()
    while True:
        busy, _ = busy_cores(1.0)
        waited = time.perf_counter() - start
        if busy < threshold or waited >= budget_s:
            return busy, waited
        time.sleep(min(5.0, max(budget_s - waited, 0.0)))


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


# --------------------------------------------------------------------------- launching


def _env() -> dict[str, str]:
    """The environment of a job: the user's, less any launcher or candle settings (so
    Horovod and torch.distributed run with their defaults), with one thread per rank."""
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in drop and not k.startswith(("CANDLE_", "HOROVOD_", "OMPI_", "PMI_"))
    }
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    return env


def _horovodrun() -> str | None:
    return shutil.which("horovodrun", path=str(Path(sys.executable).parent)) or shutil.which(
        "horovodrun"
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_command(
    variant: Variant, nproc: int, cfg: Config, out: Path, malloc: str, cycle_ms: float | None
) -> list[str]:
    worker = [
        str(WORKER),
        variant.mode,
        str(out),
        "--dims",
        "-".join(map(str, cfg.dims)),
        "--batch",
        str(cfg.batch),
        "--warmup",
        str(cfg.warmup),
        "--steps",
        str(cfg.steps),
        "--optimizer",
        cfg.optimizer,
        "--lr",
        str(cfg.lr),
        "--malloc",
        malloc,
        *variant.extra,
    ]
    if variant.launcher == "horovod":
        tuning = ["--cycle-time-ms", f"{cycle_ms:g}"] if cycle_ms is not None else []
        return [
            _horovodrun(),
            "-np",
            str(nproc),
            "-H",
            f"localhost:{nproc}",
            "--gloo",
            "--gloo-timeout-seconds",
            "120",
            *tuning,
            sys.executable,
            *worker,
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",  # = torchrun, with this interpreter for the workers too
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        *worker,
    ]


def launch(cmd: list[str], cwd: Path) -> tuple[int, str, float]:
    """Run one job to completion (killing all of it after ``LAUNCH_TIMEOUT_S``)."""
    start = time.perf_counter()
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            out, _ = proc.communicate()
            out += f"\n[scaling.py: killed after {LAUNCH_TIMEOUT_S} s]"
    return proc.returncode, out, time.perf_counter() - start


# --------------------------------------------------------------------------- one job's figures


def _diffs(a: list[float], b: list[float], idx: range) -> list[float]:
    return [b[i] - a[i] for i in idx]


def analyse(records: list[dict], cfg: Config) -> dict:
    """Figures of one job's timed steps (those after ``warmup``), from rank 0's timeline
    unless said otherwise."""
    r0 = next(r for r in records if r["rank"] == 0)
    w, n = cfg.warmup, len(r0["step_end"])
    if n != cfg.warmup + cfg.steps:
        raise RuntimeError(f"rank 0 ran {n} steps, expected {cfg.warmup + cfg.steps}")
    end = r0["step_end"]
    timed = range(w, n)  # step i is timed from the end of step i-1
    steps = [end[i] - end[i - 1] for i in timed]
    wall = end[-1] - end[w - 1]
    res = {
        "median_s": statistics.median(steps),
        "mean_s": wall / len(steps),
        "steps_s": steps,
        "thread_cpu_share": (r0["cpu_end"][-1] - r0["cpu_end"][w - 1]) / wall,
        # the same on the rank whose training thread got the least of its core
        "min_thread_cpu_share": min(
            (r["cpu_end"][-1] - r["cpu_end"][w - 1]) / (r["step_end"][-1] - r["step_end"][w - 1])
            for r in records
        ),
        "ranks_median_s": [
            statistics.median(
                r["step_end"][i] - r["step_end"][i - 1] for i in range(w, len(r["step_end"]))
            )
            for r in sorted(records, key=lambda r: r["rank"])
        ],
        "params": r0["params"],
        "strategy": r0["strategy"],
        "callbacks": r0.get("callbacks"),
    }
    # CPU of this job's ranks (all their threads) and of everything else on the machine;
    # niced processes (nice column of /proc/stat) are counted apart: they get the CPU only
    # when the ranks leave it idle (unless the ranks are niced themselves)
    ranks_cpu = sum(r["proc_cpu_end"][-1] - r["proc_cpu_end"][w - 1] for r in records)
    busy = r0["busy_end"][-1] - r0["busy_end"][w - 1]
    nice = r0["nice_end"][-1] - r0["nice_end"][w - 1] if r0["niceness"] == 0 else 0.0
    res["ranks_cores"] = ranks_cpu / wall
    # /proc/stat counts in clock ticks (10 ms): too coarse for a window under a second
    ok = wall >= 1.0
    res["other_cores"] = max(busy - nice - ranks_cpu, 0.0) / wall if ok else float("nan")
    res["niced_cores"] = nice / wall if ok else float("nan")
    # phases: data (to training_step), forward+backward, all-reduce wait, optimizer and rest
    cs = r0["compute_start"]
    if len(cs) == n:
        res["data_s"] = statistics.median(cs[i] - end[i - 1] for i in timed)
        if len(r0["sync_start"]) == n:
            ss, se = r0["sync_start"], r0["sync_end"]
            res["fwd_bwd_s"] = statistics.median(_diffs(cs, ss, timed))
            res["sync_s"] = statistics.median(_diffs(ss, se, timed))
            res["after_s"] = statistics.median(_diffs(se, end, timed))
        else:  # DDP: the all-reduce runs inside backward
            res["fwd_bwd_opt_s"] = statistics.median(_diffs(cs, end, timed))
    if "allreduce_alone_median_s" in r0:
        res["alone_s"] = r0["allreduce_alone_median_s"]
        res["alone_cpu_s"] = statistics.median(r0["allreduce_alone_cpu_s"][1:])
    return res


def run_job(
    variant: Variant, nproc: int, cfg: Config, tmp: Path, malloc: str, cycle_ms: float | None
) -> dict:
    out = tmp / f"{variant.name}-np{nproc}-{time.monotonic_ns()}"
    cmd = job_command(variant, nproc, cfg, out, malloc, cycle_ms)
    rc, log, seconds = launch(cmd, HERE.parent)
    files = sorted(out.glob("rank*.json"))
    if rc != 0 or len(files) != nproc:
        raise RuntimeError(
            f"{variant.name} np={nproc} failed (exit code {rc}, {len(files)} of {nproc} rank "
            f"files): {' '.join(cmd)}\n{log[-6000:]}"
        )
    records = [json.loads(f.read_text()) for f in files]
    shutil.rmtree(out, ignore_errors=True)
    res = analyse(records, cfg)
    res["launch_s"] = seconds
    res["contended"] = res["other_cores"] > MAX_OTHER_CORES
    return res


# --------------------------------------------------------------------------- report


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f}"


def schedule(rounds: int, variants: list[Variant]) -> list[list[tuple[Variant, int]]]:
    """Per round, the jobs in the order they run: the variant that starts rotates, and the
    np order flips, from round to round, so slow drifts hit every configuration alike."""
    plan = []
    for r in range(rounds):
        k = r % len(variants)
        turn = variants[k:] + variants[:k]
        plan.append([(v, n) for v in turn for n in (v.nps if r % 2 == 0 else v.nps[::-1])])
    return plan


def fabric_table(grad_bytes: int, compute_s: float) -> list[dict]:
    rows = []
    for n in FABRIC_RANKS:
        t = grad_bytes / FABRIC_BYTES_PER_S * 2 * (n - 1) / n
        rows.append(
            {
                "N": n,
                "allreduce_s": t,
                "E": compute_s / (compute_s + t),
                "compute_for_090_s": 9 * t,  # t_c / (t_c + t) >= 0.9  <=>  t_c >= 9 t
            }
        )
    return rows


def aggregate(results: dict[tuple[str, int], list[dict]], rounds: int) -> tuple[dict, bool]:
    """Medians over the uncontended jobs of each configuration (over all of its jobs, and
    ``noisy``, when fewer than half the rounds gave an uncontended one)."""
    noisy = False
    agg: dict[tuple[str, int], dict] = {}
    for key, runs in results.items():
        clean = [x for x in runs if not x["contended"]]
        used = clean if len(clean) >= max((rounds + 1) // 2, 1) else runs
        noisy |= used is runs and len(clean) < len(runs)
        a = {"runs": used, "n_used": len(used), "n_all": len(runs)}
        for k in (
            "median_s",
            "mean_s",
            "data_s",
            "fwd_bwd_s",
            "sync_s",
            "after_s",
            "fwd_bwd_opt_s",
            "alone_s",
            "thread_cpu_share",
            "min_thread_cpu_share",
            "ranks_cores",
            "other_cores",
        ):
            if all(k in x for x in used):
                a[k] = statistics.median(x[k] for x in used)
        agg[key] = a
    return agg, noisy


def efficiency(agg: dict, one: str, two: str) -> tuple[float, float, float]:
    """E = median step np=1 of ``one`` / median step np=2 of ``two``, and the lowest and
    highest E of a single round's pair."""
    a, b = agg[(one, 1)], agg[(two, 2)]
    per_round = []
    for x in a["runs"]:
        pair = [y for y in b["runs"] if y["round"] == x["round"]]
        if pair:
            per_round.append(x["median_s"] / pair[-1]["median_s"])
    e = a["median_s"] / b["median_s"]
    return e, min(per_round, default=e), max(per_round, default=e)


DEFAULT_CYCLE_NOTE = (
    "not set (raw script: Horovod's default 1 ms; Trainer: candle's CPU default 10 ms)"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one round: a smoke test")
    ap.add_argument("--rounds", type=int, help="rounds of all jobs (default 3)")
    ap.add_argument("--batch", type=int, help="batch size per rank (default 8192)")
    ap.add_argument("--steps", type=int, help="timed steps per job (default 12)")
    ap.add_argument("--optimizer", choices=("sgd", "adam"), help="optimizer (default sgd)")
    ap.add_argument(
        "--cycle-time-ms",
        type=float,
        help="horovodrun --cycle-time-ms for both Horovod variants (default: Horovod's, 1 ms)",
    )
    ap.add_argument(
        "--max-retries", type=int, default=6, help="reruns of contended jobs in all (default 6)"
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each job, wait up to this many seconds for other processes to leave the "
        "CPUs (default 30; a contended job is rerun after such a wait too)",
    )
    ap.add_argument(
        "--malloc",
        choices=("steady", "default"),
        default="steady",
        help="steady (default): fix glibc's mmap/trim thresholds in every rank (as "
        "trainer_overhead.py does), so multi-MB buffers are not unmapped and faulted in "
        "again every step; default: leave malloc alone",
    )
    args = ap.parse_args()
    cfg = QUICK if args.quick else Config()
    for field in ("rounds", "batch", "steps", "optimizer"):
        if getattr(args, field) is not None:
            cfg = dataclasses.replace(cfg, **{field: getattr(args, field)})
    cycle_ms = args.cycle_time_ms

    import torch  # here, after argument parsing: --help stays fast

    variants = list(VARIANTS)
    hvd_version = None
    with contextlib.suppress(ImportError):
        import horovod

        hvd_version = horovod.__version__
    if hvd_version is None or _horovodrun() is None:
        variants = [BY_NAME["trainer_ddp"]]
        print("Horovod is not installed (or horovodrun is not on PATH): only Trainer + DDP runs")
    has_hvd = len(variants) > 1

    params = sum(a * b + b for a, b in zip(cfg.dims, cfg.dims[1:], strict=False))
    grad_bytes = params * 4  # fp32 gradients, no compression
    n_jobs = sum(len(v.nps) for v in variants)
    print(
        f"{NAME}: weak scaling, MLP {'-'.join(map(str, cfg.dims))} (ReLU), {params:,} "
        f"parameters = {grad_bytes / 1e6:.2f} MB of fp32 gradients per step; batch {cfg.batch} "
        f"per rank, {cfg.optimizer} lr {cfg.lr}, MSE; {cfg.warmup} warm-up + {cfg.steps} timed "
        f"steps per job, {cfg.rounds} round(s) of {n_jobs} jobs; one thread per rank "
        f"(OMP_NUM_THREADS=1, torch.set_num_threads(1)), malloc {args.malloc}; Horovod cycle "
        f"time {f'{cycle_ms:g} ms' if cycle_ms is not None else DEFAULT_CYCLE_NOTE}"
    )
    print(
        f"machine: {os.cpu_count()} CPUs ({cpu_model()}); torch {torch.__version__}, "
        f"horovod {hvd_version or 'not installed'} (Gloo); Python {sys.version.split()[0]}"
    )
    wait_until_quiet(min(args.quiet_wait, 10.0))
    busy, niced = busy_cores(1.0)
    print(
        f"load average at start (1, 5, 15 min): {loadavg()}; CPU in use just before the first "
        f"job: {busy:.2f} cores by other processes, {niced:.2f} by niced ones",
        flush=True,
    )

    results: dict[tuple[str, int], list[dict]] = {}
    retries_left = args.max_retries
    bench_start = time.perf_counter()
    print()
    print(
        "round job                     np  median step  mean step  samples/s   other CPU "
        "(niced)  launch"
    )
    with tempfile.TemporaryDirectory(prefix="candle-scaling-") as tmp_name:
        tmp = Path(tmp_name)
        for r, jobs in enumerate(schedule(cfg.rounds, variants), start=1):
            for variant, nproc in jobs:
                while True:
                    wait_until_quiet(args.quiet_wait)
                    try:
                        res = run_job(variant, nproc, cfg, tmp, args.malloc, cycle_ms)
                    except RuntimeError as e:
                        print(f"\nERROR: {e}", flush=True)
                        print(
                            format_result(
                                NAME,
                                "jobs_failed",
                                1,
                                target="<=0",
                                status="FAIL",
                                job=variant.name,
                            )
                        )
                        return 1
                    res["round"] = r
                    flag = " contended" if res["contended"] else ""
                    print(
                        f"{r:5d} {variant.label:23s} {nproc:2d} {_ms(res['median_s']):>9s} ms "
                        f"{_ms(res['mean_s']):>7s} ms {nproc * cfg.batch / res['median_s']:10.0f}"
                        f"  {res['other_cores']:5.2f} cores ({res['niced_cores']:4.2f}) "
                        f"{res['launch_s']:5.1f} s{flag}",
                        flush=True,
                    )
                    results.setdefault((variant.name, nproc), []).append(res)
                    if not res["contended"] or retries_left <= 0:
                        break
                    retries_left -= 1
    bench_s = time.perf_counter() - bench_start
    agg, noisy = aggregate(results, cfg.rounds)

    print()
    print(f"all jobs: {bench_s:.0f} s; load average at end (1, 5, 15 min): {loadavg()}")
    print(
        f"figures: medians over rounds of each job's median step time, uncontended jobs only "
        f"(other processes used <= {MAX_OTHER_CORES} cores during its timed steps)"
        + ("; NOISY: too few uncontended jobs, contended ones included" if noisy else "")
    )
    print()
    print(
        f"{'':24s}{'step np=1':>11s}{'step np=2':>11s}{'samples/s 1':>13s}{'samples/s 2':>13s}"
        f"{'E':>8s}{'E range':>15s}"
    )
    main_variants = [v for v in variants if v.nps == (1, 2)]
    E = {v.name: efficiency(agg, v.name, v.name) for v in main_variants}
    for v in main_variants:
        one, two = agg[(v.name, 1)], agg[(v.name, 2)]
        e, lo, hi = E[v.name]
        print(
            f"{v.label:24s}{_ms(one['median_s']):>8s} ms{_ms(two['median_s']):>8s} ms"
            f"{cfg.batch / one['median_s']:13.0f}{2 * cfg.batch / two['median_s']:13.0f}"
            f"{e:8.3f}{f'{lo:.3f}-{hi:.3f}':>15s}"
        )
    if has_hvd:
        idle = agg[("raw_horovod_idle", 2)]
        E["raw_horovod_idle"] = efficiency(agg, "raw_horovod", "raw_horovod_idle")
        e, lo, hi = E["raw_horovod_idle"]
        print(
            f"{'raw, no all-reduce':24s}{'':11s}{_ms(idle['median_s']):>8s} ms{'':13s}"
            f"{2 * cfg.batch / idle['median_s']:13.0f}{e:8.3f}{f'{lo:.3f}-{hi:.3f}':>15s}"
        )
    print(
        "(E range: lowest and highest E of one round's np=1 / np=2 pair; 'raw, no all-reduce': "
        "the raw script's np=1 step / its np=2 step with a plain optimizer)"
    )
    print()
    ratios = []
    if has_hvd:
        raw1, raw2 = agg[("raw_horovod", 1)], agg[("raw_horovod", 2)]
        th1, th2 = agg[("trainer_horovod", 1)], agg[("trainer_horovod", 2)]
        dd1, dd2 = agg[("trainer_ddp", 1)], agg[("trainer_ddp", 2)]
        vs_raw = E["trainer_horovod"][0] / E["raw_horovod"][0]
        ratios = [
            ("E Trainer+Horovod / E raw Horovod", vs_raw),
            ("throughput Trainer+Horovod / raw, np=1", raw1["median_s"] / th1["median_s"]),
            ("throughput Trainer+Horovod / raw, np=2", raw2["median_s"] / th2["median_s"]),
            ("E Trainer+DDP / E Trainer+Horovod", E["trainer_ddp"][0] / E["trainer_horovod"][0]),
            ("throughput Trainer+DDP / Horovod, np=1", th1["median_s"] / dd1["median_s"]),
            ("throughput Trainer+DDP / Horovod, np=2", th2["median_s"] / dd2["median_s"]),
        ]
    for label, value in ratios:
        print(f"{label:44s}{value:8.3f}")

    # ---- where the time goes (rank 0, medians)
    nan = float("nan")
    print()
    print("step phases on rank 0, ms (medians over steps, then over rounds; the phases need not")
    print("add up to the step): data = previous step's end to training_step; fwd+bwd (DDP: +")
    print("its all-reduce, optimizer and the rest); sync = waiting in optimizer.synchronize();")
    print("after = optimizer step, zero_grad, scheduler, callbacks. thread CPU: the training")
    print("thread's CPU time / wall time, on rank 0 and on the rank where it is lowest (what the")
    print("rank's other threads, e.g. Horovod's background loop, and other processes took of its")
    print("core); cores: CPU time of all threads of all ranks / wall time.")
    print(
        f"{'':28s}{'step':>7s}{'data':>7s}{'fwd+bwd':>9s}{'sync':>7s}{'after':>7s}"
        f"{'thread CPU r0, min':>19s}{'cores':>6s}"
    )
    for v in variants:
        for n in v.nps:
            a = agg[(v.name, n)]
            fb = a.get("fwd_bwd_s", a.get("fwd_bwd_opt_s", nan))
            print(
                f"{f'{v.label} np={n}':28s}{_ms(a['median_s']):>7s}{_ms(a.get('data_s', nan)):>7s}"
                f"{_ms(fb):>9s}{_ms(a.get('sync_s', nan)):>7s}{_ms(a.get('after_s', nan)):>7s}"
                f"{a['thread_cpu_share']:9.2f}{a['min_thread_cpu_share']:7.2f}"
                f"{a['ranks_cores']:7.2f}"
            )

    share_exposed = share_alone = share_reduce = None
    fabric: list[dict] = []
    if has_hvd:
        alone_s = raw2["alone_s"]
        share_exposed = raw2["sync_s"] / raw2["median_s"]
        share_alone = alone_s / raw2["median_s"]
        share_reduce = (raw2["median_s"] - idle["median_s"]) / raw2["median_s"]
        bus = grad_bytes / alone_s  # ring at N=2: each rank sends and receives S in all
        print()
        print(f"all-reduce, raw Horovod script, np=2 (S = {grad_bytes:,} bytes per step):")
        print(
            f"  waiting in synchronize(): {_ms(raw2['sync_s'])} ms = {share_exposed:.1%} of the "
            f"{_ms(raw2['median_s'])} ms step (the rest of the all-reduce overlaps backward)"
        )
        print(
            f"  the same all-reduces alone: {_ms(alone_s)} ms = {share_alone:.1%} of the step "
            f"({bus / 1e9:.2f} GB/s of S per rank, Gloo over loopback)"
        )
        print(
            f"  step np=2 with all-reduce - without: {_ms(raw2['median_s'] - idle['median_s'])} "
            f"ms = {share_reduce:.1%} of the step"
        )
        print(
            f"  np=2 without any all-reduce vs np=1: {_ms(idle['median_s'])} vs "
            f"{_ms(raw1['median_s'])} ms (E {E['raw_horovod_idle'][0]:.3f}): what two ranks on "
            "this machine lose with Horovod's background thread running and nothing to reduce"
        )
        compute_s = raw1["median_s"]
        fabric = fabric_table(grad_bytes, compute_s)
        print()
        print(
            f"estimate on a fabric of {FABRIC_BYTES_PER_S / 1e9:g} GB/s: ring all-reduce "
            f"t = (S/B) * 2(N-1)/N with S = {grad_bytes / 1e6:.3f} MB, E(N) = t_c / (t_c + t),"
        )
        print(
            f"t_c = this machine's np=1 step of the raw script ({_ms(compute_s)} ms on one CPU "
            "thread), no overlap of all-reduce and compute:"
        )
        print(f"{'N':>6s}{'t_allreduce':>14s}{'E(N)':>8s}{'t_c for E=0.90':>17s}")
        for row in fabric:
            print(
                f"{row['N']:6d}{row['allreduce_s'] * 1e3:11.3f} ms{row['E']:8.4f}"
                f"{row['compute_for_090_s'] * 1e3:14.2f} ms"
            )
        print(
            "(the bandwidth term only: a ring's 2(N-1) message latencies, and a much faster "
            "(GPU) step, lower E; overlap of the all-reduce with backward raises it)"
        )

    # ---- RESULT lines, last
    quick = args.quick
    common = {"rounds": cfg.rounds, "noisy": "yes" if noisy else "no"}
    failed = False
    print()
    if has_hvd:
        e, lo, hi = E["trainer_horovod"]
        ok = e >= E_TARGET
        failed |= not quick and not ok
        print(
            format_result(
                NAME,
                "trainer_horovod_E",
                round(e, 4),
                target=None if quick else f">={E_TARGET}",
                status="INFO" if quick else ("PASS" if ok else "FAIL"),
                np1_ms=round(th1["median_s"] * 1e3, 2),
                np2_ms=round(th2["median_s"] * 1e3, 2),
                round_min=round(lo, 4),
                round_max=round(hi, 4),
                **common,
            )
        )
        ok = vs_raw >= VS_RAW_TARGET
        failed |= not quick and not ok
        print(
            format_result(
                NAME,
                "trainer_vs_raw",
                round(vs_raw, 4),
                target=None if quick else f">={VS_RAW_TARGET}",
                status="INFO" if quick else ("PASS" if ok else "FAIL"),
                trainer_E=round(e, 4),
                raw_E=round(E["raw_horovod"][0], 4),
                **common,
            )
        )
        for name, (one, two) in {
            "raw_horovod_E": (raw1, raw2),
            "raw_horovod_idle_E": (raw1, idle),
        }.items():
            e, lo, hi = E[name.removesuffix("_E")]
            print(
                format_result(
                    NAME,
                    name,
                    round(e, 4),
                    target=None,
                    status="INFO",
                    np1_ms=round(one["median_s"] * 1e3, 2),
                    np2_ms=round(two["median_s"] * 1e3, 2),
                    round_min=round(lo, 4),
                    round_max=round(hi, 4),
                )
            )
    e, lo, hi = E["trainer_ddp"]
    print(
        format_result(
            NAME,
            "trainer_ddp_E",
            round(e, 4),
            target=None,
            status="INFO",
            np1_ms=round(agg[("trainer_ddp", 1)]["median_s"] * 1e3, 2),
            np2_ms=round(agg[("trainer_ddp", 2)]["median_s"] * 1e3, 2),
            round_min=round(lo, 4),
            round_max=round(hi, 4),
        )
    )
    if has_hvd:
        print(
            format_result(
                NAME,
                "allreduce_share_np2",
                round(share_exposed, 4),
                target=None,
                status="INFO",
                alone_share=round(share_alone, 4),
                with_minus_without_share=round(share_reduce, 4),
                grad_bytes=grad_bytes,
            )
        )
        for row in fabric:
            print(
                format_result(
                    NAME,
                    f"est_E_N{row['N']}",
                    round(row["E"], 4),
                    target=None,
                    status="INFO",
                    allreduce_ms=round(row["allreduce_s"] * 1e3, 4),
                    compute_ms=round(raw1["median_s"] * 1e3, 2),
                    GBps=FABRIC_BYTES_PER_S / 1e9,
                )
            )
    sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
