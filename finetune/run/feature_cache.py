"""A run's frozen-feature cache: filled before training, or the image loaders where it cannot apply."""
from __future__ import annotations

import pytorch_lightning as pl

from finetune.data.datamodule import ImageFolderDataModule
from finetune.reporter import Reporter
from finetune.run.plan import RunPlan
from finetune.training.module import FinetuneModule


def use_feature_cache(plan: RunPlan, module: FinetuneModule, trainer: pl.Trainer, images: ImageFolderDataModule,
                   said: Reporter) -> ImageFolderDataModule:
    """Fills the frozen-feature cache and points the module at it; the image loaders when the network
    cannot be cut exactly at its frozen boundary (said so)."""
    import torch

    from finetune.training.cached_features import prepare_feature_cache
    from finetune.training.feature_split import NotSplittable

    device, c = trainer.strategy.root_device, plan.config
    module.backbone.to(device)  # as Lightning will place it: the traced graphs hold its tensors
    if plan.channels_last:
        module.backbone.to(memory_format=torch.channels_last)
    module.train()
    augment = plan.augment if isinstance(plan.augment, str) else plan.augment.to_dict()
    try:
        cached = prepare_feature_cache(
            module.backbone, module.frozen_units, images, plan.feature_cache, device,
            trainer.precision_plugin.forward_context, plan.channels_last, plan.precision,
            {"data_config": plan.data_config.to_dict(), "augment": augment, "seed": c.seed, "device": device.type},
            progress=c.progress and said.progress)
    except NotSplittable as e:
        said.info(f"Feature cache: off ({e})")
        return images
    module.feature_split = cached.split
    said.info(f"Feature cache: {cached.describe()}; {plan.feature_cache.why}")
    return cached.datamodule
