"""Trainer.fit and its features, on the tiny regression problem from candle.testing."""

import json
import math

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from candle import Callback, ConfigError, NonFiniteLossError, Trainer
from candle.run import read_result
from candle.testing import TinyParams, TinyTrainer, regression_data


def tiny(**kw):
    kw.setdefault("progress_bar", False)
    kw.setdefault("output_dir", "runs")
    return TinyTrainer(**kw)


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


class Recorder(Callback):
    def __init__(self):
        self.events, self.lrs, self.losses = [], [], []

    def on_fit_start(self, trainer):
        self.events.append("fit_start")

    def on_epoch_start(self, trainer):
        self.events.append("epoch_start")

    def on_step_end(self, trainer, loss):
        self.events.append("step_end")
        self.lrs.append(trainer.current_lr)
        self.losses.append(loss.item())

    def on_evaluate_end(self, trainer, metrics):
        self.events.append("evaluate_end")
        assert "val_loss" in metrics  # metrics are computed before callbacks see them

    def on_epoch_end(self, trainer, metrics):
        self.events.append("epoch_end")

    def on_checkpoint(self, trainer, path):
        self.events.append("checkpoint")
        assert path.exists()

    def on_fit_end(self, trainer, result):
        self.events.append("fit_end")


def test_fit_learns_and_reports():
    result = tiny(epochs=15, learning_rate=0.01, dropout=0.0).fit()
    assert result.status == "completed" and result.stop_reason == "epochs"
    assert len(result.history) == 15
    first, last = result.history[0], result.history[-1]
    assert last["val_loss"] < 0.2 * first["val_loss"]  # it learns the linear map
    assert result.best_metrics["val_loss"] == min(h["val_loss"] for h in result.history)
    assert result.objective == result.best_metrics["val_loss"]
    assert result.checkpoint_path.exists()
    assert result.best_epoch == result.best_metrics["epoch"]


def test_run_directory_contents():
    result = tiny(epochs=3, experiment="exp", run_id="r1").fit()
    run = result.run_dir
    assert run.as_posix().endswith("runs/exp/r1")
    assert (run / "params.yaml").read_text().count("epochs: 3") == 1
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    res = read_result(run)
    assert res["status"] == "completed"
    assert res["objective"] == {"name": "val_loss", "mode": "min", "value": result.objective}
    assert res["metrics"]["val_mae"] == result.last_metrics["val_mae"]
    assert res["provenance"]["versions"]["torch"] == torch.__version__
    assert res["timings"]["elapsed_s"] > 0
    assert res["trainer"] == "candle.testing:TinyTrainer"
    assert "run r1: completed" in (run / "train.log").read_text()


