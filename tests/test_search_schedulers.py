"""Early-stopping schedulers: hand-computed ASHA and median-rule cases, restore, config errors."""

from __future__ import annotations

import heapq
import random

import pytest

from candle.errors import ConfigError
from candle.search.schedulers import (
    ASHA,
    FIFO,
    WAIT,
    MedianStopping,
    make_scheduler,
    rung_epochs,
)

# ------------------------------------------------------------------------------------ ASHA


@pytest.mark.parametrize(
    ("args", "rungs"),
    [
        ((1, 3, 27), [1, 3, 9, 27]),
        ((1, 3, 10), [1, 3, 9, 10]),
        ((1, 3, 9), [1, 3, 9]),
        ((2, 2, 20), [2, 4, 8, 16, 20]),
        ((5, 3, 5), [5]),
        ((1, 4, 2), [1, 2]),
    ],
)
def test_rung_epochs(args, rungs):
    assert rung_epochs(*args) == rungs
    assert ASHA(args[2], min_epochs=args[0], reduction=args[1]).rungs == rungs


def test_asha_nine_trials_top_third_promoted_some_at_once_some_later():
    asha = ASHA(9, min_epochs=1, reduction=3)  # rungs 1, 3, 9
    assert asha.first_stop() == 1
    # n_k results at rung 0 -> top floor(n_k / 3) promotable
    assert asha.on_segment(1, 1, 5.0) == WAIT  # n=1: none
    assert asha.on_segment(2, 1, 3.0) == WAIT  # n=2: none
    assert asha.promotions() == []
    assert asha.on_segment(3, 1, 8.0) == WAIT  # n=3: top 1 = [2], not 3
    assert asha.promotions() == [(2, 3)]  # 2 waited, now promotable
    assert asha.promotions() == []  # promoted once only
    assert asha.on_segment(4, 1, 1.0) == 3  # n=4: top 1 = [4]: at once
    assert asha.on_segment(5, 1, 9.0) == WAIT
    assert asha.on_segment(6, 1, 4.0) == WAIT  # n=6: top 2 = [4, 2], both promoted already
    assert asha.promotions() == []
    assert asha.on_segment(7, 1, 2.0) == 3  # n=7: top 2 = [4, 7]
    assert asha.on_segment(8, 1, 7.0) == WAIT
    assert asha.on_segment(9, 1, 6.0) == WAIT  # n=9: top 3 = [4, 7, 2], all promoted
    assert asha.promotions() == []
    assert asha.state()["promoted"][0] == [2, 4, 7]  # exactly the top 3 of 9
    assert asha.waiting() == [1, 3, 5, 6, 8, 9]

    # rung 1 (epoch 3): the three promoted trials report
    assert asha.on_segment(2, 3, 2.5) == WAIT
    assert asha.on_segment(4, 3, 0.5) == WAIT
    assert asha.on_segment(7, 3, 1.5) == WAIT  # n=3: top 1 = [4], not 7
    assert asha.promotions() == [(4, 9)]  # from rung 1 to the last rung
    asha.on_done(4, 9, 0.4)
    assert asha.waiting() == [1, 2, 3, 5, 6, 7, 8, 9]
    assert asha.state()["results"][2] == {4: 0.4}


def test_asha_promotions_scan_the_highest_rung_first_and_honour_limit():
    asha = ASHA(9, min_epochs=1, reduction=3)
    for t, v in [(1, 1.0), (2, 2.0), (3, 3.0)]:
        asha.on_segment(t, 1, v)  # n=3: top 1 = [1], which waits
    assert asha.promotions() == [(1, 3)]
    asha.on_segment(1, 3, 0.1)  # rung 1: n=1 -> WAIT
    for t, v in [(4, 0.5), (5, 0.6), (6, 9.0)]:
        asha.on_segment(t, 1, v)  # rung 0: n=4..6; 4 goes at once (top 1 of 4)
    # rung 0 n=6: top 2 = [4, 5]; 5 waits. rung 1 gets more results:
    asha.on_segment(4, 3, 0.2)
    asha.on_segment(7, 1, 9.5)  # rung 0 n=7: top 2 = [4, 5]
    asha.on_segment(99, 3, 5.0)  # a third result at rung 1: top 1 = [1], which waits
    assert asha.promotions(limit=1) == [(1, 9)]  # the highest rung first
    assert asha.promotions(limit=1) == [(5, 3)]
    assert asha.promotions() == []


def test_asha_failed_and_nan_trials_are_never_promoted():
    asha = ASHA(27, min_epochs=1, reduction=3)
    asha.on_failed(10)  # failed before rung 0: never recorded
    assert asha.on_segment(1, 1, 1.0) == WAIT
    asha.on_failed(1)  # the driver stopped a waiting trial
    assert asha.waiting() == []
    assert asha.on_segment(2, 1, float("nan")) is None  # NaN: stopped
    assert asha.on_segment(3, 1, None) is None
    for t, v in [(4, 2.0), (5, 3.0), (6, 4.0)]:
        assert asha.on_segment(t, 1, v) == WAIT
    # n=6 (the NaNs count as results): top 2 = [1, 4]; 1 failed, 4 waits and is promotable
    assert asha.promotions() == [(4, 3)]
    for t in range(11, 40):
        asha.on_segment(t, 1, 100.0 + t)
    promoted = {t for t, _ in asha.promotions()} | set(asha.state()["promoted"][0])
    assert not promoted & {1, 2, 3, 10}


