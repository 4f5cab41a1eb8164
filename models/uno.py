"""Uno: drug response of a cell line to a drug or a pair of drugs, from cell and drug features.

After CANDLE's Pilot1 Uno benchmark. Inputs per experiment: the cell line's gene expression
(``cell.rnaseq``, 942 landmark genes in the original), each drug's molecular descriptors
(``drug1.descriptors``, 5,270 Dragon7 descriptors) and fingerprints (``drug1.fingerprints``,
2,048 bits), and the doses (``dose1``). Each feature type has one dense encoder tower, shared
by both drugs of a pair; a dense head predicts the growth.

As the original, the model has inputs for two drugs (``drug2.*``, ``dose2``) unless ``single``:
studies of drug pairs (NCI-ALMANAC) and of single drugs train together, and a single-drug
experiment gives its second drug zero features and dose (see
:mod:`candle.models.drug_response`). With ``agg_dose`` (e.g. ``AUC``) the target is that
dose-aggregated column of the response table, and doses are not inputs.

Data (``data``): ``synthetic`` (default; planted signal, original widths unless
``feature_subsample``, half the experiments single-drug), or a folder with ``response_data``
(columns ``Sample``, ``Drug1``, ``Dose1``, ``Growth``; optionally ``Drug2``, ``Dose2``,
``Source`` for ``train_sources``, or the ``agg_dose`` column) and the feature tables
``cell_rnaseq.tsv``, ``drug_descriptors.tsv``, ``drug_fingerprints.tsv`` (id first).

Run it: ``python -m candle train --trainer candle.models.uno:Uno epochs=3 feature_subsample=64``.
"""

from __future__ import annotations

from dataclasses import dataclass

from candle.config import param
from candle.models._common import base_field
from candle.models.drug_response import ResponseParams, ResponseTrainer

__all__ = ["ORIGINAL_WIDTHS", "Uno", "UnoParams"]

ORIGINAL_WIDTHS = {"cell.rnaseq": 942, "drug.descriptors": 5270, "drug.fingerprints": 2048}


@dataclass
class UnoParams(ResponseParams):
    cell_features: list[str] = param(["rnaseq"], help="cell feature types: cell_<name>.tsv")
    drug_features: list[str] = param(
        ["descriptors", "fingerprints"], help="drug feature types: drug_<name>.tsv"
    )
    single: bool = param(False, help="single-drug model: no drug2/dose2 inputs")
    agg_dose: str | None = param(
        None, help="a dose-aggregated response column (e.g. AUC) as target; None = Growth by dose"
    )
    batch_size: int = base_field("batch_size", 32)


class Uno(ResponseTrainer):
    params_class = UnoParams
    original_widths = ORIGINAL_WIDTHS
    optional_drug2 = True

    @property
    def drugs(self) -> int:
        return 1 if self.params.single else 2

    @property
    def doses(self) -> bool:
        return self.params.agg_dose is None

    @property
    def target(self) -> str:
        return self.params.agg_dose or super().target
