"""Tests for reading shard datasets (candle.data.dataset) and transforms (candle.data.transforms):
batch indexing, DataLoader workers, pickling, in-memory mode, the cache path, damaged datasets
and standardization against NumPy."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader

from candle.data import Manifest, ShardDataset, Standardizer, pack, shard_loader, verify
from candle.data._hash import file_checksum
from candle.errors import DataError, ShardError

N, D = 200, 5


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((N, D)) * [1, 2, 3, 4, 5] + [0, 1, 2, 3, 4]).astype(np.float32)
    return {
        "x": x,
        "y": rng.integers(0, 3, N),
        "groups": rng.choice(["A549", "MCF7", "HeLa"], N),
        "reg": rng.standard_normal(N).astype(np.float32),
    }


@pytest.fixture(scope="module")
def packed(tmp_path_factory, data) -> Path:
    """Seven shards of 30 rows (the last 20): a row counts 5 float32 features, an int64
    target and 16 bytes for each of the group label and the sample id: 60 bytes."""
    df = pd.DataFrame(data["x"], columns=[f"f{i}" for i in range(D)])
    df["label"] = np.array(["a", "b", "c"])[data["y"]]
    df["cell"] = data["groups"]
    df["sample"] = [f"s{i}" for i in range(N)]
    out = tmp_path_factory.mktemp("data") / "ds"
    m = pack(df, out, target="label", group="cell", id_column="sample", shard_size=30 * 60 + 59)
    assert [s.rows for s in m.shards] == [30] * 6 + [20]
    return out


@pytest.fixture()
def copy(packed, tmp_path) -> Path:
    """A private copy of the dataset, for tests that damage it."""
    return Path(shutil.copytree(packed, tmp_path / "ds"))


def _edit_manifest(path: Path, edit) -> None:
    data = json.loads((path / "manifest.json").read_text())
    edit(data)
    (path / "manifest.json").write_text(json.dumps(data))


def _reseal(path: Path) -> None:
    """Make the manifest agree with the shards' current sizes and checksums (a consistent
    manifest over altered shards: only the structural checks can catch what changed)."""

    def edit(data):
        for entry in data["shards"]:
            shard = path / entry["path"]
            entry["bytes"], entry["checksum"] = shard.stat().st_size, file_checksum(shard)
        data["checksum"] = Manifest.from_dict(data).expected_checksum()

    _edit_manifest(path, edit)


# ----------------------------------------------------------------------------- indexing


def test_items_and_accessors(packed, data):
    ds = ShardDataset(packed)
    assert len(ds) == N and ds.supports_batch_indexing
    for i in (0, 29, 30, 59, 199, -1):
        x, y = ds[i]
        np.testing.assert_array_equal(x.numpy(), data["x"][i])
        assert y.dtype == torch.int64 and y.item() == data["y"][i] and y.ndim == 0
    assert ds.classes == ["a", "b", "c"] and ds.feature_names == [f"f{i}" for i in range(D)]
    assert ds.checksum == ds.manifest.checksum == Manifest.read(packed).checksum
    np.testing.assert_array_equal(ds.targets(), data["y"])
    assert ds.groups().tolist() == data["groups"].tolist() and ds.ids()[7] == "s7"
    with pytest.raises(IndexError, match="index 200 is out of range for a dataset of 200 rows"):
        ds[N]


def test_batch_reads_in_requested_order_with_duplicates(packed, data):
    ds = ShardDataset(packed)
    # Unsorted, duplicated, across shard boundaries, negative, as a list, array and tensor.
    idx = [199, 3, 3, 31, 0, 29, 30, 150, 31, -1]
    want = np.array(idx) % N
    for form in (idx, np.array(idx), torch.tensor(idx)):
        x, y = ds[form]
        assert x.shape == (len(idx), D) and y.shape == (len(idx),)
        np.testing.assert_array_equal(x.numpy(), data["x"][want])
        np.testing.assert_array_equal(y.numpy(), data["y"][want])
    x, _ = ds[10:70:3]  # a slice is a batch too
    np.testing.assert_array_equal(x.numpy(), data["x"][10:70:3])
    x, y = ds[[]]
    assert x.shape == (0, D) and y.shape == (0,)
    with pytest.raises(IndexError, match="index -201 is out of range"):
        ds[[0, -201]]


def test_each_shard_is_read_once_per_batch_with_sorted_indices(packed, monkeypatch):
    import candle.data.dataset as dataset_module

    calls = []
    real = dataset_module._take

    def spy(dset, local):
        assert np.all(np.diff(local) > 0)  # h5py needs increasing, unique indices
        calls.append(dset.file.filename)
        return real(dset, local)

    monkeypatch.setattr(dataset_module, "_take", spy)
    ds = ShardDataset(packed)
    ds[[150, 1, 2, 1, 31, 170, 5]]
    shards = [Path(c).name for c in calls]
    assert shards == ["shard-00000.h5"] * 2 + ["shard-00001.h5"] * 2 + ["shard-00005.h5"] * 2


def test_batch_sampler_fast_path_and_worker_processes(packed, data):
    """The Trainer's fast path: DataLoader(batch_size=None, sampler=BatchSampler(...)), here with
    two worker processes that each open the shards themselves (after fork, never the parent's
    handles, which the parent has open already)."""
    ds = ShardDataset(packed)
    ds[[0, 100, 199]]  # the parent opens shards before the workers fork
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0)).tolist()
    loader = DataLoader(ds, batch_size=None, sampler=BatchSampler(order, 32, False), num_workers=2)
    xs, ys = zip(*loader, strict=True)
    np.testing.assert_array_equal(torch.cat(xs).numpy(), data["x"][order])
    np.testing.assert_array_equal(torch.cat(ys).numpy(), data["y"][order])
    assert [len(x) for x in xs] == [32] * 6 + [8]
    np.testing.assert_array_equal(ds[[5]][0].numpy(), data["x"][[5]])  # parent still reads


def test_shard_loader_ranks_partition_the_data(packed, data):
    ds = ShardDataset(packed)
    seen = []
    for rank in range(2):
        loader = shard_loader(ds, 16, shuffle=True, seed=3, epoch=1, rank=rank, world_size=2)
        batches = list(loader)
        assert len(batches) == 7  # 100 rows a rank: equal batch counts on every rank
        seen += torch.cat([x for x, _ in batches]).tolist()
    assert sorted(map(tuple, seen)) == sorted(map(tuple, data["x"].tolist()))
    again = torch.cat([x for x, _ in shard_loader(ds, 16, shuffle=True, seed=3, epoch=1)])
    other = torch.cat([x for x, _ in shard_loader(ds, 16, shuffle=True, seed=3, epoch=2)])
    assert not torch.equal(again, other)  # the epoch reshuffles
    ordered = torch.cat([x for x, _ in shard_loader(ds, 64, num_workers=2)])
    np.testing.assert_array_equal(ordered.numpy(), data["x"])


def test_pickle_carries_no_handles(packed, data):
    ds = ShardDataset(packed)
    ds[[0, 199]]
    assert ds._open  # shards are open in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone._open and clone._pid is None
    np.testing.assert_array_equal(clone[[3, 2]][0].numpy(), data["x"][[3, 2]])
    ds.close()
    assert not ds._open


def test_in_memory_mode(packed, data):
    ds = ShardDataset(packed, in_memory=True)
    x, y = ds[[5, 1, 5]]
    np.testing.assert_array_equal(x.numpy(), data["x"][[5, 1, 5]])
    np.testing.assert_array_equal(y.numpy(), data["y"][[5, 1, 5]])
    assert ds._memory["features"].shape == (N, D) and not ds._open  # shards closed again
    assert ds[7][1].item() == data["y"][7]
    np.testing.assert_array_equal(ds.targets(), data["y"])
    assert not pickle.loads(pickle.dumps(ds))._memory  # re-read once per process, not pickled
    loader = DataLoader(ds, batch_size=None, sampler=BatchSampler(range(N), 50, False),
                        num_workers=2)  # fmt: skip
    np.testing.assert_array_equal(torch.cat([x for x, _ in loader]).numpy(), data["x"])


def test_open_files_are_limited(packed, data):
    ds = ShardDataset(packed)
    ds.max_open_files = 2
    x, _ = ds[list(range(0, N, 7))]
    np.testing.assert_array_equal(x.numpy(), data["x"][::7])
    assert len(ds._open) == 2


# ----------------------------------------------------------------------------- cache


class FakeCache:
    """The ShardCache interface (fetch, lease) over a local directory, recording every call."""

    def __init__(self, root: Path):
        self.root, self.fetched, self.held = root, [], set()
        root.mkdir(exist_ok=True)

    def fetch(self, url: str, *, checksum: str, size: int | None = None) -> Path:
        self.fetched.append((url, checksum, size))
        local = self.root / Path(url).name
        if not local.exists():
            shutil.copyfile(url.removeprefix("file://"), local)
        if file_checksum(local) != checksum:
            raise ShardError(f"{url}: checksum mismatch")
        return local

    @contextlib.contextmanager
    def lease(self, path):
        self.held.add(Path(path).name)
        try:
            yield Path(path)
        finally:
            self.held.discard(Path(path).name)


def test_cache_fetches_lazily_and_leases_while_open(packed, data, tmp_path):
    cache = FakeCache(tmp_path / "cache")
    ds = ShardDataset(packed, cache=cache)
    assert cache.fetched == []  # nothing fetched until a shard is read
    x, _ = ds[[35, 36, 190]]
    np.testing.assert_array_equal(x.numpy(), data["x"][[35, 36, 190]])
    info = ds.manifest.shards[1]
    assert cache.fetched[0] == (f"{packed}/{info.path}", info.checksum, info.bytes)
    assert cache.held == {"shard-00001.h5", "shard-00006.h5"}
    ds.close()
    assert cache.held == set()


def test_url_source_reads_the_manifest_with_fsspec(packed, data, tmp_path):
    cache = FakeCache(tmp_path / "cache")
    ds = ShardDataset(f"file://{packed}", cache=cache)
    assert len(ds) == N and ds.checksum == Manifest.read(packed).checksum
    np.testing.assert_array_equal(ds[[3, 100]][0].numpy(), data["x"][[3, 100]])
    assert cache.fetched[0][0] == f"file://{packed}/shard-00000.h5"


def test_real_shard_cache(packed, data, tmp_path):
    cache_module = pytest.importorskip("candle.data.cache")
    cache = cache_module.ShardCache(tmp_path / "cache")
    ds = ShardDataset(packed, cache=cache)
    loader = shard_loader(ds, 40, num_workers=2)
    np.testing.assert_array_equal(torch.cat([x for x, _ in loader]).numpy(), data["x"])
    np.testing.assert_array_equal(ds[[150, 2]][0].numpy(), data["x"][[150, 2]])
    assert len(list((tmp_path / "cache").rglob("shard-*.h5"))) == 7


# ----------------------------------------------------------------------------- damage


def test_sound_dataset_verifies(packed):
    assert verify(packed) == [] and verify(packed / "manifest.json", checksums=False) == []


def test_missing_shard(copy):
    (copy / "shard-00003.h5").unlink()
    ds = ShardDataset(copy)
    ds[[0, 1]]  # other shards still read
    with pytest.raises(ShardError, match=r"ds/shard-00003\.h5: shard file is missing"):
        ds[95]
    assert any("shard-00003.h5: shard file is missing" in p for p in verify(copy))


def test_truncated_shard(copy):
    path = copy / "shard-00002.h5"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ShardError, match=r"shard-00002\.h5: file is 1000 bytes but the manif"):
        ShardDataset(copy)[65]
    problems = verify(copy)
    assert any("shard-00002.h5: file is 1000 bytes" in p for p in problems)
    assert any("shard-00002.h5: checksum" in p for p in problems)
    assert any("shard-00002.h5: not a readable HDF5 file" in p for p in problems)


def test_checksum_mismatch(copy):
    path = copy / "shard-00004.h5"
    with h5py.File(path, "r+", locking=False) as f:
        f["features"][3, 0] += 1.0  # same size, different bytes
    assert path.stat().st_size == ShardDataset(copy).manifest.shards[4].bytes
    problems = verify(copy)
    assert len(problems) == 1 and "shard-00004.h5: checksum" in problems[0]
    assert "does not match the manifest's" in problems[0]


def test_manifest_rows_do_not_match_shard_rows(copy):
    def edit(data):
        data["shards"][0]["rows"] += 1
        data["rows"] += 1

    _edit_manifest(copy, edit)
    ds = ShardDataset(copy)
    assert len(ds) == N + 1
    with pytest.raises(ShardError, match=r"shard-00000\.h5: 'features' has 30 rows but the man"):
        ds[0]
    assert any("'targets' has 30 rows but the manifest says 31" in p for p in verify(copy))
    _edit_manifest(copy, lambda data: data.update(rows=5))
    with pytest.raises(ShardError, match=r"manifest\.json: 'rows' is 5 but the shards' rows add"):
        ShardDataset(copy)


def test_wrong_dtype_in_a_shard(copy, data):
    path = copy / "shard-00001.h5"
    with h5py.File(path, "r+", locking=False) as f:
        values = f["features"][...]
        del f["features"]
        f.create_dataset("features", data=values.astype(np.float64))
    _reseal(copy)
    with pytest.raises(ShardError, match=r"shard-00001\.h5: 'features' has dtype float64 but the"):
        ShardDataset(copy)[40]
    assert ShardDataset(copy)[0][0].dtype == torch.float32  # other shards are fine
    assert verify(copy) == [
        f"{path}: 'features' has dtype float64 but the manifest says float32",
    ]


@pytest.mark.parametrize("bad", ["../evil.h5", "/etc/passwd", "sub/../../evil.h5"])
def test_manifest_paths_outside_the_dataset(copy, bad):
    _edit_manifest(copy, lambda data: data["shards"][2].update(path=bad))
    with pytest.raises(
        ShardError, match=r"manifest\.json: shards\[2\]: shard path .*(outside|abs)"
    ):
        ShardDataset(copy)
    assert "shard path" in verify(copy)[0]


def test_manifest_that_is_not_json_or_missing(copy, tmp_path):
    (copy / "manifest.json").write_text('{"format": "candle-shards", "vers')
    with pytest.raises(ShardError, match=r"ds/manifest\.json: manifest is not valid JSON"):
        ShardDataset(copy)
    assert "manifest is not valid JSON" in verify(copy)[0]
    (copy / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(ShardError, match=r"not a candle shard manifest \(format 'something"):
        ShardDataset(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ShardError, match=r"ds/manifest\.json: no manifest"):
        ShardDataset(copy)
    with pytest.raises(ShardError, match=r"nowhere: dataset directory does not exist"):
        ShardDataset(tmp_path / "nowhere")


def test_edited_schema_breaks_the_dataset_checksum(copy):
    _edit_manifest(copy, lambda data: data["schema"]["targets"].update(classes=["x", "y", "z"]))
    with pytest.raises(ShardError, match=r"dataset checksum .* does not match .* edited"):
        ShardDataset(copy)
    assert "dataset checksum" in verify(copy)[-1]


def test_a_shard_that_is_not_hdf5(copy):
    path = copy / "shard-00005.h5"
    path.write_bytes(b"\0" * path.stat().st_size)
    _reseal(copy)
    with pytest.raises(ShardError, match=r"shard-00005\.h5: not a readable HDF5 file"):
        ShardDataset(copy)[160]


# ----------------------------------------------------------------------------- transforms


def test_standardizer_matches_numpy_on_training_rows(packed, data, tmp_path):
    ds = ShardDataset(packed)
    train = np.random.default_rng(1).permutation(N)[:150]
    std = Standardizer.fit(ds, train)
    rows = data["x"][np.sort(train)].astype(np.float64)
    np.testing.assert_allclose(std.mean, rows.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std.std, rows.std(axis=0), rtol=1e-12)
    assert std.rows == 150 and std.dataset_checksum == ds.checksum
    # Applied as a transform, on samples and on batches.
    ds.transform = std
    x, _ = ds[[4, 9]]
    want = (data["x"][[4, 9]] - rows.mean(0)) / rows.std(0)
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds[4][0].numpy(), want[0], rtol=1e-5, atol=1e-6)
    # Saved next to the dataset and loaded back exactly.
    path = std.save(Standardizer.path_for(tmp_path, "split0"))
    assert path.name == "standardizer-split0.json"
    back = Standardizer.load(path, dataset=ds)
    assert np.array_equal(back.mean, std.mean) and np.array_equal(back.std, std.std)


def test_standardizer_streams_blocks_like_one_pass(data, monkeypatch):
    import candle.data.dataset as dataset_module

    monkeypatch.setattr(dataset_module, "_BLOCK_BYTES", 64)  # 3-row blocks: many merges
    x = data["x"].astype(np.float64)
    x[::7, 2] = np.nan  # NaNs are skipped, feature by feature
    std = Standardizer.fit(x)
    np.testing.assert_allclose(std.mean, np.nanmean(x, axis=0), rtol=1e-12)
    np.testing.assert_allclose(std.std, np.nanstd(x, axis=0), rtol=1e-12)
    const = Standardizer.fit(np.ones((4, 2)))
    assert const.std.tolist() == [1.0, 1.0] and const.mean.tolist() == [1.0, 1.0]


def test_standardizer_many_blocks_over_shards(packed, data, monkeypatch):
    import candle.data.dataset as dataset_module

    monkeypatch.setattr(dataset_module, "_BLOCK_BYTES", 100)
    std = Standardizer.fit(ShardDataset(packed), range(0, N, 2))
    rows = data["x"][::2].astype(np.float64)
    np.testing.assert_allclose(std.mean, rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std.std, rows.std(0), rtol=1e-12)


def test_target_standardizer_for_regression(data, tmp_path):
    df = pd.DataFrame(data["x"], columns=[f"f{i}" for i in range(D)])
    df["auc"] = data["reg"] * 3 + 7
    pack(df, tmp_path / "reg", target="auc", shard_size="1KB")
    ds = ShardDataset(tmp_path / "reg")
    ys = Standardizer.fit(ds, range(100), of="targets")
    first = df["auc"].to_numpy(np.float64)[:100]
    assert ys.mean == pytest.approx(first.mean()) and ys.std == pytest.approx(first.std())
    ds.target_transform = ys
    _, y = ds[[0, 1]]
    np.testing.assert_allclose(ys.inverse(y).numpy(), df["auc"].to_numpy()[:2], rtol=1e-6)
    np.testing.assert_allclose(y.numpy(), (df["auc"].to_numpy()[:2] - ys.mean) / ys.std, rtol=1e-5)


def test_standardizer_refuses_class_labels_and_other_datasets(packed, copy, tmp_path):
    with pytest.raises(DataError, match="targets are class labels"):
        Standardizer.fit(ShardDataset(packed), of="targets")
    std = Standardizer.fit(ShardDataset(packed))
    path = std.save(tmp_path / "s.json")
    _edit_manifest(copy, lambda d: d["schema"]["features"].update(names=list("vwxyz")))
    _reseal(copy)
    with pytest.raises(DataError, match=r"s\.json: fitted on dataset xxh3_128:.*, but this"):
        Standardizer.load(path, dataset=ShardDataset(copy))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"bad\.json: not a candle standardizer"):
        Standardizer.load(tmp_path / "bad.json")


def test_workers_apply_a_pickled_transform(packed, data):
    ds = ShardDataset(packed, transform=Standardizer.fit(data["x"]))
    loader = shard_loader(ds, 50, num_workers=2)
    x = torch.cat([b for b, _ in loader]).numpy().astype(np.float64)
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(0), 1, atol=1e-5)


def test_pid_change_reopens(packed, data, monkeypatch):
    """After fork a process must open its own handles: simulated by a changed pid."""
    ds = ShardDataset(packed)
    ds[0]
    parent = dict(ds._open)
    monkeypatch.setattr(os, "getpid", lambda: -12345)
    np.testing.assert_array_equal(ds[1][0].numpy(), data["x"][1])
    assert ds._open and all(ds._open[k] is not parent.get(k) for k in ds._open)


def test_take_reads_scattered_contiguous_and_dense_selections(tmp_path):
    """All three read paths of _take agree with numpy indexing (runs, spans, direct reads)."""
    import h5py

    from candle.data.dataset import _take

    data = np.arange(200 * 7, dtype=np.float32).reshape(200, 7)
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f.create_dataset("x", data=data, chunks=(8, 7))
    with h5py.File(tmp_path / "t.h5", "r") as f:
        for local in ([3, 4, 5], [10, 12, 13, 15], [0, 1, 2, 90, 150, 151, 199], [7], [0, 199]):
            idx = np.array(local)
            np.testing.assert_array_equal(_take(f["x"], idx), data[idx])
