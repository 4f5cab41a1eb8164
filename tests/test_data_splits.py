"""Tests for candle.data.splits: kinds, rounding, determinism, IMPROVE files, staleness, errors."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from candle.data.splits import (
    kfold_splits,
    load_split,
    make_split,
    read_index_file,
    split_indices,
    write_index_file,
)
from candle.errors import CandleError, DataError

CHECKSUM = "xxh3_128:0123456789abcdef0123456789abcdef"


def _dataset(root: pathlib.Path, rows: int, checksum: str = CHECKSUM, **extra) -> pathlib.Path:
    """A fake dataset directory: only the manifest fields splits read."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({"rows": rows, "checksum": checksum, **extra}))
    return root


def _assert_partition(split: dict[str, np.ndarray], n: int) -> None:
    for idx in split.values():
        assert idx.dtype == np.int64
        assert np.array_equal(idx, np.unique(idx)), "sorted, no repeats"
        assert len(idx) > 0
    together = np.concatenate(list(split.values()))
    assert np.array_equal(np.sort(together), np.arange(n)), "disjoint and complete"


def _inputs(kind: str, n: int, rng: np.random.Generator) -> dict:
    if kind == "stratified":
        return {"labels": rng.choice(["sensitive", "resistant", "unknown"], n, p=[0.6, 0.3, 0.1])}
    if kind == "grouped":
        return {"groups": rng.integers(0, 40, n)}
    return {}


# ----------------------------------------------------------------------------- in memory

KINDS = ["random", "stratified", "grouped"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.7, 0.3), (0.34, 0.33, 0.33)])
def test_parts_are_disjoint_and_complete(kind, fractions):
    n = 503
    inputs = _inputs(kind, n, np.random.default_rng(0))
    split = split_indices(n, kind=kind, seed=1, fractions=fractions, **inputs)
    assert list(split) == (["train", "val", "test"] if len(fractions) == 3 else ["train", "test"])
    _assert_partition(split, n)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_split_other_seed_other_split(kind):
    n = 400
    inputs = _inputs(kind, n, np.random.default_rng(0))
    a = split_indices(n, kind=kind, seed=7, **inputs)
    b = split_indices(n, kind=kind, seed=7, **inputs)
    c = split_indices(n, kind=kind, seed=8, **inputs)
    assert all(np.array_equal(a[p], b[p]) for p in a)
    assert not np.array_equal(a["test"], c["test"])


_CHILD = """
import json, sys
import numpy as np
from candle.data.splits import split_indices, kfold_splits
rng = np.random.default_rng(0)
labels = rng.choice(["a", "b", "c"], 300)
groups = np.array([f"cell_{i}" for i in rng.integers(0, 30, 300)], dtype=object)
out = {
    "random": split_indices(300, seed=5),
    "stratified": split_indices(300, kind="stratified", seed=5, labels=labels),
    "grouped": split_indices(300, kind="grouped", seed=5, groups=groups),
    "kfold": kfold_splits(300, 5, seed=5, groups=groups)[3],
}
json.dump({k: {p: v.tolist() for p, v in s.items()} for k, s in out.items()}, sys.stdout)
"""


def test_same_split_in_another_process():
    """No hidden state: another interpreter (other hash seed) gets the same indices."""
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, check=True
    )
    child = json.loads(out.stdout)
    rng = np.random.default_rng(0)
    labels = rng.choice(["a", "b", "c"], 300)
    groups = np.array([f"cell_{i}" for i in rng.integers(0, 30, 300)], dtype=object)
    here = {
        "random": split_indices(300, seed=5),
        "stratified": split_indices(300, kind="stratified", seed=5, labels=labels),
        "grouped": split_indices(300, kind="grouped", seed=5, groups=groups),
        "kfold": kfold_splits(300, 5, seed=5, groups=groups)[3],
    }
    assert child == {k: {p: v.tolist() for p, v in s.items()} for k, s in here.items()}


