"""The progress bar of a run: epochs counted from 1 as everywhere else, one short figure, terminals only.

Lightning's rich bar reads "Epoch 1/26" in the second of 27 epochs and lists every logged key
(train/loss_step, freeze/trainable_groups, ...), which squeezes into a narrow column on an 80-column
terminal. Written into a file or a pipe, a live bar leaves its last frame as garbage, so it is shown
only where it can redraw itself: a terminal or a notebook.
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar
from rich.console import Console


def bar_wanted(asked: bool) -> bool:
    """Whether to show a live bar: asked for (--progress) and stdout redraws (a terminal or a notebook)."""
    console = Console()
    return asked and (console.is_terminal or console.is_jupyter)


class RunProgressBar(RichProgressBar):
    """Lightning's rich bar reading "epoch 2/27" in the second of 27 epochs, showing the training loss only."""

    def _get_train_description(self, current_epoch: int) -> str:
        total = self.trainer.max_epochs
        text = f"epoch {current_epoch + 1}" + (f"/{total}" if total and total > 0 else "")
        return f"{text:{len(self.validation_description)}}"  # as wide as "Validation": no flicker between them

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        loss = trainer.callback_metrics.get("train/loss_step")
        return {"loss": f"{float(loss):.3f}"} if isinstance(loss, torch.Tensor) else {}


class RangeTestBar(pl.Callback):
    """The LR range test's bar: steps out of the test's, with the step's LR and smoothed loss (Lightning's
    own reads "Epoch 6/-2": the test cycles short epochs with no epoch limit).

    Args:
        test: The range test's callback, read for its LRs and losses.
    """

    def __init__(self, test: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.test = test
        self.progress = Progress(TextColumn("LR range test"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[now]}"), transient=True)
        self.task = self.progress.add_task("test", total=test.num_steps, now="")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.progress.start()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = f"lr {self.test.lrs[-1]:.1e}  loss {self.test.losses[-1]:.3f}" if self.test.losses else ""
        self.progress.update(self.task, advance=1, now=now)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.progress.stop()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.progress.stop()
