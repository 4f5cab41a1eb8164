"""Models for training data analysis on real data that ships with scikit-learn.

- ``Diabetes``: regression of disease progression (442 patients, 10 features) with the two
  values of the ``sex`` column as groups (a two-"study" cross-study matrix);
- ``BreastCancer``: diagnosis (569 tumours, 30 features, two classes), one group.

Each is a :class:`candle.tda.TDATrainer`: ``load_data()`` returns the whole data set, and the
plan (examples/tda.yaml) decides which rows each trial trains on.
"""

from dataclasses import dataclass

from sklearn.datasets import load_breast_cancer, load_diabetes
from torch import nn

from candle import param
from candle.tda import GroupedData, TDAParams, TDATrainer


@dataclass
class MLPParams(TDAParams):
    hidden: int = param(32, min=0, help="hidden units; 0 = a linear model")
    group_column: str = param("sex", help="column whose values are the groups ('' = none)")
    learning_rate: float = 0.01
    batch_size: int = 16
    epochs: int = 40
    lr_schedule: str = "cosine"
    checkpoint_every: int = 5  # the best checkpoint is chosen among these (each write costs)


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Module:
    if hidden == 0:
        return nn.Linear(inputs, outputs)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class Diabetes(TDATrainer):
    params_class = MLPParams
    task = "regression"

    def load_data(self) -> GroupedData:
        frame = load_diabetes(as_frame=True).frame
        group = self.params.group_column or None
        if group == "sex":  # the column holds two scaled values; name them
            frame = frame.assign(sex=frame["sex"].map(lambda v: "s1" if v < 0 else "s2"))
        return GroupedData.from_frame(frame, target="target", group=group)

    def build_model(self) -> nn.Module:
        return _mlp(self.data.x.shape[1], self.params.hidden, 1)


class BreastCancer(TDATrainer):
    params_class = MLPParams
    task = "classification"

    def load_data(self) -> GroupedData:
        x, y = load_breast_cancer(return_X_y=True)
        return GroupedData(x, y)

    def build_model(self) -> nn.Module:
        return _mlp(self.data.x.shape[1], self.params.hidden, 2)
