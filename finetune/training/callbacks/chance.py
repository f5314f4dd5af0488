"""Saying when a run learns nothing: val top-1 still at chance after the first quarter of the epochs.

A run at a hopeless learning rate (too low to move, or so high it diverges to a constant) or on
labels that do not follow the images looks like any other run: a figure each epoch. Chance here is
what always answering the largest val class scores; a figure counts as at chance while it is within
two standard errors of that share over the val images (a binomial proportion), so that a 20-image
val split is not called stuck for scoring 0.25 instead of 0.20, nor a 5,000-image one excused.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl

from finetune.training.callbacks.epoch_record import beside_bar


class ChanceWatch(pl.Callback):
    """Watches val/acc1 and says once, after the first quarter of the epochs, if it never left chance.

    Args:
        val_counts: Val images per class.
        epochs: The run's epochs (its quarter, rounded up, is watched).
        say: Where the warning goes (next to the progress bar when there is one).

    Attributes:
        stuck_through: The last epoch (0-based) of the quarter when every validation in it was at
            chance, else None; `summary()` words it for the end of the run.
    """

    def __init__(self, val_counts: Sequence[int], epochs: int, say: Callable[..., None]) -> None:
        n = sum(val_counts)
        self.chance = max(val_counts) / n if n else math.nan
        self.margin = 2 * math.sqrt(self.chance * (1 - self.chance) / n) if n else math.nan
        self.quarter, self.epochs = max(1, math.ceil(epochs / 4)), epochs
        self.say, self.classes = say, len(val_counts)
        self.seen: list[float] = []
        self.stuck_through: int | None = None
        self._said = False

    def at_chance(self, acc1: float) -> bool:
        return acc1 <= self.chance + self.margin

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get("val/acc1")
        if trainer.sanity_checking or value is None or self._said or math.isnan(self.chance):
            return
        self.seen.append(float(value))
        if trainer.current_epoch + 1 < self.quarter:
            return
        self._said = True
        if all(self.at_chance(v) for v in self.seen):
            self.stuck_through = trainer.current_epoch
            if trainer.is_global_zero:
                beside_bar(trainer, self.say, f"[yellow]Warning: {self.summary()}[/yellow]")

    def summary(self) -> str:
        """The warning: through which epoch val top-1 stayed at chance, the chance level, what to try."""
        return (f"val top-1 stayed at chance through epoch {self.stuck_through + 1} of {self.epochs} (the first "
                f"quarter of the run, in whole epochs): "
                f"at most {self.chance + self.margin:.2f}, where always answering the largest of the {self.classes} "
                f"classes scores {self.chance:.2f}. The LR may be far too low or too high (try `finetune lr-find`), "
                "or the labels may not follow the images")

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "stuck_through": self.stuck_through, "said": self._said}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen, self.stuck_through = list(state["seen"]), state["stuck_through"]
        self._said = bool(state["said"])
