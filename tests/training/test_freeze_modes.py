"""Frozen units run in eval mode: BatchNorm statistics, dropout and drop-path all stay put."""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

from finetune.data.datamodule import ImageFolderDataModule
from finetune.training.module import FinetuneModule

BN = nn.modules.batchnorm._BatchNorm
STOCHASTIC = (nn.Dropout, nn.Dropout2d)


def _is_stochastic(m: nn.Module) -> bool:
    return isinstance(m, STOCHASTIC) or type(m).__name__ in ("DropPath", "StochasticDepth")


class ModesAtStep(pl.Callback):
    """Records `training` of every module of the backbone right before the first training step."""

    def __init__(self):
        self.modes: dict[str, bool] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.modes is None:
            self.modes = {n: m.training for n, m in pl_module.backbone.model.named_modules()}


def _fit(config, tiny_data, callback: pl.Callback, epochs: int = 1, module: FinetuneModule | None = None
         ) -> FinetuneModule:
    module = module or FinetuneModule.from_config(config, ["circle", "square", "triangle"])
    dm = ImageFolderDataModule(tiny_data, module.input_config, batch_size=8, workers=0)
    trainer = pl.Trainer(max_epochs=epochs, limit_train_batches=2, limit_val_batches=1, accelerator="cpu",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, dm)
    return module


def _unit_of(name: str, units: list[str]) -> str | None:
    return next((u for u in units if name == u or name.startswith(u + ".")), None)


def test_freeze_until_features_2_trains_bn_of_features_10_and_beyond(make_config, tiny_data):
    # features.1 is frozen, features.10 to features.18 train: a prefix match without the dot
    # used to put their BatchNorm layers in eval mode too.
    torch.manual_seed(0)
    config = make_config(backbone="tv:mobilenet_v2", freeze_until="features.2", lr=0.01)
    module = FinetuneModule.from_config(config, ["circle", "square", "triangle"])
    before = {k: v.clone() for k, v in module.backbone.model.state_dict().items()}
    frozen_units = module.backbone.layer_names()[:module.frozen_units]
    assert frozen_units == ["features.0", "features.1"]
    modes = ModesAtStep()
    _fit(config, tiny_data, modes, epochs=2, module=module)  # 2 epochs: train() is re-applied after validation
    after = module.backbone.model.state_dict()
    bns = [n for n, m in module.backbone.model.named_modules() if isinstance(m, BN)]
    assert any(n.startswith("features.10.") for n in bns)
    for name in bns:
        stats = (f"{name}.running_mean", f"{name}.running_var", f"{name}.num_batches_tracked")
        if _unit_of(name, frozen_units):
            assert not modes.modes[name], f"frozen {name} is in train mode"
            for key in stats:
                assert torch.equal(before[key], after[key]), f"frozen {key} changed"
        else:
            assert modes.modes[name], f"{name} trains but its BatchNorm is in eval mode"
            assert not torch.equal(before[stats[0]], after[stats[0]]), f"{name} running mean never updated"
            assert after[stats[2]] == before[stats[2]] + 4, f"{name} saw {after[stats[2]]} batches, not 4"


def test_frozen_units_run_dropout_and_drop_path_in_eval_mode(make_config, tiny_data):
    config = make_config(freeze_until="layer3", drop_path=0.5, head_dropout=0.5)
    modes = ModesAtStep()
    module = _fit(config, tiny_data, modes)
    frozen = module.backbone.layer_names()[:module.frozen_units]
    units = module.backbone.layer_names()
    stochastic = {n for n, m in module.backbone.model.named_modules() if _is_stochastic(m)}
    assert any(_unit_of(n, frozen) for n in stochastic) and any(not _unit_of(n, frozen) for n in stochastic)
    for name, training in modes.modes.items():
        if _unit_of(name, units) is None:
            continue  # the root module and unit-less containers
        assert training == (_unit_of(name, frozen) is None), f"{name}: training={training}"


def test_train_bn_trains_frozen_batchnorm_but_not_frozen_dropout(make_config, tiny_data):
    config = make_config(freeze_until="layer3", drop_path=0.5, train_bn=True)
    modes = ModesAtStep()
    module = _fit(config, tiny_data, modes)
    frozen = module.backbone.layer_names()[:module.frozen_units]
    named = dict(module.backbone.model.named_modules())
    frozen_bn = [n for n, m in named.items() if isinstance(m, BN) and _unit_of(n, frozen)]
    frozen_drop = [n for n, m in named.items() if _is_stochastic(m) and _unit_of(n, frozen)]
    assert frozen_bn and frozen_drop
    assert all(modes.modes[n] for n in frozen_bn), "--train-bn: frozen BatchNorm must train"
    assert not any(modes.modes[n] for n in frozen_drop), "frozen drop-path still active with --train-bn"
