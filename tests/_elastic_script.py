"""Run under ``horovodrun`` in elastic mode by test_elastic.py: train TinyTrainer while the set
of workers changes.

usage: horovodrun -np 2 --min-np 1 --max-np 2 ... python _elastic_script.py EVENT STEP [k=v ...]

At optimizer step STEP (once, in the first run of the loop) the script makes something
happen, according to EVENT:

- ``flag:PATH``: rank 0 writes PATH, holding its host name; the test's host discovery script
  reads it and stops offering a host
- ``kill``: rank 1 SIGKILLs itself

Each rank prints ``rank R/N step S loss L`` per step and ``done ...`` at the end. Steps sleep
CANDLE_TEST_STEP_SLEEP seconds while the world size is the one training started with (so the
change lands mid-run, and what follows a shrink is quick).
"""

import os
import signal
import sys
import time
from pathlib import Path

import torch

from candle import Callback, load_params
from candle.testing import TinyTrainer

torch.set_num_threads(1)
event, at_step = sys.argv[1], int(sys.argv[2])


class Scenario(Callback):
    fired = False

    def on_fit_start(self, trainer):
        self.start_size = trainer.strategy.world_size

    def on_step_end(self, trainer, loss):
        s = trainer.strategy
        print(
            f"rank {s.rank}/{s.world_size} step {trainer.global_step} loss {loss.item():.6f}",
            flush=True,
        )
        if s.world_size == self.start_size:
            time.sleep(float(os.environ.get("CANDLE_TEST_STEP_SLEEP", "0")))
        if self.fired or trainer.global_step != at_step:
            return
        self.fired = True
        if event.startswith("flag:") and s.rank == 0:
            Path(event[len("flag:") :]).write_text(os.environ["HOROVOD_HOSTNAME"])
        elif event == "kill" and s.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)


params = load_params(TinyTrainer.params_class, argv=sys.argv[3:], env={})
trainer = TinyTrainer(params, callbacks=[Scenario()])
result = trainer.fit()
s = trainer.strategy
print(
    f"done rank {s.rank}/{s.world_size} {type(s).__name__} {result.status} "
    f"steps {result.global_step} epochs {len(result.history)} lr {trainer.current_lr:g}",
    flush=True,
)
