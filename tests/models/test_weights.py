"""Weights from files, checkpoints, the local weights folder and the hub caches; offline errors."""
import time
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from finetune.errors import WeightsError
from finetune.models import zoo
from finetune.models.backbone import create_backbone
from finetune.models.weights import LoadReport, apply_state_dict, load_state_dict_file

HEAD = ("fc.weight", "fc.bias")


class Payload:
    """A custom object: pickling it into a .pth must not be accepted."""

    def __init__(self) -> None:
        self.value = 1


@pytest.fixture(autouse=True)
def _no_weight_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Empty caches, no local weights folder: only what a test puts there exists.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FINETUNE_WEIGHTS_DIR", raising=False)


def _source_state(num_classes: int = 5) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    backbone, _ = create_backbone("test_resnet", num_classes, weights="none")
    return {k: v.clone() for k, v in backbone.model.state_dict().items()}


def _assert_body_equal(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for key, value in own.items():
        if key not in HEAD:
            assert torch.equal(value, saved[key]), key


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_path_weights_drop_head_on_class_change(tmp_path: Path, suffix: str) -> None:
    saved = _source_state(5)
    path = tmp_path / f"model{suffix}"
    save_file(saved, str(path)) if suffix == ".safetensors" else torch.save(saved, path)
    backbone, report = create_backbone("test_resnet", 3, weights=str(path))
    _assert_body_equal(backbone.model, saved)
    assert backbone.model.fc.weight.shape[0] == 3
    assert sorted(report.dropped_head) == sorted(HEAD)
    assert report.missing == [] and report.unexpected == []
    assert report.source == str(path)
    assert "head dropped 2" in str(report)


def test_same_class_count_keeps_head(tmp_path: Path) -> None:
    saved = _source_state(5)
    save_file(saved, str(tmp_path / "m.safetensors"))
    backbone, report = create_backbone("test_resnet", 5, weights=str(tmp_path / "m.safetensors"))
    assert torch.equal(backbone.model.fc.weight, saved["fc.weight"])
    assert report.dropped_head == []


def test_lightning_checkpoint_with_prefix_loads(tmp_path: Path) -> None:
    saved = _source_state(5)
    ckpt = {"epoch": 3, "state_dict": {f"backbone.model.{k}": v for k, v in saved.items()}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    backbone, report = create_backbone("test_resnet", 3, weights=str(tmp_path / "last.ckpt"))
    _assert_body_equal(backbone.model, saved)
    assert report.missing == [] and report.unexpected == []


def test_pickled_object_is_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": _source_state(), "extra": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="pickled"):
        load_state_dict_file(tmp_path / "evil.pth")


def test_missing_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="nope.pth"):
        create_backbone("test_resnet", 3, weights=str(tmp_path / "nope.pth"))


def test_other_shape_mismatch_is_reported_not_raised() -> None:
    backbone, _ = create_backbone("test_resnet", 3, weights="none")
    state = {f"module.{k}": v for k, v in backbone.model.state_dict().items()}
    state["module.layer1.0.conv1.weight"] = torch.zeros(1, 2, 3, 3)
    report = apply_state_dict(backbone.model, state, HEAD)
    assert report.unexpected == ["layer1.0.conv1.weight"] == report.missing
    assert report.dropped_head == []


@pytest.mark.parametrize("name", ["test_resnet", "tv:resnet18"])
def test_offline_imagenet_fails_fast_with_alternatives(name: str) -> None:
    start = time.monotonic()
    with pytest.raises(WeightsError) as err:
        create_backbone(name, 3, weights="imagenet")
    assert time.monotonic() - start < 15
    message = str(err.value)
    assert name in message and "--weights PATH" in message and "--weights none" in message


def test_imagenet_from_weights_dir_goes_through_timm(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    saved = _source_state(1000)
    save_file(saved, str(tmp_path / "test_resnet.safetensors"))
    calls = []
    real_create = zoo.timm.create_model

    def spy(*args: object, **kwargs: object) -> torch.nn.Module:
        calls.append(kwargs)
        return real_create(*args, **kwargs)

    monkeypatch.setattr(zoo.timm, "create_model", spy)
    backbone, report = create_backbone("test_resnet", 3, weights="imagenet", weights_dir=tmp_path)
    assert calls[-1]["pretrained"] is True
    assert calls[-1]["pretrained_cfg_overlay"]["file"] == str(tmp_path / "test_resnet.safetensors")
    _assert_body_equal(backbone.model, saved)
    assert sorted(report.dropped_head) == sorted(HEAD)
    assert "local file" in report.source


def test_pickled_file_in_weights_dir_is_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": _source_state(1000), "extra": Payload()}, tmp_path / "test_resnet.pth")
    with pytest.raises(WeightsError, match="test_resnet.pth"):
        create_backbone("test_resnet", 3, weights="imagenet", weights_dir=tmp_path)


def test_imagenet_from_env_weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = _source_state(1000)
    torch.save(saved, tmp_path / "test_resnet.pth")
    monkeypatch.setenv("FINETUNE_WEIGHTS_DIR", str(tmp_path))
    backbone, _ = create_backbone("test_resnet", 3, weights="imagenet")
    _assert_body_equal(backbone.model, saved)


def test_imagenet_from_hf_cache(tmp_path: Path) -> None:
    saved = _source_state(1000)
    # The layout huggingface_hub writes: refs/main names the snapshot holding the files.
    repo = tmp_path / "hf" / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file(saved, str(repo / "snapshots" / "abc123" / "model.safetensors"))
    backbone, report = create_backbone("test_resnet", 3, weights="imagenet")
    _assert_body_equal(backbone.model, saved)
    assert report.source == "imagenet (timm: hf-hub cache)"


def test_torchvision_imagenet_from_torch_hub_cache_drops_aux(tmp_path: Path) -> None:
    torch.manual_seed(2)
    # A googlenet as torchvision ships it: 1000 classes, with aux classifiers.
    reference = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    url = zoo.default_weights("googlenet").url
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / Path(url).name)
    backbone, report = create_backbone("tv:googlenet", 4, weights="imagenet")
    assert report.unexpected == [] and report.missing == []
    assert sorted(report.dropped_head) == ["fc.bias", "fc.weight"]
    assert torch.equal(backbone.model.conv1.conv.weight, reference.conv1.conv.weight)
    assert backbone.model.transform_input is True
    assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, 4)


