"""The domain check of --freeze-until auto: pretrained features that fit the data no better in the
last group than in the first mean every layer trains."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from finetune.config import RunConfig
from finetune.data.scan import scan_image_folder
from finetune.models.backbone import create_backbone
from finetune.training.auto_freeze import resolve_freeze_until
from finetune.training.feature_fit import (
    PROBE_MAX,
    FeatureFit,
    _sample,
    group_outputs,
    measure_feature_fit,
    nearest_mean_loo,
)


def _loo_by_hand(features: torch.Tensor, labels: torch.Tensor) -> float:
    """The definition, one image at a time."""
    f = F.normalize(features.double(), dim=1)
    correct = scored = 0
    for i in range(len(f)):
        others = torch.arange(len(f)) != i
        if (labels[others] == labels[i]).sum() == 0:
            continue
        means = torch.stack([f[others & (labels == c)].mean(0) if (others & (labels == c)).any()
                             else torch.full_like(f[0], float("nan")) for c in range(int(labels.max()) + 1)])
        sim = torch.nan_to_num(F.normalize(means, dim=1) @ f[i], nan=-torch.inf)
        correct += int(sim.argmax() == labels[i])
        scored += 1
    return correct / scored


@pytest.mark.parametrize("seed", range(3))
def test_nearest_mean_leaves_each_image_out_of_its_own_class_mean(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0] * 6 + [1] * 5 + [2] * 4 + [3])  # class 3 has one image: not scored
    features = torch.randn(len(labels), 8, generator=g) + 0.8 * F.one_hot(labels, 8).float()
    assert nearest_mean_loo(features, labels) == pytest.approx(_loo_by_hand(features, labels))


def test_nearest_mean_separates_separable_features_and_not_noise():
    labels = torch.arange(4).repeat_interleave(10)
    assert nearest_mean_loo(F.one_hot(labels, 4).float() + 0.01 * torch.randn(40, 4), labels) == 1.0
    # An image counted in its own class mean would win every time on pure noise: left out, it is near chance.
    assert nearest_mean_loo(torch.randn(40, 64, generator=torch.Generator().manual_seed(0)), labels) < 0.5


def _config(**kw) -> RunConfig:
    return RunConfig(**{"backbone": "test_resnet", "data": ".", "weights": "imagenet", **kw})


def test_auto_trains_everything_when_the_last_group_fits_no_better_than_the_first():
    backbone, _ = create_backbone("test_resnet", 3, "none")
    counts = {"a": 8, "b": 8, "c": 8}
    worse = FeatureFit("stem", 0.6, "layer4", 0.3, 24)
    better = FeatureFit("stem", 0.3, "layer4", 0.6, 24)
    layer, why = resolve_freeze_until(_config(), backbone, counts, lambda: worse)
    assert layer is None and "layer4 fits this data no better than its stem" in why and "layer4 0.30, stem 0.60" in why
    tie = FeatureFit("stem", 0.39, "layer4", 0.39, 100)  # no evidence the deep features transfer: they train
    assert resolve_freeze_until(_config(), backbone, counts, lambda: tie)[0] is None
    layer, why = resolve_freeze_until(_config(), backbone, counts, lambda: better)
    assert layer == "layer4" and "layer4 0.60, stem 0.30" in why
    layer, _ = resolve_freeze_until(_config(), backbone, counts, lambda: None)  # nothing to compare: the size rule
    assert layer == "layer4"


def test_the_features_are_not_measured_where_nothing_would_be_frozen():
    backbone, _ = create_backbone("test_resnet", 3, "none")

    def fail():
        raise AssertionError("measured")

    assert resolve_freeze_until(_config(), backbone, {"a": 5000, "b": 5000}, fail)[0] == "conv1"
    assert resolve_freeze_until(_config(weights="none"), backbone, {"a": 8}, fail)[0] is None
    assert resolve_freeze_until(_config(freeze_until="layer2"), backbone, {"a": 8}, fail)[0] == "layer2"


def test_measured_on_the_train_images_without_changing_the_network(tiny_data):
    backbone, _ = create_backbone("test_resnet", 3, "none")
    backbone.train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}  # BatchNorm running stats included
    fit = measure_feature_fit(backbone, scan_image_folder(tiny_data), backbone.data_config.with_size(32))
    assert (fit.first, fit.last, fit.images) == ("stem", "layer4", 24)
    assert 0.0 <= fit.first_fit <= 1.0 and 0.0 <= fit.last_fit <= 1.0
    assert backbone.training
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_a_check_that_fails_leaves_the_size_rule_and_says_why():
    backbone, _ = create_backbone("test_resnet", 3, "none")

    def broken():
        raise RuntimeError("layer4 ran 2 times in one forward pass")

    layer, why = resolve_freeze_until(_config(), backbone, {"a": 8, "b": 8}, broken)
    assert layer == "layer4" and "the features were not checked (RuntimeError: layer4 ran 2 times" in why


@pytest.mark.parametrize("name", ["test_vit", "test_convnext", "test_efficientnet", "test_mambaout", "pit_ti_224"])
def test_each_family_gives_one_pooled_row_per_image_for_the_first_and_last_group(name):
    """Token, NCHW, NHWC stages and PiT's (x, cls_tokens) calls: one (N, D) matrix per group."""
    backbone, _ = create_backbone(name, 3, "none")
    size = backbone.data_config.input_size
    first, last = backbone.groups[0].name, backbone.groups[-2].name
    out = group_outputs(backbone, torch.randn(5, 3, size, size).split(2), (first, last))
    assert out[first].shape[0] == 5 and out[last].shape[0] == 5
    assert out[first].ndim == 2 and out[last].ndim == 2


def test_torchvision_swin_is_pooled_over_space_not_over_channels():
    backbone, _ = create_backbone("tv:swin_t", 3, "none")
    out = group_outputs(backbone, [torch.randn(2, 3, 224, 224)], (backbone.groups[0].name,))
    assert out[backbone.groups[0].name].shape == (2, 96)  # swin_t's embedding width, not the 56 rows


def test_the_sample_stays_within_its_cap_with_many_classes():
    classes = [f"c{i}" for i in range(1000)]
    train = [(f"{c}/{j}.png", i) for i, c in enumerate(classes) for j in range(5)]
    index = SimpleNamespace(classes=classes, train=train)
    paths, labels = _sample(index, seed=0)
    assert len(paths) <= PROBE_MAX and len(set(labels)) == PROBE_MAX // 2
    assert all(labels.count(label) == 2 for label in set(labels))  # every drawn class can be left out once
