"""Stops a run whose training loss diverges, before the bad weights reach a checkpoint."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch import Tensor

from finetune.errors import FinetuneError


class DivergenceError(FinetuneError):
    """The training loss became NaN/Inf or grew far beyond its first-epoch level."""


class DivergenceGuard(pl.Callback):
    """Raises DivergenceError when the loss is NaN/Inf, or (from the second epoch on) when the
    current epoch's running mean loss exceeds `factor` x the first epoch's mean.

    The check runs before the backward pass, so the diverged step never updates the weights, and
    raising (rather than asking the Trainer to stop) skips the end-of-epoch checkpoint: the last
    checkpoint on disk stays the last good one. The running mean, not single batches, is compared
    so that one hard (or heavily mixed) batch does not stop a healthy run.

    Args:
        factor: Allowed growth of the mean loss over the first epoch's mean.
        checkpoint_dir: Where the last good checkpoint lives (named in the message).
    """

    def __init__(self, factor: float = 3.0, checkpoint_dir: Path | None = None):
        self.factor, self.checkpoint_dir = factor, checkpoint_dir
        self.first_epoch_mean: float | None = None
        self._sum, self._count = 0.0, 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sum, self._count = 0.0, 0

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            self._fail(trainer, f"the training loss is {value}")
        self._sum, self._count = self._sum + value, self._count + 1
        mean = self._sum / self._count
        if self.first_epoch_mean is not None and mean > self.factor * self.first_epoch_mean:
            self._fail(trainer, f"the mean training loss of this epoch, {mean:.4g}, exceeds {self.factor:g}x "
                                f"the first epoch's mean {self.first_epoch_mean:.4g}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.first_epoch_mean is None and self._count:
            self.first_epoch_mean = self._sum / self._count

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
        return {"first_epoch_mean": self.first_epoch_mean}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.first_epoch_mean = state_dict["first_epoch_mean"]
