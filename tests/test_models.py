"""The reference models: they learn planted signals, match the original architectures'
parameter counts at full size, read legacy CANDLE configs, and are named by the registry."""

import numpy as np
import pytest
import torch

from candle import ConfigError, Trainer, load_params
from candle.cli import import_trainer
from candle.config import save_params
from candle.models import REGISTRY, register, trainer_path
from candle.models._common import count_parameters
from candle.models.combo import Combo, ComboParams
from candle.models.drug_response import ResponseNet
from candle.models.nt3 import NT3, NT3Params
from candle.models.nt3 import build_network as nt3_network
from candle.models.p1b1 import P1B1, P1B1Params
from candle.models.p1b1 import build_network as p1b1_network
from candle.models.tc1 import TC1, TC1Params
from candle.models.uno import Uno, UnoParams
from candle.workflow import run_study

QUIET = {"progress_bar": False, "tensorboard": False, "metrics_log": "off"}


# --------------------------------------------------------------------------- learning


def test_nt3_learns_planted_signal():
    small = {"conv": [16, 5, 1, 16, 5, 1], "pool": [1, 5], "dense": [32]}
    trainer = NT3(
        feature_subsample=200, synthetic_samples=400, epochs=5, optimizer="adam", **small, **QUIET
    )
    result = trainer.fit()
    assert result.last_metrics["val_accuracy"] >= 0.8  # chance: 0.5


def test_tc1_learns_planted_signal():
    small = {"conv": [16, 5, 1], "pool": [5], "dense": [32]}
    trainer = TC1(
        classes=6,
        feature_subsample=300,
        synthetic_samples=600,
        epochs=5,
        optimizer="adam",
        **small,
        **QUIET,
    )
    result = trainer.fit()
    assert result.last_metrics["val_accuracy"] >= 0.6  # chance: 1/6


@pytest.mark.parametrize("model", ["ae", "vae"])
def test_p1b1_reconstructs_held_out_profiles(model):
    trainer = P1B1(
        model=model,
        activation="tanh",
        scaling="std",
        dense=[64, 16],
        feature_subsample=300,
        synthetic_samples=800,
        batch_size=50,
        epochs=8,
        learning_rate=0.003,
        **QUIET,
    )
    result = trainer.fit()
    x_train, x_val = trainer.arrays
    # the baseline: every profile predicted by the mean training profile
    baseline = np.mean([np.corrcoef(x_train.mean(0), row)[0, 1] for row in x_val])
    assert result.last_metrics["val_corr"] >= max(baseline, 0.0) + 0.5


@pytest.mark.parametrize("cls", [Uno, Combo])
def test_drug_response_models_learn_planted_signal(cls):
    trainer = cls(
        feature_subsample=32,
        synthetic_samples=1500,
        synthetic_cells=60,
        synthetic_drugs=40,
        dense_feature_layers=[64, 64],
        dense=[64, 64],
        batch_size=64,
        epochs=4,
        **QUIET,
    )
    result = trainer.fit()
    assert result.last_metrics["val_r2"] >= 0.6


def test_uno_learns_across_unseen_cell_lines():
    trainer = Uno(
        feature_subsample=16,
        synthetic_samples=1500,
        synthetic_cells=80,
        synthetic_drugs=30,
        dense_feature_layers=[32],
        dense=[32],
        residual=True,
        batch_size=64,
        epochs=4,
        partition_by="cell",
        **QUIET,
    )
    data = trainer.dataset
    train, val = trainer.build_data()
    cells = data.index["cell.rnaseq"]
    assert not set(cells[train.rows].tolist()) & set(cells[val.rows].tolist())
    assert trainer.fit().last_metrics["val_r2"] >= 0.3


# --------------------------------------------------------------------------- full-size counts


def conv1d(filters, kernel, channels_in):
    return filters * (kernel * channels_in + 1)


def dense(units, n_in):
    return units * (n_in + 1)


