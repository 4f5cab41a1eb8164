"""Run under horovodrun by test_horovod.py: every rank brings its own DataLoaders, of different
lengths (training: rank 0 has 100 rows, the others 60, in batches of 10; validation: 30 and
20 rows), as a user's per-rank shards would be.

usage: horovodrun ... python _hvd_uneven.py [key=value ...]

Each rank prints ``rank R micro-batches M steps S lr L`` at the end; a rank that ran more
micro-batches than another would wait forever in an all-reduce.
"""

import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

from candle import load_params
from candle.testing import TinyTrainer, regression_data

torch.set_num_threads(1)


class UnevenTrainer(TinyTrainer):
    micro_batches = 0

    def build_data(self):
        rank = self.strategy.rank
        n_train, n_val = (100, 30) if rank == 0 else (60, 20)
        x, y, _ = regression_data(n_train + n_val, self.params.n_features, seed=10 + rank)
        train = TensorDataset(x[:n_train], y[:n_train])
        val = TensorDataset(x[n_train:], y[n_train:])
        return DataLoader(train, batch_size=10, shuffle=True), DataLoader(val, batch_size=10)

    def training_step(self, batch):
        if self.model.training:
            self.micro_batches += 1
        return super().training_step(batch)


params = load_params(UnevenTrainer.params_class, argv=sys.argv[1:], env={})
trainer = UnevenTrainer(params)
result = trainer.fit()
print(
    f"rank {trainer.strategy.rank} micro-batches {trainer.micro_batches} "
    f"steps {result.global_step} lr {trainer.current_lr}",
    flush=True,
)
