"""Batch size and epochs chosen from the training-set size when the user gives neither."""
from __future__ import annotations

import math

import pytest

from finetune.training.auto_defaults import (BATCH_RANGE, EPOCH_RANGE, MIN_STEPS_PER_EPOCH, TARGET_STEPS,
                                             auto_batch_size, auto_epochs)


@pytest.mark.parametrize("images, batch", [(20, 8), (50, 8), (160, 16), (200, 16), (320, 32), (100_000, 32)])
def test_batch_keeps_ten_steps_an_epoch_within_its_range(images, batch):
    assert auto_batch_size(images) == batch
    if images >= BATCH_RANGE[0] * MIN_STEPS_PER_EPOCH:
        assert math.ceil(images / batch) >= MIN_STEPS_PER_EPOCH


@pytest.mark.parametrize("images", [20, 50, 100, 500, 2000, 100_000])
def test_tiny_sets_get_enough_steps_and_large_ones_few_epochs(images):
    batch = auto_batch_size(images)
    epochs = auto_epochs(images, batch)
    assert EPOCH_RANGE[0] <= epochs <= EPOCH_RANGE[1]
    steps = epochs * math.ceil(images / batch)
    assert steps >= min(TARGET_STEPS, EPOCH_RANGE[1] * math.ceil(images / batch))
    if images >= 2000:
        assert epochs == EPOCH_RANGE[0]
