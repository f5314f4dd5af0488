"""--freeze-policy and --train-bn: what trains, what stays bit-identical, what is refused."""
from __future__ import annotations

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from finetune.cli import app
from finetune.config import RunConfig
from finetune.training.module import FinetuneModule

runner = CliRunner()
CLASSES = ["a", "b", "c"]


def _module(tiny_data, **kw) -> FinetuneModule:
    return FinetuneModule.from_config(RunConfig(backbone="test_resnet", data=tiny_data, weights="none", **kw), CLASSES)


def _trainable(module: FinetuneModule) -> set[str]:
    return {n for n, p in module.backbone.model.named_parameters() if p.requires_grad}


def _trained_state(run_dir) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {k[len("backbone.model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.model.")}


def test_linear_probe_trains_only_the_head(tiny_data):
    assert _trainable(_module(tiny_data, freeze_policy="linear-probe")) == {"fc.weight", "fc.bias"}


def test_full_trains_everything(tiny_data):
    module = _module(tiny_data, freeze_policy="full")
    assert _trainable(module) == {n for n, _ in module.backbone.model.named_parameters()}


def test_bn_only_trains_batchnorm_affine_and_head(tiny_data):
    module = _module(tiny_data, freeze_policy="bn-only")
    trainable = _trainable(module)
    assert {"fc.weight", "bn1.weight", "bn1.bias", "layer2.0.bn1.weight"} <= trainable
    convs = {f"{n}.weight" for n, m in module.backbone.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert convs and not convs & trainable
    module.train()
    assert module.backbone.model.layer1[0].bn1.training  # statistics update too


def test_bn_only_with_freeze_until_keeps_later_layers_training(tiny_data):
    trainable = _trainable(_module(tiny_data, freeze_policy="bn-only", freeze_until="layer3"))
    assert "layer3.0.conv1.weight" in trainable and "layer2.0.bn1.weight" in trainable
    assert "layer2.0.conv1.weight" not in trainable


def test_train_bn_both_ways(tiny_data):
    for train_bn, expected in ((True, True), (False, False)):
        module = _module(tiny_data, freeze_until="layer3", train_bn=train_bn)
        module.train()
        assert ("layer1.0.bn1.weight" in _trainable(module)) is expected
        assert module.backbone.model.layer1[0].bn1.training is expected
        assert "layer1.0.conv1.weight" not in _trainable(module)


def test_bn_only_run_changes_only_batchnorm_and_head(tiny_data, test_resnet_weights, tmp_path, run_args):
    out = tmp_path / "run"
    result = runner.invoke(app, run_args(tiny_data, out, "--weights", str(test_resnet_weights), "--lr", "0.05",
                                         "--freeze-policy", "bn-only", "--backbone-lr-mult", "1"))
    assert result.exit_code == 0, result.output
    loaded, trained = load_file(str(test_resnet_weights)), _trained_state(out)
    for key in ("layer1.0.conv1.weight", "layer4.0.conv2.weight", "conv1.0.weight"):
        assert torch.equal(trained[key], loaded[key]), key
    for key in ("layer1.0.bn1.weight", "layer1.0.bn1.running_mean", "bn1.bias"):
        assert not torch.equal(trained[key], loaded[key]), f"{key} did not train"
    assert "partly frozen" in result.output


def test_train_bn_run_updates_frozen_batchnorm(tiny_data, test_resnet_weights, tmp_path, run_args):
    out = tmp_path / "run"
    result = runner.invoke(app, run_args(tiny_data, out, "--weights", str(test_resnet_weights), "--lr", "0.05",
                                         "--freeze-until", "layer3", "--train-bn", "--backbone-lr-mult", "1"))
    assert result.exit_code == 0, result.output
    loaded, trained = load_file(str(test_resnet_weights)), _trained_state(out)
    assert torch.equal(trained["layer1.0.conv1.weight"], loaded["layer1.0.conv1.weight"])
    assert not torch.equal(trained["layer1.0.bn1.weight"], loaded["layer1.0.bn1.weight"])
    assert not torch.equal(trained["layer1.0.bn1.running_var"], loaded["layer1.0.bn1.running_var"])


def test_contradicting_policies_are_refused(tiny_data, tmp_path, run_args):
    for extra, words in ((("--freeze-policy", "full", "--freeze-until", "layer3"),
                          ("--freeze-policy", "full", "layer3")),
                         (("--freeze-policy", "linear-probe", "--freeze-until", "layer3"), ("linear-probe", "bn-only")),
                         (("--freeze-policy", "full", "--freeze-epochs", "1"),
                          ("--freeze-epochs", "nothing to unfreeze")),
                         (("--freeze-policy", "all",), ("linear-probe", "bn-only", "full", "all"))):
        result = runner.invoke(app, run_args(tiny_data, tmp_path / "run", "--weights", "none", *extra))
        assert result.exit_code == 2, result.output
        assert all(w in result.output for w in words), result.output