@pytest.mark.parametrize(
    ("n", "fractions", "sizes"),
    [
        (10, (0.8, 0.1, 0.1), (8, 1, 1)),
        (100, (0.8, 0.1, 0.1), (80, 10, 10)),
        (11, (0.8, 0.1, 0.1), (9, 1, 1)),  # 8.8/1.1/1.1: the left-over row to the largest .8
        (15, (0.8, 0.1, 0.1), (12, 2, 1)),  # 12/1.5/1.5: a tie goes to the earlier part
        (10, (0.7, 0.2, 0.1), (7, 2, 1)),  # 10 * 0.7 = 7.000000000000001 is still 7
        (7, (0.5, 0.5), (4, 3)),
        (5, (0.8, 0.1, 0.1), (3, 1, 1)),  # 4/0.5/0.5 -> 4/1/0 would leave test empty
        (3, (0.98, 0.01, 0.01), (1, 1, 1)),
    ],
)
def test_random_sizes_follow_largest_remainder(n, fractions, sizes):
    split = split_indices(n, seed=0, fractions=fractions)
    assert tuple(len(v) for v in split.values()) == sizes


def test_stratified_keeps_class_proportions_within_one():
    rng = np.random.default_rng(3)
    for trial in range(40):
        n = int(rng.integers(50, 600))
        labels = rng.integers(0, int(rng.integers(2, 12)), n)
        fractions = (0.6, 0.25, 0.15) if trial % 2 else (0.8, 0.1, 0.1)
        split = split_indices(n, kind="stratified", seed=trial, fractions=fractions, labels=labels)
        _assert_partition(split, n)
        for fraction, idx in zip(fractions, split.values(), strict=True):
            assert abs(len(idx) - n * fraction) <= 1
            for c in np.unique(labels):
                expected = np.sum(labels == c) * fraction
                assert abs(np.sum(labels[idx] == c) - expected) <= 1, (trial, c)


def test_stratified_handles_classes_too_small_for_every_part():
    labels = np.array(["a"] * 40 + ["b"] * 40 + ["rare"] * 2 + ["single"])
    split = split_indices(len(labels), kind="stratified", seed=0, labels=labels)
    _assert_partition(split, len(labels))
    assert sum(np.sum(labels[idx] == "single") for idx in split.values()) == 1
    assert [np.sum(labels[idx] == "a") for idx in split.values()] == [32, 4, 4]
    # an n x 1 column of integral floats is accepted as labels
    column = np.repeat([0.0, 1.0], 50)[:, None]
    assert len(split_indices(100, kind="stratified", labels=column)["test"]) == 10


def test_grouped_keeps_groups_whole_and_sizes_near_fractions():
    rng = np.random.default_rng(4)
    sizes = rng.integers(5, 60, 120)  # 120 cell lines of 5..59 samples
    groups = np.array([f"cell_{g:03d}" for g in np.repeat(np.arange(120), sizes)])
    rng.shuffle(groups)
    n = len(groups)
    seen = set()
    for seed in range(5):
        split = split_indices(n, kind="grouped", seed=seed, groups=groups)
        _assert_partition(split, n)
        names = [set(groups[idx]) for idx in split.values()]
        assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
        for fraction, idx in zip((0.8, 0.1, 0.1), split.values(), strict=True):
            assert abs(len(idx) - n * fraction) <= sizes.max()
        seen.add(tuple(sorted(names[2])))
    assert len(seen) == 5, "each seed puts other cell lines in test"


def test_grouped_fills_every_part_even_with_lopsided_groups():
    groups = np.repeat(["big_1", "big_2", "tiny"], [50, 50, 1])
    split = split_indices(101, kind="grouped", seed=0, groups=groups)
    _assert_partition(split, 101)
    assert sorted(len(v) for v in split.values()) == [1, 50, 50]


# ----------------------------------------------------------------------------- k-fold


