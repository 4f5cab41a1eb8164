"""Process set-up for a run: seeding, mixed precision, the run's log file (private)."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("candle.trainer")


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            log.warning(
                "precision=%s: mixed precision is CUDA-only here; training in fp32 on %s",
                precision,
                device,
            )
        return torch.float32
    if precision == "32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16  # precision=auto on a GPU that has bf16
    return torch.float16


def precision_name(dtype: torch.dtype) -> str:
    return {
        torch.float32: "fp32",
        torch.bfloat16: "bf16 autocast",
        torch.float16: "fp16 autocast + grad scaling",
    }[dtype]


def attach_file_log(path: Path) -> logging.Handler:
    root = logging.getLogger("candle")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler
