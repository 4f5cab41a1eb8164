"""Tests for packing (candle.data.shards, candle.data.manifest): every input format, round
trips, shard boundaries, determinism, crash safety, streaming memory and bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from candle.data import Manifest, ShardDataset, pack, parse_size
from candle.data.manifest import check_shard_path
from candle.errors import DataError, ShardError

N, D = 300, 6
FEATURES = [f"gene_{i}" for i in range(D)]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    """Features (float32), a text label, a regression target, group labels and sample ids."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.standard_normal((N, D)).astype(np.float32), columns=FEATURES)
    df["label"] = rng.choice(["tumor", "normal", "metastasis"], N)
    df["auc"] = rng.random(N).astype(np.float32)
    df["cell_line"] = rng.choice(["A549", "MCF7", "HeLa", "K562"], N)
    df["sample"] = [f"S{i:04d}" for i in range(N)]
    return df


def _read_all(path: Path) -> tuple[np.ndarray, np.ndarray | None, ShardDataset]:
    ds = ShardDataset(path)
    out = ds[range(len(ds))]
    return out[0].numpy(), (out[1].numpy() if len(out) > 1 else None), ds


def _write(df: pd.DataFrame, path: Path) -> Path:
    name = path.name
    if name.endswith(".parquet"):
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, sep="\t" if ".tsv" in name else ",", index=False)
    return path


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("name", ["data.csv", "data.tsv", "data.csv.gz", "data.parquet", None])
def test_table_round_trip_every_format(tmp_path, table, name):
    """CSV, TSV, gzip CSV, Parquet and a DataFrame give the same values and the same checksum."""
    source = table if name is None else _write(table, tmp_path / name)
    m = pack(source, tmp_path / "ds", target="label", group="cell_line", id_column="sample",
             features=FEATURES, shard_size="4KB")  # fmt: skip
    x, y, ds = _read_all(tmp_path / "ds")
    assert len(m.shards) > 3 and m.rows == N and len(ds) == N
    np.testing.assert_array_equal(x, table[FEATURES].to_numpy(np.float32))
    assert m.classes == ["metastasis", "normal", "tumor"]  # sorted class names, codes in order
    assert [m.classes[c] for c in y] == table["label"].tolist() and y.dtype == np.int64
    assert ds.groups().tolist() == table["cell_line"].tolist()
    assert ds.ids().tolist() == table["sample"].tolist()
    assert m.feature_names == FEATURES and m.schema["groups"]["name"] == "cell_line"
    assert m.source == (name or "<DataFrame>")
    # The checksum covers the schema and the shard bytes, not where the data came from.
    ref = pack(table, tmp_path / "ref", target="label", group="cell_line", id_column="sample",
               features=FEATURES, shard_size="4KB")  # fmt: skip
    assert m.checksum == ref.checksum


def test_default_features_are_all_other_columns_and_regression_target(tmp_path, table):
    df = table.drop(columns=["label"])
    m = pack(df, tmp_path / "ds2", target="auc", group="cell_line", id_column="sample")
    assert m.feature_names == FEATURES
    assert m.targets["task"] == "regression" and m.targets["dtype"] == "float32"
    _, y, _ = _read_all(tmp_path / "ds2")
    np.testing.assert_array_equal(y, table["auc"].to_numpy(np.float32))
    assert y.dtype == np.float32 and m.targets["classes"] is None


def test_wide_csv_with_5000_columns(tmp_path):
    """Gene-expression matrices are wide: few rows per read chunk, ~512 KiB HDF5 chunks."""
    rng = np.random.default_rng(1)
    genes = [f"ENSG{i:06d}" for i in range(5000)]
    df = pd.DataFrame(rng.standard_normal((40, 5000)).astype(np.float32), columns=genes)
    df.insert(0, "response", rng.integers(0, 2, 40))
    path = _write(df, tmp_path / "wide.csv")
    m = pack(path, tmp_path / "ds", target="response", task="classification",
             shard_size="420KB", read_size="1MB")  # fmt: skip
    x, y, _ = _read_all(tmp_path / "ds")
    np.testing.assert_array_equal(x, df[genes].to_numpy(np.float32))
    np.testing.assert_array_equal(y, df["response"].to_numpy())
    assert m.feature_shape == (5000,) and m.feature_names == genes and m.classes == [0, 1]
    assert [s.rows for s in m.shards] == [20, 20]  # 420 kB // (20,000 + 8) bytes a row
    with h5py.File(tmp_path / "ds" / m.shards[0].path, locking=False) as f:
        chunk = f["features"].chunks
        assert chunk[1:] == (5000,) and 256 * 1024 <= chunk[0] * 5000 * 4 <= 1024 * 1024
        assert f["features"].compression is None


