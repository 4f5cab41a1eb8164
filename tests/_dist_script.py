"""Run under a launcher by the distributed tests: train TinyTrainer, dump each rank's weights.

usage: [horovodrun ... | torchrun ...] python _dist_script.py OUT_DIR [key=value ...]

The Trainer detects the launcher itself (strategy=auto). Each rank writes
OUT_DIR/weights_rank<R>.pt and prints one line ``rank R/N step S loss L``.
Environment: CANDLE_TEST_STEP_SLEEP=seconds slows each step (so a test can kill the job
mid-epoch).
"""

import os
import sys
import time
from pathlib import Path

import torch

from candle import Callback, load_params
from candle.testing import TinyTrainer

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)


class Report(Callback):
    def on_step_end(self, trainer, loss):
        delay = float(os.environ.get("CANDLE_TEST_STEP_SLEEP", "0"))
        if delay:
            time.sleep(delay)
        s = trainer.strategy
        print(
            f"rank {s.rank}/{s.world_size} step {trainer.global_step} loss {loss.item():.6f}",
            flush=True,
        )


params = load_params(TinyTrainer.params_class, argv=sys.argv[2:], env={})
trainer = TinyTrainer(params, callbacks=[Report()])
result = trainer.fit()
rank = trainer.strategy.rank
weights = {k: v.detach().cpu() for k, v in trainer._unwrapped().state_dict().items()}
torch.save(weights, out / f"weights_rank{rank}.pt")
print(
    f"rank {rank} done {result.status} steps {result.global_step} "
    f"val_loss {result.last_metrics.get('val_loss')}",
    flush=True,
)
trainer.strategy.shutdown()  # destroy the process group before exit, as `candle train` does
