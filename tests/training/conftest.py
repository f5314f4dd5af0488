"""Helpers for the training-policy tests: a fast RunConfig and a recorder of group LRs."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl

from finetune.config import RunConfig


class GroupLRs(pl.Callback):
    """Records every optimizer group's LR and whether its parameters train, before each step."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []
        self.trains: list[dict[str, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        groups = trainer.optimizers[0].param_groups
        names = {id(p): n for n, p in pl_module.backbone.model.named_parameters()}
        self.steps.append({g["name"]: g["lr"] for g in groups})
        self.trains.append({g["name"]: all(pl_module.is_trainable(names[id(p)]) for p in g["params"]) for g in groups})


@pytest.fixture
def make_config(tiny_data, tmp_path):
    """RunConfig for test_resnet at 32 px, 1 epoch, fp32, no workers; keyword arguments override."""

    def make(**kw) -> RunConfig:
        base = dict(backbone="test_resnet", data=tiny_data, weights="none", image_size=32, batch_size=8, workers=0,
                    progress=False, output=tmp_path / "run", precision="32")
        return RunConfig(**{**base, **kw})

    return make


@pytest.fixture
def group_lrs() -> GroupLRs:
    return GroupLRs()
