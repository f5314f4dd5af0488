"""Units and groups cover every parameter once, in order, with the head last."""
import pytest

from finetune.errors import UnknownLayerError
from finetune.models.backbone import create_backbone, list_layers

ARCHS = ["test_resnet", "test_convnext", "test_vit", "test_efficientnet", "tv:resnet18",
         "tv:vgg11", "tv:mobilenet_v2", "tv:squeezenet1_0", "tv:densenet121", "tv:googlenet",
         "tv:vit_b_16"]


@pytest.mark.parametrize("name", ARCHS)
def test_every_param_in_exactly_one_unit_and_group(name: str) -> None:
    backbone, _ = create_backbone(name, 4, weights="none")
    params = [n for n, _ in backbone.model.named_parameters()]
    unit_params = [p for u in backbone.units for p in u.param_names]
    group_params = [p for g in backbone.groups for p in g.param_names]
    assert sorted(unit_params) == sorted(params)
    assert sorted(group_params) == sorted(params)
    assert [u for g in backbone.groups for u in g.unit_names] == backbone.layer_names()
    assert sum(u.num_params for u in backbone.units) == sum(p.numel() for p in backbone.parameters())


@pytest.mark.parametrize(("name", "head_unit", "head_param"), [
    ("test_resnet", "fc", "fc.weight"), ("test_convnext", "head", "head.fc.weight"),
    ("test_vit", "head", "head.weight"), ("tv:vgg11", "classifier.6", "classifier.6.weight"),
    ("tv:squeezenet1_0", "classifier.1", "classifier.1.weight"),
    ("tv:mobilenet_v2", "classifier.1", "classifier.1.weight"),
])
def test_head_is_last_unit_and_group(name: str, head_unit: str, head_param: str) -> None:
    backbone, _ = create_backbone(name, 4, weights="none")
    assert backbone.head_unit().name == head_unit == backbone.units[-1].name
    assert backbone.groups[-1].name == "head"
    assert backbone.groups[-1].unit_names == (head_unit,)
    assert head_param in backbone.groups[-1].param_names


def test_timm_resnet_units_and_coarse_groups() -> None:
    backbone, _ = create_backbone("test_resnet", 3, weights="none")
    assert backbone.layer_names() == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    groups = [(g.name, g.unit_names) for g in backbone.groups]
    assert groups == [("stem", ("conv1", "bn1")), ("layer1", ("layer1",)), ("layer2", ("layer2",)),
                      ("layer3", ("layer3",)), ("layer4", ("layer4",)), ("head", ("fc",))]


def test_expanded_and_named_units() -> None:
    convnext, _ = create_backbone("test_convnext", 3, weights="none")
    assert convnext.layer_names() == ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"]
    vgg, _ = create_backbone("tv:vgg11", 3, weights="none")
    assert vgg.layer_names()[:2] == ["features.0", "features.3"]
    assert vgg.layer_names()[-3:] == ["classifier.0", "classifier.3", "classifier.6"]
    densenet, _ = create_backbone("tv:densenet121", 3, weights="none")
    assert "features.denseblock1" in densenet.layer_names()


def test_root_params_join_first_unit() -> None:
    vit, _ = create_backbone("test_vit", 3, weights="none")
    assert {"cls_token", "pos_embed"} <= set(vit.units[0].param_names)
    assert vit.groups[0].name == "stem"


def test_resolve_layer_names_and_aliases() -> None:
    backbone, _ = create_backbone("test_resnet", 3, weights="none")
    assert backbone.resolve_layer("layer3") == 4
    assert backbone.resolve_layer("stem") == 0
    assert backbone.resolve_layer("head") == len(backbone.units) - 1


def test_unknown_layer_lists_valid_names() -> None:
    backbone, _ = create_backbone("test_resnet", 3, weights="none")
    with pytest.raises(UnknownLayerError) as err:
        backbone.resolve_layer("layer9")
    message = str(err.value)
    assert "layer9" in message
    for name in [*backbone.layer_names(), "stem", "head"]:
        assert name in message


def test_list_layers_counts_match_a_built_model() -> None:
    backbone, _ = create_backbone("tv:resnet18", 1000, weights="none")
    assert list_layers("tv:resnet18") == [(u.name, u.num_params) for u in backbone.units]
    assert list_layers("test_resnet")[-1][0] == "fc"
