"""ImageListDataset: tensors and labels; a file broken after the scan does not crash an epoch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from finetune.data.dataset import ImageListDataset
from finetune.data.transforms import build_eval_transform
from finetune.errors import DataError

from .conftest import save_rgb


def test_items_give_tensor_and_label(tmp_path, dc):
    items = [(save_rgb(tmp_path / f"{i}.png", size=(30, 20)), i % 2) for i in range(3)]
    ds = ImageListDataset(items, build_eval_transform(dc))
    x, y = ds[2]
    assert len(ds) == 3 and x.shape == (3, 24, 24) and x.dtype == torch.float32 and y == 0


def test_without_transform_gives_the_array(tmp_path):
    ds = ImageListDataset([(save_rgb(tmp_path / "a.png", size=(5, 7), value=9), 1)])
    x, y = ds[0]
    assert isinstance(x, np.ndarray) and x.shape == (5, 7, 3) and (x == 9).all() and y == 1


def test_file_broken_after_scan_falls_back_deterministically(tmp_path):
    items = [(save_rgb(tmp_path / f"{i}.png", value=10 * i), i) for i in range(3)]
    items[1][0].write_bytes(b"garbage")
    ds = ImageListDataset(items)
    with pytest.warns(UserWarning, match="1.png could not be decoded"):
        x, y = ds[1]
    assert y == 2 and (x == 20).all()
    assert ds.failed == [items[1][0]]
    x_again, y_again = ds[1]
    assert y_again == 2 and ds.failed == [items[1][0]]  # recorded once


def test_all_files_broken_is_a_clear_error(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="none of the 1 images"):
        ImageListDataset([(path, 0)])[0]