def test_asha_single_rung_runs_trials_whole():
    asha = ASHA(5, min_epochs=5, reduction=3)
    assert asha.rungs == [5] and asha.first_stop() == 5
    assert asha.on_segment(1, 5, 1.0) is None  # the end: done, not continued
    assert asha.waiting() == [] and asha.promotions() == []


def _simulate(make, n_trials, seed, restart_at=None):
    """A driver with 3 slots and random durations, values and failures; returns its log of
    decisions. At step ``restart_at`` the scheduler is replaced by a fresh one restored from
    the events so far (in-flight and failed trials told as a driver would)."""
    rng = random.Random(seed)
    sched = make()
    quality = {}
    events, decisions, failed = [], [], set()
    running = []  # heap of (finish time, trial, target epoch)
    now, started, step = 0.0, 0, 0

    def start(t, target):
        heapq.heappush(running, (now + rng.uniform(0.5, 2.0) * target, t, target))

    def fill():
        nonlocal started
        while len(running) < 3:
            promoted = sched.promotions(limit=1)
            decisions.append(("promotions", promoted))
            if promoted:
                start(*promoted[0])
            elif started < n_trials:
                started += 1
                quality[started] = rng.random()
                start(started, sched.first_stop())
            else:
                return

    fill()
    while running:
        now, t, epoch = heapq.heappop(running)
        step += 1
        if rng.random() < 0.08:
            failed.add(t)
            sched.on_failed(t)
            decisions.append(("failed", t))
        else:
            value = None if rng.random() < 0.05 else quality[t] + rng.random() / epoch
            events.append((t, epoch, value))
            if epoch >= sched.max_epochs:
                sched.on_done(t, epoch, value)
                decisions.append(("done", t))
            else:
                d = sched.on_segment(t, epoch, value)
                decisions.append((t, epoch, d))
                if isinstance(d, int):
                    start(t, d)
        if step == restart_at:
            live_state = sched.state() if hasattr(sched, "state") else None
            sched = make()
            in_flight = {t for _, t, _ in running if any(e[0] == t for e in events)}
            sched.restore(list(events), in_flight=in_flight)
            for t in failed:
                sched.on_failed(t)
            if live_state is not None:
                assert sched.state() == live_state
        fill()
    decisions.append(("waiting", sched.waiting()))
    return decisions


@pytest.mark.parametrize("restart_at", [1, 7, 20, 35, 50])
def test_asha_restore_gives_the_same_state_and_decisions(restart_at):
    def make():
        return ASHA(27, min_epochs=1, reduction=3)

    live = _simulate(make, 40, seed=3)
    assert any(d[0] == "promotions" and d[1] for d in live)  # promotions() did promote
    assert any(len(d) == 3 and d[2] == WAIT for d in live)
    assert _simulate(make, 40, seed=3, restart_at=restart_at) == live


def test_asha_restore_counts_a_promoted_trial_once():
    asha = ASHA(9, min_epochs=1, reduction=3)
    events = [(1, 1, 5.0), (2, 1, 3.0), (3, 1, 8.0), (2, 3, 1.0)]  # 2 promoted later, reported
    asha.restore(events)
    assert asha.state()["promoted"][0] == [2]
    assert asha.waiting() == [1, 2, 3]  # 2 waits at rung 1
    assert asha.promotions() == []
    # in flight: promoted by promotions() before the restart, still running
    asha.restore(events[:3], in_flight=[2])
    assert asha.waiting() == [1, 3] and asha.promotions() == []


# ------------------------------------------------------------------------- median stopping


def test_median_stops_exactly_the_trials_worse_than_the_median():
    med = MedianStopping(10, interval=1, min_trials=3, warmup_epochs=1)
    assert med.first_stop() == 2  # no stop is possible at epoch 1
    assert med.on_segment(1, 2, 1.0) == 3  # no other trials yet
    assert med.on_segment(2, 2, 2.0) == 3
    assert med.on_segment(3, 2, 3.0) == 3  # 2 others < min_trials
    assert med.on_segment(4, 2, 2.5) is None  # others 1, 2, 3: median 2 < 2.5
    assert med.on_segment(5, 2, 1.5) == 3  # others 1, 2, 3, 2.5: median 2.25
    assert med.on_segment(6, 2, 2.0) == 3  # equal to median(1, 2, 3, 2.5, 1.5) = 2: goes on
    # epoch 3: running bests, not last values
    assert med.on_segment(1, 3, 9.0) == 4  # best so far 1.0
    assert med.on_segment(2, 3, 1.9) == 4
    assert med.on_segment(3, 3, 2.8) == 4
    assert med.on_segment(5, 3, 1.4) == 4  # others' bests 1.0, 1.9, 2.8: median 1.9
    assert med.on_segment(6, 3, 2.1) is None  # best 2.0 > median(1.0, 1.9, 2.8, 1.4) = 1.65
    assert med.on_segment(7, 3, 1.0) == 4
    assert med.promotions() == [] and med.waiting() == []


