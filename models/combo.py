"""Combo: response of a cell line to a pair of drugs, with one drug tower shared by both.

After CANDLE's Pilot1 Combo benchmark (NCI-ALMANAC drug pairs on the NCI60 cell lines).
Inputs per experiment: the cell line's gene expression (``cell.expression``, 923 landmark
genes in the original's published run) and each drug's descriptors (``drug1.descriptors``,
``drug2.descriptors``; 3,809 Dragon7 descriptors). Both drugs go through the same descriptor
tower (shared weights); the encodings are concatenated and a dense head predicts the growth
(``ComboScore`` with ``use_combo_score``). No doses: as the original, each (cell line, drug
pair) has one response (the original kept the best dose combination). Synthetic defaults:
59 cell lines, 54 drugs, 85,303 experiments, as the original's data.

Data (``data``): ``synthetic`` (default; planted signal symmetric in the two drugs), or a
folder with ``response_data`` (columns ``Sample``, ``Drug1``, ``Drug2`` and ``Growth`` or
``ComboScore``) and ``cell_expression.tsv``, ``drug_descriptors.tsv`` (id first); see
:mod:`candle.models.drug_response` for the format.
"""

from __future__ import annotations

from dataclasses import dataclass

from candle.config import param
from candle.models._common import base_field
from candle.models.drug_response import ResponseParams, ResponseTrainer

__all__ = ["ORIGINAL_WIDTHS", "Combo", "ComboParams"]

ORIGINAL_WIDTHS = {"cell.expression": 923, "drug.descriptors": 3809}


@dataclass
class ComboParams(ResponseParams):
    cell_features: list[str] = param(["expression"], help="cell feature types: cell_<name>.tsv")
    drug_features: list[str] = param(["descriptors"], help="drug feature types: drug_<name>.tsv")
    synthetic_samples: int = param(85303, min=10, help="synthetic data: response rows")
    synthetic_cells: int = param(59, min=2, help="synthetic data: cell lines (NCI60)")
    synthetic_drugs: int = param(54, min=2, help="synthetic data: drugs (ALMANAC)")
    batch_size: int = base_field("batch_size", 32)


class Combo(ResponseTrainer):
    params_class = ComboParams
    original_widths = ORIGINAL_WIDTHS
