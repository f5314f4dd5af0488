"""Freeze policies: which parameters train at each epoch of a run.

The frozen part is always a prefix of the backbone's units: `--freeze-until` names where it
ends, `--freeze-policy` picks a preset, and gradual unfreezing moves the boundary toward the
input one layer group at a time. Everything is a pure function of the config and the epoch, so a
resumed run recomputes the same state.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from finetune.config import RunConfig
from finetune.errors import FinetuneError
from finetune.models.backbone import Backbone
from finetune.training.auto_freeze import auto_without_data


@dataclass(frozen=True)
class FreezeSchedule:
    """The frozen boundary, in backbone units, over the epochs of a run.

    Attributes:
        initial: Units frozen at epoch 0 (the first `initial` entries of `Backbone.units`).
        milestones: (epoch, units frozen from that epoch on); epochs rise, boundaries fall.
        train_bn: BatchNorm layers in the frozen part still train (affine and running statistics).
    """

    initial: int
    milestones: tuple[tuple[int, int], ...] = ()
    train_bn: bool = False

    def frozen_units_at(self, epoch: int) -> int:
        """Units frozen during `epoch` (0-based)."""
        units = self.initial
        for start, boundary in self.milestones:
            if epoch >= start:
                units = boundary
        return units


def gradual(config: RunConfig) -> bool:
    """True when the run unfreezes during training (--freeze-epochs or --unfreeze-every)."""
    return config.freeze_epochs is not None or config.unfreeze_every is not None


def initial_frozen_units(config: RunConfig, backbone: Backbone) -> int:
    """Units frozen at the start: before --freeze-until, else all but the head for the presets.

    Gradual unfreezing without a policy starts from the linear probe, as fastai's `fine_tune` does.
    """
    if config.freeze_until == "auto" and auto_without_data(config) is None:
        raise FinetuneError("freeze_until 'auto' follows the train set: resolve it first with "
                            "finetune.training.auto_freeze.resolve_freeze_until (finetune.fit does), or give a "
                            "layer name or None (nothing frozen)")
    if config.freeze_until and config.freeze_until != "auto":
        return backbone.resolve_layer(config.freeze_until)
    if config.freeze_policy in ("linear-probe", "bn-only") or (config.freeze_policy is None and gradual(config)):
        return len(backbone.units) - 1
    return 0


def group_starts(backbone: Backbone) -> list[int]:
    """Index into `backbone.units` of the first unit of every layer group."""
    index = {u.name: i for i, u in enumerate(backbone.units)}
    return [index[g.unit_names[0]] for g in backbone.groups]


def build_schedule(config: RunConfig, backbone: Backbone) -> FreezeSchedule:
    """The freeze schedule a config asks for.

    `--freeze-epochs N` alone unfreezes everything at epoch N. `--unfreeze-every K` unfreezes one
    more group from the top at epoch K (or N when --freeze-epochs is given too), then every K epochs.
    """
    n0 = initial_frozen_units(config, backbone)
    train_bn = config.train_bn or config.freeze_policy == "bn-only"
    if config.unfreeze_every is not None:
        first = config.freeze_epochs if config.freeze_epochs is not None else config.unfreeze_every
        boundaries = sorted((s for s in group_starts(backbone) if s < n0), reverse=True)
        milestones = tuple((first + i * config.unfreeze_every, b) for i, b in enumerate(boundaries))
    elif config.freeze_epochs is not None and n0 > 0:
        milestones = ((config.freeze_epochs, 0),)
    else:
        milestones = ()
    return FreezeSchedule(n0, milestones, train_bn)


def norm_param_names(model: nn.Module) -> set[str]:
    """Affine parameters of every BatchNorm layer."""
    return {
        f"{name}.{p}" for name, mod in model.named_modules()
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) for p, _ in mod.named_parameters(recurse=False)
    }


def frozen_param_names(backbone: Backbone, n: int, train_bn: bool) -> frozenset[str]:
    """Parameters frozen when the first `n` units are frozen (BatchNorm affine kept out with train_bn)."""
    names = {p for unit in backbone.units[:n] for p in unit.param_names}
    if train_bn:
        names -= norm_param_names(backbone.model)
    return frozenset(names)


def unfreeze_epoch(schedule: FreezeSchedule, backbone: Backbone, group_index: int) -> int | None:
    """First epoch in which layer group `group_index` is wholly outside the frozen part (None: never)."""
    start = group_starts(backbone)[group_index]
    if schedule.initial <= start:
        return 0
    return next((epoch for epoch, boundary in schedule.milestones if boundary <= start), None)
