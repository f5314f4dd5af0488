"""ImageFolderDataModule: scan in __init__, batches of the right shape and labels, workers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from finetune.data import datamodule
from finetune.data.datamodule import ImageFolderDataModule
from finetune.data.scan import scan_image_folder
from finetune.data.synthetic import make_image_folder
from finetune.errors import DataError

CLASSES = ("circle", "cross", "square")


@pytest.fixture
def data_dir(tmp_path):
    return make_image_folder(tmp_path / "d", classes=CLASSES, train_per_class=5, val_per_class=2, size=32)


@pytest.mark.parametrize("workers", [0, 1])
def test_batches(data_dir, dc, workers):
    dm = ImageFolderDataModule(data_dir, dc, batch_size=4, workers=workers)
    assert dm.classes == sorted(CLASSES) and dm.num_classes == 3
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert [len(y) for _, y in train] == [4, 4, 4, 3]  # 15 images: the last short batch is kept
    x, y = train[0]
    assert x.shape == (4, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sorted(torch.cat([y for _, y in train]).tolist()) == [0] * 5 + [1] * 5 + [2] * 5
    val_labels = torch.cat([y for _, y in dm.val_dataloader()]).tolist()
    assert val_labels == [label for _, label in dm.index.val]
    assert dm.val_dataloader().batch_size == 16  # inference batches 4x the training batch: no backward to hold


def test_test_split(tmp_path, data_dir, dc):
    with pytest.raises(DataError, match="no test split"):
        ImageFolderDataModule(data_dir, dc).test_dataloader()
    root = make_image_folder(tmp_path / "t", classes=CLASSES, train_per_class=2, val_per_class=1, test_per_class=2,
                             size=32)
    x, y = next(iter(ImageFolderDataModule(root, dc, batch_size=6).test_dataloader()))
    assert x.shape == (6, 3, 24, 24) and y.tolist() == [0, 0, 1, 1, 2, 2]


def test_custom_train_transform(data_dir, dc):
    dm = ImageFolderDataModule(data_dir, dc, batch_size=2, train_transform=lambda img: torch.zeros(1, 5, 5))
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 1, 5, 5)


def test_workers_do_not_repeat_augmentations(tmp_path, dc):
    # Identical images: any difference between two workers' outputs comes from their RNG streams.
    root = make_image_folder(tmp_path / "same", classes=("circle", "ring"), train_per_class=2, val_per_class=1, size=32)
    first = sorted((root / "train").rglob("*.png"))[0]
    for p in (root / "train").rglob("*.png"):
        p.write_bytes(first.read_bytes())
    dm = ImageFolderDataModule(root, dc, batch_size=1, workers=2)
    batches = [x for x, _ in dm.train_dataloader()]
    assert not torch.equal(batches[0], batches[1])  # worker 0's and worker 1's first sample


def test_val_split_is_passed_to_the_scan(tmp_path, dc):
    root = make_image_folder(tmp_path / "flat", classes=CLASSES, train_per_class=8, val_per_class=2, size=16,
                             split=False)
    dm = ImageFolderDataModule(root, dc, val_split=0.5, seed=1)
    assert dm.index.layout == "flat" and dm.index.counts("val") == {c: 5 for c in CLASSES}
    assert np.isclose(len(dm.index.val) / 30, 0.5)


def test_given_index_is_used_without_rescanning(data_dir, dc, monkeypatch):
    index = scan_image_folder(data_dir)
    monkeypatch.setattr(datamodule, "scan_data", lambda *a, **k: pytest.fail("scanned twice"))
    assert ImageFolderDataModule(data_dir, dc, index=index).index is index




@pytest.mark.parametrize("quiet", [False, True], ids=["python", "worker"])
def test_a_worker_says_nothing_when_the_training_process_leaves_mid_handover(quiet, monkeypatch):
    """A connection dropped before the handshake fails the resource sharer's accept, which reports it through
    sys.excepthook: Python's own hook gets it (so the scene is real), a worker's does not. The sharer goes on
    serving either way."""
    import os
    import socket
    import sys
    from multiprocessing import resource_sharer

    seen: list[type] = []
    record = lambda kind, *_: seen.append(kind)  # noqa: E731
    monkeypatch.setattr(sys, "excepthook", datamodule._quiet_when_the_reader_left(record) if quiet else record)
    read, write = os.pipe()
    offered = resource_sharer.DupFd(read)  # a worker offers a batch's file descriptor
    for _ in range(2):  # the training process connects, then stops mid-handover
        with socket.socket(socket.AF_UNIX) as reader:
            reader.connect(offered._id[0])
    received = resource_sharer.DupFd(read).detach()  # served after the dropped ones: those were handled
    os.write(write, b"x")
    assert os.read(received, 1) == b"x"
    for fd in (read, write, received):
        os.close(fd)
    assert len(seen) == (0 if quiet else 2) and all(issubclass(k, (EOFError, ConnectionError)) for k in seen), seen
