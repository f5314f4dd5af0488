"""Defaults that follow from the data: batch size and epochs (augmentation: finetune.data.policy).

Each rule reads measured properties of the training set (finetune.data.profile) and the input size,
never a dataset's name. The evidence for each is in benchmarks/results/quality.md.
"""
from __future__ import annotations

import math

MIN_STEPS_PER_EPOCH = 10  # below this a "epoch" of a tiny set is one or two noisy steps
BATCH_RANGE = (8, 32)  # 8: BatchNorm statistics stay usable; 32: the usual fine-tuning batch
TARGET_STEPS = 400  # optimizer steps a tiny set gets: the textbook loop's 25 epochs x ~16 steps
EPOCH_RANGE = (10, 60)


def auto_batch_size(train_images: int) -> int:
    """The largest power of two in BATCH_RANGE that still gives MIN_STEPS_PER_EPOCH steps.

    e.g. 50 images -> 8, 200 -> 16, 400 or more -> 32.
    """
    fit = max(1, train_images // MIN_STEPS_PER_EPOCH)
    power = 2 ** int(math.log2(fit))
    return int(min(BATCH_RANGE[1], max(BATCH_RANGE[0], power)))


def auto_epochs(train_images: int, batch_size: int) -> int:
    """Enough epochs for about TARGET_STEPS optimizer steps, within EPOCH_RANGE.

    e.g. 50 images at batch 8 (7 steps an epoch) -> 58; 2,000 at batch 32 -> 10.
    """
    steps = max(1, math.ceil(train_images / batch_size))
    return int(min(EPOCH_RANGE[1], max(EPOCH_RANGE[0], math.ceil(TARGET_STEPS / steps))))
