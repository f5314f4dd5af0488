"""`finetune backbones`: names from both zoos, sizes, local weights."""
from __future__ import annotations

from safetensors.torch import save_file
from typer.testing import CliRunner

from finetune.cli import app
from finetune.models.catalog import list_backbones


def test_filter_matches_both_zoos_with_param_counts():
    rows = {b.name: b for b in list_backbones("resnet18")}
    assert "resnet18" in rows and "tv:resnet18" in rows
    assert rows["tv:resnet18"].params == 11_689_512 and rows["resnet18"].zoo == "timm"


def test_local_weights_are_reported(tmp_path):
    save_file({}, str(tmp_path / "tv_resnet18.safetensors"))
    rows = {b.name: b for b in list_backbones("resnet18", weights_dir=tmp_path)}
    assert rows["tv:resnet18"].local_weights.endswith("tv_resnet18.safetensors")
    assert rows["resnet18"].local_weights is None


def test_backbones_command():
    result = CliRunner().invoke(app, ["backbones", "--filter", "test_res"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "test_resnet" in result.output and "1 backbones" in result.output
