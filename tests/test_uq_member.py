"""UQ heads and losses, and the UQTrainer member: data handling, units, predictions."""

import math

import numpy as np
import pytest
import torch
from _uq_trainers import ToyClasses, ToyRegression
from torch import nn

from candle.errors import ConfigError
from candle.uq.heads import (
    beta_nll_loss,
    gaussian_nll_loss,
    head_size,
    mc_dropout,
    pinball_loss,
    split_gaussian,
    split_quantiles,
)
from candle.uq.member import PREDICTIONS, read_predictions

# --------------------------------------------------------------------------- heads


def test_gaussian_nll_known_values():
    y = torch.tensor([[0.0], [1.0]])
    mean = torch.tensor([[0.0], [0.0]])
    var = torch.tensor([[1.0], [4.0]])
    expected = np.mean(
        [0.5 * math.log(2 * math.pi), 0.5 * (math.log(4.0) + 1 / 4 + math.log(2 * math.pi))]
    )
    assert gaussian_nll_loss(mean, var, y).item() == pytest.approx(expected, rel=1e-6)
    # beta = 0 is the plain NLL
    assert beta_nll_loss(mean, var, y, beta=0.0).item() == pytest.approx(expected, rel=1e-6)


def test_beta_nll_with_beta_one_gives_the_mean_a_squared_error_gradient():
    mean = torch.tensor([[0.3], [-1.0]], requires_grad=True)
    var = torch.tensor([[0.5], [3.0]])
    y = torch.tensor([[1.0], [2.0]])
    beta_nll_loss(mean, var, y, beta=1.0).backward()
    # d/dmu of var * (y - mu)^2 / (2 var) averaged over 2 samples = (mu - y) / 2
    assert torch.allclose(mean.grad, (mean.detach() - y) / 2)


def test_split_gaussian_variance_is_softplus_plus_floor():
    out = torch.tensor([[2.0, -50.0], [1.0, 0.0]])
    mean, var = split_gaussian(out, floor=1e-3)
    assert torch.equal(mean, out[:, :1])
    assert var[0, 0].item() == pytest.approx(1e-3, rel=1e-6)  # softplus(-50) ~ 0: the floor
    assert var[1, 0].item() == pytest.approx(math.log(2) + 1e-3, rel=1e-6)
    with pytest.raises(ConfigError, match="even number"):
        split_gaussian(torch.zeros(2, 3))


def test_pinball_loss_hand_computed():
    pred = torch.tensor([[[1.0], [2.0]]])  # n=1, q=2 (levels 0.1, 0.9), o=1
    y = torch.tensor([[3.0]])
    # level 0.1, under-prediction by 2: 0.1 * 2; level 0.9, under by 1: 0.9 * 1
    assert pinball_loss(pred, y, [0.1, 0.9]).item() == pytest.approx((0.2 + 0.9) / 2)
    y = torch.tensor([[0.0]])  # over-prediction: (1 - tau) * excess
    assert pinball_loss(pred, y, [0.1, 0.9]).item() == pytest.approx((0.9 * 1 + 0.1 * 2) / 2)


def test_split_quantiles_sorts_so_quantiles_never_cross():
    out = torch.tensor([[3.0, 1.0, 2.0]])
    assert split_quantiles(out, 3)[0, :, 0].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match="multiple of 2"):
        split_quantiles(out, 2)


def test_head_size():
    assert head_size("gaussian", outputs=3) == 6
    assert head_size("quantile", outputs=2, quantiles=3) == 6
    assert head_size("classification", classes=5) == 5
    with pytest.raises(ConfigError, match="head must be one of"):
        head_size("poisson")


def test_mc_dropout_samples_differ_and_restores_the_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.Dropout(0.5), nn.Linear(64, 1))
    model.train()
    x = torch.randn(8, 4)
    draws = mc_dropout(model, lambda: model(x), samples=5)
    assert draws.shape == (5, 8, 1)
    assert not torch.allclose(draws[0], draws[1])
    assert model.training  # put back as it was
    with pytest.raises(ConfigError, match="dropout layers"):
        mc_dropout(nn.Linear(4, 1), lambda: x, samples=3)


# --------------------------------------------------------------------------- the member


def _member(tmp_path, cls=ToyRegression, **overrides):
    return cls(output_dir=str(tmp_path / "runs"), **overrides)


