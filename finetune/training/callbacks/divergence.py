"""Stops a run whose training loss diverges, before the bad weights reach a checkpoint."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from finetune.errors import FinetuneError

CHECK_EVERY = 25  # steps between checks: one small all-reduce and host sync each, not one per step
# Fewest steps a compared mean covers. A small dataset's epoch is a few steps, and its mean one or two
# batches: 20 train images at 224 px (3 steps an epoch) went 0.29 -> 0.0005 -> 3.35 in epochs 0-2 on
# one confidently wrong batch, while val top-1 stayed 0.93-1.00 for all 60 epochs when left to run.
WINDOW = 25


class DivergenceError(FinetuneError):
    """The training loss became NaN/Inf or grew far beyond its level at the start."""


class DivergenceGuard(pl.Callback):
    """Raises DivergenceError when the loss is NaN/Inf, or when the running mean loss of the current
    block exceeds `factor` x the first block's mean and also the loss of a uniform guess over the
    classes, ln(C). A block is an epoch, or as many whole epochs as hold `window` steps when epochs
    are shorter; a mean over fewer steps is not compared.

    The factor's rule (the course notes': a loss past 3x its start has exploded) presumes a start
    near chance, as a new head gives. A network that already fits the task from its first epoch
    (weights trained on the same classes, or features that separate them at once) starts near 0,
    and 3x of 0.05 is a bad batch, not an explosion: on a textures-to-textures transfer the default
    run rose from 0.05 to 0.6 at val top-1 0.96 and was stopped. A loss below ln(C) still predicts
    better than chance, so the guard waits for both. ln(C) is a uniform guess's cross-entropy for
    any target (hard, smoothed or mixed); under distillation the loss also holds the T^2-scaled
    teacher term, so there ln(C) is only near chance level.

    The loss is summed on the device, and checked every `check_every` steps and on the last batch
    of each epoch: reading it every step would stall the GPU once per step. A check reduces the
    sum over all processes and the decision is agreed across them, so under DDP every rank stops
    at the same step; one rank raising alone would leave the others blocked in the gradient
    all-reduce. A check runs before the backward pass, so the checked step never updates the
    weights, and raising (rather than asking the Trainer to stop) skips the end-of-epoch
    validation and checkpoint: the last checkpoint on disk stays the last good one. The running
    mean, not single batches, is compared so that one hard (or heavily mixed) batch does not stop
    a healthy run.

    Args:
        factor: Allowed growth of the mean loss over the first block's mean.
        checkpoint_dir: Where the last good checkpoint lives (named in the message).
        check_every: Steps between checks within an epoch.
        window: Fewest steps in a block (default `WINDOW`).
    """

    def __init__(self, factor: float = 3.0, checkpoint_dir: Path | None = None, check_every: int = CHECK_EVERY,
                 window: int | None = None):
        self.factor, self.checkpoint_dir, self.check_every = factor, checkpoint_dir, check_every
        self.window = WINDOW if window is None else window
        self.chance_loss: float | None = None  # ln(C), from the module's head at fit start
        self._scaler: Any = None  # 16-mixed's GradScaler, found at fit start
        self.start_mean: float | None = None  # the first block's mean loss
        self._sum: Tensor | None = None
        self._count, self._batch_idx, self._block_mean = 0, 0, None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        classes = getattr(pl_module, "class_names", None)
        self.chance_loss = math.log(len(classes)) if classes else None
        self._scaler = getattr(trainer.precision_plugin, "scaler", None)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._count >= self.window or self._sum is None:  # else the block goes on into this epoch
            self._sum, self._count, self._block_mean = None, 0, None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        value = loss.detach().float()
        scale = self._scaler._scale if self._scaler is not None else None  # None too for a disabled scaler
        if scale is not None:
            # 16-mixed: the GradScaler multiplied the loss by its scale before this hook. Its `_scale` is a
            # device tensor (updated in place); get_scale() would read it to the host every step.
            value = value / scale
        self._sum = value if self._sum is None else self._sum + value  # stays on the device: no sync
        self._count += 1
        last = self._batch_idx + 1 == trainer.num_training_batches
        if last or self._count % self.check_every == 0:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.start_mean is None and self._block_mean is not None and self._count >= self.window:
            self.start_mean = self._block_mean

    def _check(self, trainer: pl.Trainer) -> None:
        """Compares the mean loss of this block so far, over all processes, with the limits."""
        counted = torch.stack([self._sum, torch.tensor(float(self._count), device=self._sum.device)])
        total = trainer.strategy.reduce(counted, reduce_op="sum")
        mean = float(total[0] / total[1])
        self._block_mean = mean
        problem = self._problem(mean, self._count)
        # Every rank computed the same reduced mean; the vote still makes the stop collective.
        if trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
            self._fail(trainer, problem or "the training loss diverged on another process")

    def _problem(self, mean: float, steps: int) -> str | None:
        """Why `mean` (over the block's `steps` steps so far) stops the run, or None."""
        if not math.isfinite(mean):
            return f"the training loss is {mean}"
        if self.start_mean is None or steps < self.window or mean <= self.factor * self.start_mean:
            return None
        what = (f"the mean training loss of the last {steps} steps, {mean:.4g}, exceeds {self.factor:g}x "
                f"the mean of the first {self.window}+ steps ({self.start_mean:.4g})")
        if self.chance_loss is None:
            return what
        return f"{what} and a uniform guess's ln(C) = {self.chance_loss:.4g}" if mean > self.chance_loss else None

    def _fail(self, trainer: pl.Trainer, what: str) -> None:
        lr = trainer.optimizers[0].param_groups[-1]["lr"] if trainer.optimizers else float("nan")
        raise DivergenceError(
            f"training diverged at epoch {trainer.current_epoch}, step {trainer.global_step}: {what}. "
            f"The likely cause is a learning rate too high (current head LR {lr:.3g}): lower --lr "
            f"(e.g. 10x), or freeze more layers. {self._kept()}"
        )

    def _kept(self) -> str:
        last = self.checkpoint_dir / "last.ckpt" if self.checkpoint_dir else None
        if last is not None and last.is_file():
            return f"The last good checkpoint is kept: {last}"
        return "No checkpoint was written before the divergence."

    def state_dict(self) -> dict[str, Any]:
        # The open block too: a run resumed mid-block (short epochs) goes on with it, so its first
        # block, and the start measured on it, is the same as an uninterrupted run's.
        block = float(self._sum) if self._sum is not None and self._count < self.window else None
        count = self._count if block is not None else 0
        return {"start_mean": self.start_mean, "block_sum": block, "block_count": count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # checkpoints of earlier versions hold the first epoch's mean under its old name
        self.start_mean = state_dict["start_mean"] if "start_mean" in state_dict else state_dict["first_epoch_mean"]
        if state_dict.get("block_sum") is not None:
            self._sum, self._count = state_dict["block_sum"], state_dict["block_count"]  # a float until a step adds
