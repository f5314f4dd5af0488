"""Backbone names from both zoos and the preprocessing that comes with their weights."""
import pytest
import timm

from finetune.errors import UnknownBackboneError
from finetune.models.backbone import create_backbone


def test_unknown_timm_name_suggests_close_match() -> None:
    with pytest.raises(UnknownBackboneError) as err:
        create_backbone("resnet5O", 3, weights="none")
    assert "resnet5O" in str(err.value) and "resnet50" in str(err.value)


def test_unknown_torchvision_name_suggests_torchvision_match() -> None:
    with pytest.raises(UnknownBackboneError) as err:
        create_backbone("tv:resnet19", 3, weights="none")
    assert "tv:resnet18" in str(err.value)


def test_torchvision_name_without_prefix_suggests_prefix() -> None:
    with pytest.raises(UnknownBackboneError, match="tv:squeezenet1_0"):
        create_backbone("squeezenet1_0", 3, weights="none")


def test_timm_data_config_comes_from_pretrained_cfg() -> None:
    backbone, _ = create_backbone("test_resnet", 3, weights="none")
    cfg = timm.data.resolve_model_data_config(backbone.model)
    dc = backbone.data_config
    assert dc.input_size == cfg["input_size"][-1]
    assert dc.mean == tuple(cfg["mean"]) and dc.std == tuple(cfg["std"])
    assert dc.crop_pct == pytest.approx(cfg["crop_pct"])
    assert dc.interpolation == cfg["interpolation"]
    assert backbone.zoo == "timm"


def test_torchvision_data_config_from_weights_transforms() -> None:
    backbone, _ = create_backbone("tv:resnet18", 3, weights="none")
    dc = backbone.data_config
    assert dc.input_size == 224
    assert dc.crop_pct == pytest.approx(224 / 256)
    assert dc.mean == pytest.approx((0.485, 0.456, 0.406))
    assert dc.interpolation == "bilinear"
    assert backbone.zoo == "torchvision"


def test_inception_data_config_is_299() -> None:
    backbone, _ = create_backbone("tv:inception_v3", 3, weights="none")
    assert backbone.data_config.input_size == 299
