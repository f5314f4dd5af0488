"""Optimizer parameter groups built from the backbone's layer groups."""
from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

import torch

from finetune.config import Optimizer
from finetune.errors import FinetuneError
from finetune.models.backbone import Backbone


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer of a run, as plain values (stored in checkpoints).

    Attributes:
        name: adamw | adam | sgd | rmsprop.
        lr: The head's peak LR (before --scale-lr).
        lr_mults: Each layer group's LR as a multiple of the head's, input side first, head last.
        weight_decay: Decay of every tensor except biases, norm layers and `no_weight_decay()`.
        momentum: SGD/RMSprop momentum.
        nesterov: Nesterov momentum (SGD).
        scale_lr: Multiply the LR by the global batch / 256 (the linear scaling rule).
        batch_size: Images per batch and process (for scale_lr).
    """

    name: str
    lr: float
    lr_mults: tuple[float, ...]
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    scale_lr: bool = False
    batch_size: int | None = None

    def head_lr(self, world_size: int = 1) -> float:
        """The head's peak LR: `lr`, times global batch / 256 with `scale_lr`."""
        if not self.scale_lr:
            return float(self.lr)
        if self.batch_size is None:
            raise FinetuneError("--scale-lr scales the LR by the batch size: set the batch size (finetune.fit "
                                "resolves it from the data before building the module)")
        return float(self.lr) * self.batch_size * world_size / 256


def no_decay_names(backbone: Backbone) -> set[str]:
    """Parameters that get no weight decay, by timm's `param_groups_weight_decay` rule.

    1-D tensors (norm scales and offsets), biases, and what the backbone declares in
    `no_weight_decay()` (position embeddings, class tokens, relative-position tables): decaying
    them pulls offsets and embeddings toward zero, which hurts fine-tuning.
    """
    patterns = backbone.no_weight_decay()
    return {
        name for name, p in backbone.model.named_parameters()
        if p.ndim <= 1 or name.endswith(".bias") or any(fnmatch.fnmatch(name, pat) for pat in patterns)
    }


def param_groups(backbone: Backbone, lr: float, weight_decay: float, lr_mults: Sequence[float]) -> list[dict[str, Any]]:
    """One or two optimizer groups per layer group (decayed / not decayed), every parameter included.

    Frozen parameters are in the optimizer from the first step: they get no gradient, so the
    optimizer skips them, and unfreezing later never rebuilds the optimizer or the scheduler.
    """
    params = dict(backbone.model.named_parameters())
    skip_decay = no_decay_names(backbone)
    groups = []
    for group, mult in zip(backbone.groups, lr_mults, strict=True):
        for suffix, wd in (("", weight_decay), ("/no_decay", 0.0)):
            names = [n for n in group.param_names if (n in skip_decay) == bool(suffix)]
            if names:
                groups.append({"name": group.name + suffix, "layer_group": group.name,
                               "params": [params[n] for n in names], "lr": lr * mult, "weight_decay": wd})
    return groups


def discriminative_mults(num_groups: int, lr_decay: float | None, backbone_mult: float) -> list[float]:
    """LR multiplier of each layer group relative to the head's LR (the last group, 1.0).

    With `lr_decay` F, the group k steps below the head gets F**k (layer-wise decay: with 0.5,
    layer4 0.5, layer3 0.25, ...); otherwise every backbone group gets `backbone_mult`.
    """
    if lr_decay is not None:
        return [lr_decay ** (num_groups - 1 - i) for i in range(num_groups)]
    return [backbone_mult] * (num_groups - 1) + [1.0]


def _fused_kernels(groups: list[dict[str, Any]]) -> bool:
    """Whether every parameter can take torch's fused (one kernel for all tensors) optimizer step.

    torch picks its per-tensor Python loop on CPU by default; the fused step does the same update
    in one pass. Measured on one core for resnet18's 11.7M parameters: AdamW 63 ms -> 8.5 ms a
    step, SGD 11 ms -> 6.8 ms; at 32 px the loop was a third of a small run's training time.
    Fused kernels exist for floating-point tensors on CPU and CUDA (torch >= 2.4).
    """
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def build_optimizer(name: str, groups: list[dict[str, Any]], lr: float, momentum: float,
                    nesterov: bool = False) -> torch.optim.Optimizer:
    """Creates the optimizer named by `--optimizer` (Nesterov momentum for SGD only); fused where
    the parameters allow (RMSprop has no fused kernel: it takes the multi-tensor step)."""
    fused = _fused_kernels(groups)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=fused or None)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, fused=fused or None)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=momentum, foreach=fused or None)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(get_args(Optimizer))}")