def test_tensorboard_scalars_and_hparams():
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = tiny(epochs=2, log_every_steps=2, run_id="tb").fit()
    acc = EventAccumulator(str(result.run_dir / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in (
        "train/loss_step",
        "train/lr",
        "epoch/train_loss",
        "epoch/val_loss",
        "hparam/val_loss",
    ):
        assert tag in tags, tags
    assert len(acc.Scalars("epoch/val_loss")) == 2
    assert len(acc.Scalars("train/loss_step")) == result.global_step // 2
    assert "_hparams_/experiment" in acc.summary_metadata  # the HParams plugin's record


def test_metrics_log_csv():
    result = tiny(epochs=2, metrics_log="csv", tensorboard=False).fit()
    lines = (result.run_dir / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,lr,val_loss") and len(lines) == 3


def test_callback_event_order():
    rec = Recorder()
    tiny(epochs=2, n_samples=40, batch_size=16, callbacks=[rec]).fit()
    # 32 training samples / 16 -> 2 steps per epoch; the built-in Checkpointing callback runs
    # before user callbacks at epoch end, so its checkpoint event comes first. The final
    # checkpoint at epoch 2 is not repeated at fit end.
    epoch = ["epoch_start", "step_end", "step_end", "evaluate_end", "checkpoint", "epoch_end"]
    assert rec.events == ["fit_start", *epoch, *epoch, "fit_end"]


def test_checkpoint_event_follows_the_checkpointing_callback():
    rec = Recorder()
    t = tiny(epochs=1, n_samples=40, batch_size=16, callbacks=[rec], checkpoint_every_steps=1)
    t.fit()
    assert rec.events.count("checkpoint") == 3  # two steps, one epoch end


def test_seeding_is_deterministic():
    a = tiny(epochs=2, seed=3, run_id="a")
    a.fit()
    b = tiny(epochs=2, seed=3, run_id="b")
    b.fit()
    c = tiny(epochs=2, seed=4, run_id="c")
    c.fit()
    wa, wb, wc = weights(a), weights(b), weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_gradient_accumulation_matches_a_larger_batch():
    common = dict(epochs=2, dropout=0.0, optimizer="sgd", learning_rate=0.05, tensorboard=False)
    big = tiny(batch_size=32, run_id="big", **common)
    big.fit()
    acc = tiny(batch_size=16, grad_accum_steps=2, run_id="acc", **common)
    acc.fit()
    assert acc.global_step == big.global_step == 2 * 7  # 205 samples: 7 steps of 32
    wb, wa = weights(big), weights(acc)
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)


def test_gradient_clipping_bounds_the_update():
    t = tiny(
        epochs=1,
        max_steps=1,
        optimizer="sgd",
        learning_rate=1.0,
        grad_clip=0.01,
        dropout=0.0,
        tensorboard=False,
    )
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in t.build_model().state_dict().items()}
    t.fit()
    after = weights(t)
    delta = torch.cat([(after[k] - before[k]).flatten() for k in before])
    assert delta.norm().item() == pytest.approx(0.01, rel=1e-4)  # lr * max_norm, exactly


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear", "step", "exponential"])
def test_lr_schedule_with_warmup(schedule):
    rec = Recorder()
    t = tiny(
        epochs=4,
        n_samples=80,
        batch_size=16,
        learning_rate=0.1,
        warmup_steps=3,
        lr_schedule=schedule,
        lr_min_ratio=0.1,
        lr_gamma=0.5,
        callbacks=[rec],
        tensorboard=False,
    )
    t.fit()
    total, per_epoch = 16, 4  # 64 training samples / 16
    # lrs[i] is the lr after step i+1, i.e. factor(i + 1)
    for i, lr in enumerate(rec.lrs):
        step = i + 1
        if step < 3:
            expected = 0.1 * (step + 1) / 3
        else:
            prog = min((step - 3) / (total - 3), 1.0)
            expected = (
                0.1
                * {
                    "constant": 1.0,
                    "cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)),
                    "linear": 0.1 + 0.9 * (1 - prog),
                    "step": 0.5 ** (step // per_epoch),
                    "exponential": 0.5 ** (step / per_epoch),
                }[schedule]
            )
        assert lr == pytest.approx(expected, rel=1e-9), (step, lr, expected)


def test_warmup_starts_small():
    rec = Recorder()
    tiny(epochs=1, learning_rate=0.1, warmup_steps=10, callbacks=[rec], tensorboard=False).fit()
    assert rec.lrs[0] == pytest.approx(0.02)  # after step 1: factor(1) = 2/10


def test_early_stopping():
    t = tiny(epochs=20, learning_rate=0.0, early_stopping_patience=2)
    result = t.fit()
    assert result.stop_reason == "early_stopping" and result.status == "completed"
    assert len(result.history) == 3  # epoch 1 sets the best; 2 and 3 do not improve
    assert read_result(result.run_dir)["stop_reason"] == "early_stopping"


def test_max_steps():
    result = tiny(epochs=100, max_steps=10).fit()
    assert result.global_step == 10 and result.stop_reason == "max_steps"


class SlowTrainer(TinyTrainer):
    def training_step(self, batch):
        import time

        time.sleep(0.05)
        return super().training_step(batch)


def test_time_limit_checkpoints_and_resume_finishes(tmp_path):
    kw = dict(progress_bar=False, epochs=3, run_dir=str(tmp_path / "slow"), tensorboard=False)
    first = SlowTrainer(time_limit=1.5, **kw).fit()  # 3 epochs need ~2.1 s of sleep
    assert first.status == "interrupted" and first.stop_reason == "time_limit"
    assert first.global_step < 3 * 7
    assert first.last_checkpoint_path is not None
    assert read_result(first.run_dir)["status"] == "interrupted"
    second = SlowTrainer(resume=True, **kw).fit()
    assert second.status == "completed" and second.global_step == 3 * 7
    assert len(second.history) == 3


class NanTrainer(TinyTrainer):
    def training_step(self, batch):
        loss = super().training_step(batch)
        return loss * float("nan") if self.global_step == 4 else loss


def test_nan_loss_fails_the_run_clearly():
    t = NanTrainer(progress_bar=False, epochs=2)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 1, step 5"):
        t.fit()
    res = read_result(t.run_dir)
    assert res["status"] == "failed"
    assert res["error"]["type"] == "NonFiniteLossError"
    assert "learning_rate" in res["error"]["message"]


def test_evaluate_and_predict():
    t = tiny(epochs=2)
    result = t.fit()
    val = t.evaluate("val")
    assert val["loss"] == pytest.approx(result.last_metrics["val_loss"])
    x, y, _ = regression_data(20, 8, seed=5)
    pred = t.predict(TensorDataset(x, y))
    assert pred.shape == (20, 1)
    with pytest.raises(ConfigError, match="no 'test' split"):
        t.evaluate("test")


def test_evaluate_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="call fit"):
        tiny().evaluate()


class LoaderTrainer(TinyTrainer):
    """A user who builds their own DataLoaders."""

    def build_data(self):
        train, val = super().build_data()
        return {"train": DataLoader(train, batch_size=32, shuffle=False), "val": DataLoader(val)}


def test_user_dataloaders_are_used_as_given():
    result = LoaderTrainer(progress_bar=False, epochs=2).fit()
    assert result.global_step == 2 * 7 and len(result.history) == 2


class NoValTrainer(TinyTrainer):
    def build_data(self):
        return super().build_data()[0]


def test_no_validation_data_monitors_train_loss():
    result = NoValTrainer(progress_bar=False, epochs=2).fit()
    assert result.monitor == "train_loss" and "val_loss" not in result.last_metrics


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not data", "build_data() returned str"),
        ({"training": None}, "expected 'train'"),
        ((TensorDataset(torch.zeros(0, 8), torch.zeros(0, 1)),), "training data is empty"),
    ],
)
def test_bad_build_data(data, message):
    class Bad(TinyTrainer):
        def build_data(self):
            return data

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Bad(progress_bar=False).fit()


