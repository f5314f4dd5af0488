"""Gradual unfreezing as a Lightning callback whose state travels in the checkpoint."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl

from finetune.training.callbacks.epoch_record import beside_bar
from finetune.training.module import FinetuneModule


def trainable_groups(module: FinetuneModule) -> list[str]:
    """Names of the layer groups with no frozen parameter."""
    frozen = module.frozen_param_names
    return [g.name for g in module.backbone.groups if not frozen.intersection(g.param_names)]


class GradualUnfreezing(pl.Callback):
    """Applies the module's freeze schedule (--freeze-epochs, --unfreeze-every) at each epoch start.

    The optimizer already holds every parameter (one group per layer group), so unfreezing only
    flips which parameters get gradients: no param group is added, the scheduler is untouched, and
    a checkpoint's optimizer state always matches (the param-group count mismatch of Lightning
    #6891). On resume the frozen state comes back from the checkpoint before anything trains, rather
    than being re-frozen to the initial policy (Lightning #21901).

    Args:
        say: Where to report a change (default: the progress bar's print, else `print`).
    """

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self.say = say
        self.frozen_units: int | None = None  # as restored from a checkpoint
        self.history: list[dict[str, Any]] = []  # one entry per change: epoch, groups unfrozen

    def on_fit_start(self, trainer: pl.Trainer, pl_module: FinetuneModule) -> None:
        if self.frozen_units is not None and self.frozen_units != pl_module.frozen_units:
            pl_module.set_frozen_units(self.frozen_units)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: FinetuneModule) -> None:
        epoch = trainer.current_epoch
        target = pl_module.freeze_schedule.frozen_units_at(epoch)
        if target != pl_module.frozen_units:
            before = set(trainable_groups(pl_module))
            pl_module.set_frozen_units(target)
            self._report(trainer, pl_module, epoch, [g for g in trainable_groups(pl_module) if g not in before])
        self.frozen_units = pl_module.frozen_units
        pl_module.log("freeze/trainable_groups", float(len(trainable_groups(pl_module))),
                      on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)

    def _report(self, trainer: pl.Trainer, module: FinetuneModule, epoch: int, unfrozen: list[str]) -> None:
        self.history.append({"epoch": epoch, "unfrozen": unfrozen})
        total = len(module.backbone.groups)
        message = (f"epoch {epoch + 1}: unfroze {', '.join(unfrozen) or 'part of a group'} "
                   f"({len(trainable_groups(module))} of {total} groups train)")  # epochs counted from 1
        if trainer.is_global_zero:
            beside_bar(trainer, self.say or print, message)

    def state_dict(self) -> dict[str, Any]:
        return {"frozen_units": self.frozen_units, "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.frozen_units = state_dict["frozen_units"]
        self.history = list(state_dict["history"])
