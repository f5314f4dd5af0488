"""--early-stop: Lightning's EarlyStopping, with patience in epochs that restarts at each unfreeze."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping


class PhaseEarlyStopping(EarlyStopping):
    """Stops when the monitored figure has not improved for `patience_epochs` epochs.

    Lightning counts patience in validations; here it is given in epochs and converted with the
    validation cadence (ceil(patience / val_every) validations), so the same --early-stop means
    the same thing whatever --val-every is. With a freeze schedule (--freeze-epochs,
    --unfreeze-every) a phase never ends the run while an unfreeze is still ahead (a frozen phase
    that stops improving is what unfreezing is for), and the count restarts at each unfreeze: the
    new phase gets its full patience, though the best score to beat stays the best so far.

    Args:
        monitor: The logged metric (val/acc1, val/macro_f1...).
        mode: "max" or "min".
        patience_epochs: Epochs without improvement before stopping.
        val_every: Epochs between validations.
        min_delta: Smallest change that counts as an improvement.
    """

    def __init__(self, monitor: str, mode: str, patience_epochs: int, val_every: int = 1, min_delta: float = 0.0):
        super().__init__(monitor=monitor, mode=mode, patience=-(-patience_epochs // val_every), min_delta=min_delta,
                         check_on_train_epoch_end=False, strict=True, verbose=False)
        self.patience_epochs = patience_epochs
        self.restarts: list[int] = []  # epochs at which the count restarted
        self._unfreeze_ahead = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        schedule = getattr(pl_module, "freeze_schedule", None)
        epoch = trainer.current_epoch
        if schedule is None:
            return
        last = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else float("inf")
        # Only unfreezes this run will reach: a schedule may list more groups than --epochs has room for.
        self._unfreeze_ahead = any(epoch < start < last for start, _ in schedule.milestones)
        if epoch > 0 and schedule.frozen_units_at(epoch) != schedule.frozen_units_at(epoch - 1):
            self.wait_count = 0
            self.restarts.append(epoch)

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        should_stop, reason = super()._evaluate_stopping_criteria(current)
        if should_stop and self._unfreeze_ahead and torch.isfinite(current):
            return False, None  # the next phase decides; the count restarts when it begins
        return should_stop, reason

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "restarts": list(self.restarts)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restarts = list(state_dict.get("restarts", []))
        # A copy without "restarts": the caller's dict (the checkpoint's) stays whole.
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "restarts"})