def test_nt3_parameter_count_matches_the_original():
    # Original NT3: 60,483 genes; Conv1D(128, 20) -> pool 1 -> Conv1D(128, 10) -> pool 10
    # -> Flatten -> Dense(200) -> Dense(20) -> Dense(2), 'valid' padding, stride 1.
    length = 60483 - 20 + 1
    length = (length - 10 + 1) // 10
    expected = (
        conv1d(128, 20, 1)
        + conv1d(128, 10, 128)
        + dense(200, 128 * length)
        + dense(20, 200)
        + dense(2, 20)
    )
    with torch.device("meta"):
        net = nt3_network(NT3Params(), 60483)
    assert count_parameters(net) == expected == 154_922_918


def test_tc1_parameter_count_matches_the_original():
    # tc1_default_model.txt: NT3's layers, 36 outputs
    length = ((60483 - 20 + 1) - 10 + 1) // 10
    expected = (
        conv1d(128, 20, 1)
        + conv1d(128, 10, 128)
        + dense(200, 128 * length)
        + dense(20, 200)
        + dense(36, 20)
    )
    with torch.device("meta"):
        net = nt3_network(TC1Params(), 60483)
    assert count_parameters(net) == expected


@pytest.mark.parametrize("model", ["ae", "vae"])
def test_p1b1_parameter_count_matches_the_original(model):
    n = 60483
    encoder = dense(2000, n) + dense(600, 2000)
    latent = dense(2, 600) * (2 if model == "vae" else 1)  # z_mean (+ z_log_var)
    decoder = dense(600, 2) + dense(2000, 600) + dense(n, 2000)
    with torch.device("meta"):
        net = p1b1_network(P1B1Params(model=model), n)
    assert count_parameters(net) == encoder + latent + decoder


def tower(n_in, layers=(1000, 1000, 1000)):
    total = 0
    for units in layers:
        total, n_in = total + dense(units, n_in), units
    return total


UNO_WIDTHS = {"dose": 1, "cell.rnaseq": 942, "drug.descriptors": 5270, "drug.fingerprints": 2048}


def uno_inputs(drugs):
    inputs = {f"dose{j}": "dose" for j in range(1, drugs + 1)}
    inputs["cell.rnaseq"] = "cell.rnaseq"
    for j in range(1, drugs + 1):
        inputs[f"drug{j}.descriptors"] = "drug.descriptors"
        inputs[f"drug{j}.fingerprints"] = "drug.fingerprints"
    return inputs


def test_uno_parameter_count_matches_the_original():
    # Towers: rnaseq 942, descriptors 5270, fingerprints 2048, each shared by both drugs;
    # the doses join the encodings. Uno's README prints 21,275,001 for this model.
    towers = tower(942) + tower(5270) + tower(2048)
    expected = towers + tower(2 + 5 * 1000) + dense(1, 1000)
    with torch.device("meta"):
        net = ResponseNet(uno_inputs(2), UNO_WIDTHS, UnoParams())
    assert count_parameters(net) == expected == 21_275_001
    single = towers + tower(1 + 3 * 1000) + dense(1, 1000)
    with torch.device("meta"):
        net = ResponseNet(uno_inputs(1), UNO_WIDTHS, UnoParams(single=True))
    assert count_parameters(net) == single == 19_274_001


def test_uno_trainer_builds_the_inputs_the_original_had():
    small = {"feature_subsample": 4, "synthetic_samples": 20, "synthetic_cells": 3}
    pairs, single = Uno(synthetic_drugs=3, **small), Uno(single=True, synthetic_drugs=3, **small)
    assert sorted(pairs.dataset.inputs) == sorted(uno_inputs(2))
    assert sorted(single.dataset.inputs) == sorted(uno_inputs(1))
    auc = Uno(agg_dose="AUC", synthetic_drugs=3, **small)
    assert "dose1" not in auc.dataset.inputs


