"""candle.data.rows: in-memory samples whose input is a tensor or a dict of tensors."""

import pytest
import torch

from candle.data.rows import RowDataset, map_inputs, num_rows, take_rows


def test_row_dataset_returns_single_rows_and_whole_batches_of_dict_inputs():
    x = {"cell": torch.arange(10.0).reshape(5, 2), "drug": torch.arange(5)}
    ds = RowDataset(x, torch.arange(5) * 10)
    assert len(ds) == 5 and ds.supports_batch_indexing
    one, y = ds[3]
    assert torch.equal(one["cell"], torch.tensor([6.0, 7.0])) and one["drug"].item() == 3
    assert y.item() == 30
    batch, y = ds[[4, 0, 4]]  # in the order asked, repeats kept
    assert batch["drug"].tolist() == [4, 0, 4] and y.tolist() == [40, 0, 40]
    assert batch["cell"].shape == (3, 2)


def test_helpers_treat_a_tensor_and_a_dict_alike():
    t = torch.ones(4, 3)
    assert num_rows(t) == 4 and take_rows(t, slice(1, 3)).shape == (2, 3)
    d = {"a": torch.ones(4, 3), "b": torch.zeros(4)}
    assert num_rows(d) == 4
    doubled = map_inputs(d, lambda v: v * 2)
    assert doubled["a"].sum().item() == 24 and set(doubled) == {"a", "b"}


def test_unequal_rows_are_refused_with_the_counts():
    with pytest.raises(ValueError, match="'a': 4, 'b': 3"):
        num_rows({"a": torch.ones(4), "b": torch.ones(3)})
    with pytest.raises(ValueError, match="4 input rows but 5 targets"):
        RowDataset(torch.ones(4, 1), torch.ones(5))
