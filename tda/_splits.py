"""Fixed per-group splits and nested training subsets (shared by the trainer and the driver).

Each group's rows are split on their own by :func:`candle.data.splits.split_indices` (random,
or stratified by class when labels are given) into a training pool, validation rows and test
rows, with fractions ``(1 - test - val, val, test)`` and a seed drawn from (split seed, CRC32 of
the group's name): a group's split does not change when other groups are added or removed.

A training subset of size ``k`` is the first ``k`` rows of the pooled training rows of the
chosen groups in an order drawn from the subset seed, so for one subset seed a smaller subset is
always inside a larger one (nested learning curves).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from candle.data.splits import split_indices
from candle.errors import ConfigError, DataError


@dataclass(frozen=True)
class GroupSplit:
    train: np.ndarray  # row indices into the whole data set
    val: np.ndarray
    test: np.ndarray


def split_groups(
    groups: np.ndarray,
    split_seed: int,
    test_fraction: float,
    val_fraction: float,
    labels: np.ndarray | None = None,
) -> dict[str, GroupSplit]:
    """``{group: GroupSplit}`` in sorted group order; see the module docstring. ``groups`` and
    ``labels`` (class labels, for stratified splits) are ``n`` each."""
    if not (test_fraction > 0 and val_fraction >= 0 and test_fraction + val_fraction < 1):
        raise ConfigError(
            f"test_fraction={test_fraction} and val_fraction={val_fraction}: need test > 0, "
            "val >= 0 and test + val < 1"
        )
    pool = 1.0 - test_fraction - val_fraction
    fractions = (pool, val_fraction, test_fraction) if val_fraction > 0 else (pool, test_fraction)
    empty = np.empty(0, dtype=np.int64)
    out = {}
    for name in sorted(np.unique(groups).tolist()):
        rows = np.flatnonzero(groups == name)
        entropy = [int(split_seed), zlib.crc32(name.encode())]
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        mine = None if labels is None else np.asarray(labels).reshape(-1)[rows]
        try:
            parts = split_indices(
                rows.size,
                kind="random" if mine is None else "stratified",
                seed=seed,
                fractions=fractions,
                labels=mine,
            )
        except DataError as e:
            raise ConfigError(
                f"group {name!r} has {rows.size} rows: too few to split with test_fraction="
                f"{test_fraction} and val_fraction={val_fraction} ({e}); lower the fractions or "
                "drop the group"
            ) from None
        out[name] = GroupSplit(
            train=rows[parts["train"]],
            val=rows[parts["val"]] if "val" in parts else empty,
            test=rows[parts["test"]],
        )
    return out


def check_groups(names: Sequence[str], splits: dict[str, GroupSplit], where: str) -> None:
    unknown = [g for g in names if g not in splits]
    if unknown:
        raise ConfigError(
            f"{where}: unknown group(s) {', '.join(map(repr, unknown))}; the data has "
            f"{', '.join(map(repr, splits))}"
        )


def training_subset(
    splits: dict[str, GroupSplit], train_groups: Sequence[str], size: int, subset_seed: int
) -> np.ndarray:
    """Row indices of a training subset (``size`` 0: the whole pool), sorted."""
    names = [g for g in splits if g in set(train_groups)] if train_groups else list(splits)
    pool = np.concatenate([splits[g].train for g in names])
    if size > pool.size:
        raise ConfigError(
            f"train_size={size} is more than the {pool.size} training rows of group(s) "
            f"{', '.join(names)}; use a size <= {pool.size}"
        )
    if size <= 0:
        return pool
    order = np.random.default_rng([int(subset_seed), 7919]).permutation(pool.size)
    return np.sort(pool[order[:size]])
