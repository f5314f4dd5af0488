"""`finetune demo`: real ImageNet weights against scratch on a real task, scored on test."""
from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from finetune.cli import app


@pytest.mark.slow
def test_demo_fine_tunes_imagenet_weights_and_compares_with_scratch(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--output", str(out), "--shots", "2", "--epochs", "1"],
                                env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "ImageNet weights minus scratch" in result.output and "test top-1" in result.output
    imagenet = yaml.safe_load((out / "imagenet" / "config.yaml").read_text())
    scratch = yaml.safe_load((out / "scratch" / "config.yaml").read_text())
    assert imagenet["weights"] == "imagenet" and scratch["weights"] == "none"
    assert imagenet["backbone"] == "tf_efficientnet_lite0"
    assert set(imagenet["resolved"]["counts"].values()) == {10, 200, 300}  # 5 classes x (2 train, 40 val, 60 test)
    assert (out / "imagenet" / "model" / "model.onnx").is_file()  # the model a user would keep
    assert not (out / "scratch" / "model").exists()


def test_demo_task_option_reaches_the_task_maker(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--output", str(tmp_path / "d"), "--task", "digits"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "unknown real task 'digits'; valid: textures, silhouettes, faces" in " ".join(result.output.split())