def test_npy_features_with_npy_targets(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 3, 4)).astype(np.float32)  # samples need not be vectors
    y = rng.integers(0, 5, 50)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    m = pack(tmp_path / "x.npy", tmp_path / "ds", targets=tmp_path / "y.npy",
             task="classification", shard_size=560)  # fmt: skip
    got_x, got_y, _ = _read_all(tmp_path / "ds")
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)
    assert m.feature_shape == (3, 4) and m.feature_names is None and len(m.shards) == 5
    # Features only: no targets, and a sample is a 1-tuple, as with TensorDataset(X).
    pack(tmp_path / "x.npy", tmp_path / "nox")
    ds = ShardDataset(tmp_path / "nox")
    assert ds.manifest.targets is None and len(ds[0]) == 1 and ds.targets() is None


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("keys", [("X", "y"), ("features", "targets")])
def test_npz_is_streamed_from_the_archive(tmp_path, compressed, keys):
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((64, 5)), rng.standard_normal((64, 2))
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "d.npz", **{keys[0]: x, keys[1]: y})
    m = pack(tmp_path / "d.npz", tmp_path / "ds", read_size="1KB", shard_size="1KB")
    got_x, got_y, _ = _read_all(tmp_path / "ds")
    np.testing.assert_array_equal(got_x, x.astype(np.float32))
    np.testing.assert_array_equal(got_y, y.astype(np.float32))
    assert m.targets["shape"] == [2] and m.targets["task"] == "regression"


def test_npz_custom_keys_and_missing_key(tmp_path):
    np.savez(tmp_path / "d.npz", expr=np.ones((4, 2)), resp=np.arange(4))
    with pytest.raises(DataError, match=r"d\.npz: no features array.*expr.*resp"):
        pack(tmp_path / "d.npz", tmp_path / "ds")
    m = pack(tmp_path / "d.npz", tmp_path / "ds", keys=("expr", "resp"), task="classification")
    assert m.rows == 4 and m.classes == [0, 1, 2, 3]
    with pytest.raises(DataError, match=r"d\.npz: no array 'nope'"):
        pack(tmp_path / "d.npz", tmp_path / "ds2", keys=("expr", "nope"))


def test_dataframe_with_integer_column_names(tmp_path):
    df = pd.DataFrame(np.arange(12.0).reshape(4, 3))
    m = pack(df, tmp_path / "ds", target="2")
    assert m.feature_names == ["0", "1"]
    _, y, _ = _read_all(tmp_path / "ds")
    np.testing.assert_array_equal(y, [2.0, 5.0, 8.0, 11.0])


def test_targets_numbers_bools_and_classification_of_integers(tmp_path, caplog):
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "n": [3, 1, 3, 2], "b": [True, False] * 2})
    with caplog.at_level("INFO", logger="candle.data"):
        m = pack(df, tmp_path / "reg", target="n", features=["a"])
    assert m.targets["dtype"] == "float32" and "task='classification'" in caplog.text
    m = pack(df, tmp_path / "cls", target="n", features=["a"], task="classification")
    _, y, _ = _read_all(tmp_path / "cls")
    assert m.classes == [1, 2, 3] and y.tolist() == [3, 1, 3, 2] and y.dtype == np.int64
    m = pack(df, tmp_path / "bool", target="b", features=["a"])
    assert m.targets["task"] == "classification" and _read_all(tmp_path / "bool")[1].tolist() == [
        1,
        0,
        1,
        0,
    ]
    m = pack(df, tmp_path / "multi", target=["a", "n"], features=["b"])
    assert m.targets["shape"] == [2] and m.targets["names"] == ["a", "n"]


def test_nan_features_are_allowed_and_counted(tmp_path):
    df = pd.DataFrame({"x": [1.0, np.nan, 3.0, np.nan], "z": [np.nan, 1, 2, 3], "y": [1.0] * 4})
    path = tmp_path / "nan.csv"
    df.to_csv(path, index=False)
    m = pack(path, tmp_path / "ds", target="y")
    assert m.nan_count == {"features": 3, "targets": 0}
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["nan_count"]["features"] == 3
    x, _, _ = _read_all(tmp_path / "ds")
    assert np.isnan(x).sum() == 3


