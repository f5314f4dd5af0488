"""Teacher models for knowledge distillation: loading, class checks, re-normalised inputs.

A `Teacher` is deliberately not an `nn.Module`: stored on the LightningModule it is not a
registered child, so its weights never enter the student's `state_dict`, checkpoints or exports,
and the student's optimizer never sees its parameters.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from finetune.data.data_config import DataConfig
from finetune.errors import FinetuneError
from finetune.models.backbone import Backbone, LoadReport, create_backbone, rebuild_backbone
from finetune.models.source import BundleConfig, ModelSource, resolve_model_source
from finetune.training.checkpoint_format import read_checkpoint


class TeacherError(FinetuneError):
    """The teacher cannot be loaded or does not fit the student's task."""


class Teacher:
    """A frozen classifier whose logits the student learns from.

    Attributes:
        backbone: The network (eval mode, no gradients).
        data_config: The preprocessing it expects (size, mean, std).
        class_names: Its classes, in label-index order.
        source: Where it came from, for messages.
    """

    def __init__(self, backbone: Backbone, data_config: DataConfig, class_names: Sequence[str], source: str):
        self.backbone = backbone.eval().requires_grad_(False)
        self.data_config, self.class_names, self.source = data_config, list(class_names), source

    def to(self, device: torch.device | str) -> "Teacher":
        self.backbone.to(device)
        return self

    def check_classes(self, student_classes: Sequence[str]) -> None:
        """Raises TeacherError naming both class lists when they differ (names or order)."""
        if list(student_classes) != self.class_names:
            raise TeacherError(
                f"the teacher {self.source} was trained on classes {self.class_names}, but the student's "
                f"data has classes {list(student_classes)}: teacher and student need the same classes "
                f"in the same order"
            )

    def logits(self, x: Tensor, student_config: DataConfig) -> Tensor:
        """Teacher logits for a batch prepared for the student.

        Args:
            x: Images normalised with the student's mean/std, shape (B, 3, S, S).
            student_config: The student's preprocessing.

        Returns:
            Logits, shape (B, C): an ordinary tensor (not an inference tensor), no gradient.
        """
        self.backbone.eval()  # Lightning's train() calls never reach it, but a user's might
        with torch.inference_mode():
            out = self.backbone(renormalize(x, student_config, self.data_config))
        return out.clone()  # inference tensors cannot be saved for the student's backward pass


def renormalize(x: Tensor, source: DataConfig, target: DataConfig) -> Tensor:
    """Re-expresses a batch normalised for `source` in `target`'s normalisation and size.

    Args:
        x: Shape (B, 3, S, S), normalised as (pixel - source.mean) / source.std.

    Returns:
        Shape (B, 3, T, T) with T = target.input_size, normalised with target's mean/std.
    """
    def stat(values: Sequence[float]) -> Tensor:
        return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)

    if source.mean != target.mean or source.std != target.std:
        x = (x * stat(source.std) + stat(source.mean) - stat(target.mean)) / stat(target.std)
    if x.shape[-1] != target.input_size or x.shape[-2] != target.input_size:
        size = (target.input_size, target.input_size)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x


def load_teacher(source: str | Path, class_names: Sequence[str], weights: str | Path | None = None,
                 student_config: DataConfig | None = None) -> Teacher:
    """Loads a teacher and checks that it classifies the student's classes.

    Args:
        source: A run directory or .ckpt of this toolkit, an exported bundle directory, or a
            backbone name (then `weights` is required).
        class_names: The student's classes.
        weights: Weights file for a backbone-name teacher (its head must have len(class_names) outputs).
        student_config: The student's preprocessing; a backbone-name teacher uses its size with
            the backbone's own mean/std (a bare weights file records no input size).

    Raises:
        TeacherError: Unknown source, missing weights, or different classes.
    """
    path = Path(source).expanduser()
    if weights is not None and path.exists():
        raise TeacherError(f"--teacher-weights is only for a backbone-name teacher; {source} is a "
                           f"file or directory that carries its own weights")
    if path.exists() or path.suffix == ".ckpt":
        model = _model_source(path)
        # A run directory's checkpoint is the model as trained; its bundle serves when the checkpoints are gone.
        teacher = _from_checkpoint(model.checkpoint) if model.checkpoint is not None else _from_bundle(model.bundle)
    else:
        teacher = _from_name(str(source), weights, class_names, student_config)
    teacher.check_classes(class_names)
    return teacher


def _model_source(path: Path) -> ModelSource:
    try:
        return resolve_model_source(path)
    except FinetuneError as e:
        raise TeacherError(f"--teacher {e}") from None


def _from_checkpoint(ckpt_path: Path) -> Teacher:
    try:
        ckpt = read_checkpoint(ckpt_path)  # the checks and messages of `finetune export` and `eval`
    except FinetuneError as e:
        raise TeacherError(f"--teacher {e}") from None
    backbone = _exact(f"--teacher {ckpt_path}", rebuild_backbone(
        ckpt.backbone, len(ckpt.class_names), ckpt_path, ckpt.build_options, f"--teacher {ckpt_path}",
        weights_partial=True))
    # The record holds the input the run trained at (the weights' preprocessing at --image-size).
    data_config = DataConfig.from_dict(ckpt.data_config)
    return Teacher(backbone, data_config, ckpt.class_names, str(ckpt_path))


def _from_bundle(bundle: Path) -> Teacher:
    try:
        config = BundleConfig.load(bundle)
    except FinetuneError as e:
        raise TeacherError(f"--teacher {bundle}: {e}") from None
    where = f"--teacher {bundle / 'config.json'}"
    backbone = _exact(f"--teacher {bundle}", rebuild_backbone(
        config.backbone, config.num_classes, bundle / "model.safetensors", config.build_options, where,
        weights_partial=True))
    return Teacher(backbone, config.data_config, config.class_names, str(bundle))


def _from_name(name: str, weights: str | Path | None, class_names: Sequence[str],
               student_config: DataConfig | None) -> Teacher:
    if weights is None:
        raise TeacherError(
            f"--teacher {name} is not a run directory, checkpoint or bundle; as a backbone name it needs "
            f"--teacher-weights PATH (a state dict with a {len(class_names)}-class head)"
        )
    built = create_backbone(name, len(class_names), str(weights), weights_partial=True)
    backbone = _exact(f"--teacher-weights {weights}", built)
    size = student_config.input_size if student_config is not None else None
    return Teacher(backbone, backbone.data_config.with_size(size), class_names, f"{name} ({weights})")


def _exact(what: str, built: tuple[Backbone, LoadReport]) -> Backbone:
    """The teacher's network when every tensor loaded: no missing, unexpected or dropped head.

    A student can start from partly fitting weights, but a teacher is never trained: a tensor left at
    random init would teach noise, so teachers load strictly.
    """
    backbone, report = built
    if report.missing or report.unexpected or report.dropped_head:
        raise TeacherError(f"{what} does not fit {backbone.name} with {backbone.num_classes} classes exactly "
                           f"(teachers load strictly): {report}")
    return backbone
