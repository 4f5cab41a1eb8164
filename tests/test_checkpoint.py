"""Tests for candle.checkpoint: round trips, keep policy, pointers, corruption and safety."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pathlib
import random

import numpy as np
import pytest
import torch

from candle.checkpoint import (
    CheckpointInfo,
    CheckpointManager,
    atomic_write_bytes,
    atomic_write_text,
    capture_rng_state,
    restore_rng_state,
)
from candle.errors import CandleError, CheckpointError, ConfigError

LOGGER = "candle.checkpoint"


def _names(manager: CheckpointManager) -> list[str]:
    return [info.path.name for info in manager.list()]


def _rewrite_sidecar(path: pathlib.Path) -> None:
    """Make the sidecar agree with the file's current bytes (to get past the checksum)."""
    sidecar = path.with_name(path.name + ".sha256")
    info = json.loads(sidecar.read_text()) if sidecar.exists() else {"file": path.name}
    info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar.write_text(json.dumps(info))


def _three(tmp_path: pathlib.Path) -> tuple[CheckpointManager, list[pathlib.Path]]:
    manager = CheckpointManager(tmp_path, keep_last=3)
    paths = [manager.save({"i": i}, epoch=i, step=10 * i) for i in range(1, 4)]
    return manager, paths


# ----------------------------------------------------------------------------- round trip


def _train_a_little() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.9**epoch)
    scaler = torch.amp.GradScaler(device="cpu", enabled=False)
    for _ in range(3):
        optimizer.zero_grad()
        loss = model(torch.randn(16, 4)).pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "scaler_enabled": torch.amp.GradScaler(device="cpu").state_dict(),
        "sgd": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).state_dict(),
        "rng": capture_rng_state(),
        "history": [{"epoch": 0, "loss": 1.5, "val_loss": float("nan")}, {"epoch": 1}],
        "callbacks": {"early_stopping": {"wait": 2, "best": 0.25, "stopped": False}},
        "params": {"batch_size": 16, "optimizer": "adam", "dims": [4, 8, 1], "note": None},
    }