@pytest.mark.parametrize("sep", [",", "\t"])
def test_csv_missing_value_spellings_and_windows_line_endings(tmp_path, sep):
    lines = [
        ["a", "b", "c", "grp", "y"],
        ["1", "", "NA", "g1", "0.5"],
        ["", "2", "nan", "", "1.5"],
        ["N/A", "3", "#N/A", "g2", ""],
        ["4", "NULL", "-nan", "g1", "2.5"],
    ]
    text = "\r\n".join(sep.join(row) for row in lines) + "\r\n"
    path = tmp_path / ("t.tsv" if sep == "\t" else "t.csv")
    path.write_bytes(text.encode())
    m = pack(path, tmp_path / "ds", target="y", group="grp")
    x, y, ds = _read_all(tmp_path / "ds")
    want = np.array([[1, np.nan, np.nan], [np.nan, 2, np.nan], [np.nan, 3, np.nan],
                     [4, np.nan, np.nan]], dtype=np.float32)  # fmt: skip
    np.testing.assert_array_equal(x, want)
    np.testing.assert_array_equal(y, np.array([0.5, 1.5, np.nan, 2.5], dtype=np.float32))
    assert ds.groups().tolist() == ["g1", "", "g2", "g1"]
    assert m.nan_count == {"features": 8, "targets": 1} and m.feature_names == ["a", "b", "c"]


def test_csv_true_false_features_and_quoted_fields(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('flag,x,"name, full",y\nTrue,1.5,"Smith, J",a\nfalse,2,"Doe, A",b\n')
    m = pack(path, tmp_path / "ds", target="y", id_column="name, full")
    x, y, ds = _read_all(tmp_path / "ds")
    np.testing.assert_array_equal(x, [[1.0, 1.5], [0.0, 2.0]])
    assert ds.ids().tolist() == ["Smith, J", "Doe, A"] and m.classes == ["a", "b"]
    assert y.tolist() == [0, 1]


# ----------------------------------------------------------------------------- layout


def test_shard_boundaries_follow_the_byte_size(tmp_path, table):
    # A row: 6 float32 features + an int64 target = 32 bytes; 1000 B -> 31 rows a shard.
    m = pack(table, tmp_path / "ds", target="label", features=FEATURES, shard_size=1000)
    rows = [s.rows for s in m.shards]
    assert rows == [31] * 9 + [N - 9 * 31]
    for s in m.shards:
        path = tmp_path / "ds" / s.path
        assert path.stat().st_size == s.bytes and s.checksum.startswith("xxh3_128:")
        with h5py.File(path, locking=False) as f:
            assert f["features"].shape == (s.rows, D) and f["targets"].shape == (s.rows,)
    on_disk = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert on_disk["format"] == "candle-shards" and on_disk["version"] == 1
    assert on_disk["rows"] == N and on_disk["checksum"] == m.checksum and on_disk["created"]


def test_same_input_gives_the_same_checksum_whatever_the_read_size(tmp_path, table):
    path = _write(table, tmp_path / "t.csv")
    kw = {"target": "label", "group": "cell_line", "id_column": "sample", "shard_size": "8KB"}
    a = pack(path, tmp_path / "a", read_size="2KB", **kw)
    b = pack(path, tmp_path / "b", read_size="64MB", **kw)
    assert a.checksum == b.checksum
    assert [s.checksum for s in a.shards] == [s.checksum for s in b.shards]


def test_parse_size():
    assert parse_size("64MB") == 64_000_000 and parse_size("512KiB") == 512 * 1024
    assert parse_size("1GB") == 10**9 and parse_size("2G") == 2 * 2**30 and parse_size(100) == 100
    assert parse_size("1.5 MiB") == 3 * 2**19
    for bad in ("64 parsecs", "", "-1MB", "0"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)


# ----------------------------------------------------------------------------- safety


def test_existing_dataset_needs_overwrite_and_failed_pack_keeps_the_old_one(tmp_path, table):
    out = tmp_path / "ds"
    old = pack(table, out, target="label", features=FEATURES, shard_size="2KB")
    with pytest.raises(DataError, match=r"ds: already holds a dataset; pass overwrite=True"):
        pack(table, out, target="label", features=FEATURES)
    # A pack that fails half-way (a bad value in the last rows) leaves the old dataset intact
    # and no temporary files behind.
    bad = table.copy()
    bad["auc"] = bad["auc"].astype(object)
    bad.loc[N - 1, "auc"] = "oops"
    with pytest.raises(DataError, match=r"target column 'auc' holds 'oops' in row 299"):
        pack(bad, out, target="auc", features=FEATURES, read_size="4KB", shard_size="2KB",
             overwrite=True)  # fmt: skip
    assert Manifest.read(out).checksum == old.checksum
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert ShardDataset(out)[0][0].shape == (D,)
    new = pack(table, out, target="label", features=FEATURES[:2], overwrite=True)
    assert len(new.shards) == 1 and sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "shard-00000.h5",
    ]


def test_shard_paths_must_stay_inside_the_dataset():
    assert check_shard_path("shard-00000.h5", "m") == "shard-00000.h5"
    assert check_shard_path("part1/shard-00000.h5", "m") == "part1/shard-00000.h5"
    for bad in ("../evil.h5", "/etc/passwd", "a/../../evil.h5", "C:/x.h5", "a\\b.h5", "", "./x"):
        with pytest.raises(ShardError, match="shard path"):
            check_shard_path(bad, "m")


# ----------------------------------------------------------------------------- bad input


def test_unknown_target_column_suggests_close_matches(tmp_path, table):
    path = _write(table, tmp_path / "expr.csv")
    with pytest.raises(DataError) as e:
        pack(path, tmp_path / "ds", target="lable")
    msg = str(e.value)
    assert str(path) in msg and "no target column 'lable'" in msg and "did you mean 'label'" in msg
    with pytest.raises(DataError, match=r"no target column 'Cell_Line'; did you mean 'cell_line'"):
        pack(table, tmp_path / "ds", target="Cell_Line")
    with pytest.raises(DataError, match=r"expr\.parquet: no group column 'cell'"):
        pack(_write(table, tmp_path / "expr.parquet"), tmp_path / "ds", group="cell")
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("kind", ["csv", "parquet", "frame"])
def test_non_numeric_feature_column_is_named(tmp_path, table, kind):
    source = {"csv": lambda: _write(table, tmp_path / "t.csv"),
              "parquet": lambda: _write(table, tmp_path / "t.parquet"),
              "frame": lambda: table}[kind]()  # fmt: skip
    with pytest.raises(DataError, match=r"feature columns are not numeric: 'cell_line', 'sample'"):
        pack(source, tmp_path / "ds", target="label")
    # Named as group and id, the same columns are fine.
    pack(source, tmp_path / "ok", target="label", group="cell_line", id_column="sample",
         features=FEATURES)  # fmt: skip


def test_unnamed_index_column_is_explained(tmp_path, table):
    table[FEATURES[:2]].to_csv(tmp_path / "indexed.csv")  # index=True: an unnamed first column
    with pytest.raises(DataError, match=r"indexed\.csv: column 'Unnamed: 0' has no name.*--id"):
        pack(tmp_path / "indexed.csv", tmp_path / "ds")
    m = pack(tmp_path / "indexed.csv", tmp_path / "ds", id_column="Unnamed: 0")
    assert m.feature_names == FEATURES[:2] and m.ids["name"] == "Unnamed: 0"


@pytest.mark.parametrize(
    ("content", "name", "match"),
    [
        (b"", "empty.csv", r"empty\.csv: the file is empty"),
        (b"", "empty.npy", r"empty\.npy: the file is empty"),
        (b"\n\n", "blank.csv", r"blank\.csv: the file is empty \(no header row\)"),
        (b"a,b,label\n", "header.csv", r"header\.csv: no data rows"),
        (gzip.compress(b"a,b\n1,2\n")[:-12], "cut.csv.gz", r"cut\.csv\.gz: cannot"),
        (b"not parquet", "x.parquet", r"x\.parquet: not a readable Parquet file"),
        (b"\x93NUMPY junk", "x.npy", r"x\.npy: not a readable \.npy file"),
        (b"a,b\n1,2\n", "data.xlsx", r"data\.xlsx: unknown input format"),
    ],
)
def test_bad_input_files(tmp_path, content, name, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=match):
        pack(tmp_path / name, tmp_path / "ds")
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_more_bad_input(tmp_path, table):
    with pytest.raises(DataError, match=r"nowhere\.csv: input file does not exist"):
        pack(tmp_path / "nowhere.csv", tmp_path / "ds")
    np.save(tmp_path / "x.npy", np.zeros((5, 2)))
    np.save(tmp_path / "y.npy", np.zeros(4))
    with pytest.raises(DataError, match=r"x\.npy: 5 feature rows but the targets have shape"):
        pack(tmp_path / "x.npy", tmp_path / "ds", targets=tmp_path / "y.npy")
    with pytest.raises(DataError, match=r"x\.npy: NumPy input has no named columns"):
        pack(tmp_path / "x.npy", tmp_path / "ds", target="y")
    np.save(tmp_path / "s.npy", np.array([["a", "b"]] * 3))
    with pytest.raises(DataError, match=r"s\.npy: features have dtype <U1, which is not numeric"):
        pack(tmp_path / "s.npy", tmp_path / "ds")
    with pytest.raises(DataError, match=r"task='regression' but target column 'label' is not"):
        pack(table, tmp_path / "ds", target="label", features=FEATURES, task="regression")
    missing = table.copy()
    missing.loc[7, "label"] = None
    with pytest.raises(DataError, match=r"'label' is empty in 1 rows \(first: row 7\)"):
        pack(missing, tmp_path / "ds", target="label", features=FEATURES)
    with pytest.raises(DataError, match=r"task='classification' needs integer or string labels"):
        pack(table, tmp_path / "ds", target="auc", features=FEATURES, task="classification")
    with pytest.raises(DataError, match="task='guess' is not one of"):
        pack(table, tmp_path / "ds", target="auc", task="guess")
    with pytest.raises(DataError, match="size 'huge' is not understood"):
        pack(table, tmp_path / "ds", shard_size="huge")