def test_median_warmup_interval_and_last_epoch():
    med = MedianStopping(10, interval=3, min_trials=1, warmup_epochs=4)
    assert med.first_stop() == 6
    med.on_segment(1, 6, 1.0)
    assert med.on_segment(2, 6, 5.0) is None
    assert med.on_segment(3, 6, 0.5) == 9
    assert med.on_segment(3, 9, 0.4) == 10  # never past max_epochs
    assert med.on_segment(3, 10, 0.3) is None  # the end
    assert med.on_segment(4, 6, float("nan")) is None
    assert MedianStopping(10, interval=3, warmup_epochs=0).first_stop() == 3
    assert MedianStopping(4, interval=3, warmup_epochs=3).first_stop() == 4
    # during warmup nothing is stopped
    warm = MedianStopping(10, interval=1, min_trials=1, warmup_epochs=2)
    warm.on_segment(1, 3, 0.0)
    warm2 = MedianStopping(10, interval=1, min_trials=1, warmup_epochs=3)
    warm2.on_segment(1, 3, 0.0)
    assert warm.on_segment(2, 3, 1.0) is None
    assert warm2.on_segment(2, 3, 1.0) == 4


@pytest.mark.parametrize("restart_at", [5, 30])
def test_median_restore_gives_the_same_decisions(restart_at):
    def make():
        return MedianStopping(12, interval=2, min_trials=3, warmup_epochs=1)

    live = _simulate(make, 30, seed=5)
    assert any(len(d) == 3 and d[2] is None for d in live)  # some were stopped
    assert _simulate(make, 30, seed=5, restart_at=restart_at) == live


def test_fifo():
    fifo = FIFO(10)
    assert fifo.first_stop() == 0
    assert fifo.on_segment(1, 3, 1.0) is None
    assert fifo.promotions() == [] and fifo.waiting() == []
    fifo.restore([(1, 3, 1.0)])


# --------------------------------------------------------------------------- configuration


def test_make_scheduler_builds_each_type():
    assert isinstance(make_scheduler(None, 10), FIFO)
    assert isinstance(make_scheduler({"type": "fifo"}, 10), FIFO)
    asha = make_scheduler({"type": "asha", "min_epochs": 1, "reduction": 3}, 10)
    assert isinstance(asha, ASHA) and asha.rungs == [1, 3, 9, 10]
    assert make_scheduler({"type": "asha"}, 27).rungs == [1, 3, 9, 27]
    med = make_scheduler({"type": "median", "interval": 2, "min_trials": 4, "warmup_epochs": 1}, 10)
    assert isinstance(med, MedianStopping)
    assert (med.interval, med.min_trials, med.warmup_epochs) == (2, 4, 1)


@pytest.mark.parametrize(
    ("config", "max_epochs", "match"),
    [
        ({"type": "asha", "reducton": 3}, 10, r"scheduler\.reducton.*did you mean 'reduction'"),
        ({"type": "asha", "min_epochs": 20}, 10, r"min_epochs \(20\) must be <= .* \(10\)"),
        ({"type": "asha", "reduction": 1}, 10, r"scheduler\.reduction must be an integer >= 2"),
        ({"type": "asha", "reduction": 2.5}, 10, r"reduction .* got 2\.5"),
        ({"type": "asha", "min_epochs": True}, 10, r"min_epochs .* got True"),
        ({"type": "asha", "min_epochs": 0}, 10, r"min_epochs must be an integer >= 1, got 0"),
        ({"type": "asha"}, 0, r"needs the trials' number of epochs.*got epochs = 0"),
        ({"type": "hyperband"}, 10, r"type must be one of fifo, asha, median, got 'hyperband'"),
        ({"min_epochs": 1}, 10, r"the key is missing"),
        ("asha", 10, r"must be a mapping"),
        ({"type": "median", "interval": 11}, 10, r"interval \(11\) must be <="),
        ({"type": "median", "warmup_epochs": 10}, 10, r"warmup_epochs \(10\) must be <"),
        ({"type": "median", "min_trials": 0}, 10, r"min_trials must be an integer >= 1"),
        ({"type": "median", "reduction": 3}, 10, r"unknown key for type median"),
        ({"type": "fifo", "interval": 3}, 10, r"unknown key for type fifo"),
    ],
)
def test_make_scheduler_errors(config, max_epochs, match):
    with pytest.raises(ConfigError, match=match):
        make_scheduler(config, max_epochs, where="scheduler")
