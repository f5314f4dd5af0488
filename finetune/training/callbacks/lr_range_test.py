"""The LR range test's callback: raise every group's LR exponentially and record the smoothed loss."""
from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl

from finetune.training.module import FinetuneModule

SMOOTHING = 0.98  # exponential moving average of the loss, bias-corrected (as fastai and Lightning do)
DIVERGE = 4.0  # stop once the smoothed loss exceeds 4x its best


class LRRangeTest(pl.Callback):
    """Sets every group to head LR x its multiplier before each step and records the loss."""

    def __init__(self, start_lr: float, end_lr: float, num_steps: int) -> None:
        self.start_lr, self.end_lr, self.num_steps = start_lr, end_lr, num_steps
        self.lrs: list[float] = []
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
        step = len(self.losses) + 1
        self._avg = SMOOTHING * self._avg + (1 - SMOOTHING) * loss
        smoothed = self._avg / (1 - SMOOTHING ** step)
        self.losses.append(smoothed)
        self._best = min(self._best, smoothed)
        if not math.isfinite(smoothed) or smoothed > DIVERGE * self._best:
            trainer.should_stop = True
