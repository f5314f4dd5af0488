"""Teachers load strictly: a teacher whose weights do not fit exactly is an error, never random init."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from finetune.models.backbone import create_backbone
from finetune.training.checkpoint_format import ModuleParts, hyperparameters, write_record
from finetune.training.losses import LossSpec
from finetune.training.optim import OptimizerSpec
from finetune.training.schedules import ScheduleSpec
from finetune.training.teacher import TeacherError, load_teacher

CLASSES = ["circle", "square", "triangle"]


def _bundle(root: Path) -> Path:
    """A minimal export bundle of a random-init test_resnet for CLASSES."""
    torch.manual_seed(7)
    backbone, _ = create_backbone("test_resnet", len(CLASSES), "none")
    root.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, str(root / "model.safetensors"))
    config = {"format": "finetune-bundle", "format_version": 1, "backbone": "test_resnet",
              "num_classes": len(CLASSES), "class_names": CLASSES,
              "data_config": {"input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
                              "interpolation": "bilinear", "crop_pct": 0.875}}
    (root / "config.json").write_text(json.dumps(config))
    return root


def _module_state(seed: int):
    """A random-init test_resnet for CLASSES and its weights as a FinetuneModule checkpoint names them."""
    torch.manual_seed(seed)
    backbone, _ = create_backbone("test_resnet", len(CLASSES), "none")
    return backbone, {f"backbone.model.{k}": v for k, v in backbone.model.state_dict().items()}


def _save_checkpoint(path: Path, state: dict, config: dict | None, build_options: dict, data_config: dict) -> Path:
    """A checkpoint with the layout `finetune run` writes, around the given weights."""
    parts = ModuleParts(OptimizerSpec("adamw", 1e-3, (1.0,)), ScheduleSpec(), LossSpec(), 32, None)
    ckpt = {"state_dict": state, "hyper_parameters": hyperparameters(CLASSES, config, parts)}
    write_record(ckpt, plan={}, backbone="test_resnet", class_names=CLASSES, data_config=data_config, frozen_units=0,
                 build_options=build_options)
    torch.save(ckpt, path)
    return path


def _edit_weights(path: Path, edit) -> None:
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def test_bundle_teacher_missing_a_tensor_fails(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle")
    _edit_weights(bundle / "model.safetensors", lambda s: s.pop("layer2.0.conv1.weight"))
    with pytest.raises(TeacherError, match=r"bundle.*missing 1 \(layer2\.0\.conv1\.weight\)"):
        load_teacher(bundle, CLASSES)


def test_checkpoint_teacher_with_foreign_tensors_fails(tmp_path: Path) -> None:
    backbone, state = _module_state(3)
    state["backbone.model.extra.weight"] = torch.zeros(2)
    config = {"backbone": "test_resnet", "data": ".", "image_size": 32}
    data_config = backbone.data_config.with_size(32).to_dict()
    _save_checkpoint(tmp_path / "teacher.ckpt", state, config, backbone.build_options, data_config)
    with pytest.raises(TeacherError, match=r"teacher\.ckpt.*unexpected 1 \(extra\.weight\)"):
        load_teacher(tmp_path / "teacher.ckpt", CLASSES)
    del state["backbone.model.extra.weight"]
    _save_checkpoint(tmp_path / "teacher.ckpt", state, config, backbone.build_options, data_config)
    teacher = load_teacher(tmp_path / "teacher.ckpt", CLASSES)  # an exact checkpoint loads
    assert torch.equal(teacher.backbone.model.fc.weight, backbone.model.fc.weight)


def test_backbone_name_teacher_with_little_fitting_weights_fails_as_teacher_error(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle")
    _edit_weights(bundle / "model.safetensors",
                  lambda s: [s.pop(k) for k in list(s) if k.startswith(("layer3.", "layer4."))])
    with pytest.raises(TeacherError, match=r"--teacher-weights .*does not fit test_resnet.*missing"):
        load_teacher("test_resnet", CLASSES, weights=bundle / "model.safetensors")


def test_backbone_name_teacher_with_unexpected_tensors_fails(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle")
    _edit_weights(bundle / "model.safetensors", lambda s: s.update({"extra.weight": torch.zeros(2)}))
    with pytest.raises(TeacherError, match=r"unexpected 1 \(extra\.weight\)"):
        load_teacher("test_resnet", CLASSES, weights=bundle / "model.safetensors")


def test_run_directory_with_only_its_bundle_is_a_teacher(tmp_path: Path) -> None:
    """A run whose checkpoints were deleted still has RUN/model/: the same rule as predict and eval."""
    bundle = _bundle(tmp_path / "run" / "model")
    teacher = load_teacher(tmp_path / "run", CLASSES)
    assert teacher.source == str(bundle) and teacher.data_config.mean == (0.5, 0.5, 0.5)


def test_missing_teacher_checkpoint_names_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(TeacherError, match=r"--teacher .*gone\.ckpt does not exist; expected an export bundle"):
        load_teacher(tmp_path / "gone.ckpt", CLASSES)


def test_bundle_teacher_of_another_format_names_it(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle")
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps({**config, "format_version": 7}))
    with pytest.raises(TeacherError, match=r"--teacher .*bundle.*format_version 7"):
        load_teacher(bundle, CLASSES)


def test_checkpoint_teacher_without_a_run_config(tmp_path: Path) -> None:
    """A module built from its parts saves no RunConfig: the checkpoint's own record names network and input."""
    backbone, state = _module_state(5)
    data_config = {"input_size": 40, "mean": [0.5] * 3, "std": [0.25] * 3}
    _save_checkpoint(tmp_path / "parts.ckpt", state, None, backbone.build_options, data_config)
    teacher = load_teacher(tmp_path / "parts.ckpt", CLASSES)
    assert teacher.data_config.input_size == 40 and teacher.data_config.std == (0.25, 0.25, 0.25)
    assert torch.equal(teacher.backbone.model.fc.weight, backbone.model.fc.weight)
