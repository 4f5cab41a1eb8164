"""Early stopping over epochs: ASHA, the median stopping rule, and FIFO (none).

A scheduler decides, each time a trial's segment ends, whether the trial goes on. Trials run
in segments (the workflow engine's ``stop_at_epoch``): a trial trains up to an epoch, returns,
and continues later from its checkpoint, so a promoted trial is never retrained from scratch.

In a study file::

    scheduler: {type: asha, min_epochs: 1, reduction: 3}
    scheduler: {type: median, interval: 1, min_trials: 5, warmup_epochs: 0}
    scheduler: {type: fifo}                       # or no `scheduler:` section

All values are to *minimize* (the driver negates a metric to maximize); ``None`` stands for a
failed trial or a NaN objective. The driver's side of the protocol:

1. a new trial runs to ``first_stop()`` (0: to its end, in one go);
2. when a segment ends at epoch ``e`` below the last, ``on_segment(trial, e, value)`` answers an
   epoch to continue to right away, ``None`` (stop the trial for good: pruned) or ``WAIT``
   (kept; ``promotions()`` may hand it back later);
3. whenever a slot is free, ``promotions()`` *before* asking the sampler for a new trial;
4. ``on_done`` when a trial reaches the last epoch, ``on_failed`` when it fails;
5. at the end of the study, trials still in ``waiting()`` are pruned;
6. after a restart, ``restore(events, in_flight=...)`` with every segment result so far, then
   ``on_failed`` for every trial that failed (or was stopped) since its last segment result.

Schedulers are deterministic: the same results in the same order give the same decisions, and
ties are broken by trial id.
"""

from __future__ import annotations

import bisect
import difflib
import logging
import math
import statistics
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

from candle.errors import ConfigError
from candle.workflow.study import WAIT  # the engine's "keep the trial" answer to next_stop

__all__ = [
    "ASHA",
    "FIFO",
    "WAIT",
    "MedianStopping",
    "Scheduler",
    "make_scheduler",
    "rung_epochs",
]

log = logging.getLogger("candle.search")

Decision = int | str | None  # an epoch to continue to, WAIT, or None (stop)
Event = tuple[int, int, float | None]  # (trial_id, epoch, value)