def test_kfold_random_folds_partition_the_rows():
    folds = kfold_splits(10, 3, seed=0)
    assert [len(f["val"]) for f in folds] == [4, 3, 3]
    vals = np.concatenate([f["val"] for f in folds])
    assert np.array_equal(np.sort(vals), np.arange(10))
    for f in folds:
        assert np.array_equal(np.union1d(f["train"], f["val"]), np.arange(10))
        assert not np.intersect1d(f["train"], f["val"]).size


def test_kfold_stratified_grouped_and_held_out_test():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 300)
    for fold in kfold_splits(300, 5, seed=1, labels=labels):
        for c in range(3):
            assert abs(np.sum(labels[fold["val"]] == c) - np.sum(labels == c) / 5) <= 1

    groups = rng.integers(0, 25, 300)
    folds = kfold_splits(300, 4, seed=1, groups=groups, test_fraction=0.2)
    test = folds[0]["test"]
    assert all(np.array_equal(f["test"], test) for f in folds), "one test part for every fold"
    assert abs(len(test) - 60) <= np.bincount(groups).max()
    val_groups = [set(groups[f["val"]]) for f in folds]
    assert sum(len(g) for g in val_groups) == len(set().union(*val_groups)), "a group in one fold"
    assert not set(groups[test]) & set().union(*val_groups)
    rest = np.setdiff1d(np.arange(300), test)
    assert np.array_equal(np.sort(np.concatenate([f["val"] for f in folds])), rest)

    with pytest.raises(DataError, match="at least 4 distinct groups"):
        kfold_splits(30, 4, seed=0, groups=np.repeat([1, 2, 3], 10))
    with pytest.raises(DataError, match=r"k .* must be an int >= 2, got 1"):
        kfold_splits(30, 1, seed=0)
    with pytest.raises(DataError, match=r"test_fraction must be a number in \[0, 1\), got 1.5"):
        kfold_splits(30, 3, seed=0, test_fraction=1.5)


# ----------------------------------------------------------------------------- files


def test_make_split_writes_improve_files_that_round_trip(tmp_path):
    root = _dataset(tmp_path / "CCLE", 200)
    made = make_split(root, seed=3, index=2)
    for part in ("train", "val", "test"):
        path = root / "splits" / f"CCLE_split_2_{part}.txt"
        with open(path) as f:
            assert f.read().split() == [str(i) for i in made[part]]
        assert read_index_file(path).tolist() == made[part]
    assert made == {p: v.tolist() for p, v in split_indices(200, seed=3).items()}
    loaded = load_split(root, index=2)
    assert {p: v.tolist() for p, v in loaded.items()} == made

    sidecar = json.loads((root / "splits" / "CCLE_split_2.json").read_text())
    assert sidecar["kind"] == "random" and sidecar["seed"] == 3
    assert sidecar["fractions"] == [0.8, 0.1, 0.1]
    assert sidecar["sizes"] == {"train": 160, "val": 20, "test": 20}
    assert sidecar["dataset_checksum"] == CHECKSUM
    assert sorted(p.name for p in (root / "splits").iterdir()) == [
        "CCLE_split_2.json",
        "CCLE_split_2_test.txt",
        "CCLE_split_2_train.txt",
        "CCLE_split_2_val.txt",
    ]


def test_make_split_names_from_manifest_and_records_groups(tmp_path):
    root = _dataset(tmp_path / "data", 90, name="gCSI")
    groups = np.repeat([f"drug_{i}" for i in range(9)], 10)
    made = make_split(
        root, kind="grouped", groups=groups, group_column="drug", fractions=(0.7, 0.3)
    )
    assert set(made) == {"train", "test"}
    assert (root / "splits" / "gCSI_split_0_train.txt").exists()
    assert not (root / "splits" / "gCSI_split_0_val.txt").exists()
    sidecar = json.loads((root / "splits" / "gCSI_split_0.json").read_text())
    assert sidecar["group_column"] == "drug" and sidecar["kind"] == "grouped"
    assert set(load_split(root)) == {"train", "test"}


