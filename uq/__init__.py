"""candle.uq: uncertainty quantification with deep ensembles.

- :class:`UQTrainer` / :class:`UQParams` (:mod:`candle.uq.member`): a member that predicts a
  distribution (heteroscedastic Gaussian, quantiles or class probabilities, optionally with MC
  dropout) and writes its validation and test predictions;
- :mod:`candle.uq.posterior`: the ensemble's predictive distribution (mixture mean, aleatoric
  and epistemic variance, quantiles, intervals, samples; class probabilities with entropy and
  mutual information);
- :mod:`candle.uq.metrics`: NLL, RMSE, CRPS, coverage, calibration, sharpness, ECE, Brier;
- :mod:`candle.uq.recalibration`: variance scaling, isotonic, split-conformal, temperature;
- :mod:`candle.uq.driver` and ``python -m candle.uq``: members and sensitivity sweeps as
  trials on the workflow engine; :mod:`candle.uq.analysis` and :mod:`candle.uq.report`.
"""

from candle.uq.member import UQParams, UQTrainer
from candle.uq.posterior import (
    ClassificationPosterior,
    GaussianMixturePosterior,
    QuantilePrediction,
)

__all__ = [
    "ClassificationPosterior",
    "GaussianMixturePosterior",
    "QuantilePrediction",
    "UQParams",
    "UQTrainer",
]
