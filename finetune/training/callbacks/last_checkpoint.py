"""last.ckpt, the file --resume continues from: written as often as its cost allows.

Writing last.ckpt after every epoch is what a long run wants and what a small one cannot afford:
for resnet18 (weights and AdamW state, 135 MB) one write took 0.47 s against 1.5 s of training
an epoch at 32 px, a quarter of the run. Lightning offers fixed cadences (every N epochs, every T
of wall time); the right one follows from the write's cost against the epoch's, so it is measured.
"""
from __future__ import annotations

import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

WRITE_SHARE = 0.05  # of the wall time at most; a crash then loses at most ~20 writes' worth of training


class LastCheckpoint(ModelCheckpoint):
    """Writes last.ckpt at the end of an epoch when the training since the previous write took at
    least 1/WRITE_SHARE times as long as that write did, and always after the last epoch (the
    planned one, or one where the run stops early). The first epoch is always written: that
    measures the cost. With epochs much longer than a write (any run that is slow enough to want
    resuming), this is every epoch.
    """

    def __init__(self, dirpath):
        # save_on_train_epoch_end: otherwise Lightning saves only after validation epochs (--val-every > 1).
        super().__init__(dirpath=dirpath, filename="last", enable_version_counter=False, save_on_train_epoch_end=True)
        self._write_seconds: float | None = None
        self._since: float = time.monotonic()  # end of the previous write (or the start of training)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._since = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        final = trainer.should_stop or trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        waited = time.monotonic() - self._since
        due = final or self._write_seconds is None or waited * WRITE_SHARE >= self._write_seconds
        # Every process must agree: the write ends in a barrier, which a process that skipped would never reach.
        if not trainer.strategy.broadcast(due, src=0):
            return
        start = time.monotonic()
        super().on_train_epoch_end(trainer, pl_module)
        self._since = time.monotonic()
        self._write_seconds = self._since - start
