"""Small sizes of the reference models that train in seconds and still learn their planted
signals (shared by the tests of the models under UQ and training data analysis)."""

CONV = {"conv": [16, 5, 1, 16, 5, 1], "pool": [1, 5], "dense": [32], "optimizer": "adam"}
NT3_SMALL = {"feature_subsample": 200, "synthetic_samples": 400, **CONV}
RESPONSE_SMALL = {
    "feature_subsample": 32,
    "synthetic_samples": 1500,
    "synthetic_cells": 60,
    "synthetic_drugs": 40,
    "dense_feature_layers": [64, 64],
    "dense": [64, 64],
    "batch_size": 64,
}