def test_data_are_standardized_for_training_and_predictions_are_in_original_units(tmp_path):
    t = _member(tmp_path, epochs=60)
    d = t.uq_data
    raw = t.load_data()
    assert d.target_mean.item() == pytest.approx(raw[0][1].double().mean().item(), rel=1e-9)
    assert d.target_std.item() == pytest.approx(raw[0][1].double().std().item(), rel=1e-9)
    assert abs(d.y["train"].mean().item()) < 1e-5  # trained on standardized targets
    result = t.fit()
    pred = read_predictions(result.run_dir / PREDICTIONS)
    assert pred["head"] == "gaussian"
    assert pred["test_mean"].shape == (1, 60, 1) and pred["test_var"].shape == (1, 60, 1)
    target = pred["test_target"]
    assert np.allclose(target[:, 0], raw[2][1].numpy(), rtol=1e-6)  # original units
    # the fit is good in original units: errors of the order of the noise (scale * ~0.3)
    rmse = float(np.sqrt(((pred["test_mean"][0] - target) ** 2).mean()))
    assert rmse < 0.5 * 50
    # heteroscedastic: predicted sigma grows with |x| as the noise does
    x = raw[2][0][:, 0].numpy()
    sigma = np.sqrt(pred["test_var"][0, :, 0])
    assert np.corrcoef(np.abs(x), sigma)[0, 1] > 0.5
    assert (pred["val_var"] > 0).all()


def test_quantile_head_predictions(tmp_path):
    t = _member(tmp_path, head="quantile", quantile_levels=[0.1, 0.5, 0.9], epochs=40)
    result = t.fit()
    pred = read_predictions(result.run_dir / PREDICTIONS)
    q = pred["test_quantiles"]
    assert q.shape == (1, 60, 3, 1)
    assert (np.diff(q, axis=2) >= 0).all()
    inside = ((pred["test_target"] >= q[0, :, 0]) & (pred["test_target"] <= q[0, :, 2])).mean()
    assert 0.6 <= inside <= 0.97  # an 80% interval, on 60 points


def test_mc_dropout_member_writes_one_sample_per_pass(tmp_path):
    t = _member(tmp_path, dropout=0.2, mc_samples=7, epochs=5)
    pred = read_predictions(t.fit().run_dir / PREDICTIONS)
    assert pred["test_mean"].shape == (7, 60, 1)
    assert pred["test_mean"].std(axis=0).mean() > 0


def test_classification_member(tmp_path):
    t = _member(tmp_path, ToyClasses)
    assert t.head_outputs == 3
    pred = read_predictions(t.fit().run_dir / PREDICTIONS)
    assert pred["test_logits"].shape == (1, 60, 3)
    accuracy = (pred["test_logits"][0].argmax(-1) == pred["test_target"]).mean()
    assert accuracy > 0.6  # three overlapping blobs: chance is 1/3


def test_perturbations_touch_only_the_training_split_and_are_reproducible(tmp_path):
    base = _member(tmp_path).uq_data
    for kw in ({"bootstrap": True}, {"label_noise": 0.5}, {"feature_noise": 0.5}):
        a = _member(tmp_path, data_seed=3, **kw).uq_data
        b = _member(tmp_path, data_seed=3, **kw).uq_data
        c = _member(tmp_path, data_seed=4, **kw).uq_data
        assert torch.equal(a.x["train"], b.x["train"]) and torch.equal(a.y["train"], b.y["train"])
        assert not (
            torch.equal(a.x["train"], c.x["train"]) and torch.equal(a.y["train"], c.y["train"])
        )
        for split in ("val", "test"):
            assert torch.equal(a.x[split], base.x[split]) and torch.equal(a.y[split], base.y[split])
        # the standardization comes from the clean training data
        assert torch.equal(a.target_mean, base.target_mean)
    noisy = _member(tmp_path, label_noise=0.5).uq_data
    assert torch.equal(noisy.x["train"], base.x["train"])
    diff = noisy.y["train"] - base.y["train"]
    assert 0.4 < diff.std().item() < 0.6  # in target standard deviations
    feat = _member(tmp_path, feature_noise=0.5).uq_data
    assert torch.equal(feat.y["train"], base.y["train"])
    ratio = (feat.x["train"] - base.x["train"]).std() / base.x["train"].std()
    assert 0.4 < ratio.item() < 0.6
    sub = _member(tmp_path, subsample=0.25).uq_data
    assert len(sub.x["train"]) == round(0.25 * 180)
    boot = _member(tmp_path, bootstrap=True).uq_data
    assert len(boot.x["train"]) == 180
    assert len(torch.unique(boot.x["train"])) < 180  # drawn with replacement