def test_make_split_refuses_to_change_an_existing_split(tmp_path):
    root = _dataset(tmp_path / "ds", 50)
    first = make_split(root, seed=1)
    assert make_split(root, seed=1) == first, "making the same split again is harmless"
    with pytest.raises(DataError, match=r"ds_split_0_train\.txt already holds a different split"):
        make_split(root, seed=2)
    assert load_split(root)["train"].tolist() == first["train"]

    make_split(root, seed=2, fractions=(0.5, 0.5), overwrite=True)
    assert not (root / "splits" / "ds_split_0_val.txt").exists()
    assert set(load_split(root)) == {"train", "test"}


def test_split_is_stale_after_the_dataset_changes(tmp_path):
    root = _dataset(tmp_path / "ds", 100)
    make_split(root, seed=0)
    _dataset(root, 100, checksum="xxh3_128:ffffffffffffffffffffffffffffffff")
    with pytest.raises(DataError, match="stale") as info:
        load_split(root)
    assert "ds_split_0.json" in str(info.value)
    assert CHECKSUM in str(info.value)
    assert len(load_split(root, verify=False)["train"]) == 80


def test_edited_index_file_is_detected(tmp_path):
    root = _dataset(tmp_path / "ds", 100)
    made = make_split(root, seed=0)
    path = root / "splits" / "ds_split_0_test.txt"
    write_index_file(path, made["test"][:-1])
    with pytest.raises(DataError, match=r"ds_split_0_test\.txt changed after the split was made"):
        load_split(root)


def test_improve_files_without_sidecar_are_checked_for_range_and_overlap(tmp_path, caplog):
    root = _dataset(tmp_path / "ds", 10)
    splits = root / "splits"
    write_index_file(splits / "CTRP_split_4_train.txt", [0, 1, 2, 3, 4, 5])
    write_index_file(splits / "CTRP_split_4_val.txt", [6, 7])
    write_index_file(splits / "CTRP_split_4_test.txt", [8, 9])
    with caplog.at_level(logging.WARNING, logger="candle.data.splits"):
        split = load_split(root, name="CTRP", index=4)
    assert split["val"].tolist() == [6, 7]
    assert "no sidecar" in caplog.text

    write_index_file(splits / "CTRP_split_4_test.txt", [8, 10])
    with pytest.raises(DataError) as info:
        load_split(root, name="CTRP", index=4)
    message = str(info.value)
    assert "CTRP_split_4_test.txt" in message
    assert "index 10 is out of range for a dataset of 10 rows" in message

    write_index_file(splits / "CTRP_split_4_test.txt", [7, 8])
    with pytest.raises(DataError, match="share 1 rows"):
        load_split(root, name="CTRP", index=4)

    with pytest.raises(DataError, match=r"no split CTRP_split_5 .* available: CTRP_split_4"):
        load_split(root, name="CTRP", index=5)


def test_read_index_file_ignores_blank_lines_and_names_bad_lines(tmp_path):
    path = tmp_path / "x_split_0_train.txt"
    path.write_text("3\n\n 1 \n2\r\n")
    assert read_index_file(path).tolist() == [3, 1, 2]

    path.write_text("0\n1\n\n2.5\n")
    with pytest.raises(DataError, match=r"x_split_0_train\.txt, line 4: .* got '2\.5'"):
        read_index_file(path)
    path.write_text("0\n-1\n")
    with pytest.raises(DataError, match="line 2"):
        read_index_file(path)
    with pytest.raises(DataError, match=r"missing\.txt does not exist"):
        read_index_file(tmp_path / "missing.txt")