def test_monitor_must_name_a_metric():
    with pytest.raises(ConfigError, match="monitor='val_auc' is not among the epoch metrics"):
        tiny(monitor="val_auc").fit()


def test_bad_override_in_constructor():
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        tiny(epoch=3)


def test_params_of_the_wrong_class():
    from candle import Params

    with pytest.raises(ConfigError, match="needs params of type TinyParams"):
        TinyTrainer(Params())


def test_missing_hooks_say_what_to_define():
    with pytest.raises(NotImplementedError, match="must define build_model"):
        Trainer(progress_bar=False).fit()


def test_precision_on_cpu_falls_back_to_fp32(caplog):
    result = tiny(epochs=1, precision="bf16").fit()
    assert result.status == "completed"
    assert "mixed precision is CUDA-only" in caplog.text


def test_cuda_device_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from candle import StrategyError

    with pytest.raises(StrategyError, match="CUDA is not available"):
        tiny(device="cuda").fit()


def test_resume_at_epoch_boundary_equals_uninterrupted(tmp_path):
    full = tiny(epochs=4, run_dir=str(tmp_path / "full"))
    full.fit()
    part = tiny(epochs=2, run_dir=str(tmp_path / "part"))
    part.fit()
    rest = tiny(epochs=4, run_dir=str(tmp_path / "part"), resume=True)
    result = rest.fit()
    wf, wr = weights(full), weights(rest)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    assert [h["train_loss"] for h in result.history] == [
        h["train_loss"] for h in full.fit.__self__.history
    ]
    assert len((tmp_path / "part" / "metrics.jsonl").read_text().splitlines()) == 4


def test_segments_with_a_cosine_schedule_equal_one_uninterrupted_run(tmp_path):
    """stop_at_epoch ends a segment ("paused"); resuming continues the same schedule."""
    kw = {"epochs": 5, "lr_schedule": "cosine", "warmup_steps": 3}
    full = tiny(run_dir=str(tmp_path / "full"), **kw)
    full.fit()
    run_dir = str(tmp_path / "seg")
    first = tiny(run_dir=run_dir, stop_at_epoch=2, **kw).fit()
    assert (first.status, first.stop_reason, len(first.history)) == ("paused", "segment", 2)
    assert read_result(tmp_path / "seg")["status"] == "paused"
    second = tiny(run_dir=run_dir, stop_at_epoch=4, resume=True, **kw).fit()
    assert (second.status, len(second.history)) == ("paused", 4)
    last = tiny(run_dir=run_dir, resume=True, **kw)
    result = last.fit()
    assert (result.status, result.stop_reason, len(result.history)) == ("completed", "epochs", 5)
    wf, wl = weights(full), weights(last)
    assert all(torch.equal(wf[k], wl[k]) for k in wf)
    assert [h["lr"] for h in result.history] == [h["lr"] for h in full.history]
    # a segment end past `epochs` is simply the end of training
    assert tiny(run_dir=str(tmp_path / "past"), epochs=2, stop_at_epoch=9).fit().status == (
        "completed"
    )


def test_resume_with_a_different_model_is_a_clear_error(tmp_path):
    from candle import CheckpointError

    tiny(epochs=1, run_dir=str(tmp_path / "r")).fit()
    with pytest.raises(CheckpointError, match="does not fit this run's model"):
        tiny(epochs=2, hidden=7, run_dir=str(tmp_path / "r"), resume=True).fit()


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    result = tiny(epochs=1, run_dir=str(tmp_path / "new"), resume=True).fit()
    assert result.status == "completed"


def test_custom_params_subclass_and_optimizer_hook():
    calls = []

    class Custom(TinyTrainer):
        def build_optimizer(self, model):
            calls.append(self.params.hidden)
            return torch.optim.SGD(model.parameters(), lr=self.params.learning_rate)

    Custom(TinyParams(hidden=5, epochs=1, progress_bar=False)).fit()
    assert calls == [5]


@pytest.mark.gpu
def test_cuda_bf16_training():
    result = tiny(epochs=2, device="cuda", precision="bf16").fit()
    assert result.status == "completed"


@pytest.mark.gpu
def test_cuda_fp16_with_grad_scaling():
    t = tiny(epochs=2, device="cuda", precision="fp16")
    result = t.fit()
    assert result.status == "completed" and t._scaler is not None


def test_regression_loss_helper_matches_torch():
    x, y, w = regression_data(64, 4, noise=0.0, seed=1)
    assert torch.allclose(x @ w, y)
    assert F.mse_loss(x @ w, y).item() == 0.0
