"""candle.models: reference applications, and the registry that lets workflows name them.

A study can say ``trainer: nt3`` instead of ``trainer: candle.models.nt3:NT3``;
:func:`register` also takes a user's own Trainers. The reference models, after the CANDLE
benchmarks (each module's docstring gives its architecture, parameters and data formats):

- ``nt3`` (:mod:`candle.models.nt3`): 1D CNN, normal vs tumor from gene expression.
- ``tc1`` (:mod:`candle.models.tc1`): 1D CNN, tumor type; also on NCI60 from the ISLP package.
- ``p1b1`` (:mod:`candle.models.p1b1`): autoencoder (plain or variational) of gene expression.
- ``uno`` (:mod:`candle.models.uno`): drug response from cell, drug and dose features.
- ``combo`` (:mod:`candle.models.combo`): drug-pair response with a shared drug tower.

Each model also comes as a UQ member (:mod:`candle.uq.models`) and as a training data analysis
trainer (:mod:`candle.tda.models`): ``trainer: nt3`` in a UQ file or a TDA plan names those.

Modules are imported only when a model is used: the registry (:mod:`candle.registry`, in the
core, re-exported here) holds ``module:Class`` strings.
"""

from candle.registry import REGISTRY, WORKFLOWS, register, trainer_path

__all__ = ["REGISTRY", "WORKFLOWS", "register", "trainer_path"]