def test_report_summary_counts() -> None:
    report = LoadReport("x.pth", missing=["a", "b", "c", "d"], unexpected=[], dropped_head=["fc.w"])
    text = str(report)
    assert "x.pth" in text and "missing 4" in text and "+1" in text and "unexpected" not in text


def _without(saved: dict[str, torch.Tensor], *prefixes: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in saved.items() if not k.startswith(prefixes)}


def test_weights_that_fit_little_fail_naming_the_tensors(tmp_path: Path) -> None:
    # A wrong file: the last two stages are absent, so most of the network would stay at random init.
    save_file(_without(_source_state(5), "layer3.", "layer4."), str(tmp_path / "half.safetensors"))
    with pytest.raises(WeightsError) as err:
        create_backbone("test_resnet", 3, weights=str(tmp_path / "half.safetensors"))
    message = str(err.value)
    body = [k for k in _source_state(5) if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    missing = [k for k in body if k.startswith(("layer3.", "layer4."))]
    assert f"{len(missing)} of the {len(body)} non-head tensors" in message
    assert missing[0] in message and f"+{len(missing) - 3}" in message
    assert "--weights-partial" in message and "half.safetensors" in message


def test_weights_of_another_architecture_fail(tmp_path: Path) -> None:
    other, _ = create_backbone("test_convnext", 5, weights="none")
    save_file(other.model.state_dict(), str(tmp_path / "convnext.safetensors"))
    with pytest.raises(WeightsError, match=r"missing or mismatched.*unexpected tensors"):
        create_backbone("test_resnet", 3, weights=str(tmp_path / "convnext.safetensors"))


def test_mismatched_shapes_count_as_missing(tmp_path: Path) -> None:
    saved = _source_state(5)
    wide = {k: (torch.zeros(v.shape[0] + 1, *v.shape[1:]) if k.startswith(("layer2.", "layer3.")) and v.ndim
                else v) for k, v in saved.items()}
    save_file(wide, str(tmp_path / "wide.safetensors"))
    with pytest.raises(WeightsError, match="non-head tensors"):
        create_backbone("test_resnet", 3, weights=str(tmp_path / "wide.safetensors"))


def test_weights_partial_opts_in_and_reports(tmp_path: Path) -> None:
    saved = _source_state(5)
    save_file(_without(saved, "layer3.", "layer4."), str(tmp_path / "half.safetensors"))
    backbone, report = create_backbone("test_resnet", 3, weights=str(tmp_path / "half.safetensors"),
                                       weights_partial=True)
    assert torch.equal(backbone.model.layer1[0].conv1.weight, saved["layer1.0.conv1.weight"])
    assert "layer4.0.conv1.weight" in report.missing and "missing" in str(report)


def test_a_few_missing_tensors_still_load_with_a_report(tmp_path: Path) -> None:
    # Deliberate surgery (here: a first conv for other input channels) leaves a few tensors out.
    save_file(_without(_source_state(5), "conv1.0."), str(tmp_path / "new_first_conv.safetensors"))
    backbone, report = create_backbone("test_resnet", 3, weights=str(tmp_path / "new_first_conv.safetensors"))
    assert report.missing == ["conv1.0.weight"]


def test_run_refuses_unfit_weights_unless_partial(tiny_data: Path, tmp_path: Path, run_args) -> None:
    from typer.testing import CliRunner

    from finetune.cli import app

    save_file(_without(_source_state(5), "layer3.", "layer4."), str(tmp_path / "half.safetensors"))
    def args(output: Path, *extra: str) -> list[str]:
        return run_args(tiny_data, output, "--weights", str(tmp_path / "half.safetensors"), *extra)

    refused = CliRunner().invoke(app, args(tmp_path / "run"))
    assert refused.exit_code != 0 and "--weights-partial" in refused.output
    assert refused.exception is None or isinstance(refused.exception, SystemExit)  # a message, no traceback
    accepted = CliRunner().invoke(app, args(tmp_path / "run2", "--weights-partial"))
    assert accepted.exit_code == 0, accepted.output
    assert "weights_partial: true" in (tmp_path / "run2" / "config.yaml").read_text()
    text = " ".join(accepted.output.split())
    assert text.count("Warning: --weights-partial:") == 1 and "keep their random init" in text