def test_combo_parameter_count_matches_the_original_with_one_shared_drug_tower():
    # Combo's README prints 13,742,001 for expression 923 and descriptors 3809 wide
    expected = tower(923) + tower(3809) + tower(3 * 1000) + dense(1, 1000)
    inputs = {
        "cell.expression": "cell.expression",
        "drug1.descriptors": "drug.descriptors",
        "drug2.descriptors": "drug.descriptors",
    }
    widths = {"cell.expression": 923, "drug.descriptors": 3809}
    with torch.device("meta"):
        net = ResponseNet(inputs, widths, ComboParams())
    assert sorted(net.towers) == ["cell_expression", "drug_descriptors"]
    assert count_parameters(net) == expected == 13_742_001


def test_combo_applies_the_same_tower_to_both_drugs():
    trainer = Combo(
        feature_subsample=8,
        synthetic_samples=50,
        synthetic_cells=5,
        synthetic_drugs=6,
        dense_feature_layers=[4],
        dense=[4],
        **QUIET,
    )
    net = trainer.build_model().eval()
    x, _ = trainer.dataset[list(range(10))]
    swapped = {**x, "drug1.descriptors": x["drug2.descriptors"]}
    swapped["drug2.descriptors"] = x["drug1.descriptors"]
    tower = net.towers["drug_descriptors"]
    encoded = torch.cat([tower(x["drug1.descriptors"]), tower(x["drug2.descriptors"])], -1)
    encoded_swapped = torch.cat(
        [tower(swapped["drug2.descriptors"]), tower(swapped["drug1.descriptors"])], -1
    )
    assert torch.equal(encoded, encoded_swapped)
    assert net(x).shape == (10,)


# --------------------------------------------------------------------------- legacy configs

# The keys (and values) of the original CANDLE default_model.txt files.
NT3_INI = """\
[Global_Params]
data_url = 'http://ftp.mcs.anl.gov/pub/candle/public/benchmarks/Pilot1/normal-tumor/'
train_data = 'nt_train2.csv'
test_data = 'nt_test2.csv'
model_name = 'nt3'
conv = [128, 20, 1, 128, 10, 1]
dense = [200,20]
activation = 'relu'
out_activation = 'softmax'
loss = 'categorical_crossentropy'
optimizer = 'sgd'
metrics = 'accuracy'
epochs = 400
batch_size = 20
learning_rate = 0.001
dropout = 0.1
classes = 2
pool = [1, 10]
output_dir = '.'
timeout = 3600
"""

TC1_INI = """\
[Global_Params]
data_url = 'http://ftp.mcs.anl.gov/pub/candle/public/benchmarks/Pilot1/type-class/'
train_data = 'type_18_300_train.csv'
test_data = 'type_18_300_test.csv'
model_name = 'tc1'
conv=[128, 20, 1, 128, 10, 1]
dense=[200,20]
activation='relu'
out_activation='softmax'
loss='categorical_crossentropy'
optimizer='sgd'
metrics='accuracy'
epochs=400
batch_size=20
dropout=0.1
classes=36
feature_subsample=0
pool=[1, 10]
output_dir='.'
"""

P1B1_INI = """\
[Global_Params]
dense=[2000, 600]
batch_size=100
epochs=100
activation='relu'
loss='mse'
optimizer='adam'
drop=0
learning_rate=None
base_lr=None
scaling='minmax'
model='vae'
noise_factor=0
validation_split=0.1
epsilon_std=1.0
rng_seed=2017
initialization='glorot_uniform'
latent_dim=2
feature_subsample=0
batch_normalization=False

[Monitor_Params]
solr_root=''
"""