def _clean(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class Scheduler(ABC):
    """Decides at the end of each segment whether a trial goes on; see the module docstring."""

    name: str = "scheduler"

    def __init__(self, max_epochs: int):
        self.max_epochs = int(max_epochs)

    @abstractmethod
    def first_stop(self) -> int:
        """The epoch at which a new trial's first segment ends (0: run to the end)."""

    @abstractmethod
    def on_segment(self, trial_id: int, epoch: int, value: float | None) -> Decision:
        """A segment of ``trial_id`` ended at ``epoch`` with objective ``value``: an epoch to
        continue to now, None to stop the trial (pruned), or WAIT."""

    def promotions(self, limit: int | None = None) -> list[tuple[int, int]]:
        """``(trial_id, continue-to epoch)`` of waiting trials that can go on now, at most
        ``limit`` (default: all); each returned trial leaves the waiting set."""
        return []

    def on_done(self, trial_id: int, epoch: int, value: float | None) -> None:  # noqa: B027
        """The trial reached its last epoch."""

    def on_failed(self, trial_id: int) -> None:  # noqa: B027 (optional hook)
        """The trial failed (or the driver stopped it): it is never continued again."""

    def waiting(self) -> list[int]:
        """Trials kept at a rung, not yet continued nor stopped, by id."""
        return []

    def restore(  # noqa: B027 (optional hook)
        self, events: Iterable[Event], *, in_flight: Iterable[int] = ()
    ) -> None:
        """Rebuild the state after a driver restart from every ``(trial_id, epoch, value)``
        segment result so far, in the order they happened (a result at the last epoch is an
        ``on_done``). ``in_flight``: trials that were continued past their last result and
        are still running (the driver continues them itself), so they are not waiting."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_epochs={self.max_epochs})"


class FIFO(Scheduler):
    """No early stopping: every trial runs to its end in one segment."""

    name = "fifo"

    def first_stop(self) -> int:
        return 0

    def on_segment(self, trial_id: int, epoch: int, value: float | None) -> Decision:
        return None


def rung_epochs(min_epochs: int, reduction: int, max_epochs: int) -> list[int]:
    """``min_epochs * reduction**k`` below ``max_epochs``, then ``max_epochs``:
    (1, 3, 27) -> [1, 3, 9, 27]; (1, 3, 10) -> [1, 3, 9, 10]."""
    rungs, r = [], min_epochs
    while r < max_epochs:
        rungs.append(r)
        r *= reduction
    return [*rungs, max_epochs]


class ASHA(Scheduler):
    """Asynchronous successive halving (Li et al. 2020, "A System for Massively Parallel
    Hyperparameter Tuning", Algorithm 2).

    Rungs at ``min_epochs * reduction**k`` epochs, the last at ``max_epochs``. A trial's first
    segment ends at rung 0. With ``n_k`` results recorded at rung ``k``, a trial there is
    promotable if it ranks among the top ``floor(n_k / reduction)`` and was not promoted from
    that rung already. A trial is promoted as soon as it is promotable: at its own result
    (``on_segment``) or later, when others' results push ``n_k`` up (``promotions``, which
    scans from the highest rung down, as the paper's ``get_job`` does). A failed trial or a
    NaN result is never promoted, but counts in ``n_k``: it is a (bad) result at that rung.
    """

    name = "asha"

    def __init__(self, max_epochs: int, min_epochs: int = 1, reduction: int = 3):
        super().__init__(max_epochs)
        self.min_epochs, self.reduction = int(min_epochs), int(reduction)
        self.rungs = rung_epochs(self.min_epochs, self.reduction, self.max_epochs)
        self._reset()

    def _reset(self) -> None:
        self._results: list[dict[int, float | None]] = [{} for _ in self.rungs]
        self._promoted: list[set[int]] = [set() for _ in self.rungs]
        self._waiting: dict[int, int] = {}  # trial -> the rung it waits at
        self._failed: set[int] = set()

    def first_stop(self) -> int:
        return self.rungs[0]

    def _rung(self, epoch: int) -> int:
        k = bisect.bisect_right(self.rungs, epoch) - 1
        if k < 0 or self.rungs[k] != epoch:
            # Off the rungs only if the driver stopped a trial elsewhere; rank it at the rung
            # it passed (or rung 0), rather than lose the result.
            log.warning("ASHA: a result at epoch %d, not a rung %s", epoch, self.rungs)
        return max(k, 0)

    def _top(self, k: int) -> list[int]:
        """The trials in the top ``floor(n_k / reduction)`` at rung ``k``, best first."""
        results = self._results[k]
        ranked = sorted((v, t) for t, v in results.items() if v is not None)
        return [t for _, t in ranked[: len(results) // self.reduction]]

    def _record(self, trial_id: int, k: int, value: float | None) -> None:
        self._results[k][trial_id] = value
        self._waiting.pop(trial_id, None)

    def on_segment(self, trial_id: int, epoch: int, value: float | None) -> Decision:
        value = _clean(value)
        if epoch >= self.max_epochs:  # nothing left to run; the driver records it as done
            self.on_done(trial_id, epoch, value)
            return None
        k = self._rung(epoch)
        self._record(trial_id, k, value)
        if value is None or trial_id in self._failed:
            self._failed.add(trial_id)
            return None
        if trial_id not in self._promoted[k] and trial_id in self._top(k):
            self._promoted[k].add(trial_id)
            return self.rungs[k + 1]
        self._waiting[trial_id] = k
        return WAIT

    def promotions(self, limit: int | None = None) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for k in reversed(range(len(self.rungs) - 1)):
            for t in self._top(k):
                if limit is not None and len(out) >= limit:
                    return out
                if self._waiting.get(t) == k and t not in self._promoted[k]:
                    del self._waiting[t]
                    self._promoted[k].add(t)
                    out.append((t, self.rungs[k + 1]))
        return out

    def on_done(self, trial_id: int, epoch: int, value: float | None) -> None:
        self._record(trial_id, len(self.rungs) - 1, _clean(value))

    def on_failed(self, trial_id: int) -> None:
        self._failed.add(trial_id)
        self._waiting.pop(trial_id, None)

    def waiting(self) -> list[int]:
        return sorted(self._waiting)

    def restore(self, events: Iterable[Event], *, in_flight: Iterable[int] = ()) -> None:
        self._reset()
        for trial_id, epoch, value in events:
            k = len(self.rungs) - 1 if epoch >= self.max_epochs else self._rung(epoch)
            # A result at rung k means the trial was promoted from every rung below it where
            # it has a result (by on_segment or by promotions(), the order does not matter:
            # neither depends on which other trials were promoted).
            for j in range(k):
                if trial_id in self._results[j]:
                    self._promoted[j].add(trial_id)
            self.on_segment(trial_id, epoch, value)  # the same decision as the live run
        for trial_id in in_flight:
            k = self._waiting.pop(trial_id, None)
            if k is not None:
                self._promoted[k].add(trial_id)

    def state(self) -> dict[str, Any]:
        """The rungs, results, promotions and waiting trials (for tests and reports)."""
        return {
            "rungs": list(self.rungs),
            "results": [dict(sorted(r.items())) for r in self._results],
            "promoted": [sorted(p) for p in self._promoted],
            "waiting": dict(sorted(self._waiting.items())),
            "failed": sorted(self._failed),
        }

    def __repr__(self) -> str:
        return f"ASHA(rungs={self.rungs}, reduction={self.reduction})"


class MedianStopping(Scheduler):
    """The median stopping rule (Golovin et al. 2017, "Google Vizier", section 3.2.2).

    Segments end every ``interval`` epochs (and at ``max_epochs``). At a segment end at epoch
    ``e > warmup_epochs``, a trial is stopped if its best value so far is strictly worse than
    the median of the running-best values, at ``e``, of the other trials that reported at
    ``e`` -- once there are at least ``min_trials`` of them. Otherwise it goes on to
    ``e + interval``. Stopped trials' values keep counting for the others (they did report).
    The first segment ends at the first multiple of ``interval`` past ``warmup_epochs``: a
    trial cannot be stopped earlier, so stopping earlier would only cost a restart.
    """

    name = "median"

    def __init__(
        self, max_epochs: int, interval: int = 1, min_trials: int = 5, warmup_epochs: int = 0
    ):
        super().__init__(max_epochs)
        self.interval, self.min_trials = int(interval), int(min_trials)
        self.warmup_epochs = int(warmup_epochs)
        self._reset()

    def _reset(self) -> None:
        self._best: dict[int, float] = {}  # trial -> its running best (inf: none finite)
        self._at: dict[int, dict[int, float]] = {}  # epoch -> trial -> running best there

    def first_stop(self) -> int:
        first = (self.warmup_epochs // self.interval + 1) * self.interval
        return min(first, self.max_epochs)

    def _record(self, trial_id: int, epoch: int, value: float | None) -> float:
        value = _clean(value)
        best = min(self._best.get(trial_id, math.inf), math.inf if value is None else value)
        self._best[trial_id] = best
        self._at.setdefault(epoch, {})[trial_id] = best
        return best

    def on_segment(self, trial_id: int, epoch: int, value: float | None) -> Decision:
        best = self._record(trial_id, epoch, value)
        if _clean(value) is None or epoch >= self.max_epochs:
            return None  # a NaN result stops the trial; at the last epoch it is done
        if epoch > self.warmup_epochs:
            others = [b for t, b in self._at[epoch].items() if t != trial_id]
            if len(others) >= self.min_trials and best > statistics.median(others):
                return None
        return min(epoch + self.interval, self.max_epochs)

    def on_done(self, trial_id: int, epoch: int, value: float | None) -> None:
        self._record(trial_id, epoch, value)

    def restore(self, events: Iterable[Event], *, in_flight: Iterable[int] = ()) -> None:
        self._reset()
        for trial_id, epoch, value in events:
            self._record(trial_id, epoch, value)

    def __repr__(self) -> str:
        return (
            f"MedianStopping(interval={self.interval}, min_trials={self.min_trials}, "
            f"warmup_epochs={self.warmup_epochs}, max_epochs={self.max_epochs})"
        )


# ----------------------------------------------------------------------------- configuration

# type -> {key: (default, lowest allowed)}
_KEYS: dict[str, dict[str, tuple[int, int]]] = {
    "fifo": {},
    "asha": {"min_epochs": (1, 1), "reduction": (3, 2)},
    "median": {"interval": (1, 1), "min_trials": (5, 1), "warmup_epochs": (0, 0)},
}


def make_scheduler(
    config: Mapping[str, Any] | None, max_epochs: int, where: str = "scheduler"
) -> Scheduler:
    """A scheduler from the study file's ``scheduler:`` section (None: FIFO) for trials of
    ``max_epochs`` epochs. Unknown keys and values out of range are ConfigErrors."""
    if config is None:
        return FIFO(max(int(max_epochs), 0))
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"{where} must be a mapping such as {{type: asha, min_epochs: 1, reduction: 3}}, "
            f"got {config!r}"
        )
    kind = config.get("type")
    if kind not in _KEYS:
        raise ConfigError(
            f"{where}.type must be one of {', '.join(_KEYS)}, got {kind!r}"
            + ("" if "type" in config else " (the key is missing)")
        )
    known = _KEYS[kind]
    for key in config:
        if key != "type" and key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            allowed = ", ".join(["type", *known])
            raise ConfigError(f"{where}.{key}: unknown key for type {kind} ({allowed}){hint}")
    if kind == "fifo":
        return FIFO(max(int(max_epochs), 0))
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ConfigError(
            f"{where}: early stopping ({kind}) needs the trials' number of epochs, a positive "
            f"integer; got epochs = {max_epochs!r}. Set `epochs` in the study's params"
        )
    values: dict[str, int] = {}
    for key, (default, lowest) in known.items():
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise ConfigError(f"{where}.{key} must be an integer >= {lowest}, got {value!r}")
        values[key] = value
    if kind == "asha":
        if values["min_epochs"] > max_epochs:
            raise ConfigError(
                f"{where}.min_epochs ({values['min_epochs']}) must be <= the trials' epochs "
                f"({max_epochs}): rung 0 cannot come after the last epoch"
            )
        return ASHA(max_epochs, **values)
    if values["interval"] > max_epochs:
        raise ConfigError(
            f"{where}.interval ({values['interval']}) must be <= the trials' epochs ({max_epochs})"
        )
    if values["warmup_epochs"] >= max_epochs:
        raise ConfigError(
            f"{where}.warmup_epochs ({values['warmup_epochs']}) must be < the trials' epochs "
            f"({max_epochs}), else no trial could ever be stopped"
        )
    return MedianStopping(max_epochs, **values)