def test_write_index_file_rejects_non_indices(tmp_path):
    with pytest.raises(DataError, match="integers"):
        write_index_file(tmp_path / "a.txt", [0.5, 1.0])
    with pytest.raises(DataError, match="must be >= 0, got -2"):
        write_index_file(tmp_path / "a.txt", [1, -2])
    write_index_file(tmp_path / "empty.txt", [])
    assert read_index_file(tmp_path / "empty.txt").tolist() == []


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fractions": (0.8, 0.3)}, r"fractions must sum to 1, got \(0.8, 0.3\) \(sum 1.1\)"),
        ({"fractions": (0.9, -0.1, 0.2)}, r"must each be > 0, got \(0.9, -0.1, 0.2\): val is -0.1"),
        ({"fractions": (0.5, 0.2, 0.2, 0.1)}, "2 parts .* or 3"),
        ({"fractions": "abc"}, "2 or 3 numbers"),
        ({"kind": "stratifed", "labels": [0] * 20}, "did you mean 'stratified'"),
        ({"kind": "stratified"}, "kind='stratified' needs labels"),
        ({"labels": [0] * 20}, "labels are only used by kind='stratified'"),
        ({"kind": "stratified", "labels": [0] * 19}, "labels has 19 entries but there are 20"),
        ({"kind": "grouped", "groups": ["TCGA"] * 20}, "at least 3 distinct groups .* got 1"),
        ({"kind": "grouped", "groups": [1.0] * 19 + [np.nan]}, r"groups\[19\] is NaN"),
        ({"kind": "grouped", "groups": ["a"] * 19 + [None]}, "no None"),
        ({"kind": "stratified", "labels": np.linspace(0, 1, 20)}, "bin continuous targets"),
        ({"seed": -1}, "seed must be a non-negative int, got -1"),
        ({"seed": 1.5}, "seed must be a non-negative int"),
    ],
)
def test_bad_input_is_explained(kwargs, message):
    with pytest.raises(DataError, match=message):
        split_indices(20, **kwargs)


def test_too_few_rows_and_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="cannot split 2 rows into 3 non-empty parts"):
        split_indices(2)
    assert issubclass(DataError, CandleError)
    with pytest.raises(DataError, match=r"manifest\.json not found"):
        make_split(tmp_path / "nowhere")
    with pytest.raises(DataError, match="'rows' must be a non-negative int"):
        make_split(_dataset(tmp_path / "ds", rows=-5))
    root = _dataset(tmp_path / "ok", 30)
    with pytest.raises(DataError, match="group_column is only used by kind='grouped'"):
        make_split(root, group_column="cell_line")
    with pytest.raises(DataError, match="split name must"):
        make_split(root, name="../elsewhere")


@pytest.mark.skipif(
    importlib.util.find_spec("candle.data.dataset") is None,
    reason="candle.data.dataset (ShardDataset) is not written yet",
)
def test_make_split_reads_labels_and_groups_from_shards(tmp_path):
    import pandas as pd

    from candle.data.shards import pack

    rng = np.random.default_rng(0)
    n = 120
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "label": rng.choice(["tumor", "normal"], n, p=[0.7, 0.3]),
            "cell_line": rng.choice([f"cell_{i}" for i in range(12)], n),
        }
    )
    root = tmp_path / "nt3"
    pack(frame, root, target="label", group="cell_line")
    labels, cell_lines = frame["label"].to_numpy(), frame["cell_line"].to_numpy()

    stratified = make_split(root, kind="stratified", seed=0, index=0)
    for fraction, idx in zip((0.8, 0.1, 0.1), stratified.values(), strict=True):
        for c in ("tumor", "normal"):
            assert abs(np.sum(labels[idx] == c) - np.sum(labels == c) * fraction) <= 1

    grouped = make_split(root, kind="grouped", seed=0, index=1)
    names = [set(cell_lines[idx]) for idx in grouped.values()]
    assert sum(len(g) for g in names) == len(set(cell_lines)), "no cell line spans two parts"
    sidecar = json.loads((root / "splits" / "nt3_split_1.json").read_text())
    assert sidecar["group_column"] == "cell_line"
    with pytest.raises(DataError, match="groups its rows by 'cell_line', not 'drug'"):
        make_split(root, kind="grouped", group_column="drug", index=2)
    assert {p: v.tolist() for p, v in load_split(root, index=1).items()} == grouped
