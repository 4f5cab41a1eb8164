"""Run under torchrun by test_ddp.py: a Trainer whose own DataLoaders differ in length per rank.

usage: torchrun ... _ddp_uneven_script.py [key=value ...]

Rank 0 trains on 100 rows, every other rank on 60 (and validates on 30 vs 17), so with
``batch_size=10`` the loaders hold 10 and 6 batches. Each rank prints one line
``rank R done steps S batches B val_loss V`` (B: training batches this rank ran).
"""

import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

from candle import load_params
from candle.testing import TinyTrainer, regression_data

torch.set_num_threads(1)


class UnevenTrainer(TinyTrainer):
    batches = 0

    def build_data(self):
        p = self.params
        x, y, _ = regression_data(400, p.n_features, p.noise, seed=99)
        first = self.strategy.rank == 0
        start, n_train, n_val = (0, 100, 30) if first else (200, 60, 17)
        train = TensorDataset(x[start : start + n_train], y[start : start + n_train])
        val_at = start + n_train
        val = TensorDataset(x[val_at : val_at + n_val], y[val_at : val_at + n_val])
        return (
            DataLoader(train, batch_size=p.batch_size, shuffle=True),
            DataLoader(val, batch_size=p.batch_size),
        )

    def training_step(self, batch):
        self.batches += 1
        return super().training_step(batch)


params = load_params(UnevenTrainer.params_class, argv=sys.argv[1:], env={})
trainer = UnevenTrainer(params)
result = trainer.fit()
print(
    f"rank {trainer.strategy.rank} done steps {result.global_step} batches {trainer.batches} "
    f"val_loss {result.last_metrics['val_loss']!r}",
    flush=True,
)
trainer.strategy.shutdown()  # destroy the process group before exit, as `candle train` does
