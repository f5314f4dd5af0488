"""Refusing a run whose training step cannot fit in memory, before it starts, with what to change."""
from __future__ import annotations

import torch

from finetune.data.memory import available_memory
from finetune.errors import FinetuneError
from finetune.models.backbone import Backbone
from finetune.training.footprint import Footprint, training_footprint
from finetune.training.freeze import FreezeSchedule, frozen_param_names

GB = 2**30
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def device_memory(device: torch.device) -> int:
    """Bytes free for this run where it trains: the GPU's free memory, or the host's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return available_memory()


def step_footprint(backbone: Backbone, schedule: FreezeSchedule, side: int, batch: int, precision: str) -> Footprint:
    """The memory a training step needs at the most trainable point of the freeze schedule (gradual
    unfreezing trains more layers later in the run). The backbone is left as it was."""
    fewest = min([schedule.initial, *(units for _, units in schedule.milestones)])
    frozen = frozen_param_names(backbone, fewest, schedule.train_bn)
    params = dict(backbone.model.named_parameters())
    was = {name: p.requires_grad for name, p in params.items()}
    try:
        for name, p in params.items():
            p.requires_grad_(name not in frozen)
        return training_footprint(backbone, side, batch, AUTOCAST.get(precision))
    finally:
        for name, p in params.items():
            p.requires_grad_(was[name])


def check_memory(backbone: Backbone, schedule: FreezeSchedule, side: int, batch: int, precision: str,
                 device: torch.device) -> Footprint:
    """Raises FinetuneError when a training step of `batch` images of `side` px would not fit the memory
    free where the run trains; returns the footprint otherwise.

    The estimate measures the network itself (training.footprint): what autograd keeps for the
    backward pass, the weights with their gradients and optimizer state, and one input batch.
    """
    need = step_footprint(backbone, schedule, side, batch, precision)
    free = device_memory(device)
    if need.total <= free:
        return need
    where = "GPU memory" if device.type == "cuda" else "memory"
    raise FinetuneError(
        f"a training step needs about {need.total / GB:.1f} GB ({need.activations / GB:.1f} GB of activations for "
        f"{batch} images of {side} px, {need.weights / GB:.1f} GB of weights, gradients and optimizer state) but "
        f"{free / GB:.1f} GB of {where} is free: lower --image-size ({side}) or --batch-size ({batch})")
