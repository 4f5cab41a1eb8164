"""Train/val/test splits made once from a seed and saved as index files beside the dataset.

Every trial of a search, every ensemble member and every workflow that names the same split reads
the same rows. A split is three (or two) plain text files in the dataset directory, one row index
per line, named the way the IMPROVE project names its splits, plus a JSON sidecar::

    DIR/manifest.json                      {"rows": N, "checksum": "xxh3_128:...", ...}
    DIR/splits/<name>_split_<i>_train.txt  sorted 0-based row numbers, one per line
    DIR/splits/<name>_split_<i>_val.txt    (absent for a two-part train/test split)
    DIR/splits/<name>_split_<i>_test.txt
    DIR/splits/<name>_split_<i>.json       kind, seed, fractions, sizes, group column, the
                                           dataset checksum and each index file's checksum

The files, not the seed, are the split: NumPy does not promise the same random stream forever,
and IMPROVE tools (or people) can bring their own files. The sidecar lets :func:`load_split` see
a split made for other data (the dataset checksum changed) or an index file changed since.

Kinds (all from ``np.random.default_rng(seed)``, never a global RNG):

- ``random``: part sizes are ``n * fraction`` rounded by largest remainder: each part gets the
  floor, and the rows left over go one each to the parts with the largest fractional remainders
  (ties to the earlier part): at (0.8, 0.1, 0.1), 11 rows give 9/1/1 and 15 rows give 12/2/1.
- ``stratified``: the same rounding per class, so each class has ``n_c * fraction`` rows in
  every part within +-1. A class's left-over rows go to the parts that are furthest behind their
  overall target (classes visited in a seeded order), which keeps each part's total within +-1
  of ``n * fraction`` as well. A class with fewer rows than parts cannot appear in every part;
  its rows go where the totals need them. Labels are class ids (ints or strings); bin
  continuous targets first.
- ``grouped``: whole groups (cell lines, drugs, studies) go to one part. Groups are visited in
  a seeded random order and each joins the part furthest behind its target size, so part sizes
  miss their targets by at most about one group's size. (Visiting largest-first would fit the
  sizes more tightly but make the split nearly independent of the seed when group sizes
  differ, and different seeds must give different splits.)

No empty part: with at least as many rows (or groups) as parts, every part gets at least one
row; a part that rounding would leave empty takes one row from the largest part (tiny data only).
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from candle.checkpoint import atomic_write_text
from candle.data._hash import Hasher
from candle.errors import DataError

__all__ = [
    "KINDS",
    "kfold_splits",
    "load_split",
    "make_split",
    "read_index_file",
    "split_indices",
    "write_index_file",
]

#: Kinds of split :func:`split_indices` makes.
KINDS = ("random", "stratified", "grouped")
#: Version stored under ``"candle_split"`` in every sidecar.
FORMAT_VERSION = 1

logger = logging.getLogger("candle.data.splits")

_PARTS = {2: ("train", "test"), 3: ("train", "val", "test")}
_SPLITS_DIR = "splits"
_DECIMALS = 9  # round n * fraction so 10 * 0.7 = 7.000000000000001 counts as exactly 7


# --------------------------------------------------------------------------- in memory


def split_indices(
    n: int,
    *,
    kind: str = "random",
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    labels: np.ndarray | Sequence[Any] | None = None,
    groups: np.ndarray | Sequence[Any] | None = None,
) -> dict[str, np.ndarray]:
    """Split rows ``0..n-1`` into train/val/test (or train/test for two fractions).

    Args:
        n: number of rows.
        kind: ``"random"``, ``"stratified"`` (needs ``labels``) or ``"grouped"`` (needs
            ``groups``); see the module docstring for the rounding rules.
        seed: a non-negative int; the same inputs and seed give the same split everywhere.
        fractions: 2 or 3 positive numbers summing to 1: (train, test) or (train, val, test).
        labels: `n` class labels, for ``stratified``.
        groups: `n` group ids, for ``grouped``; a group never spans two parts.

    Returns:
        ``{"train": ..., "val": ..., "test": ...}``: sorted int64 arrays, disjoint, covering
        ``0..n-1``.
    """
    fractions = _check_fractions(fractions)
    parts = _PARTS[len(fractions)]
    part_of = _assign(n, kind, _rng(seed), fractions, labels, groups, unit="parts")
    return {name: np.flatnonzero(part_of == p) for p, name in enumerate(parts)}


def kfold_splits(
    n: int,
    k: int,
    *,
    seed: int,
    labels: np.ndarray | Sequence[Any] | None = None,
    groups: np.ndarray | Sequence[Any] | None = None,
    test_fraction: float = 0.0,
) -> list[dict[str, np.ndarray]]:
    """``k`` cross-validation folds: fold ``i`` validates on the ``i``-th of k disjoint parts.

    Folds are random, stratified (``labels`` given: each class spread evenly over the folds,
    within +-1) or grouped (``groups`` given: a group is in exactly one fold's ``val``). With
    ``test_fraction > 0`` the same kind of split first holds out a ``test`` part that every fold
    shares, and the folds cover the remaining rows.

    Returns:
        ``k`` dicts ``{"train", "val"[, "test"]}`` of sorted int64 arrays; the ``val`` parts
        are disjoint and together cover every row not in ``test``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise DataError(f"k (the number of folds) must be an int >= 2, got {k!r}")
    if labels is not None and groups is not None:
        raise DataError(
            "pass labels (stratified folds) or groups (grouped folds), not both; "
            "stratified-and-grouped folds are not supported"
        )
    kind = "stratified" if labels is not None else "grouped" if groups is not None else "random"
    rng = _rng(seed)
    pool = np.arange(_check_n(n, 1))
    test = None
    if isinstance(test_fraction, bool) or not (
        isinstance(test_fraction, (int, float)) and 0 <= test_fraction < 1
    ):
        raise DataError(f"test_fraction must be a number in [0, 1), got {test_fraction!r}")
    if test_fraction:
        tf = float(test_fraction)
        held = _assign(n, kind, rng, (1.0 - tf, tf), labels, groups, unit="parts")
        pool, test = np.flatnonzero(held == 0), np.flatnonzero(held == 1)
    labels = None if labels is None else _as_column(labels, n, "labels")[pool]
    groups = None if groups is None else _as_column(groups, n, "groups")[pool]
    fold_of = _assign(len(pool), kind, rng, (1.0 / k,) * k, labels, groups, unit="folds")
    folds = []
    for i in range(k):
        fold = {"train": pool[fold_of != i], "val": pool[fold_of == i]}
        if test is not None:
            fold["test"] = test
        folds.append(fold)
    return folds


def _assign(
    n: int,
    kind: str,
    rng: np.random.Generator,
    fractions: Sequence[float],
    labels: Any,
    groups: Any,
    *,
    unit: str,
) -> np.ndarray:
    """Part number (0..len(fractions)-1) of each of the ``n`` rows."""
    n_parts = len(fractions)
    n = _check_n(n, n_parts, unit)
    if kind not in KINDS:
        hint = difflib.get_close_matches(str(kind), KINDS, n=1, cutoff=0.5)
        fix = f"did you mean '{hint[0]}'?" if hint else "use " + ", ".join(map(repr, KINDS))
        raise DataError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}; {fix}")
    for given, needed_by in ((labels, "stratified"), (groups, "grouped")):
        arg = "labels" if needed_by == "stratified" else "groups"
        if given is None and kind == needed_by:
            raise DataError(f"kind='{needed_by}' needs {arg}: one per row ({n} rows)")
        if given is not None and kind != needed_by:
            raise DataError(f"{arg} are only used by kind='{needed_by}', got kind='{kind}'")
    fractions = np.asarray(fractions, dtype=np.float64)
    if kind == "grouped":
        return _assign_groups(_ids(groups, n, "groups"), fractions, rng, unit)
    ids = _ids(labels, n, "labels") if kind == "stratified" else np.zeros(n, dtype=np.int64)
    counts = _apportion(np.bincount(ids), fractions, rng)
    # Shuffle within each class: rows sorted by (class, random key) list every class's rows
    # contiguously in a random order; the first counts[c, 0] of class c go to part 0, and so on.
    order = np.lexsort((rng.random(n), ids))
    starts = np.concatenate(([0], np.cumsum(counts.sum(axis=1))[:-1]))
    sorted_ids = ids[order]
    rank = np.arange(n) - starts[sorted_ids]
    part_of = np.empty(n, dtype=np.int64)
    part_of[order] = (rank[:, None] >= np.cumsum(counts, axis=1)[sorted_ids]).sum(axis=1)
    return part_of