UNO_INI = """\
[Global_Params]
train_sources=['GDSC', 'CTRP', 'ALMANAC']
test_sources=['train']
cell_features=['rnaseq']
drug_features=['descriptors', 'fingerprints']
dense=[1000, 1000, 1000]
dense_feature_layers=[1000, 1000, 1000]
activation='relu'
loss='mse'
optimizer='adam'
scaling='std'
drop=0
epochs=10
batch_size=32
validation_split=0.2
cv=1
max_val_loss=1.0
learning_rate=None
base_lr=None
residual=False
reduce_lr=False
warmup_lr=False
batch_normalization=False
feature_subsample=0
rng_seed=2018
save='save/uno'
gen=False
use_combo_score=False

[Monitor_Params]
solr_root=''
timeout=3600
"""

COMBO_INI = """\
[Global_Params]
cell_features=['expression']
drug_features=['descriptors']
dense=[1000, 1000, 1000]
dense_feature_layers=[1000, 1000, 1000]
activation='relu'
loss='mse'
optimizer='adam'
scaling='std'
drop=0
epochs=10
batch_size=32
validation_split=0.2
cv=1
cv_partition='overlapping'
max_val_loss=1.0
learning_rate=None
base_lr=None
residual=False
reduce_lr=False
warmup_lr=False
batch_normalization=False
feature_subsample=0
rng_seed=2017
save='save/combo'
gen=False
use_combo_score=False
verbose = False

[Monitor_Params]
solr_root=''
timeout=3600
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_legacy_nt3_default_model_txt_loads(tmp_path):
    p = load_params(NT3Params, file=write(tmp_path, "nt3_default_model.txt", NT3_INI), env={})
    assert (p.conv, p.pool, p.dense) == ([128, 20, 1, 128, 10, 1], [1, 10], [200, 20])
    assert (p.dropout, p.classes, p.optimizer, p.learning_rate) == (0.1, 2, "sgd", 0.001)
    assert (p.epochs, p.batch_size, p.experiment, p.output_dir) == (400, 20, "nt3", ".")
    assert p.time_limit == 3600 and p.data_url.startswith("http://ftp.mcs")


def test_legacy_configs_of_the_other_models_load(tmp_path):
    tc1 = load_params(TC1Params, file=write(tmp_path, "tc1_default_model.txt", TC1_INI), env={})
    assert (tc1.conv, tc1.pool, tc1.classes) == ([128, 20, 1, 128, 10, 1], [1, 10], 36)
    assert tc1.learning_rate == 0.01  # not in the file: Keras' SGD default
    p1b1 = load_params(P1B1Params, file=write(tmp_path, "p1b1.txt", P1B1_INI), env={})
    assert (p1b1.model, p1b1.dense, p1b1.latent_dim, p1b1.seed) == ("vae", [2000, 600], 2, 2017)
    assert (p1b1.learning_rate, p1b1.val_split, p1b1.dropout) == (0.001, 0.1, 0.0)
    uno = load_params(UnoParams, file=write(tmp_path, "uno_default_model.txt", UNO_INI), env={})
    assert uno.drug_features == ["descriptors", "fingerprints"] and uno.agg_dose is None
    assert uno.train_sources == ["GDSC", "CTRP", "ALMANAC"] and uno.output_dir == "save/uno"
    assert (uno.dense_feature_layers, uno.seed, uno.time_limit) == ([1000] * 3, 2018, 3600)
    combo = load_params(ComboParams, file=write(tmp_path, "combo.txt", COMBO_INI), env={})
    assert (combo.cell_features, combo.val_split, combo.partition_by) == (
        ["expression"],
        0.2,
        "overlapping",
    )
    assert combo.progress_bar is False and combo.learning_rate == 0.001


def test_legacy_keys_candle_does_otherwise_say_what_to_use():
    with pytest.raises(ConfigError, match=r"'reduce_lr' = True is not available.*lr_schedule"):
        Uno(reduce_lr=True)
    with pytest.raises(ConfigError, match="'cv' must be <= 1"):
        Combo(cv=5)
    with pytest.raises(ConfigError, match="'test_sources' must be one of train"):
        Uno(test_sources=["CCLE"])


def test_legacy_config_trains_after_overrides(tmp_path):
    path = write(tmp_path, "nt3_default_model.txt", NT3_INI)
    small = ["conv=[4,5,1]", "pool=[4]", "dense=[8]", "feature_subsample=50", "epochs=1"]
    p = load_params(NT3Params, argv=[str(path), *small, "synthetic_samples=40"], env={})
    result = NT3(p, **QUIET).fit()
    assert result.status == "completed" and "val_accuracy" in result.last_metrics


def test_unknown_legacy_key_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "nt3.txt", NT3_INI + "conv_layers = [1, 2]\n")
    with pytest.raises(ConfigError, match=r"unknown parameter 'conv_layers' \(from .*nt3.txt\)"):
        load_params(NT3Params, file=path, env={})


def test_bad_architecture_values_are_refused():
    with pytest.raises(ConfigError, match="triples"):
        NT3(conv=[128, 20])
    with pytest.raises(ConfigError, match="'pool' needs one size per conv layer"):
        NT3(pool=[1, 2, 3])
    with pytest.raises(ConfigError, match="'model' must be one of ae, vae"):
        P1B1(model="cvae")
    with pytest.raises(ConfigError, match="leaves no positions"):
        nt3_network(NT3Params(conv=[4, 20, 1], pool=[1]), 10)


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", ["nt3", "tc1", "p1b1", "uno", "combo"])
def test_registry_names_every_model(name):
    cls = import_trainer(trainer_path(name))
    assert issubclass(cls, Trainer)
    assert trainer_path(name.upper()) == REGISTRY[name]


def test_registry_takes_a_users_trainer_and_explains_unknown_names(monkeypatch):
    monkeypatch.setitem(REGISTRY, "mine", "my_pkg.models:Mine")
    assert trainer_path("mine") == "my_pkg.models:Mine"
    with pytest.raises(ConfigError, match=r"registered: .*combo.*nt3"):
        trainer_path("nt4")
    with pytest.raises(ConfigError, match="plain word"):
        register("a:b", "x:Y")


# --------------------------------------------------------------------------- configs, workflows


@pytest.mark.parametrize("cls", [NT3Params, TC1Params, P1B1Params, UnoParams, ComboParams])
def test_default_config_round_trips_through_our_yaml(tmp_path, cls):
    path = tmp_path / "defaults.yaml"
    save_params(cls(), path)
    assert load_params(cls, file=path, env={}) == cls()


TINY_RUNS = {
    "nt3": {"feature_subsample": 60, "conv": [4, 5, 1], "pool": [2], "dense": [8]},
    "tc1": {"feature_subsample": 60, "conv": [4, 5, 1], "pool": [2], "dense": [8]},
    "p1b1": {"feature_subsample": 60, "dense": [8]},
    "uno": {"feature_subsample": 8, "dense_feature_layers": [8], "dense": [8]},
    "combo": {"feature_subsample": 8, "dense_feature_layers": [8], "dense": [8]},
}


def run_tiny_study(tmp_path, name):
    cfg = {
        "name": name,
        "trainer": name,  # a registered name
        "directory": str(tmp_path / name),
        "params": {"epochs": 1, "synthetic_samples": 60, "tensorboard": False, **TINY_RUNS[name]},
        "grid": {"learning_rate": [0.001]},
        "resources": {"threads": 1},
        "executor": {"kind": "local", "slots": 1},
    }
    return run_study(cfg, progress=False)


def test_a_study_runs_a_model_by_its_registered_name(tmp_path):
    summary = run_tiny_study(tmp_path, "uno")
    assert summary.counts["done"] == 1 and summary.best.objective is not None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nt3", "tc1", "p1b1", "combo"])
def test_every_model_runs_as_a_study_trial(tmp_path, name):
    summary = run_tiny_study(tmp_path, name)
    assert summary.counts["done"] == 1 and summary.best.objective is not None
