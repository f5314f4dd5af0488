"""--freeze-until: frozen means bit-identical, the rest trains."""
from __future__ import annotations

import torch
from safetensors.torch import load_file
from timm.layers import BatchNormAct2d
from torch import nn
from typer.testing import CliRunner

from finetune.cli import app
from finetune.training.freeze import norm_param_names


def _trained_state(run_dir) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    prefix = "backbone.model."
    return {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def test_freeze_until_layer3_keeps_earlier_layers_bit_identical(tiny_data, test_resnet_weights, tmp_path, run_args):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, run_args(tiny_data, out, "--weights", str(test_resnet_weights),
                                              "--freeze-until", "layer3", "--lr", "0.05", "--epochs", "2"))
    assert result.exit_code == 0, result.output
    loaded, trained = load_file(str(test_resnet_weights)), _trained_state(out)
    before = ("conv1.", "bn1.", "layer1.", "layer2.")
    frozen = [k for k in trained if k.startswith(before)]
    assert any("running_mean" in k for k in frozen) and any("num_batches_tracked" in k for k in frozen)
    for key in frozen:  # parameters and BatchNorm buffers alike
        assert torch.equal(trained[key], loaded[key]), f"{key} changed although it is before layer3"
    for layer in ("layer3.", "layer4."):
        changed = [k for k in trained
                   if k.startswith(layer) and k.endswith("weight") and not torch.equal(trained[k], loaded[k])]
        assert changed, f"{layer} did not train"
    assert trained["fc.weight"].shape[0] == 3  # head replaced for the 3 classes


def test_without_freezing_early_layers_train(tiny_data, test_resnet_weights, tmp_path, run_args):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, run_args(tiny_data, out, "--weights", str(test_resnet_weights), "--lr", "0.05",
                                              "--freeze-until", "none"))
    assert result.exit_code == 0, result.output
    loaded, trained = load_file(str(test_resnet_weights)), _trained_state(out)
    assert not torch.equal(trained["conv1.0.weight"], loaded["conv1.0.weight"])
    assert not torch.equal(trained["bn1.running_mean"], loaded["bn1.running_mean"])


def test_plan_table_shows_frozen_and_training_groups(tiny_data, tmp_path, run_args):
    result = CliRunner().invoke(app, run_args(tiny_data, tmp_path / "run", "--weights", "none",
                                              "--freeze-until", "layer3"))
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines()
             if line.startswith("│") and len(line.split()) > 3}
    assert "frozen" in lines["layer2"] and "trains" in lines["layer3"] and "trains" in lines["head"]


def test_unknown_layer_lists_valid_names(tiny_data, tmp_path, run_args):
    result = CliRunner().invoke(app, run_args(tiny_data, tmp_path / "run", "--weights", "none",
                                              "--freeze-until", "layer9"))
    assert result.exit_code == 2
    assert "layer9" in result.output and "layer3" in result.output and "conv1" in result.output


def test_norm_param_names_are_the_batchnorms_own_affine_parameters():
    """timm's BatchNormAct2d is a BatchNorm with its activation inside: a PReLU's slope there is no BN affine."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), BatchNormAct2d(4, act_layer=nn.PReLU), nn.BatchNorm1d(4, affine=False))
    assert {n for n, _ in model.named_parameters()} == {"0.weight", "0.bias", "1.weight", "1.bias", "1.act.weight"}
    assert norm_param_names(model) == {"1.weight", "1.bias"}
