"""Run under torchrun by test_ddp.py: ``fit()`` twice in one process, then once more after
``strategy.shutdown()`` (which destroys the process group; the next ``setup`` makes a new one
in the same torchrun job).

usage: torchrun ... _ddp_refit_script.py [key=value ...]

Each rank prints ``rank R fit K val_loss V`` after each fit and ``rank R shut down`` at the end.
"""

import sys

import torch
import torch.distributed as dist

from candle import load_params
from candle.testing import TinyTrainer

torch.set_num_threads(1)

params = load_params(TinyTrainer.params_class, argv=sys.argv[1:], env={})
trainer = TinyTrainer(params)
rank = trainer.strategy.rank
for k in range(3):
    if k == 2:
        trainer.strategy.shutdown()
        assert not dist.is_initialized()
    result = trainer.fit()
    print(f"rank {rank} fit {k} val_loss {result.last_metrics['val_loss']!r}", flush=True)
trainer.strategy.shutdown()
assert not dist.is_initialized()
print(f"rank {rank} shut down", flush=True)
