"""The reference models' loaders of the original file formats, on tiny files written here,
NCI60 from the ISLP package, and the errors bad inputs give."""

import sys

import numpy as np
import pandas as pd
import pytest
import torch

from candle import ConfigError, DataError
from candle.models.combo import Combo
from candle.models.nt3 import NT3
from candle.models.p1b1 import P1B1
from candle.models.tc1 import TC1, load_nci60
from candle.models.uno import Uno

QUIET = {"progress_bar": False, "tensorboard": False, "metrics_log": "off"}
SMALL_CNN = {"conv": [4, 3, 1], "pool": [2], "dense": [8], "epochs": 1, **QUIET}


def label_first_csv(path, labels, n_features, seed=0, header=False, sep=","):
    rng = np.random.default_rng(seed)
    columns = [f"gene{i}" for i in range(n_features)]
    frame = pd.DataFrame(rng.normal(size=(len(labels), n_features)), columns=columns)
    frame.insert(0, "label", labels)
    frame.to_csv(path, index=False, header=header, sep=sep)


# --------------------------------------------------------------------------- NT3 / TC1


def test_nt3_reads_label_first_csv_files(tmp_path):
    label_first_csv(tmp_path / "nt_train2.csv", [0, 1, 1, 0, 1, 0], 12)
    label_first_csv(tmp_path / "nt_test2.csv", [1, 0], 12, seed=1)
    trainer = NT3(data=str(tmp_path), **SMALL_CNN)
    x_tr, y_tr, x_va, y_va = trainer.arrays
    assert x_tr.shape == (6, 12) and x_va.shape == (2, 12) and x_tr.dtype == np.float32
    assert y_tr.tolist() == [0, 1, 1, 0, 1, 0] and y_va.tolist() == [1, 0]
    assert np.abs(x_tr).max() == pytest.approx(1.0)  # maxabs scaling, training statistics
    assert trainer.fit().status == "completed"


def test_tc1_reads_tsv_with_header_and_class_names(tmp_path):
    names = ["BRCA", "LUAD", "COAD", "BRCA", "LUAD", "COAD"]
    label_first_csv(tmp_path / "train.tsv", names, 10, header=True, sep="\t")
    label_first_csv(tmp_path / "test.tsv", ["COAD", "BRCA"], 10, header=True, sep="\t")
    trainer = TC1(data=str(tmp_path), train_data="train.tsv", test_data="test.tsv", **SMALL_CNN)
    _, y_tr, x_va, y_va = trainer.arrays
    assert y_tr.tolist() == [0, 2, 1, 0, 2, 1] and y_va.tolist() == [1, 0]  # sorted names
    assert x_va.shape == (2, 10)


def test_feature_subsample_keeps_the_same_columns_of_both_files(tmp_path):
    label_first_csv(tmp_path / "nt_train2.csv", [0, 1, 0, 1], 30)
    label_first_csv(tmp_path / "nt_test2.csv", [0, 1], 30)
    x_tr, _, x_va, _ = NT3(data=str(tmp_path), feature_subsample=7, scaling="none").arrays
    full = pd.read_csv(tmp_path / "nt_test2.csv", header=None).to_numpy()[:, 1:]
    columns = [np.flatnonzero(np.isclose(full[0], v))[0] for v in x_va[0]]
    assert x_tr.shape == (4, 7) and np.allclose(full[:, columns], x_va)


def test_missing_file_names_the_file_and_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"nt_train2.csv' not found \(from train_data="):
        NT3(data=str(tmp_path)).arrays  # noqa: B018


def test_wrong_column_count_names_both_files(tmp_path):
    label_first_csv(tmp_path / "nt_train2.csv", [0, 1], 5)
    label_first_csv(tmp_path / "nt_test2.csv", [0, 1], 4)
    with pytest.raises(DataError, match=r"nt_test2.csv' has 4 feature columns but .* has 5"):
        NT3(data=str(tmp_path)).arrays  # noqa: B018


def test_ragged_rows_and_non_numbers_name_the_file(tmp_path):
    (tmp_path / "nt_train2.csv").write_text("0,1.0,2.0\n1,1.0,2.0,3.0\n")
    label_first_csv(tmp_path / "nt_test2.csv", [0, 1], 2)
    with pytest.raises(DataError, match=r"cannot read '.*nt_train2.csv'"):
        NT3(data=str(tmp_path)).arrays  # noqa: B018
    (tmp_path / "nt_train2.csv").write_text("0,1.0,2.0\n1,1.0,abc\n")
    with pytest.raises(DataError, match=r"non-number, 'abc' \(data row 2\)"):
        NT3(data=str(tmp_path)).arrays  # noqa: B018