def test_text_label_after_numeric_rows_names_the_row(tmp_path):
    rows = ["x,y"] + [f"{i},{i % 3}" for i in range(30000)] + ["30000,unknown"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"t\.csv: target column 'y' holds 'unknown' in row 30000"):
        pack(tmp_path / "t.csv", tmp_path / "ds", target="y", read_size="30KB")
    # Seen in the first block, a text label makes the column class labels.
    (tmp_path / "u.csv").write_text("\n".join(rows[:50] + rows[-1:]) + "\n")
    assert pack(tmp_path / "u.csv", tmp_path / "ds", target="y").classes == [
        "0",
        "1",
        "2",
        "unknown",
    ]


# ----------------------------------------------------------------------------- streaming

_MEMORY_CHILD = textwrap.dedent(
    """
    import json, sys
    from candle.data import pack

    def status(key):  # bytes, from the kernel's own accounting
        line = next(x for x in open("/proc/self/status") if x.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    small, big = sys.argv[1], sys.argv[2]
    options = dict(target="label", read_size="4MB", shard_size="16MB")
    pack(small, "small", **options)  # every import, thread pool and allocator arena is warm
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current resident size
    except OSError as e:
        print(json.dumps({"skip": f"cannot reset the peak RSS: {e}"}))
        sys.exit(0)
    base = status("VmRSS")
    m = pack(big, "big", **options)
    print(json.dumps({"growth": status("VmHWM") - base, "rows": m.rows}))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_packing_memory_does_not_grow_with_the_file(tmp_path):
    """Packing a ~150 MB CSV must not hold it in memory.

    An address-space limit (RLIMIT_AS) would be the literal test, but torch and OpenBLAS
    reserve gigabytes of virtual memory they never touch, so any limit either breaks the
    imports or sits far above the file. Instead a subprocess packs a 15 MB file (warming up
    imports, Arrow's thread pool and allocator arenas), resets its peak resident size
    (``/proc/self/clear_refs``), packs the 150 MB file with the same options and reads its new
    peak. Holding the file would need at least the extra rows' dense float64 size (~120 MB
    here); streaming needs nothing more for a bigger file (~20 MB of allocator growth was
    measured). The bound, 40% of that dense size, separates the two by a wide margin and
    does not depend on the machine's speed.
    """
    cols, block_rows = 200, 500
    values = np.random.default_rng(0).random((block_rows, cols))
    block = "".join(
        f"{'ab'[i % 2]}," + ",".join(f"{v:.6f}" for v in row) + "\n" for i, row in enumerate(values)
    )
    header = "label," + ",".join(f"g{i}" for i in range(cols)) + "\n"
    sizes = {}
    for name, target_bytes in (("small.csv", 15e6), ("big.csv", 150e6)):
        with open(tmp_path / name, "w") as f:
            f.write(header)
            rows = 0
            while f.tell() < target_bytes:
                f.write(block)
                rows += block_rows
        sizes[name] = rows
    extra_dense = (sizes["big.csv"] - sizes["small.csv"]) * cols * 8
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, "small.csv", "big.csv"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    assert result["rows"] == sizes["big.csv"]
    assert result["growth"] < 0.4 * extra_dense, (result, extra_dense)
    (tmp_path / "big.csv").unlink()
