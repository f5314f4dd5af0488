"""Reports each validation's top-1 to an Optuna trial and stops the run when the pruner says so."""
from __future__ import annotations

import pytorch_lightning as pl
from optuna.trial import Trial


class TrialPruning(pl.Callback):
    """Per-epoch reporting and pruning for one trial, written against `pytorch_lightning`, the
    namespace the toolkit's Trainer uses (Optuna's own callback targets `lightning.pytorch`).

    The global-zero process reports to the trial and asks the pruner; the decision is then agreed
    by every process (`reduce_boolean_decision`), so under DDP all ranks stop after the same
    validation instead of one leaving the others blocked in a collective. Stopping goes through
    `trainer.should_stop`, so the run ends cleanly: its checkpoints and metrics.csv stay usable.

    Args:
        trial: The trial to report to; None on processes that do not hold it.
        monitor: The logged metric reported (val/acc1, or the selected one with --ema).

    Attributes:
        pruned_at: The epoch (0-based) after which the pruner stopped the run, or None.
        epochs_run: Training epochs completed so far.
        best: The best value reported.
    """

    def __init__(self, trial: Trial | None, monitor: str = "val/acc1") -> None:
        self.trial, self.monitor = trial, monitor
        self.pruned_at: int | None = None
        self.epochs_run = 0
        self.best: float | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs_run = trainer.current_epoch + 1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:  # the pre-training check runs on untrained weights: not a result
            return
        value = trainer.callback_metrics.get(self.monitor)
        prune = False
        if value is not None and self.trial is not None and trainer.is_global_zero:
            value = float(value)
            self.best = value if self.best is None else max(self.best, value)
            self.trial.report(value, step=trainer.current_epoch)
            prune = self.trial.should_prune()
        if trainer.strategy.reduce_boolean_decision(prune, all=False):
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True
