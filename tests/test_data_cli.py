"""Tests for ``python -m candle data``: pack, verify, info and split through
``candle.data._cli.main``, exit codes, and error messages that name the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from candle.data import ShardDataset
from candle.data._cli import main


@pytest.fixture()
def table_csv(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.standard_normal((120, 4)), columns=["TP53", "EGFR", "MYC", "KRAS"])
    df.loc[[3, 50], "MYC"] = np.nan
    df["label"] = rng.choice(["tumor", "normal"], 120)
    df["cell_line"] = np.repeat(["A549", "MCF7", "HeLa", "K562", "PC3", "U87"], 20)
    df["sample"] = [f"S{i}" for i in range(120)]
    path = tmp_path / "expr.csv"
    df.to_csv(path, index=False)
    return path


def _pack(csv: Path, out: Path, *extra: str) -> int:
    return main(["pack", str(csv), "--out", str(out), "--target", "label", "--group",
                 "cell_line", "--id", "sample", "--shard-size", "2KB", *extra])  # fmt: skip


def test_pack_info_verify(tmp_path, table_csv, capsys):
    out = tmp_path / "ds"
    assert _pack(table_csv, out) == 0
    printed = capsys.readouterr().out
    assert "packed 120 rows into" in printed and "checksum xxh3_128:" in printed
    assert ShardDataset(out)[0][0].shape == (4,)

    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    for text in ("rows      120 in", "4 float32", "TP53, EGFR, MYC, KRAS",
                 "label: int64 classification, 2 classes", "normal (", "tumor (",
                 "cell_line: 6 groups", "A549 (20)", "ids       sample",
                 "NaN       features 2, targets 0", "source    expr.csv", "xxh3_128:"):  # fmt: skip
        assert text in info, (text, info)

    assert main(["info", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 120 and summary["counts"]["groups"]["PC3"] == 20

    assert main(["verify", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {out}: 120 rows in")


def test_verify_reports_each_problem_and_fails(tmp_path, table_csv, capsys):
    out = tmp_path / "ds"
    assert _pack(table_csv, out) == 0
    (out / "shard-00001.h5").unlink()
    shard = out / "shard-00002.h5"
    shard.write_bytes(shard.read_bytes()[:-10])
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert f"{out / 'shard-00001.h5'}: shard file is missing" in lines
    assert any(line.startswith(f"{shard}: file is") and "truncated" in line for line in lines)
    assert "problem(s) in" in captured.err
    assert main(["verify", str(out), "--no-checksums"]) == 1


def test_errors_name_the_file_and_exit_2(tmp_path, table_csv, capsys):
    assert main(["pack", str(table_csv), "--out", str(tmp_path / "ds"), "--target", "lable"]) == 2
    err = capsys.readouterr().err
    assert f"{table_csv}: no target column 'lable'; did you mean 'label'?" in err
    assert main(["info", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: dataset directory does not exist" in capsys.readouterr().err
    (tmp_path / "empty.tsv").write_text("")
    assert main(["pack", str(tmp_path / "empty.tsv"), "--out", str(tmp_path / "e")]) == 2
    assert "empty.tsv: the file is empty" in capsys.readouterr().err
    assert main(["pack", str(table_csv)]) == 2  # argparse: --out is required
    assert "--out" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


def test_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("pack", "verify", "info", "split"))
    assert main(["pack", "--help"]) == 0
    assert "--shard-size" in capsys.readouterr().out


def test_features_from_a_file_and_npy_targets(tmp_path, table_csv, capsys):
    (tmp_path / "genes.txt").write_text("MYC\nTP53\n\n")
    out = tmp_path / "ds"
    assert _pack(table_csv, out, "--features", f"@{tmp_path / 'genes.txt'}") == 0
    assert ShardDataset(out).feature_names == ["MYC", "TP53"]
    assert main(["pack", str(table_csv), "--out", str(tmp_path / "d2"), "--target", "label",
                 "--features", "EGFR, KRAS"]) == 0  # fmt: skip
    assert ShardDataset(tmp_path / "d2").feature_names == ["EGFR", "KRAS"]
    np.save(tmp_path / "x.npy", np.ones((6, 3), dtype=np.float32))
    np.save(tmp_path / "y.npy", np.arange(6))
    assert main(["pack", str(tmp_path / "x.npy"), "--out", str(tmp_path / "d3"), "--targets",
                 str(tmp_path / "y.npy"), "--task", "classification"]) == 0  # fmt: skip
    assert ShardDataset(tmp_path / "d3").classes == [0, 1, 2, 3, 4, 5]
    np.savez(tmp_path / "d.npz", expr=np.ones((6, 3)), resp=np.arange(6.0))
    assert main(["pack", str(tmp_path / "d.npz"), "--out", str(tmp_path / "d4"),
                 "--keys", "expr,resp"]) == 0  # fmt: skip
    assert main(["pack", str(table_csv), "--out", str(out), "--target", "label"]) == 2
    assert "already holds a dataset" in capsys.readouterr().err
    assert _pack(table_csv, out, "--overwrite") == 0


def test_split_delegates_to_the_splits_module(tmp_path, table_csv, capsys):
    pytest.importorskip("candle.data.splits")
    out = tmp_path / "ds"
    assert _pack(table_csv, out) == 0
    capsys.readouterr()
    assert main(["split", str(out), "--kind", "grouped", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "grouped split of" in printed and "train" in printed
    assert list((out / "splits").glob("*train*"))
    # a different split under the same name and index is refused, unless asked for
    assert main(["split", str(out), "--kind", "grouped", "--seed", "2"]) != 0
    assert "--overwrite" in capsys.readouterr().err
    assert main(["split", str(out), "--kind", "grouped", "--seed", "2", "--index", "1"]) == 0
    assert main(["split", str(out), "--kind", "grouped", "--seed", "2", "--overwrite"]) == 0


def test_module_entry_point(tmp_path, table_csv):
    out = tmp_path / "ds"
    assert _pack(table_csv, out) == 0
    run = subprocess.run(
        [sys.executable, "-m", "candle.data._cli", "info", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "rows      120 in" in run.stdout
