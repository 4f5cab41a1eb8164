"""Trainers whose trials misbehave on purpose, for the workflow engine's fault tests.

Each is a TinyTrainer with one extra behaviour switched by a parameter, so a study can mix good
and bad trials. ``*_once`` faults happen only on a trial's first attempt (a marker file in the
run directory remembers it), so a retry that resumes from the checkpoint can finish.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from candle.config import param
from candle.testing import TinyParams, TinyTrainer


@dataclass
class FaultyParams(TinyParams):
    fault: str = param(
        "none",
        choices=("none", "raise", "nan", "sigkill", "sigkill_once", "segv_once", "hang"),
        help="what goes wrong",
    )
    fault_epoch: int = param(1, min=0, help="0-based epoch in which the fault happens")
    epoch_sleep: float = param(0.0, min=0.0, help="seconds of sleep at the start of each epoch")


class FaultyTrainer(TinyTrainer):
    params_class = FaultyParams

    def on_train_start_of_epoch(self) -> None:
        p = self.params
        if p.epoch_sleep:
            time.sleep(p.epoch_sleep)
        if p.fault == "none" or self.epoch != p.fault_epoch:
            return
        marker = Path(self.run_dir) / "fault.done"
        if p.fault.endswith("_once"):
            if marker.exists():
                return
            marker.write_text("1")
        if p.fault == "raise":
            raise RuntimeError(f"planted failure in epoch {self.epoch}")
        if p.fault in ("sigkill", "sigkill_once"):
            os.kill(os.getpid(), signal.SIGKILL)
        if p.fault == "segv_once":
            os.kill(os.getpid(), signal.SIGSEGV)
        if p.fault == "hang":
            while True:
                time.sleep(1)

    def training_step(self, batch):
        if self.batch_in_epoch == 0:
            self.on_train_start_of_epoch()
        loss = super().training_step(batch)
        if self.params.fault == "nan" and self.epoch >= self.params.fault_epoch:
            return loss * torch.tensor(float("nan"))
        return loss


class EnvTrainer(TinyTrainer):
    """Writes the environment a trial sees (threads, GPUs, ids) to ``env.json``."""

    def build_model(self):
        names = (
            "CUDA_VISIBLE_DEVICES",
            "OMP_NUM_THREADS",
            "CANDLE_TRIAL_ID",
            "CANDLE_TRIAL_ATTEMPT",
        )
        seen = {k: os.environ.get(k) for k in names}
        seen["torch_threads"] = torch.get_num_threads()
        (Path(self.run_dir) / "env.json").write_text(json.dumps(seen))
        return super().build_model()


@dataclass
class ShardParams(TinyParams):
    data_dir: str = param("", help="a packed shard dataset")


class ShardFileTrainer(TinyTrainer):
    """Reads a packed shard dataset (first 80 % of rows to train, the rest to validate)."""

    params_class = ShardParams

    def build_data(self):
        from torch.utils.data import Subset

        from candle.data import ShardDataset

        ds = ShardDataset(self.params.data_dir)
        cut = int(0.8 * len(ds))
        return Subset(ds, range(cut)), Subset(ds, range(cut, len(ds)))

    def training_step(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.model(x).squeeze(-1), y)

    def validation_step(self, batch):
        return {"loss": self.training_step(batch)}
