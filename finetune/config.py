"""The typed run configuration: every setting of `finetune run`, validated, saved with the run."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

Precision = Literal["auto", "32", "bf16-mixed", "16-mixed"]
Optimizer = Literal["adamw", "adam", "sgd", "rmsprop"]
Augment = Literal["none", "light", "standard", "strong"]


class RunConfig(BaseModel):
    """Settings of one fine-tuning run. Field docs double as the CLI help."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    backbone: str = Field(description="timm model name (resnet50, convnext_tiny) or tv:NAME for torchvision")
    data: Path = Field(description="image folder: DIR/train/<class>, DIR/val/<class> or DIR/<class>")
    weights: str = Field("imagenet", description="imagenet | none | PATH to a state dict or checkpoint")
    weights_dir: Path | None = Field(None, description="folder searched first for <backbone>.safetensors")
    freeze_until: str | None = Field(None, description="freeze every layer before this one")
    epochs: int = Field(5, ge=1, description="training epochs")
    batch_size: int = Field(32, ge=1, description="images per batch and device")
    image_size: int | None = Field(None, ge=16, description="input side in pixels; None: the backbone's own")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    optimizer: Optimizer = Field("adamw", description="optimizer")
    weight_decay: float = Field(0.01, ge=0, description="weight decay (not on biases and norm layers)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD/RMSprop momentum")
    augment: Augment = Field("standard", description="train augmentation preset")
    seed: int = Field(42, description="seed for the split, initialisation and augmentation")
    workers: int | None = Field(None, ge=0, description="DataLoader workers; None: min(4, CPU cores)")
    val_split: float = Field(0.2, gt=0, lt=1, description="validation fraction for DIR/<class> layouts")
    output: Path | None = Field(None, description="run directory; None: runs/<date>-<backbone>")
    precision: Precision = Field("auto", description="numeric precision")
    channels_last: bool | None = Field(None, description="NHWC memory format; None: on with mixed precision")
    accelerator: str = Field("auto", description="cpu | gpu | auto")
    devices: str = Field("auto", description="device count or ids")
    strategy: str = Field("auto", description="Lightning strategy: auto | ddp | ddp_spawn | ...")
    num_nodes: int = Field(1, ge=1, description="machines for distributed training")
    limit_train_batches: float = Field(1.0, gt=0, description="fraction (<=1) or number (>1) of train batches per epoch")
    limit_val_batches: float = Field(1.0, gt=0, description="fraction (<=1) or number (>1) of val batches per epoch")
    progress: bool = Field(True, description="show the progress bar")
    # Regularization and distillation: soft-target loss, batch mixing, teacher, EMA, head dropout.
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing eps of the training targets")
    mixup: float = Field(0.0, ge=0, description="mixup Beta(alpha, alpha); 0: off")
    cutmix: float = Field(0.0, ge=0, description="cutmix Beta(alpha, alpha); 0: off")
    mix_prob: float = Field(1.0, ge=0, le=1, description="probability that a training batch is mixed")
    mix_switch_prob: float = Field(0.5, ge=0, le=1, description="with mixup and cutmix on: probability of cutmix")
    mix_off_epoch: int = Field(0, ge=0, description="no mixing from this (0-based) epoch on; 0: mix in every epoch")
    teacher: str | None = Field(None, description="distillation teacher: run dir, .ckpt, bundle dir, or backbone name")
    teacher_weights: Path | None = Field(None, description="weights of a backbone-name teacher")
    kd_alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term")
    kd_temperature: float = Field(4.0, gt=0, description="distillation softmax temperature")
    ema: bool = Field(False, description="keep and validate an exponential moving average of the weights")
    ema_decay: float = Field(0.999, gt=0, lt=1, description="EMA decay per optimizer step")
    ema_warmup: bool = Field(True, description="ramp the EMA decay up over the first steps")
    head_dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the classifier head")
    drop_path: float = Field(0.0, ge=0, lt=1, description="stochastic depth rate; 0: the backbone's default")

    @field_validator("devices", mode="before")
    @classmethod
    def _devices_to_str(cls, v: Any) -> str:
        return str(v)

    def resolved_workers(self) -> int:
        """DataLoader workers: the explicit value, else min(4, cores); more only contend on small machines."""
        return self.workers if self.workers is not None else min(4, os.cpu_count() or 1)

    def lightning_devices(self) -> int | str:
        return int(self.devices) if self.devices.isdigit() else self.devices

    @staticmethod
    def lightning_limit(value: float) -> int | float:
        """Lightning reads 1.0 as 'all batches' and an int as a batch count."""
        return int(value) if value > 1 else float(value)

    def to_yaml(self, extra: dict[str, Any] | None = None) -> str:
        data = self.model_dump(mode="json")
        if extra:
            data["resolved"] = extra
        return yaml.safe_dump(data, sort_keys=False)