def _apportion(sizes: np.ndarray, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of each class in each part: `classes x parts`, rows summing to ``sizes``.

    Every entry is the floor or ceiling of ``size * fraction`` (+1 where that is an integer),
    so within +-1; a class's left-over rows go to the parts furthest behind their running
    target, which keeps the part totals within +-1 of ``n * fraction`` too.
    """
    counts = np.floor(np.round(np.outer(sizes, fractions), _DECIMALS)).astype(np.int64)
    given = np.zeros(len(fractions), dtype=np.int64)
    seen = 0
    for c in rng.permutation(len(sizes)):
        seen += int(sizes[c])
        left = int(sizes[c] - counts[c].sum())
        if left:
            behind = np.round(seen * fractions - (given + counts[c]), _DECIMALS)
            counts[c, np.argsort(-behind, kind="stable")[:left]] += 1
        given += counts[c]
    # No empty part (tiny n only: n * fraction < 1): take a row from the largest part.
    for p in np.flatnonzero(given == 0):
        q = int(np.argmax(given))
        c = int(np.argmax(counts[:, q]))
        counts[c, q] -= 1
        counts[c, p] += 1
        given[q] -= 1
        given[p] += 1
    return counts


def _assign_groups(
    ids: np.ndarray, fractions: np.ndarray, rng: np.random.Generator, unit: str
) -> np.ndarray:
    """Give each group whole to the part furthest behind its target, groups in seeded order."""
    sizes = np.bincount(ids)
    n_parts = len(fractions)
    if len(sizes) < n_parts:
        raise DataError(
            f"a grouped split into {n_parts} {unit} needs at least {n_parts} distinct groups "
            f"(a group never spans two {unit}), got {len(sizes)}; use fewer {unit} or a "
            "finer group column"
        )
    targets = fractions * sizes.sum()
    filled = np.zeros(n_parts, dtype=np.int64)
    part_of_group = np.empty(len(sizes), dtype=np.int64)
    order = rng.permutation(len(sizes))
    for i, g in enumerate(order):
        empty = np.flatnonzero(filled == 0)
        # Keep enough groups back to give every part at least one.
        choices = empty if len(order) - i <= len(empty) else np.arange(n_parts)
        behind = np.round(targets[choices] - filled[choices], _DECIMALS)
        p = int(choices[np.argmax(behind)])  # argmax: ties go to the earlier part
        part_of_group[g] = p
        filled[p] += sizes[g]
    return part_of_group[ids]


# --------------------------------------------------------------------------- checks


def _rng(seed: Any) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative int, got {seed!r}")
    return np.random.default_rng(int(seed))


def _check_n(n: Any, n_parts: int, unit: str = "parts") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise DataError(f"n (the number of rows) must be a non-negative int, got {n!r}")
    if n < n_parts:
        raise DataError(f"cannot split {n} rows into {n_parts} non-empty {unit}")
    return int(n)


def _check_fractions(fractions: Any) -> tuple[float, ...]:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise DataError(
            f"fractions must be 2 or 3 numbers, (train, test) or (train, val, test), "
            f"got {fractions!r}"
        ) from None
    shown = "(" + ", ".join(f"{v:g}" for v in values) + ")"
    if len(values) not in _PARTS:
        raise DataError(
            f"fractions must have 2 parts (train, test) or 3 (train, val, test), got {shown}"
        )
    for name, value in zip(_PARTS[len(values)], values, strict=True):
        if not (math.isfinite(value) and value > 0):
            raise DataError(f"fractions must each be > 0, got {shown}: {name} is {value:g}")
    total = math.fsum(values)
    if abs(total - 1.0) > 1e-6:
        raise DataError(f"fractions must sum to 1, got {shown} (sum {total:.6g})")
    return values


def _as_column(values: Any, n: int, what: str) -> np.ndarray:
    """``values`` as a 1-D array of ``n`` entries (an `n x 1` column is accepted)."""
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{what} must be one value per row (shape ({n},)), got shape {arr.shape}")
    if len(arr) != n:
        raise DataError(f"{what} has {len(arr)} entries but there are {n} rows; pass one per row")
    return arr


def _ids(values: Any, n: int, what: str) -> np.ndarray:
    """Dense class/group ids 0..k-1 for ``values`` (in sorted order of the distinct values)."""
    arr = _as_column(values, n, what)
    if arr.dtype.kind == "f":
        bad = np.flatnonzero(np.isnan(arr))
        if len(bad):
            raise DataError(f"{what}[{bad[0]}] is NaN; every row needs a value (drop or fill it)")
        if what == "labels" and not np.all(arr == np.round(arr)):
            example = arr[arr != np.round(arr)][0]
            raise DataError(
                f"stratified splits need class labels, got a continuous value {example:g}; "
                "bin continuous targets first, e.g. labels=np.digitize(y, np.quantile(y, "
                "[0.25, 0.5, 0.75]))"
            )
    try:
        _, ids = np.unique(arr, return_inverse=True)
    except TypeError as exc:
        raise DataError(f"{what} must be comparable values of one type (no None): {exc}") from None
    return ids.reshape(-1).astype(np.int64)


# --------------------------------------------------------------------------- index files


def write_index_file(path: str | os.PathLike[str], indices: np.ndarray | Sequence[int]) -> None:
    """Write one non-negative integer per line (the IMPROVE split format), atomically."""
    text, _ = _index_text(indices, Path(path))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def read_index_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Row indices from a file of one non-negative integer per line; blank lines are ignored.

    Returns:
        int64 array in file order.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"index file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read index file {path}: {exc}") from None
    values = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        word = line.strip()
        if not word:
            continue
        if not word.isascii() or not word.isdigit():
            raise DataError(
                f"{path}, line {lineno}: expected one non-negative integer row index per line, "
                f"got {word[:40]!r}"
            )
        values.append(int(word))
    return np.asarray(values, dtype=np.int64)


def _index_text(indices: Any, path: Path) -> tuple[str, str]:
    """File text and its checksum for ``indices``, after checking they are row numbers."""
    arr = np.asarray(indices)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise DataError(
            f"indices for {path} must be a 1-D array of integers, got dtype {arr.dtype} "
            f"and shape {arr.shape}"
        )
    if arr.size and arr.min() < 0:
        raise DataError(f"indices for {path} must be >= 0, got {int(arr.min())}")
    text = "".join(f"{int(i)}\n" for i in arr)
    h = Hasher()
    h.update(text.encode())
    return text, h.hexdigest()


# --------------------------------------------------------------------------- dataset splits


def make_split(
    dataset_dir: str | os.PathLike[str],
    *,
    kind: str = "random",
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    group_column: str | None = None,
    name: str | None = None,
    index: int = 0,
    labels: np.ndarray | Sequence[Any] | None = None,
    groups: np.ndarray | Sequence[Any] | None = None,
    overwrite: bool = False,
) -> dict[str, list[int]]:
    """Make a split of a dataset and save it as ``DIR/splits/<name>_split_<index>_<part>.txt``.

    ``labels`` (stratified) and ``groups`` (grouped) default to the dataset's own targets and
    groups (``group_column``, if given, must be the column the dataset groups by; with explicit
    ``groups`` it only names them in the sidecar). ``name`` defaults to the
    manifest's ``"name"``, else the directory's name. Making the same split again is harmless;
    a *different* split under an existing name and index raises unless ``overwrite=True``, so
    runs that already use it are never silently moved to other rows.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` (sorted row numbers).
    """
    root = Path(dataset_dir)
    manifest = _read_manifest(root)
    rows, checksum = _manifest_rows(manifest, root), manifest.get("checksum")
    if not isinstance(checksum, str) or not checksum:
        raise DataError(f"{root / 'manifest.json'} has no 'checksum'; re-create the dataset")
    name = _split_name(root, manifest, name)
    index = _check_index(index)
    if group_column is not None and kind != "grouped":
        raise DataError(f"group_column is only used by kind='grouped', got kind={kind!r}")
    if kind == "stratified" and labels is None:
        labels = _from_dataset(root, "targets")
    if kind == "grouped" and groups is None:
        schema_groups = (manifest.get("schema") or {}).get("groups") or {}
        column = schema_groups.get("name") if isinstance(schema_groups, Mapping) else None
        if group_column is not None and column is not None and group_column != column:
            raise DataError(
                f"{root} groups its rows by {column!r}, not {group_column!r}; pass "
                f"groups=... for {group_column!r} (one per row), or leave group_column out"
            )
        group_column = group_column or column
        groups = _from_dataset(root, "groups")
    parts = split_indices(
        rows, kind=kind, seed=seed, fractions=fractions, labels=labels, groups=groups
    )

    paths = _paths(root, name, index)
    texts = {p: _index_text(idx, paths[p]) for p, idx in parts.items()}
    stale = [p for p in ("train", "val", "test") if paths[p].exists()]
    changed = [p for p in stale if p not in texts or paths[p].read_text() != texts[p][0]]
    if changed and not overwrite:
        raise DataError(
            f"{paths[changed[0]]} already holds a different split; runs that use "
            f"{name}_split_{index} would silently change. Pass overwrite=True (candle data split "
            "--overwrite) to replace it, or choose another index (--index)"
        )
    paths["train"].parent.mkdir(parents=True, exist_ok=True)
    for p, (text, _) in texts.items():
        atomic_write_text(paths[p], text)
    for p in stale:
        if p not in texts:  # a two-part split replacing a three-part one
            paths[p].unlink()
    sidecar = {
        "candle_split": FORMAT_VERSION,
        "name": name,
        "index": index,
        "kind": kind,
        "seed": int(seed),
        "fractions": list(_check_fractions(fractions)),
        "parts": list(parts),
        "sizes": {p: len(idx) for p, idx in parts.items()},
        "group_column": group_column,
        "rows": rows,
        "dataset_checksum": checksum,
        "files": {p: {"file": paths[p].name, "checksum": texts[p][1]} for p in parts},
    }
    # Written last: index files whose checksums disagree with it were not finished together.
    atomic_write_text(paths["sidecar"], json.dumps(sidecar, indent=2) + "\n")
    logger.info("wrote split %s_split_%d (%s) to %s", name, index, kind, paths["sidecar"].parent)
    return {p: idx.tolist() for p, idx in parts.items()}


def load_split(
    dataset_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    index: int = 0,
    verify: bool = True,
) -> dict[str, np.ndarray]:
    """Read ``DIR/splits/<name>_split_<index>_{train,val,test}.txt`` (IMPROVE layout).

    With ``verify`` (the default) every index must be a row of the dataset (``0 <= i < rows``
    from ``manifest.json``), each row in at most one part, and, where the candle sidecar is
    present, the dataset checksum and each file's checksum must match what it recorded: a split
    made for other data, or edited since, raises :class:`DataError`. Splits without a sidecar
    (brought from IMPROVE) are checked for range and overlap only.

    Returns:
        ``{"train", "val", "test"}`` (or ``{"train", "test"}``) int64 arrays in file order.
    """
    root = Path(dataset_dir)
    if verify:
        manifest = _read_manifest(root)
    else:  # only for the default name; IMPROVE files may come without a manifest
        has_manifest = (root / "manifest.json").exists()
        manifest = _read_json(root / "manifest.json") if has_manifest else {}
    name = _split_name(root, manifest, name)
    index = _check_index(index)
    paths = _paths(root, name, index)
    sidecar = _read_sidecar(paths["sidecar"]) if paths["sidecar"].exists() else None
    if sidecar is not None:
        parts = list(sidecar["parts"])
    else:
        parts = [p for p in ("train", "val", "test") if paths[p].exists()]
        if "train" not in parts:
            raise DataError(_missing_split_message(root, name, index))
    split = {p: read_index_file(paths[p]) for p in parts}
    if not verify:
        return split

    rows = _manifest_rows(manifest, root)
    for p, idx in split.items():
        if len(idx) and idx.max() >= rows:
            raise DataError(
                f"{paths[p]}: index {int(idx.max())} is out of range for a dataset of {rows} rows "
                f"(valid: 0..{rows - 1}); the split was made for other data: re-make it"
            )
        uniq, counts = np.unique(idx, return_counts=True)
        if len(uniq) < len(idx):
            raise DataError(f"{paths[p]}: row {int(uniq[counts > 1][0])} is listed twice")
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            shared = np.intersect1d(split[a], split[b])
            if len(shared):
                raise DataError(
                    f"{paths[a]} and {paths[b]} share {len(shared)} rows (e.g. {int(shared[0])}); "
                    "parts of a split must be disjoint"
                )
    if sidecar is None:
        logger.warning(
            "%s has no sidecar %s: cannot tell whether the split matches the current data",
            paths["train"],
            paths["sidecar"].name,
        )
        return split
    if sidecar.get("dataset_checksum") != manifest.get("checksum"):
        raise DataError(
            f"{paths['sidecar']}: the split was made for dataset checksum "
            f"{sidecar.get('dataset_checksum')} but {root / 'manifest.json'} now has "
            f"{manifest.get('checksum')}; the data changed, so the split is stale: re-make it "
            "with make_split(..., overwrite=True) or use another index"
        )
    for p in parts:
        _, digest = _index_text(split[p], paths[p])
        recorded = sidecar["files"][p].get("checksum")
        if digest != recorded:
            raise DataError(
                f"{paths[p]} changed after the split was made (checksum {digest}, sidecar "
                f"{paths['sidecar'].name} records {recorded}); re-make the split, or delete the "
                "sidecar to accept the files as they are"
            )
    return split


def _paths(root: Path, name: str, index: int) -> dict[str, Path]:
    base = root / _SPLITS_DIR / f"{name}_split_{index}"
    paths = {p: base.with_name(f"{base.name}_{p}.txt") for p in ("train", "val", "test")}
    paths["sidecar"] = base.with_name(f"{base.name}.json")
    return paths


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise DataError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return dict(data)


def _read_manifest(root: Path) -> dict[str, Any]:
    if not (root / "manifest.json").exists():
        raise DataError(
            f"{root / 'manifest.json'} not found: {root} is not a candle dataset directory "
            "(make one with `candle data pack`)"
        )
    return _read_json(root / "manifest.json")


def _manifest_rows(manifest: Mapping[str, Any], root: Path) -> int:
    rows = manifest.get("rows")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise DataError(
            f"{root / 'manifest.json'}: 'rows' must be a non-negative int, got {rows!r}"
        )
    return rows


def _read_sidecar(path: Path) -> dict[str, Any]:
    sidecar = _read_json(path)
    parts, files = sidecar.get("parts"), sidecar.get("files")
    if (
        not isinstance(parts, list)
        or tuple(parts) not in _PARTS.values()
        or not isinstance(files, Mapping)
        or any(not isinstance(files.get(p), Mapping) for p in parts)
    ):
        raise DataError(
            f"{path} is not a candle split sidecar (needs 'parts' and 'files'); delete it to "
            "load the index files unchecked"
        )
    return sidecar


def _split_name(root: Path, manifest: Mapping[str, Any], name: str | None) -> str:
    if name is None:
        name = manifest.get("name") or root.resolve().name
    if not isinstance(name, str) or not name or name[0] == "." or {"/", "\\"} & set(name):
        raise DataError(
            f"split name must be a non-empty file name part without '/', '\\' or a leading "
            f"'.', got {name!r}"
        )
    return name


def _check_index(index: Any) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise DataError(f"split index must be a non-negative int, got {index!r}")
    return int(index)


def _missing_split_message(root: Path, name: str, index: int) -> str:
    found = sorted(
        p.name[: -len("_train.txt")] for p in (root / _SPLITS_DIR).glob("*_split_*_train.txt")
    )
    available = ", ".join(found) if found else "none"
    return (
        f"no split {name}_split_{index} in {root / _SPLITS_DIR} "
        f"(missing {name}_split_{index}_train.txt); available: {available}"
    )


def _from_dataset(root: Path, what: str) -> np.ndarray:
    """The dataset's targets or groups, read through ``ShardDataset`` (imported lazily)."""
    try:
        from candle.data.dataset import ShardDataset
    except ImportError as exc:
        raise DataError(
            f"cannot read {what} from {root} ({exc}); pass "
            f"{'labels' if what == 'targets' else 'groups'}=... explicitly"
        ) from None
    dataset = ShardDataset(root)
    try:
        values = dataset.targets() if what == "targets" else dataset.groups()
    finally:
        dataset.close()
    if values is None:
        arg, option = ("labels", "target") if what == "targets" else ("groups", "group")
        raise DataError(
            f"{root} was packed without {what}; pass {arg}=... (one per row), or re-pack it "
            f"with pack(..., {option}=<column>)"
        )
    return np.asarray(values)
