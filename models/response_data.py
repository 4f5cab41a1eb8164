"""Drug response data for Uno and Combo: response tables joined to cell and drug features.

A response table (``response_data``, CSV or TSV) has one row per experiment: a cell line
(``Sample``), one or two drugs (``Drug1``, ``Drug2``), doses where the model takes them
(``Dose1``, ``Dose2``; e.g. log10 molar), the response (``Growth``, ``ComboScore``, ``AUC``,
...) and optionally the study it comes from (``Source``, selected by ``train_sources``).
Each cell and drug feature type is a table of its own, ``cell_<name>.tsv`` (or ``.csv``,
``.txt``) with the cell line id in the first column, and ``drug_<name>.tsv`` with the drug id
first; every other column is a numeric feature. The experiment rows are joined to the feature
rows by id; rows whose cell line or drug has no features are dropped (as the original did),
and the count is logged. In a two-drug model that allows single-drug experiments (Uno), an
empty ``Drug2`` (or no such column) means one drug: the second drug's features and dose are
zeros (after scaling). Feature tables and doses are scaled by ``scaling`` over their rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from candle import DataError
from candle.models._common import data_file, first_features, log, numeric, read_table

if TYPE_CHECKING:
    from candle.models.drug_response import ResponseParams

__all__ = ["ResponseData", "read_response_data", "synthetic_response_data"]


class ResponseData(Dataset):
    """Response rows joined lazily to feature tables: item ``i`` (or a list of rows) is
    ``({input name: features}, response)``; features are looked up per batch, so a table row
    is stored once however many experiments use it.

    Args:
        tables: feature type -> ``entities x width`` float32 tensor.
        index: input name -> ``n`` int64 row numbers into its type's table (-1: the last row,
            a zero row, for "no second drug"); for a dose (type ``dose``, no table) the
            ``n x 1`` float32 values themselves.
        inputs: input name -> feature type (doses: ``dose``).
        y: ``n`` float32 responses.
        sources: ``n`` study labels (the response table's ``Source``), or None.
    """

    supports_batch_indexing = True  # candle's loader then asks for whole batches at once

    def __init__(self, tables, index, inputs, y, rows=None, sources=None):
        self.tables, self.index, self.inputs, self.y = tables, index, inputs, y
        self.sources = sources
        self.rows = torch.arange(len(y)) if rows is None else torch.as_tensor(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        rows = self.rows[i]
        x = {}
        for name, kind in self.inputs.items():
            values = self.index[name][rows]
            x[name] = self.tables[kind][values] if kind in self.tables else values
        return x, self.y[rows]

    def subset(self, rows) -> ResponseData:
        return ResponseData(
            self.tables, self.index, self.inputs, self.y, self.rows[rows], self.sources
        )

    @property
    def widths(self) -> dict[str, int]:
        return {
            **{k: 1 for k in self.inputs.values()},
            **{k: t.shape[1] for k, t in self.tables.items()},
        }


def _feature_table(folder: str, kind: str, keep: int) -> tuple[dict[str, int], np.ndarray]:
    """(id -> row, ``entities x width`` features) of ``cell_<name>`` / ``drug_<name>``."""
    stem = kind.replace(".", "_")
    names = [f"{stem}.tsv", f"{stem}.csv", f"{stem}.txt"]
    found = [n for n in names if (Path(folder) / n).is_file()]
    path = data_file(folder, found[0] if found else names[0], f"{kind.split('.')[0]}_features")
    frame = read_table(path, low_memory=False)
    if frame.shape[1] < 2:
        raise DataError(f"'{path}' needs an id column and at least one feature column")
    ids = frame.iloc[:, 0].astype(str)
    if ids.duplicated().any():
        raise DataError(f"'{path}': id {ids[ids.duplicated()].iloc[0]!r} appears twice")
    values = numeric(frame.iloc[:, 1:], path, "feature")
    return {k: i for i, k in enumerate(ids)}, first_features(values, keep)


def read_response_data(
    p: ResponseParams, drugs: int, doses: bool, target: str, optional_drug2: bool = False
) -> tuple[dict, dict, dict, np.ndarray, np.ndarray | None]:
    """(tables, index, inputs, y, sources) of the files in ``p.data``; see the module
    docstring. ``sources`` is the ``Source`` column (as strings), or None without one.

    With ``optional_drug2``, a row without ``Drug2`` (or a table without the column) is a
    single-drug experiment: its second drug's index is -1 and its ``Dose2`` NaN."""
    path = data_file(p.data, p.response_data, "response_data")
    frame = read_table(path, low_memory=False)
    if optional_drug2 and drugs == 2:
        for column in ("Drug2", "Dose2") if doses else ("Drug2",):
            if column not in frame.columns:
                frame[column] = np.nan
    drug_cols = [f"Drug{j}" for j in range(1, drugs + 1)]
    dose_cols = [f"Dose{j}" for j in range(1, drugs + 1)] if doses else []
    needed = ["Sample", *drug_cols, *dose_cols, target]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(
            f"'{path}' lacks column(s) {missing}; a response table needs {needed} "
            f"(found {list(frame.columns)[:10]})"
        )
    frame = frame.dropna(subset=[target])
    if p.train_sources != ["all"]:
        if "Source" not in frame.columns:
            raise DataError(
                f"'{path}' has no Source column to select train_sources={p.train_sources} "
                "from; set train_sources=all"
            )
        found = sorted(set(frame["Source"].astype(str)))
        frame = frame[frame["Source"].isin(p.train_sources)]
        if frame.empty:
            raise DataError(f"'{path}': no rows of sources {p.train_sources} (found {found})")
    # (feature type, input name, id column): one cell input, one input per drug of a pair
    plan = [(f"cell.{n}", f"cell.{n}", "Sample") for n in p.cell_features]
    for n in p.drug_features:
        plan += [(f"drug.{n}", f"drug{j}.{n}", f"Drug{j}") for j in range(1, drugs + 1)]
    tables, ids, index, inputs = {}, {}, {}, {}
    keep = np.ones(len(frame), dtype=bool)
    for kind, name, column in plan:
        if kind not in tables:
            ids[kind], tables[kind] = _feature_table(p.data, kind, p.feature_subsample)
        given = frame[column].notna().to_numpy()
        rows = np.array(frame[column].astype(str).map(ids[kind]), dtype=float)
        absent = ~given & (column == "Drug2" and optional_drug2)  # a single-drug row
        rows[absent] = -1
        keep &= ~np.isnan(rows)
        index[name], inputs[name] = rows, kind
    if not keep.any():
        raise DataError(f"'{path}': no row's Sample and drugs all have features in {p.data}")
    if not keep.all():
        log.info("%s: %d of %d rows dropped (ids without features)", path, (~keep).sum(), len(keep))
    index = {name: rows[keep].astype(np.int64) for name, rows in index.items()}
    for j, column in enumerate(dose_cols, 1):
        optional = column == "Dose2" and optional_drug2
        dose = numeric(frame[[column]], path, "dose", missing_ok=optional)[keep]
        index[f"dose{j}"], inputs[f"dose{j}"] = dose, "dose"
    y = numeric(frame[[target]], path, "response")[keep, 0]
    sources = frame["Source"].astype(str).to_numpy()[keep] if "Source" in frame.columns else None
    return tables, index, inputs, y, sources


def synthetic_response_data(
    p: ResponseParams,
    drugs: int,
    doses: bool,
    widths: dict[str, int],
    optional_drug2: bool = False,
    factors: int = 3,
) -> tuple[dict, dict, dict, np.ndarray, np.ndarray | None]:
    """(tables, index, inputs, y, sources) with a planted signal: each cell line and drug has
    ``factors`` hidden properties, its feature tables are noisy random projections of them,
    and the response is ``tanh(sum over drugs of cell' M drug - sum of doses)`` plus noise.
    With ``optional_drug2``, half the experiments are single-drug ones (index -1, dose NaN).
    With ``p.synthetic_sources`` = k > 1 the cell lines are dealt to k studies (``study1``...),
    and an experiment's source is its cell line's study (as studies screen different cell
    lines); otherwise ``sources`` is None."""
    rng = np.random.default_rng(p.synthetic_seed)
    n = p.synthetic_samples
    hidden = {
        "cell": rng.normal(size=(p.synthetic_cells, factors)),
        "drug": rng.normal(size=(p.synthetic_drugs, factors)),
    }
    cells = rng.integers(0, p.synthetic_cells, n)
    # distinct drugs in each experiment: the first `drugs` of a random order of all drugs
    picked = rng.random((n, p.synthetic_drugs)).argsort(axis=1)[:, :drugs]
    if optional_drug2 and drugs == 2:
        picked[rng.random(n) < 0.5, 1] = -1
    used = picked >= 0  # n x drugs
    interaction = rng.normal(size=(factors, factors)) / factors
    signal = np.zeros(n)
    for j in range(drugs):
        c, d = hidden["cell"][cells], hidden["drug"][picked[:, j]]
        signal += used[:, j] * np.einsum("nk,kl,nl->n", c, interaction, d)
    tables, index, inputs = {}, {}, {}
    kinds = [f"cell.{f}" for f in p.cell_features] + [f"drug.{f}" for f in p.drug_features]
    for kind in kinds:
        entity = kind.split(".")[0]
        width = p.feature_subsample or widths.get(kind, 1000)
        loadings = rng.normal(size=(factors, width))
        noise = rng.normal(scale=0.5, size=(len(hidden[entity]), width))
        tables[kind] = (hidden[entity] @ loadings + noise).astype(np.float32)
        if entity == "cell":
            index[kind], inputs[kind] = cells, kind
        for j in range(drugs if entity == "drug" else 0):
            name = f"drug{j + 1}.{kind[5:]}"
            index[name], inputs[name] = picked[:, j], kind
    for j in range(drugs if doses else 0):
        dose = rng.uniform(-1.0, 1.0, n)
        signal -= used[:, j] * dose
        dose[~used[:, j]] = np.nan
        index[f"dose{j + 1}"], inputs[f"dose{j + 1}"] = dose.astype(np.float32)[:, None], "dose"
    y = np.tanh(signal) + rng.normal(scale=0.05, size=n)
    sources = None
    if p.synthetic_sources > 1:
        study = rng.permutation(p.synthetic_cells) % p.synthetic_sources + 1
        sources = np.array([f"study{k}" for k in study])[cells]
    return tables, index, inputs, y.astype(np.float32), sources
