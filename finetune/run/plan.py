"""The one moment a run's settings are resolved: `resolve_run(config, index, backbone) -> RunPlan`.

Everything `auto` or left unset is decided here, from the data, the backbone and the machine: the
input size, the frozen part, the batch size, epochs and validation cadence, the augmentation, precision,
channels_last, workers, the preprocessing and each layer group's LR. `finetune run`, `finetune
lr-find` and `finetune tune` all build through it, config.yaml records it, and checkpoints keep it,
so nothing downstream resolves a setting again or rebinds the config.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from finetune.config import RunConfig
from finetune.data.balance import class_weights as resolve_class_weights
from finetune.data.balance import imbalance_ratio
from finetune.data.data_config import DataConfig
from finetune.data.datamodule import ImageFolderDataModule
from finetune.data.policy import AugmentPolicy
from finetune.data.profile import DataProfile
from finetune.data.scan import DatasetIndex
from finetune.data.tables import TableSpec, scan_data
from finetune.models.backbone import Backbone, LoadReport, create_backbone
from finetune.run.auto_defaults import resolve_data_defaults, resolve_image_size
from finetune.run.devices import planned_world_size
from finetune.training.auto_freeze import resolve_freeze_until
from finetune.training.cached_features import CacheChoice, cache_choice
from finetune.training.feature_fit import measure_feature_fit
from finetune.training.freeze import FreezeSchedule, build_schedule
from finetune.training.module import FinetuneModule, backbone_options
from finetune.training.optim import discriminative_mults
from finetune.training.precision import resolve_channels_last, resolve_precision
from finetune.training.teacher import Teacher


@dataclass(frozen=True)
class RunPlan:
    """Every value a run derives from its settings, decided once.

    Attributes:
        config: The settings with everything resolved: `image_size`, `batch_size`, `epochs` and
            `val_every` numbers, `freeze_until` a layer or None. `lr` stays "auto" until `with_lr` gives
            the LR range test's result.
        sources: Where each setting came from: "default", "recipe NAME", "command line" or "auto: why".
        index: The scanned image folder.
        backbone: The network with its new head and its weights loaded.
        data_config: The preprocessing the run trains and evaluates with (at the resolved image size).
        augment: The preset name given, or the AugmentPolicy `--augment auto` chose.
        profile: What `--augment auto` measured of the training set (None otherwise).
        precision: Lightning precision, and `precision_why` the reason.
        channels_last: NHWC memory format.
        workers: DataLoader workers.
        world_size: Training processes the accelerator, devices and nodes make.
        class_weights: Per-class weights of the training loss (--class-weights), or None.
        lr_mults: Each layer group's LR as a multiple of the head's, input side first.
        decided: The settings resolved from the data, in the order they were decided (for the console).
        lr_found: The LR range test's suggestion with `--lr auto` (None otherwise, or where it made none).
        lr_find: What the range test of `--lr auto` gave, for config.yaml: its suggestion (None where it
            made none), the reason in one line, and the LR the run uses.
        feature_cache: Whether the frozen-feature cache applies to these settings, and why.
    """

    config: RunConfig
    sources: dict[str, str]
    index: DatasetIndex
    backbone: Backbone
    data_config: DataConfig
    augment: str | AugmentPolicy
    profile: DataProfile | None
    precision: str
    precision_why: str
    channels_last: bool
    workers: int
    world_size: int
    class_weights: torch.Tensor | None
    lr_mults: tuple[float, ...] = ()
    decided: tuple[str, ...] = ()
    lr_found: float | None = None
    lr_find: dict[str, Any] | None = None
    feature_cache: CacheChoice = CacheChoice(False, "not planned")
    cautions: tuple[str, ...] = ()

    @property
    def lr_pending(self) -> bool:
        """Whether the LR is still `auto`: the range test must run before the module is built."""
        return self.config.lr == "auto"

    def with_lr(self, lr: float, reason: str = "", suggested: bool = True) -> RunPlan:
        """The plan with the LR the range test settled: its suggestion, or (`suggested` False) the LR kept
        where it made none; `reason` says why, in one line. `sources["lr"]` and `lr_find` record it."""
        found = {"suggestion": lr if suggested else None, "reason": reason, "lr": lr}
        given = self.sources.get("lr", "command line")  # where `auto` came from: `finetune runs` lists it
        source = (f"{given}; auto: the LR range test's suggestion" if suggested
                  else f"{given}; auto: the default, kept: the LR range test made no suggestion ({reason})")
        return dataclasses.replace(self, config=self.config.model_copy(update={"lr": lr}),
                                   lr_found=lr if suggested else None, lr_find=found,
                                   sources={**self.sources, "lr": source})

    def build_module(self, teacher: Teacher | None = None, lr: float | None = None) -> FinetuneModule:
        """The LightningModule this plan describes (`lr` overrides the head LR: the range test's start)."""
        config = self.config if lr is None else self.config.model_copy(update={"lr": lr})
        return FinetuneModule.from_config(config, self.index.classes, backbone=self.backbone, teacher=teacher,
                                          class_weights=self.class_weights, record=self.record())

    def datamodule(self, keep_images: bool = True) -> ImageFolderDataModule:
        """The train/val loaders this plan describes (a fresh one per call: the LR range test gets its own).
        `keep_images`: False where the images are read once anyway (the range test, filling the feature cache)."""
        c = self.config
        return ImageFolderDataModule(c.data, self.data_config, batch_size=c.batch_size, workers=self.workers,
                                     labels=TableSpec.of(c),
                                     val_split=c.val_split, seed=c.seed, index=self.index, augment=self.augment,
                                     sampler=c.sampler,
                                     # Each DDP process would decode every image into its own copy.
                                     keep_images=keep_images and c.image_cache == "auto" and self.world_size == 1)

    def record(self) -> dict[str, Any]:
        """The plan as plain data: config.yaml's `resolved` section, kept in checkpoints with the config."""
        index, counts = self.index, self.index.counts("train")
        resolved: dict[str, Any] = {
            "classes": index.classes, "precision": self.precision, "channels_last": self.channels_last,
            "workers": self.workers, "world_size": self.world_size, "data_config": self.data_config.to_dict(),
            "counts": {split: len(getattr(index, split) or []) for split in ("train", "val", "test")},
            "bad_files": len(index.bad_files), "class_counts": counts,
            "imbalance_ratio": round(imbalance_ratio(counts), 3),
            "freeze_until": self.config.freeze_until,
            "lr_mults": {g.name: m for g, m in zip(self.backbone.groups, self.lr_mults, strict=True)},
            "feature_cache": {"use": self.feature_cache.use, "why": self.feature_cache.why},
        }
        if self.class_weights is not None:
            resolved["class_weights"] = {c: round(float(w), 6) for c, w in zip(index.classes, self.class_weights)}
        if self.profile is not None:  # what --augment auto measured of the training set
            resolved["data_profile"] = self.profile.to_dict()
        if isinstance(self.augment, AugmentPolicy):  # what it chose: a resumed run keeps it
            resolved["augment_policy"] = self.augment.to_dict()
        return {"config": self.config.model_dump(mode="json"), "resolved": resolved, "sources": dict(self.sources)}


# Rank 0's --freeze-until auto decision, handed to the processes DDP starts (see `shared_env`). Each
# would otherwise check the features itself, and a tie broken the other way on another CPU would give
# the ranks different frozen parts.
AUTO_FREEZE_ENV = "FINETUNE_AUTO_FREEZE"


def _freeze_until(config: RunConfig, backbone: Backbone, index: DatasetIndex,
                  data_config: DataConfig) -> tuple[str | None, str | None]:
    inherited = os.environ.get(AUTO_FREEZE_ENV)
    if inherited and config.freeze_until == "auto":
        decided = json.loads(inherited)
        return decided["layer"], decided["why"]
    return resolve_freeze_until(config, backbone, index.counts("train"),
                                lambda: measure_feature_fit(backbone, index, data_config, progress=config.progress))


def shared_env(plan: RunPlan) -> dict[str, str]:
    """What the processes DDP starts must decide as this one did: the data-made --freeze-until."""
    if "freeze_until" not in plan.decided:
        return {}
    return {AUTO_FREEZE_ENV: json.dumps({"layer": plan.config.freeze_until, "why": plan.sources["freeze_until"]})}


def resolve_run(config: RunConfig, index: DatasetIndex, backbone: Backbone,
                sources: dict[str, str] | None = None, started: dict[str, Any] | None = None) -> RunPlan:
    """Resolves every derived setting of a run from its config, its scanned data and its backbone.

    Args:
        config: The validated settings (paths absolute: see `RunConfig.with_absolute_paths`).
        index: The scanned image folder.
        backbone: The network built for `len(index.classes)` classes with the run's weights.
        sources: Where each given setting came from (default: every one "default").
        started: A resumed run's recorded `resolved` section: the input size and augmentation it chose
            are kept.

    Returns:
        The frozen plan; `sources` gains "auto: why" for each value decided from the data.
    """
    sources = dict(sources or {})
    size, size_why = resolve_image_size(config.image_size, index, backbone, started)
    if size_why is not None:  # first: the frozen part's feature check and the augmentation read the size
        config = config.model_copy(update={"image_size": size})
        sources["image_size"] = size_why
    data_config = backbone.data_config.with_size(config.image_size)
    layer, why = _freeze_until(config, backbone, index, data_config)
    if why is not None:
        config = config.model_copy(update={"freeze_until": layer})
        sources["freeze_until"] = why
    world = planned_world_size(config.accelerator, config.lightning_devices(), config.strategy, config.num_nodes)
    auto = resolve_data_defaults(config, index, data_config, world, started)
    config, sources = auto.config, {**sources, **auto.sources}
    made = (("image_size", size_why), ("freeze_until", why))
    decided = tuple(key for key, reason in made if reason is not None) + tuple(auto.sources)
    if config.workers is not None and config.resolved_workers() < config.workers:
        sources["workers"] = (f"{config.workers} given -> {config.resolved_workers()}: the CPU cores this process "
                              "may use (more workers only contend for them)")
        decided += ("workers",)
    precision, precision_why = resolve_precision(config.precision, config.accelerator)
    schedule = build_schedule(config, backbone)
    cache = cache_choice(config, schedule, auto.augment != "none", world)
    mults = discriminative_mults(len(backbone.groups), config.lr_decay, config.resolved_backbone_lr_mult())
    return RunPlan(
        config=config, sources=sources, index=index, backbone=backbone, data_config=data_config,
        augment=auto.augment, profile=auto.profile, precision=precision, precision_why=precision_why,
        channels_last=resolve_channels_last(config.channels_last, precision), workers=config.resolved_workers(),
        world_size=world, class_weights=resolve_class_weights(config.class_weights, index.counts("train")),
        lr_mults=tuple(mults), decided=decided, feature_cache=cache, cautions=_cautions(config, backbone, schedule),
    )


def _cautions(config: RunConfig, backbone: Backbone, schedule: FreezeSchedule) -> tuple[str, ...]:
    """What the user asked for that is legal but most likely a mistake, for the plan to say in yellow."""
    reached = [units for start, units in schedule.milestones if start < (config.epochs or 0)]  # within the run
    never_trained = min([schedule.initial, *reached])
    if config.weights != "none" or never_trained == 0:
        return ()
    flags = ("freeze_until", "freeze_policy", "freeze_epochs", "unfreeze_every")
    given = [f"--{k.replace('_', '-')} {v}" for k in flags if (v := getattr(config, k)) not in (None, "auto")]
    first = backbone.units[min(never_trained, len(backbone.units) - 1)].name
    return (f"--weights none with {' '.join(given) or 'a frozen part'}: the layers before {first} start random and "
            "stay frozen for the whole run, so they never learn; --freeze-until stem trains every layer",)


def plan_run(config: RunConfig, sources: dict[str, str] | None = None,
             started: dict[str, Any] | None = None) -> tuple[RunPlan, LoadReport]:
    """Scans `config.data`, builds the backbone with its weights and resolves the plan: what `run` and
    `lr-find` both start from. Returns the plan and the weights' load report (for the console).
    `started`: see `resolve_run`."""
    index = scan_data(config.data, TableSpec.of(config), val_split=config.val_split, seed=config.seed)
    backbone, report = create_backbone(config.backbone, len(index.classes), config.weights,
                                       weights_dir=config.weights_dir, **backbone_options(config))
    return resolve_run(config, index, backbone, sources, started), report
