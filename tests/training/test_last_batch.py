"""A last training batch of one image is dropped: BatchNorm cannot normalise a batch of one."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from finetune.data.data_config import DataConfig
from finetune.data.datamodule import ImageFolderDataModule

DC = DataConfig(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", 1.0)


@pytest.mark.parametrize(("batch_size", "sizes"), [(23, [23]), (5, [5, 5, 5, 5, 4]), (24, [24]), (7, [7, 7, 7, 3])])
def test_only_a_last_batch_of_one_is_dropped(tiny_data, batch_size, sizes):
    dm = ImageFolderDataModule(tiny_data, DC, batch_size=batch_size, workers=0)  # 24 training images
    assert [len(y) for _, y in dm.train_dataloader()] == sizes
    assert sum(len(y) for _, y in dm.val_dataloader()) == 12  # evaluation keeps every image


def test_last_batch_is_judged_per_process_under_ddp(tiny_data):
    dm = ImageFolderDataModule(tiny_data, DC, batch_size=11, workers=0)
    dm.trainer = SimpleNamespace(world_size=2)  # 12 images per process: 11 + 1
    assert dm.train_dataloader().drop_last
    dm.trainer = SimpleNamespace(world_size=1)  # 24 images: 11 + 11 + 2
    assert not dm.train_dataloader().drop_last
