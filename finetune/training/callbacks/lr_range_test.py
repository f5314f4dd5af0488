"""The LR range test's callback: raise every group's LR exponentially and record the loss, raw and smoothed."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl

from finetune.training.module import FinetuneModule

SMOOTHING = 0.98  # exponential moving average of the loss, bias-corrected (as fastai and Lightning do)
DIVERGE = 4.0  # stop once the smoothed loss exceeds 4x its best


def smooth(losses: Sequence[float]) -> list[float]:
    """The bias-corrected exponential moving average of `losses`: what the range test plots and stops on.

    Step n's value is sum_i w_i x_i over the first n losses, with w_i proportional to SMOOTHING^(n - i)
    and summing to 1: an average of every loss so far that weighs recent ones more.
    """
    avg, out = 0.0, []
    for step, loss in enumerate(losses, start=1):
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
        out.append(avg / (1 - SMOOTHING ** step))
    return out


def smoothed_variance(step: int) -> float:
    """Variance of the smoothed loss after `step` losses, as a multiple of one loss's variance.

    For independent losses of equal variance it is sum_i w_i^2 over `smooth`'s weights:
    (1 - b)(1 + b^n) / ((1 + b)(1 - b^n)) with b = SMOOTHING, n = step. About 1/n for the first few
    steps (a plain mean of n losses), tending to (1 - b)/(1 + b) = 1/99 as the average fills.
    """
    b, n = SMOOTHING, step
    return (1 - b) * (1 + b ** n) / ((1 + b) * (1 - b ** n))


class LRRangeTest(pl.Callback):
    """Sets every group to head LR x its multiplier before each step and records the loss.

    Attributes:
        lrs: Head LR of each step.
        raw_losses: Training loss of each step.
        losses: The same, smoothed (`smooth`).
    """

    def __init__(self, start_lr: float, end_lr: float, num_steps: int) -> None:
        self.start_lr, self.end_lr, self.num_steps = start_lr, end_lr, num_steps
        self.lrs: list[float] = []
        self.raw_losses: list[float] = []
        self.losses: list[float] = []
        self._avg, self._best = 0.0, math.inf

    def lr_at(self, step: int) -> float:
        return self.start_lr * (self.end_lr / self.start_lr) ** (step / max(1, self.num_steps - 1))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: FinetuneModule, batch: Any, batch_idx: int) -> None:
        lr = self.lr_at(trainer.global_step)
        mults = dict(zip((g.name for g in pl_module.backbone.groups), pl_module.lr_mults()))
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = lr * mults[group["layer_group"]]
        self.lrs.append(lr)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: FinetuneModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        self.raw_losses.append(loss)
        # `smooth`, one step at a time
        self._avg = SMOOTHING * self._avg + (1 - SMOOTHING) * loss
        smoothed = self._avg / (1 - SMOOTHING ** len(self.raw_losses))
        self.losses.append(smoothed)
        self._best = min(self._best, smoothed)
        if not math.isfinite(smoothed) or smoothed > DIVERGE * self._best:
            trainer.should_stop = True
