"""last.ckpt is written as often as its cost allows, and always after the last epoch."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from pytorch_lightning.callbacks import ModelCheckpoint

from finetune.training.callbacks import last_checkpoint
from finetune.training.callbacks.last_checkpoint import WRITE_SHARE, LastCheckpoint


def _epochs_written(monkeypatch, tmp_path, epoch_seconds: float, write_seconds: float, epochs: int,
                    stop_at: int | None = None) -> list[int]:
    """Runs the callback over `epochs` simulated epochs; returns the epochs whose end wrote last.ckpt."""
    clock = [0.0]
    monkeypatch.setattr(last_checkpoint.time, "monotonic", lambda: clock[0])
    written = []

    def write(self, trainer, pl_module):
        written.append(trainer.current_epoch)
        clock[0] += write_seconds

    monkeypatch.setattr(ModelCheckpoint, "on_train_epoch_end", write)
    callback = LastCheckpoint(tmp_path)
    trainer = SimpleNamespace(max_epochs=epochs, should_stop=False, current_epoch=0,
                              strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))
    callback.on_train_start(trainer, None)
    for epoch in range(epochs):
        clock[0] += epoch_seconds
        trainer.current_epoch, trainer.should_stop = epoch, epoch == stop_at
        callback.on_train_epoch_end(trainer, None)
        if trainer.should_stop:
            break
    return written


def test_epochs_long_against_the_write_are_all_written(monkeypatch, tmp_path):
    assert _epochs_written(monkeypatch, tmp_path, epoch_seconds=60, write_seconds=0.5, epochs=5) == [0, 1, 2, 3, 4]


def test_short_epochs_are_written_at_the_share_of_time_and_the_last_always(monkeypatch, tmp_path):
    written = _epochs_written(monkeypatch, tmp_path, epoch_seconds=1.0, write_seconds=0.5, epochs=30)
    gap = 0.5 / WRITE_SHARE  # seconds of training between writes
    assert written[0] == 0 and written[-1] == 29
    assert all(b - a >= gap - 1 for a, b in zip(written, written[1:-1]))
    assert len(written) < 30 and 0.5 * len(written) <= WRITE_SHARE * 30 * 1.0 + 2 * 0.5


def test_a_run_that_stops_early_writes_its_last_epoch(monkeypatch, tmp_path):
    written = _epochs_written(monkeypatch, tmp_path, epoch_seconds=1.0, write_seconds=0.5, epochs=30, stop_at=6)
    assert written[-1] == 6


@pytest.mark.parametrize("rank0", [True, False])
def test_every_process_follows_rank_0(monkeypatch, tmp_path, rank0):
    monkeypatch.setattr(ModelCheckpoint, "on_train_epoch_end", lambda self, t, m: written.append(t.current_epoch))
    written = []
    callback = LastCheckpoint(tmp_path)
    callback._write_seconds = 1e9  # this process would not write; rank 0's decision wins
    trainer = SimpleNamespace(max_epochs=10, should_stop=False, current_epoch=3,
                              strategy=SimpleNamespace(broadcast=lambda obj, src=0: rank0))
    callback.on_train_epoch_end(trainer, None)
    assert written == ([3] if rank0 else [])
