"""The wall time a study will take, from timing one training batch before it starts."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from finetune.config import RunConfig
from finetune.data.scan import DatasetIndex
from finetune.models.backbone import create_backbone
from finetune.run.auto_defaults import resolve_image_size

OVERHEAD_S = 5.0  # building the model, the data pipeline and the end-of-run evaluation, per trial
VAL_COST = 1 / 3  # a forward pass costs about a third of forward + backward


@dataclass(frozen=True)
class Estimate:
    """A study's expected wall time on one worker.

    Attributes:
        batch_s: Seconds of one training step (forward + backward) at the run's batch size.
        epoch_s: Seconds of one epoch: its training steps and its validation.
        total_s: The whole study, every trial trained to its last epoch (pruning shortens it).
    """

    batch_s: float
    epoch_s: float
    total_s: float


def _batches(images: int, batch: int, limit: int | float) -> int:
    steps = max(1, math.ceil(images / batch))
    return min(steps, limit) if isinstance(limit, int) else max(1, math.ceil(steps * limit))


def time_one_batch(config: RunConfig, index: DatasetIndex, batch: int) -> float:
    """Seconds of one forward + backward pass of the backbone on a batch (after a warm-up pass), at the
    input size the trials train at."""
    net, _ = create_backbone(config.backbone, len(index.classes), config.weights, weights_dir=config.weights_dir)
    size, _ = resolve_image_size(config.image_size, index, net)
    device = "cuda" if config.accelerator != "cpu" and torch.cuda.is_available() else "cpu"
    net = net.to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, len(index.classes), (batch,), device=device)
    seconds = 0.0
    for _ in range(2):  # the first pass allocates and picks kernels: timed is the second
        start = time.perf_counter()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds


def estimate(config: RunConfig, index: DatasetIndex, batch: int, stage_epochs: list[tuple[int, int]]) -> Estimate:
    """Expected wall time of a study.

    Args:
        config: The base run settings.
        index: The scanned image folder.
        batch: The batch size the trials train with.
        stage_epochs: (trials, epochs per trial) of each stage.
    """
    step = time_one_batch(config, index, batch)
    train = _batches(len(index.train), batch, config.limit_train_batches)
    val = _batches(len(index.val), batch, config.limit_val_batches)
    epoch = step * (train + VAL_COST * val)
    total = sum(n * (epochs * epoch + OVERHEAD_S) for n, epochs in stage_epochs)
    return Estimate(step, epoch, total)
