"""Wiring of the regularization settings of a RunConfig into backbone, module and Trainer."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from finetune.config import RunConfig
from finetune.data.data_config import DataConfig
from finetune.data.mixing import BatchMixer
from finetune.training.callbacks.divergence import DivergenceGuard
from finetune.training.callbacks.ema import EmaCallback
from finetune.training.monitor import monitor_spec
from finetune.training.teacher import Teacher, load_teacher


def backbone_options(config: RunConfig) -> dict[str, Any]:
    """`create_backbone` keyword arguments: head dropout, stochastic depth (None: the default), partial weights."""
    return {"drop_rate": config.head_dropout, "drop_path_rate": config.drop_path or None,
            "weights_partial": config.weights_partial}


def build_mixer(config: RunConfig) -> BatchMixer | None:
    """The batch mixer, or None when neither mixup nor cutmix is on."""
    if config.mixup <= 0 and config.cutmix <= 0:
        return None
    return BatchMixer(config.mixup, config.cutmix, config.mix_prob, config.mix_switch_prob)


def mixing_on(config: RunConfig, epoch: int) -> bool:
    """Whether training batches of `epoch` (0-based) are mixed: until --mix-off-epoch, if set."""
    return config.mix_off_epoch == 0 or epoch < config.mix_off_epoch


def build_teacher(config: RunConfig, class_names: Sequence[str], student_config: DataConfig) -> Teacher | None:
    """The distillation teacher named by --teacher, checked against the student's classes."""
    if config.teacher is None:
        return None
    return load_teacher(config.teacher, class_names, config.teacher_weights, student_config)


def selection_metric(config: RunConfig) -> str:
    """The metric best.ckpt is chosen by: val/KEY for --monitor KEY, or with --ema the better of the
    raw and EMA weights' (val/KEY_selected)."""
    spec = monitor_spec(config.monitor)
    return spec.selected_metric if config.ema else spec.metric


def regularization_callbacks(config: RunConfig, run_dir: Path) -> list[pl.Callback]:
    """The divergence guard (always), and the EMA callback with --ema."""
    callbacks: list[pl.Callback] = [DivergenceGuard(3.0, run_dir / "checkpoints")]
    if config.ema:
        callbacks.append(EmaCallback(config.ema_decay, config.ema_warmup, config.monitor))
    return callbacks
