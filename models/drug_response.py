"""Drug response regression, the part Uno and Combo share: params, network and Trainer.

The data (response tables joined to feature tables) are read by
:mod:`candle.models.response_data`, which documents the file formats.

The network (:class:`ResponseNet`), after CANDLE's Uno and Combo: every feature type has a
dense encoder tower (``dense_feature_layers``); an input such as ``drug2.descriptors`` goes
through the tower of its type (``drug.descriptors``), so the drugs of a pair share weights.
Doses go in directly, without a tower. The encodings are concatenated and a dense head
(``dense``) predicts the response. Each dense layer is followed by ``activation``, optional
batch normalization and ``dropout``; with ``residual`` it adds its input to its output where
the widths match.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from candle import ConfigError, Trainer
from candle.config import param
from candle.data.splits import split_indices
from candle.models._common import (
    ACTIVATIONS,
    SCALINGS,
    DenseBlock,
    LegacyParams,
    base_field,
    initialize,
    scale,
)
from candle.models.response_data import (
    ResponseData,
    read_response_data,
    synthetic_response_data,
)

__all__ = ["ResponseNet", "ResponseParams", "ResponseTrainer"]


@dataclass
class ResponseParams(LegacyParams):
    data: str = param("synthetic", help="'synthetic', or the folder of the response and features")
    response_data: str = param("response.tsv", help="response table, in the `data` folder")
    cell_features: list[str] = param(["rnaseq"], help="cell feature types: cell_<name>.tsv")
    drug_features: list[str] = param(["descriptors"], help="drug feature types: drug_<name>.tsv")
    dense_feature_layers: list[int] = param([1000, 1000, 1000], min=1, help="tower widths")
    dense: list[int] = param([1000, 1000, 1000], min=1, help="head widths")
    activation: str = param("relu", choices=tuple(ACTIVATIONS))
    residual: bool = param(False, help="add each layer's input to its output (equal widths)")
    dropout: float = param(0.0, min=0.0, max=0.99, aliases=("drop",))
    batch_normalization: bool = param(False, help="batch norm after each dense layer")
    loss: str = param("mse", choices=("mse",))
    scaling: str = param("std", choices=SCALINGS, help="scaling of feature tables and doses")
    feature_subsample: int = param(
        0, min=0, help="keep the first N columns of each feature table (synthetic: N); 0 = all"
    )
    use_combo_score: bool = param(False, help="target: ComboScore instead of Growth")
    train_sources: list[str] = param(
        ["all"], help="studies to use: values of the response table's Source column, or all"
    )
    test_sources: list[str] = param(
        ["train"], choices=("train",), help="validation rows come from the training sources"
    )
    partition_by: str = param(
        "index",
        choices=("index", "cell", "drug", "overlapping", "disjoint"),
        aliases=("cv_partition",),
        help="validation rows: random (index, overlapping) or whole cell lines (cell, "
        "disjoint) or drugs (drug: by the first drug)",
    )
    val_split: float = param(0.2, min=0.01, max=0.99, aliases=("validation_split",))
    synthetic_samples: int = param(20000, min=10, help="synthetic data: response rows")
    synthetic_cells: int = param(500, min=2, help="synthetic data: cell lines")
    synthetic_drugs: int = param(200, min=2, help="synthetic data: drugs")
    synthetic_sources: int = param(
        1, min=1, help="synthetic data: studies the cell lines are dealt to (a Source column)"
    )
    optimizer: str = base_field("optimizer", "adam")
    # the original said None: Keras' default for Adam
    learning_rate: float | None = base_field("learning_rate", 0.001)
    epochs: int = base_field("epochs", 10)
    # Keys of the original configs that candle does otherwise; each accepts only the value
    # that means "off", and says what to use instead.
    cv: int = param(1, min=1, max=1, help="k-fold: use candle.tda (cross-validation plans)")
    reduce_lr: bool = param(False, help="not available: use lr_schedule (e.g. cosine, step)")
    warmup_lr: bool = param(False, help="not available: use warmup_steps")
    gen: bool = param(False, help="recorded only: candle always reads batches on demand")
    max_val_loss: float = param(1.0, help="recorded only (not used)")

    def validate(self) -> None:
        super().validate()
        for key, use in (("reduce_lr", "lr_schedule"), ("warmup_lr", "warmup_steps")):
            if getattr(self, key):
                raise ConfigError(f"'{key}' = True is not available in candle; use {use}")


# --------------------------------------------------------------------------- network


def _stack(width: int, layers: list[int], p: ResponseParams) -> tuple[nn.Sequential, int]:
    """Dense blocks from ``width`` through ``layers``, and the output width."""
    blocks = []
    for units in layers:
        blocks.append(
            DenseBlock(width, units, p.activation, p.dropout, p.residual, p.batch_normalization)
        )
        width = units
    return nn.Sequential(*blocks), width


class ResponseNet(nn.Module):
    """``forward(inputs)``: a dict of ``b x width`` tensors, one per input name
    (``cell.rnaseq``, ``drug1.descriptors``, ``dose1``, ...) -> predictions ``b`` (or
    ``b x outputs`` when ``outputs`` is given: a UQ member's head, a TDA regression).

    Args:
        inputs: input name -> feature type (``drug2.descriptors`` -> ``drug.descriptors``;
            types not starting with ``cell.`` or ``drug.`` have no tower).
        widths: feature type -> number of features.
    """

    def __init__(
        self,
        inputs: dict[str, str],
        widths: dict[str, int],
        p: ResponseParams,
        outputs: int | None = None,
    ):
        super().__init__()
        self.inputs = dict(inputs)
        self.towers = nn.ModuleDict()  # keys: the feature type with "_" for "."
        encoded = {}  # feature type -> width of its encoding
        for kind in dict.fromkeys(inputs.values()):  # each type once, in input order
            if kind.split(".")[0] in ("cell", "drug"):
                tower, encoded[kind] = _stack(widths[kind], p.dense_feature_layers, p)
                self.towers[kind.replace(".", "_")] = tower
            else:
                encoded[kind] = widths[kind]
        self.head, width = _stack(sum(encoded[k] for k in inputs.values()), p.dense, p)
        self.out = nn.Linear(width, outputs or 1)
        self.squeeze = outputs is None

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        encoded = []
        for name, kind in self.inputs.items():
            key = kind.replace(".", "_")
            encoded.append(self.towers[key](inputs[name]) if key in self.towers else inputs[name])
        out = self.out(self.head(torch.cat(encoded, dim=-1)))
        return out.squeeze(-1) if self.squeeze else out


# --------------------------------------------------------------------------- trainer


class ResponseTrainer(Trainer):
    """Regression of a response table's ``target`` on cell, drug (and dose) features.
    Subclasses set ``drugs`` (per experiment), ``optional_drug2`` (single-drug rows allowed
    in a two-drug model), ``doses`` and ``target``."""

    params_class = ResponseParams
    original_widths: ClassVar[dict[str, int]] = {}
    optional_drug2: ClassVar[bool] = False

    @property
    def drugs(self) -> int:
        return 2

    @property
    def doses(self) -> bool:
        return False

    @property
    def target(self) -> str:
        return "ComboScore" if self.params.use_combo_score else "Growth"

    @property
    def spec(self) -> tuple[int, bool, str]:
        return self.drugs, self.doses, self.target

    @functools.cached_property
    def dataset(self) -> ResponseData:
        p = self.params
        if p.data == "synthetic":
            widths = self.original_widths
            parts = synthetic_response_data(p, *self.spec[:2], widths, self.optional_drug2)
        else:
            parts = read_response_data(p, *self.spec, self.optional_drug2)
        tables, index, inputs, y, sources = parts
        for kind, table in tables.items():
            table = scale(table, how=p.scaling)[0]
            if kind.startswith("drug."):  # a zero row last: index -1 is "no second drug"
                table = np.vstack([table, np.zeros((1, table.shape[1]), np.float32)])
            tables[kind] = torch.from_numpy(table.astype(np.float32))
        for name, values in index.items():
            if inputs[name] == "dose":  # n x 1 values, scaled; no dose (single drug) is 0
                given = ~np.isnan(values[:, 0])
                scaled = np.zeros_like(values)
                if given.any():
                    scaled[given] = scale(values[given], how=p.scaling)[0]
                values = scaled
            index[name] = torch.from_numpy(values)
        return ResponseData(tables, index, inputs, torch.from_numpy(y), sources=sources)

    def build_network(self, outputs: int | None = None) -> ResponseNet:
        """The network for this data, with ``outputs`` outputs (None: one, squeezed)."""
        data, p = self.dataset, self.params
        return initialize(ResponseNet(data.inputs, data.widths, p, outputs), p.initialization)

    def build_model(self) -> nn.Module:
        return self.build_network()

    def holdout(self, rows: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``rows`` (of the whole data set) split into (kept, held out) by ``partition_by``:
        random rows, or whole cell lines (or first drugs), ``fraction`` of them held out."""
        p, data = self.params, self.dataset
        first = {name.split(".")[0]: ids for name, ids in data.index.items()}
        by = {"cell": "cell", "disjoint": "cell", "drug": "drug1"}.get(p.partition_by)
        groups = first[by][rows].numpy() if by else None  # index/overlapping: random rows
        parts = split_indices(
            len(rows),
            kind="random" if groups is None else "grouped",
            seed=p.split_seed,
            fractions=(1 - fraction, fraction),
            groups=groups,
        )
        return rows[parts["train"]], rows[parts["test"]]

    def build_data(self):
        data = self.dataset
        train, val = self.holdout(torch.arange(len(data)), self.params.val_split)
        self.val_variance = max(float(data.y[val].var(unbiased=False)), 1e-12)
        return data.subset(train), data.subset(val)

    def training_step(self, batch):
        x, y = batch
        return F.mse_loss(self.model(x), y)

    def validation_step(self, batch):
        x, y = batch
        error = self.model(x) - y
        mse = error.pow(2).mean()
        # 1 - mse / var(y_val): the batch-size-weighted mean over batches is the exact R^2
        return {"loss": mse, "mae": error.abs().mean(), "r2": 1 - mse / self.val_variance}