def _assert_same(a, b, where="state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        bits_a, bits_b = (t.detach().reshape(-1).view(torch.uint8) for t in (a, b))
        assert torch.equal(bits_a, bits_b), where  # bitwise: NaN and -0.0 included
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b and type(a) is type(b), where


def test_full_state_round_trip_is_bitwise(tmp_path):
    state = _train_a_little()
    manager = CheckpointManager(tmp_path)
    path = manager.save(state, epoch=2, step=300, metric=0.5)
    assert path == tmp_path / "ckpt-e0002-s00000300.pt"

    record = manager.load(path)
    assert (record["candle_checkpoint"], record["epoch"], record["step"]) == (1, 2, 300)
    assert record["metric"] == 0.5
    _assert_same(state, record["state"])

    # The loaded state dicts are accepted by fresh objects.
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    model.load_state_dict(record["state"]["model"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    optimizer.load_state_dict(record["state"]["optimizer"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.9**epoch)
    scheduler.load_state_dict(record["state"]["scheduler"])
    assert scheduler.last_epoch == 3
    torch.amp.GradScaler(device="cpu", enabled=False).load_state_dict(record["state"]["scaler"])


def test_load_accepts_bare_file_name(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save({"x": torch.arange(3)}, epoch=0, step=1)
    record = manager.load("ckpt-e0000-s00000001.pt")
    assert torch.equal(record["state"]["x"], torch.arange(3))


# ----------------------------------------------------------------------------- RNG


def _draw() -> tuple:
    return random.random(), np.random.rand(3).tolist(), torch.rand(3), np.random.randn()


def test_rng_restore_reproduces_next_values_after_save_and_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = capture_rng_state()
    expected = _draw()

    manager = CheckpointManager(tmp_path)
    manager.save({"rng": state}, epoch=0, step=0)
    loaded = manager.load_latest()["state"]["rng"]

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(loaded)
    again = _draw()
    assert again[0] == expected[0]
    assert again[1] == expected[1]
    assert torch.equal(again[2], expected[2])
    assert again[3] == expected[3]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_rng_restore_after_save_and_load(tmp_path):
    torch.cuda.manual_seed_all(5)
    state = capture_rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    expected = torch.rand(4, device="cuda")
    manager = CheckpointManager(tmp_path)
    manager.save({"rng": state}, epoch=0, step=0)
    torch.cuda.manual_seed_all(99)
    restore_rng_state(manager.load_latest()["state"]["rng"])
    assert torch.equal(torch.rand(4, device="cuda"), expected)


def test_rng_state_is_plain_data():
    state = capture_rng_state()
    assert set(state) >= {"python", "numpy", "torch"}
    assert state["numpy"]["key"].dtype == torch.int64
    assert state["python"]["internal"].dtype == torch.int64


# ----------------------------------------------------------------------------- keep policy


def test_keep_last_prunes_oldest_with_sidecars(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in range(1, 5):
        manager.save({"step": step}, epoch=0, step=step)
    assert _names(manager) == ["ckpt-e0000-s00000003.pt", "ckpt-e0000-s00000004.pt"]
    sidecars = sorted(p.name for p in tmp_path.glob("*.sha256"))
    assert sidecars == [n + ".sha256" for n in _names(manager)]


def test_best_survives_when_older(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2, mode="min")
    for step, metric in [(1, 0.9), (2, 0.1), (3, 0.5), (4, 0.6), (5, 0.7)]:
        manager.save({"step": step}, epoch=0, step=step, metric=metric)
    assert [i.step for i in manager.list()] == [2, 4, 5]
    assert manager.best_path == tmp_path / "ckpt-e0000-s00000002.pt"
    assert manager.load_best()["metric"] == 0.1
    assert manager.list()[0] == CheckpointInfo(manager.best_path, 0, 2, 0.1)


def test_keep_best_false_prunes_best_and_repoints(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2, keep_best=False)
    for step, metric in [(1, 0.1), (2, 0.5), (3, 0.4)]:
        manager.save({}, epoch=0, step=step, metric=metric)
    assert [i.step for i in manager.list()] == [2, 3]
    assert manager.best_path == tmp_path / "ckpt-e0000-s00000003.pt"


def test_order_is_by_step_then_epoch(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=5)
    manager.save({}, epoch=9, step=1)
    manager.save({}, epoch=1, step=2)
    manager.save({}, epoch=2, step=2)
    assert [(i.epoch, i.step) for i in manager.list()] == [(9, 1), (1, 2), (2, 2)]


def test_just_written_checkpoint_is_never_pruned(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save({}, epoch=0, step=10)
    old = manager.save({}, epoch=0, step=5)  # e.g. a rerun from an earlier point
    assert old.exists()
    assert manager.last_path == old


def test_same_epoch_step_overwrites(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save({"v": 1}, epoch=1, step=1, metric=0.2)
    manager.save({"v": 2}, epoch=1, step=1, metric=0.3)
    assert len(manager.list()) == 1
    record = manager.load_latest()
    assert record["state"] == {"v": 2} and record["metric"] == 0.3
    assert manager.list()[0].metric == 0.3


@pytest.mark.parametrize(
    ("mode", "metrics", "best_step"),
    [
        ("min", [0.5, 0.3, 0.3, 0.4], 2),  # ties keep the older checkpoint
        ("max", [0.5, 0.7, 0.6, 0.7], 2),
        ("min", [float("nan"), 0.9, float("nan")], 2),
        ("max", [0.1, float("nan"), 0.05], 1),
        ("min", [None, 0.4, None], 2),
    ],
)
def test_best_tracking(tmp_path, mode, metrics, best_step):
    manager = CheckpointManager(tmp_path, keep_last=10, mode=mode)
    for step, metric in enumerate(metrics, start=1):
        manager.save({}, epoch=0, step=step, metric=metric)
    assert manager.best_path == manager.path_for(0, best_step)
    assert (tmp_path / "best").read_text().strip() == f"ckpt-e0000-s{best_step:08d}.pt"


def test_nan_or_missing_metric_is_never_best(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save({}, epoch=0, step=1, metric=float("nan"))
    manager.save({}, epoch=0, step=2)
    assert manager.best_path is None
    assert manager.load_best() is None
    assert not (tmp_path / "best").exists()
    assert math.isnan(manager.list()[0].metric)


def test_best_survives_a_new_manager(tmp_path):
    CheckpointManager(tmp_path, keep_last=1).save({}, epoch=0, step=1, metric=0.1)
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save({}, epoch=0, step=2, metric=0.2)
    manager.save({}, epoch=0, step=3, metric=0.3)
    assert [i.step for i in manager.list()] == [1, 3]
    assert manager.best_path == manager.path_for(0, 1)


# ----------------------------------------------------------------------------- pointers


def test_pointer_files_hold_file_names(tmp_path):
    manager = CheckpointManager(tmp_path)
    assert manager.last_path is None and manager.best_path is None
    path = manager.save({}, epoch=3, step=42, metric=1.0)
    assert (tmp_path / "last").read_text() == "ckpt-e0003-s00000042.pt\n"
    assert (tmp_path / "best").read_text() == "ckpt-e0003-s00000042.pt\n"
    assert manager.last_path == path == manager.best_path


def test_pointer_naming_a_foreign_path_is_ignored(tmp_path):
    manager = CheckpointManager(tmp_path)
    (tmp_path / "last").write_text("../../etc/passwd\n")
    assert manager.last_path is None


def test_invalid_configuration(tmp_path):
    with pytest.raises(ConfigError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)
    with pytest.raises(ConfigError, match="mode"):
        CheckpointManager(tmp_path, mode="best")
    with pytest.raises(CheckpointError, match="step"):
        CheckpointManager(tmp_path).save({}, epoch=0, step=-1)


# ----------------------------------------------------------------------------- corruption


def test_empty_directory_loads_none(tmp_path):
    manager = CheckpointManager(tmp_path / "new")
    assert manager.load_latest() is None
    assert manager.load_best() is None
    assert manager.list() == []


def test_truncated_latest_falls_back_with_warning(tmp_path, caplog):
    manager, paths = _three(tmp_path)
    data = paths[-1].read_bytes()
    paths[-1].write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        record = manager.load_latest()
    assert record["state"] == {"i": 2}
    assert any(paths[-1].name in r.getMessage() for r in caplog.records)
    assert "checksum mismatch" in caplog.text


def test_truncated_file_with_matching_sidecar_is_reported_as_corrupt(tmp_path):
    manager, paths = _three(tmp_path)
    data = paths[-1].read_bytes()
    paths[-1].write_bytes(data[: len(data) // 2])
    _rewrite_sidecar(paths[-1])
    with pytest.raises(CheckpointError, match=r"ckpt-e0003-s00000030\.pt is truncated or corrupt"):
        manager.load(paths[-1])
    assert manager.load_latest()["state"] == {"i": 2}


def test_flipped_byte_is_detected_and_falls_back(tmp_path, caplog):
    manager, paths = _three(tmp_path)
    expected = json.loads(paths[-1].with_name(paths[-1].name + ".sha256").read_text())["sha256"]
    data = bytearray(paths[-1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    paths[-1].write_bytes(bytes(data))
    actual = hashlib.sha256(data).hexdigest()

    with pytest.raises(CheckpointError) as excinfo:
        manager.load(paths[-1])
    message = str(excinfo.value)
    assert paths[-1].name in message and expected in message and actual in message

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert manager.load_latest()["state"] == {"i": 2}
    assert paths[-1].name in caplog.text


def test_all_corrupt_raises_listing_every_file(tmp_path, caplog):
    manager, paths = _three(tmp_path)
    for path in paths:
        path.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(CheckpointError) as exc:
        manager.load_latest()
    for path in paths:
        assert path.name in str(exc.value)
    assert len(caplog.records) == len(paths)


def test_missing_sidecar(tmp_path, caplog):
    manager, paths = _three(tmp_path)
    paths[-1].with_name(paths[-1].name + ".sha256").unlink()
    with pytest.raises(CheckpointError, match=r"sidecar .* is missing"):
        manager.load(paths[-1])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert manager.load_latest()["state"] == {"i": 2}


def test_last_pointer_to_older_checkpoint_is_tried_first(tmp_path):
    manager, paths = _three(tmp_path)
    atomic_write_text(tmp_path / "last", paths[0].name + "\n")
    assert manager.load_latest()["state"] == {"i": 1}


def test_dangling_last_pointer_falls_back(tmp_path, caplog):
    manager, paths = _three(tmp_path)
    paths[-1].unlink()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert manager.load_latest()["state"] == {"i": 2}
    assert "cannot read" in caplog.text


def test_leftover_tmp_files_are_ignored_and_cleaned(tmp_path):
    manager, _ = _three(tmp_path)
    leftover = tmp_path / ".ckpt-e0009-s00000090.pt.abcd1234.tmp"
    leftover.write_bytes(b"half a checkpoint")
    assert _names(manager)[-1] == "ckpt-e0003-s00000030.pt"
    assert manager.load_latest()["state"] == {"i": 3}
    CheckpointManager(tmp_path).load_latest()
    assert leftover.exists()  # readers never delete: it could be a write in progress
    manager.save({"i": 4}, epoch=4, step=40)
    assert not leftover.exists()  # the writer cleans up


def test_non_candle_file_is_rejected(tmp_path):
    manager = CheckpointManager(tmp_path)
    path = manager.path_for(0, 1)
    torch.save({"weights": torch.zeros(2)}, path)
    _rewrite_sidecar(path)
    with pytest.raises(CheckpointError, match="not a candle checkpoint"):
        manager.load(path)


# ----------------------------------------------------------------------------- safety


class _Exploit:
    marker: pathlib.Path

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_even_with_valid_sidecar(tmp_path):
    manager = CheckpointManager(tmp_path)
    marker = tmp_path / "pwned"
    path = manager.path_for(0, 1)
    torch.save({"candle_checkpoint": 1, "state": {"x": _Exploit(marker)}}, path)
    _rewrite_sidecar(path)
    with pytest.raises(CheckpointError, match="only tensors and plain containers") as excinfo:
        manager.load(path)
    assert path.name in str(excinfo.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proves the file really is an exploit
    assert marker.exists()


def test_state_that_weights_only_cannot_load_is_refused_at_save(tmp_path):
    manager = CheckpointManager(tmp_path)
    with pytest.raises(CheckpointError, match=r"state\['history'\]\[0\]\['loss'\].*numpy"):
        manager.save({"history": [{"loss": np.float64(0.5)}]}, epoch=0, step=1)
    with pytest.raises(CheckpointError, match="_Exploit"):
        manager.save({"x": _Exploit(tmp_path / "pwned")}, epoch=0, step=1)
    assert manager.list() == []
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- atomicity


def test_crash_during_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    previous = manager.save({"v": 1}, epoch=0, step=1)
    real_replace = os.replace

    def crash_on_checkpoint(src, dst):
        if str(dst).endswith(".pt"):
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_checkpoint)
    with pytest.raises(CheckpointError, match="simulated crash"):
        manager.save({"v": 2}, epoch=0, step=2)
    with pytest.raises(CheckpointError):  # overwriting in place fails the same way
        manager.save({"v": 3}, epoch=0, step=1)
    monkeypatch.undo()

    assert manager.last_path == previous
    # No temp files, no stray sidecar for step 2, and step 1's sidecar still matches it.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-e0000-s00000001.pt",
        "ckpt-e0000-s00000001.pt.sha256",
        "last",
    ]
    assert CheckpointManager(tmp_path).load_latest()["state"] == {"v": 1}


def test_crash_while_serialising_keeps_previous_checkpoint(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    manager.save({"v": 1}, epoch=0, step=1)

    def killed(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        manager.save({"v": 2}, epoch=0, step=2)
    monkeypatch.undo()
    assert _names(manager) == ["ckpt-e0000-s00000001.pt"]
    assert manager.load_latest()["state"] == {"v": 1}


def test_atomic_write_helpers(tmp_path):
    target = tmp_path / "file.txt"
    assert atomic_write_text(target, "héllo") == target
    assert target.read_text(encoding="utf-8") == "héllo"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_checkpoint_error_is_a_candle_error():
    assert issubclass(CheckpointError, CandleError)