def test_labels_outside_the_classes_are_refused(tmp_path):
    label_first_csv(tmp_path / "nt_train2.csv", [0, 1, 2], 4)
    label_first_csv(tmp_path / "nt_test2.csv", [0, 1], 4)
    with pytest.raises(DataError, match=r"class label 2 is outside 0..1; set classes"):
        NT3(data=str(tmp_path)).arrays  # noqa: B018


def test_nci60_from_the_islp_package():
    pytest.importorskip("ISLP", reason="ISLP is not installed (pip install --no-deps ISLP)")
    x, labels = load_nci60()
    assert x.shape == (64, 6830) and len(set(labels)) == 14
    trainer = TC1(data="nci60", classes=14, val_split=0.25, **SMALL_CNN)
    x_tr, y_tr, x_va, y_va = trainer.arrays
    assert len(x_tr) + len(x_va) == 64 and x_tr.shape[1] == 6830
    assert set(y_tr.tolist()) | set(y_va.tolist()) == set(range(14))
    with pytest.raises(DataError, match="set classes"):
        TC1(data="nci60", classes=10).arrays  # noqa: B018


def test_nci60_without_islp_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ISLP", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install --no-deps ISLP"):
        load_nci60()


# --------------------------------------------------------------------------- P1B1


def expression_csv(path, n, genes, seed=0, sep=","):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.uniform(size=(n, len(genes))), columns=genes)
    frame.insert(0, "cancer_type", rng.choice(["BRCA", "LUAD"], n))
    frame.insert(0, "case_id", [f"case{i}" for i in range(n)])
    frame.to_csv(path, index=False, sep=sep)


def test_p1b1_reads_expression_with_id_and_type_columns(tmp_path):
    genes = [f"ENSG{i:05d}" for i in range(9)]
    expression_csv(tmp_path / "P1B1.dev.train.csv", 8, genes)
    expression_csv(tmp_path / "P1B1.dev.test.csv", 3, genes, seed=1)
    trainer = P1B1(data=str(tmp_path), dense=[4], epochs=1, batch_size=4, **QUIET)
    x_tr, x_va = trainer.arrays
    assert x_tr.shape == (8, 9) and x_va.shape == (3, 9)
    assert x_tr.min() == pytest.approx(0.0) and x_tr.max() == pytest.approx(1.0)  # minmax
    result = trainer.fit()
    assert -1.0 <= result.last_metrics["val_corr"] <= 1.0


def test_p1b1_refuses_test_genes_that_differ(tmp_path):
    expression_csv(tmp_path / "train.tsv", 4, ["g1", "g2", "g3"], sep="\t")
    expression_csv(tmp_path / "test.tsv", 2, ["g1", "g3"], sep="\t")
    p1b1 = P1B1(data=str(tmp_path), train_data="train.tsv", test_data="test.tsv")
    with pytest.raises(DataError, match=r"missing from the test file, first 5: \['g2'\]"):
        p1b1.arrays  # noqa: B018


# --------------------------------------------------------------------------- Uno / Combo


def feature_table(path, id_name, ids, width, seed):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        rng.normal(size=(len(ids), width)), columns=[f"f{i}" for i in range(width)]
    )
    frame.insert(0, id_name, ids)
    frame.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")


def response_folder(tmp_path, drugs, extra_columns=()):
    rng = np.random.default_rng(0)
    n = 40
    table = {"Sample": rng.choice(["C1", "C2", "C3", "C9"], n)}  # C9 has no features
    for j in range(1, drugs + 1):
        table[f"Drug{j}"] = rng.choice(["D1", "D2", "D3"], n)
        table[f"Dose{j}"] = rng.uniform(-8, -4, n)
    table["Growth"] = rng.uniform(-1, 1, n)
    for column in extra_columns:
        table[column] = rng.uniform(0, 1, n)
    pd.DataFrame(table).to_csv(tmp_path / "response.tsv", sep="\t", index=False)
    return (table["Sample"] != "C9").sum()


def uno_features(tmp_path):
    feature_table(tmp_path / "cell_rnaseq.tsv", "Sample", ["C1", "C2", "C3"], 6, 1)
    feature_table(tmp_path / "drug_descriptors.csv", "Drug", ["D1", "D2", "D3"], 5, 2)
    feature_table(tmp_path / "drug_fingerprints.tsv", "Drug", ["D3", "D2", "D1"], 4, 3)


UNO_SMALL = {"dense_feature_layers": [4], "dense": [4], "epochs": 1, **QUIET}


def test_uno_joins_single_drug_responses_to_cell_and_drug_tables(tmp_path):
    kept = response_folder(tmp_path, drugs=1, extra_columns=["AUC"])
    uno_features(tmp_path)
    trainer = Uno(data=str(tmp_path), single=True, **UNO_SMALL)
    data = trainer.dataset
    assert len(data) == kept
    x, _ = data[[0, 1, 2]]
    assert {k: v.shape for k, v in x.items()} == {
        "cell.rnaseq": (3, 6),
        "drug1.descriptors": (3, 5),
        "drug1.fingerprints": (3, 4),
        "dose1": (3, 1),
    }
    frame = pd.read_csv(tmp_path / "response.tsv", sep="\t")
    frame = frame[frame.Sample != "C9"].reset_index(drop=True)
    fingerprints = pd.read_csv(tmp_path / "drug_fingerprints.tsv", sep="\t", index_col=0)
    scaled = (fingerprints - fingerprints.mean()) / fingerprints.std(ddof=0)
    assert np.allclose(x["drug1.fingerprints"], scaled.loc[frame.Drug1[:3]], atol=1e-5)
    assert np.allclose(data.y, frame.Growth)
    assert trainer.fit().status == "completed"
    auc = Uno(data=str(tmp_path), single=True, agg_dose="AUC", **UNO_SMALL)
    assert "dose1" not in auc.dataset.inputs
    assert np.allclose(auc.dataset.y.numpy(), frame.AUC)


def test_uno_mixes_single_drug_and_drug_pair_experiments(tmp_path):
    kept = response_folder(tmp_path, drugs=2)
    frame = pd.read_csv(tmp_path / "response.tsv", sep="\t")
    frame.loc[::2, ["Drug2", "Dose2"]] = np.nan  # every other experiment: one drug
    frame.to_csv(tmp_path / "response.tsv", sep="\t", index=False)
    uno_features(tmp_path)
    trainer = Uno(data=str(tmp_path), **UNO_SMALL)
    data = trainer.dataset
    assert len(data) == kept
    assert sorted(data.inputs) == sorted(
        ["cell.rnaseq", "dose1", "dose2"]
        + [f"drug{j}.{f}" for j in (1, 2) for f in ("descriptors", "fingerprints")]
    )
    x, _ = data[list(range(len(data)))]
    single = torch.tensor(frame.loc[frame.Sample != "C9", "Drug2"].isna().to_numpy())
    assert single.any() and (~single).any()
    assert (x["drug2.descriptors"][single] == 0).all() and (x["dose2"][single] == 0).all()
    assert (x["drug2.descriptors"][~single] != 0).any()
    assert trainer.fit().status == "completed"


def test_uno_selects_train_sources(tmp_path):
    response_folder(tmp_path, drugs=1)
    frame = pd.read_csv(tmp_path / "response.tsv", sep="\t")
    frame["Source"] = np.where(np.arange(len(frame)) % 2, "CTRP", "GDSC")
    frame.to_csv(tmp_path / "response.tsv", sep="\t", index=False)
    uno_features(tmp_path)
    ctrp = Uno(data=str(tmp_path), single=True, train_sources=["CTRP"]).dataset
    assert len(ctrp) == ((frame.Source == "CTRP") & (frame.Sample != "C9")).sum()
    with pytest.raises(DataError, match=r"no rows of sources \['CCLE'\] \(found \['CTRP'"):
        Uno(data=str(tmp_path), single=True, train_sources=["CCLE"]).dataset  # noqa: B018


def test_combo_reads_drug_pairs(tmp_path):
    kept = response_folder(tmp_path, drugs=2)
    feature_table(tmp_path / "cell_expression.tsv", "Sample", ["C1", "C2", "C3"], 6, 1)
    feature_table(tmp_path / "drug_descriptors.tsv", "Drug", ["D1", "D2", "D3"], 5, 2)
    trainer = Combo(data=str(tmp_path), dense_feature_layers=[4], dense=[4], epochs=1, **QUIET)
    assert len(trainer.dataset) == kept
    assert sorted(trainer.dataset.inputs) == [
        "cell.expression",
        "drug1.descriptors",
        "drug2.descriptors",
    ]
    assert trainer.fit().status == "completed"


def test_response_table_errors_name_the_file_and_column(tmp_path):
    response_folder(tmp_path, drugs=1)
    with pytest.raises(DataError, match=r"response.tsv' lacks column\(s\) \['Drug2'\]"):
        Combo(data=str(tmp_path)).dataset  # noqa: B018
    with pytest.raises(ConfigError, match=r"cell_rnaseq.tsv' not found \(from cell_features="):
        Uno(data=str(tmp_path), single=True).dataset  # noqa: B018