def test_label_flip_flips_the_fraction_asked_to_another_class(tmp_path):
    base = _member(tmp_path, ToyClasses).uq_data
    flipped = _member(tmp_path, ToyClasses, label_flip=0.3).uq_data
    changed = flipped.y["train"] != base.y["train"]
    assert changed.sum().item() == round(0.3 * 180)  # each flipped to another class
    assert flipped.y["train"].max() <= 2 and flipped.y["train"].min() >= 0
    assert torch.equal(flipped.y["test"], base.y["test"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"label_flip": 0.1}, "label_flip applies to classification"),
        ({"head": "quantile", "quantile_levels": [0.9, 0.1]}, "quantile_levels must be"),
        ({"head": "quantile", "quantile_levels": [0.5]}, "quantile_levels must be"),
        ({"subsample": 0.0}, "subsample must be > 0"),
    ],
)
def test_bad_member_params(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _member(tmp_path, **overrides)


def test_bad_load_data(tmp_path):
    class Bad(ToyRegression):
        def load_data(self):
            return self.value

    t = Bad(output_dir=str(tmp_path))
    for value, message in [
        (torch.zeros(3), "load_data\\(\\) returned Tensor"),
        ({"train": (torch.zeros(3, 1), torch.zeros(3))}, "expected train, val"),
        (((torch.zeros(3, 1), torch.zeros(2)), (torch.zeros(1, 1), torch.zeros(1))), "3 inputs"),
        (((torch.zeros(0, 1), torch.zeros(0)), (torch.zeros(1, 1), torch.zeros(1))), "empty"),
    ]:
        t.value, t._uq_data = value, None
        with pytest.raises(ConfigError, match=message):
            _ = t.uq_data

    class FloatLabels(ToyClasses):
        def load_data(self):
            x = torch.zeros(4, 2)
            return (x, torch.tensor([0.5, 1, 0, 1])), (x, torch.zeros(4))

    with pytest.raises(ConfigError, match="class indices"):
        _ = FloatLabels(output_dir=str(tmp_path)).uq_data


def test_read_predictions_names_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no member predictions"):
        read_predictions(tmp_path / PREDICTIONS)


# --------------------------------------------------------------------------- several inputs


class TwoInputs(ToyRegression):
    """ToyRegression's data as a dict: the feature, and an integer id the model ignores."""

    def build_model(self):
        inner = super().build_model()

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                assert x["id"].dtype == torch.long  # integer inputs are left as they are
                return self.inner(x["value"])

        return Net()

    def load_data(self):
        splits = super().load_data()
        return tuple(({"value": x, "id": torch.arange(len(x))}, y) for x, y in splits)


def test_dict_inputs_train_predict_and_perturb(tmp_path):
    t = _member(tmp_path, TwoInputs, epochs=40, mc_samples=2, dropout=0.1)
    plain = _member(tmp_path, epochs=40, mc_samples=2, dropout=0.1)
    a, b = t.fit(), plain.fit()
    pred = read_predictions(a.run_dir / PREDICTIONS)
    same = read_predictions(b.run_dir / PREDICTIONS)
    assert pred["test_mean"].shape == (2, 60, 1)
    # the same data, seed and network as the single-input member: the same predictions
    assert np.allclose(pred["test_mean"], same["test_mean"], rtol=1e-5, atol=1e-4)
    for kw in ({"feature_noise": 0.5, "data_seed": 2}, {"bootstrap": True}, {"subsample": 0.5}):
        d = _member(tmp_path, TwoInputs, **kw).uq_data
        ref = _member(tmp_path, **kw).uq_data
        assert torch.equal(d.x["train"]["value"], ref.x["train"])  # same draws as one tensor
        assert torch.equal(d.y["train"], ref.y["train"])
        ids = d.x["train"]["id"]
        assert ids.dtype == torch.long  # no noise on integer inputs: rows, still whole ids
        assert set(ids.tolist()) <= set(range(180))


def test_a_single_integer_input_becomes_float_features(tmp_path):
    class Counts(ToyRegression):
        def load_data(self):
            return tuple(((x * 10).round().long(), y) for x, y in super().load_data())

    d = _member(tmp_path, Counts, feature_noise=0.5).uq_data
    assert all(t.dtype == torch.float32 for t in d.x.values())
    assert not torch.equal(d.x["train"], d.x["train"].round())  # the noise reached it


def test_dict_inputs_with_unequal_rows_are_refused(tmp_path):
    class Ragged(ToyRegression):
        def load_data(self):
            x = {"a": torch.zeros(4, 1), "b": torch.zeros(3, 1)}
            return (x, torch.zeros(4)), (x, torch.zeros(4))

    with pytest.raises(ConfigError, match=r"train split's inputs.*'a': 4, 'b': 3"):
        _ = _member(tmp_path, Ragged).uq_data
