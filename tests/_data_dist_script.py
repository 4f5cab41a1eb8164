"""Run under a launcher by ``test_data_distributed.py``: train on a ShardDataset, record samples.

usage: [torchrun ... | horovodrun ...] python _data_dist_script.py DATA_DIR OUT_DIR [key=value ...]

The dataset's feature column 0 holds each row's index. Each rank trains a tiny linear model
(strategy=auto: the Trainer detects the launcher) and writes OUT_DIR/rank<R>.json:
``{"rank", "world_size", "strategy", "epochs": {epoch: [[row ids of batch], ...]}}``.
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from candle import Trainer
from candle.data import ShardDataset

data_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)


class Recorder(Trainer):
    def build_model(self) -> nn.Module:
        self.seen: dict[int, list[list[int]]] = {}
        return nn.Linear(self.dataset.manifest.feature_shape[0], 1)

    def build_data(self):
        return self.dataset

    def training_step(self, batch):
        x, y = batch
        self.seen.setdefault(self.epoch, []).append(x[:, 0].long().tolist())
        return F.mse_loss(self.model(x).squeeze(1), y)


overrides = dict(arg.split("=", 1) for arg in sys.argv[3:])
kwargs = {"epochs": 2, "batch_size": 4, "seed": 0, "num_workers": 0}
kwargs.update({k: int(v) for k, v in overrides.items()})
Recorder.dataset = ShardDataset(data_dir)
trainer = Recorder(
    run_dir=str(out / "run"),
    device="cpu",
    optimizer="sgd",
    learning_rate=0.01,
    monitor="train_loss",
    progress_bar=False,
    **kwargs,
)
result = trainer.fit()
s = trainer.strategy
record = {
    "rank": s.rank,
    "world_size": s.world_size,
    "strategy": type(s).__name__,
    "status": result.status,
    "epochs": {str(k): v for k, v in trainer.seen.items()},
}
(out / f"rank{s.rank}.json").write_text(json.dumps(record))
print(f"rank {s.rank}/{s.world_size} {type(s).__name__} done {result.status}", flush=True)
trainer.strategy.shutdown()  # destroy the process group before exit, as `candle train` does
