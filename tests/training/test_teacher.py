"""Distillation teachers: sources, class checks, re-normalisation, never trained or saved."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from finetune.cli import app
from finetune.config import RunConfig
from finetune.data.data_config import DataConfig
from finetune.models.backbone import create_backbone
from finetune.training.module import FinetuneModule
from finetune.training.teacher import TeacherError, load_teacher, renormalize

CLASSES = ["circle", "square", "triangle"]
runner = CliRunner()


def write_bundle(root, classes=CLASSES, input_size=40, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)):
    """A minimal export bundle: model.safetensors of Backbone.model + config.json."""
    torch.manual_seed(7)
    backbone, _ = create_backbone("test_resnet", len(classes), "none")
    root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, str(root / "model.safetensors"))
    config = {"format": "finetune-bundle", "format_version": 1, "backbone": "test_resnet",
              "num_classes": len(classes), "class_names": list(classes),
              "data_config": {"input_size": input_size, "mean": list(mean), "std": list(std),
                              "interpolation": "bilinear", "crop_pct": 0.875},
              "tta": "none", "temperature": 1.0}
    (root / "config.json").write_text(json.dumps(config))
    return root, backbone


def test_renormalize_matches_hand_computation():
    src = DataConfig(8, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    dst = DataConfig(8, (0.1, 0.2, 0.3), (0.5, 0.25, 1.0))
    pixels = torch.rand(2, 3, 8, 8)
    x = (pixels - torch.tensor(src.mean).view(1, 3, 1, 1)) / torch.tensor(src.std).view(1, 3, 1, 1)
    expected = (pixels - torch.tensor(dst.mean).view(1, 3, 1, 1)) / torch.tensor(dst.std).view(1, 3, 1, 1)
    assert torch.allclose(renormalize(x, src, dst), expected, atol=1e-5)
    assert renormalize(x, src, DataConfig(12, dst.mean, dst.std)).shape == (2, 3, 12, 12)


def test_bundle_teacher_sees_its_own_preprocessing(tmp_path):
    bundle, original = write_bundle(tmp_path / "bundle")
    teacher = load_teacher(bundle, CLASSES)
    student = DataConfig(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pixels = torch.rand(2, 3, 32, 32)
    x = (pixels - torch.tensor(student.mean).view(1, 3, 1, 1)) / torch.tensor(student.std).view(1, 3, 1, 1)
    expected_in = torch.nn.functional.interpolate((pixels - 0.5) / 0.25, size=(40, 40), mode="bilinear",
                                                  antialias=True)
    original.eval()
    assert torch.allclose(teacher.logits(x, student), original(expected_in), atol=1e-4)
    assert not teacher.logits(x, student).is_inference()


def test_class_mismatch_names_both_lists(tmp_path):
    bundle, _ = write_bundle(tmp_path / "bundle", classes=["cat", "dog", "fox"])
    with pytest.raises(TeacherError, match=r"\['cat', 'dog', 'fox'\].*\['circle', 'square', 'triangle'\]"):
        load_teacher(bundle, CLASSES)


def test_backbone_name_teacher_needs_fitting_weights(tmp_path):
    with pytest.raises(TeacherError, match="--teacher-weights"):
        load_teacher("test_resnet", CLASSES)
    bundle, original = write_bundle(tmp_path / "bundle")
    cfg = RunConfig(backbone="test_resnet", data=".", weights="none", image_size=32, teacher="test_resnet",
                    teacher_weights=bundle / "model.safetensors")
    teacher = FinetuneModule.from_config(cfg, CLASSES).teacher  # the --teacher the config names
    assert torch.equal(teacher.backbone.model.fc.weight, original.model.fc.weight)
    assert teacher.data_config.input_size == 32  # the student's size
    with pytest.raises(TeacherError, match="does not fit"):
        load_teacher("test_resnet", CLASSES + ["star"], weights=bundle / "model.safetensors")


def test_distillation_run_keeps_teacher_out_of_checkpoint(tiny_data, tmp_path, run_args):
    bundle, original = write_bundle(tmp_path / "bundle")
    out = tmp_path / "student"
    result = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--teacher", str(bundle),
                                         "--kd-alpha", "0.5", "--kd-temperature", "2", "--mixup", "0.4"))
    assert result.exit_code == 0, result.output
    assert f"Teacher: {bundle}" in result.output.replace("\n", "")
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(k.startswith("backbone.model.") for k in ckpt["state_dict"])
    assert not any("teacher" in k for k in ckpt["state_dict"])
    header = open(out / "metrics.csv").readline()
    assert "train/kd_loss" in header and "train/task_loss" in header
    # The student's checkpoint in turn serves as a teacher (run-dir source).
    assert load_teacher(out, CLASSES).source.endswith("best.ckpt")
    assert torch.equal(load_teacher(bundle, CLASSES).backbone.model.fc.weight, original.model.fc.weight)


def test_teacher_with_other_classes_is_a_cli_error(tiny_data, tmp_path, run_args):
    bundle, _ = write_bundle(tmp_path / "bundle", classes=["a", "b", "c"])
    result = runner.invoke(app, run_args(tiny_data, tmp_path / "run", "--weights", "none", "--teacher", str(bundle)))
    assert result.exit_code == 2
    assert "['a', 'b', 'c']" in result.output and "circle" in result.output
