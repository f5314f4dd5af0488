"""Multi-process setup costs: no all-reduce per logged step; channels_last before DDP wraps the model."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import SingleDeviceStrategy

from finetune.data.datamodule import ImageFolderDataModule
from finetune.training.module import FinetuneModule

CLASSES = ["circle", "square", "triangle"]


def _fit(module: FinetuneModule, tiny_data, callbacks=()) -> None:
    dm = ImageFolderDataModule(tiny_data, module.input_config, batch_size=8, workers=0)
    pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               callbacks=list(callbacks)).fit(module, dm)


@pytest.mark.parametrize("world", [1, 2])
def test_step_values_are_logged_without_an_all_reduce(make_config, tiny_data, monkeypatch, world):
    # A single-process run never syncs, so the calls themselves are inspected: a value logged per
    # step with sync_dist=True costs an all-reduce every step under DDP. In one process, one call
    # per value and step (each costs about a millisecond).
    calls = []
    original = pl.LightningModule.log

    def log(self, name, value, *args, on_step=None, on_epoch=None, sync_dist=False, **kw):
        if self.trainer.training:
            calls.append((name, on_step is not False, bool(on_epoch), sync_dist))
        return original(self, name, value, *args, on_step=on_step, on_epoch=on_epoch, sync_dist=sync_dist, **kw)

    monkeypatch.setattr(pl.LightningModule, "log", log)
    if world > 1:  # what the module sees under DDP; the Trainer itself still runs one process
        monkeypatch.setattr(pl.Trainer, "world_size", property(lambda self: world))
    _fit(FinetuneModule.from_config(make_config(), CLASSES), tiny_data)
    assert calls
    assert [c for c in calls if c[1] and c[3]] == [], "a per-step value is all-reduced every step"
    if world > 1:
        assert ("train/loss_epoch", False, True, True) in calls  # the epoch mean still covers every process
    else:
        names = [c[0] for c in calls]
        assert set(calls) == {("train/loss", True, True, False), ("train/acc1", False, True, False)}
        assert names.count("train/acc1") == 1 and names.count("train/loss") == 2  # 1 epoch of 2 steps


def test_channels_last_is_applied_before_the_strategy_wraps_the_model(make_config, tiny_data, monkeypatch):
    formats = []
    original = SingleDeviceStrategy.setup

    def setup(self, trainer):  # where DDP would wrap the model and the optimizer take its parameters
        weight = trainer.lightning_module.backbone.model.conv1[0].weight
        formats.append(weight.is_contiguous(memory_format=torch.channels_last))
        original(self, trainer)

    monkeypatch.setattr(SingleDeviceStrategy, "setup", setup)
    module = FinetuneModule.from_config(make_config(channels_last=True), CLASSES)
    _fit(module, tiny_data)
    assert formats == [True]
    assert module.use_channels_last
