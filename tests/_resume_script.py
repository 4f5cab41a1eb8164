"""Run by test_resume.py in a subprocess: train TinyTrainer, optionally SIGKILL itself.

usage: python _resume_script.py RUN_DIR KILL_AT_STEP(0 = never) RESUME(0/1) OUT_WEIGHTS
"""

import os
import signal
import sys

import torch

from candle import Callback
from candle.testing import TinyTrainer

run_dir, kill_at, resume, out = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]


class KillAt(Callback):
    def on_step_end(self, trainer, loss):
        print(f"step {trainer.global_step}", flush=True)
        if kill_at and trainer.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: as a node failure


torch.set_num_threads(1)
trainer = TinyTrainer(
    callbacks=[KillAt()],
    run_dir=run_dir,
    epochs=4,
    batch_size=16,  # 205 training samples -> 13 batches per epoch
    grad_accum_steps=2,  # 7 optimizer steps per epoch
    checkpoint_every_steps=3,
    dropout=0.3,  # RNG state matters
    lr_schedule="cosine",
    warmup_steps=4,
    resume=resume,
    progress_bar=False,
    n_samples=256,
)
result = trainer.fit()
torch.save(trainer.model.state_dict(), out)
print("done", result.status, len(result.history), flush=True)
