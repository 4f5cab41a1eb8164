"""The Trainer on shard datasets: batch reads, splits as Subsets, provenance in result.json."""

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from torch.utils.data import Subset

from candle.data import ShardDataset, load_split, make_split, pack
from candle.run import read_result
from candle.testing import TinyTrainer


def _dataset(tmp_path, n=200, d=8):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d))
    frame = pd.DataFrame(x, columns=[f"g{i}" for i in range(d)])
    frame["y"] = x @ rng.normal(size=d)
    frame.to_csv(tmp_path / "t.csv", index=False)
    pack(tmp_path / "t.csv", tmp_path / "ds", target="y", shard_size="4KB")
    return tmp_path / "ds"


class ShardTrainer(TinyTrainer):
    source = None  # the dataset directory, set by the test
    reads: list = []

    def build_data(self):
        ds = ShardDataset(self.source)
        original = ds._batch

        def counting(indices):
            ShardTrainer.reads.append(len(indices))
            return original(indices)

        ds._batch = counting
        split = load_split(ds.source)
        return Subset(ds, split["train"].tolist()), Subset(ds, split["val"].tolist())

    def training_step(self, batch):
        x, y = batch
        return F.mse_loss(self.model(x).squeeze(-1), y)

    def validation_step(self, batch):
        return {"loss": self.training_step(batch)}


def test_trainer_reads_whole_batches_from_shards_and_records_the_checksum(tmp_path):
    ds_dir = _dataset(tmp_path)
    make_split(ds_dir, kind="random", seed=0)
    ShardTrainer.reads, ShardTrainer.source = [], ds_dir
    t = ShardTrainer(
        output_dir=str(tmp_path / "runs"), epochs=2, batch_size=32, progress_bar=False, dropout=0.0
    )
    result = t.fit()
    assert result.status == "completed"
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # 160 training rows / 32 = 5 whole-batch reads per epoch, plus validation batches
    assert ShardTrainer.reads[:5] == [32] * 5
    data = read_result(result.run_dir)["provenance"]["data"]
    manifest_checksum = ShardDataset(ds_dir).checksum
    assert data["train"]["checksum"] == data["val"]["checksum"] == manifest_checksum
    assert data["train"]["rows"] == 160 and data["val"]["rows"] == 20
    assert torch.isfinite(t.predict("val")).all()
