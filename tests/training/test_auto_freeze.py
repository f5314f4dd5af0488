"""--freeze-until auto: fewer images per class freeze more."""
from __future__ import annotations

from typer.testing import CliRunner

from finetune.cli import app
from finetune.models.backbone import create_backbone
from finetune.training.auto_freeze import auto_freeze_until, images_per_class


def test_rule_unfreezes_more_with_more_data():
    backbone, _ = create_backbone("test_resnet", 3, "none")  # groups: stem, layer1..layer4, head
    picks = [auto_freeze_until(backbone, n)[0] for n in (5, 50, 500, 5000)]
    assert picks == ["fc", "layer4", "layer3", "conv1"]
    assert images_per_class({"a": 3, "b": 8, "c": 900}) == 8  # the median, not the mean


def test_auto_is_printed_and_applied(tiny_data, tmp_path, run_args):
    result = CliRunner().invoke(app, run_args(tiny_data, tmp_path / "run", "--weights", "none", "--freeze-until", "auto"))
    assert result.exit_code == 0, result.output
    assert "freeze-until auto: 8 train images per class" in result.output and "--freeze-until fc" in result.output
