"""The feature probe behind the automatic backbone LR multiplier."""
from __future__ import annotations

import math

import numpy as np
import pytest

from finetune.data.scan import scan_image_folder
from finetune.models.backbone import create_backbone
from finetune.training.probe import (ProbeResult, _loo_class_mean_accuracy, backbone_lr_mult_from_probe,
                                     probe_features)


def test_class_mean_accuracy_tells_separated_from_random_features():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    centres = rng.normal(size=(4, 16)) * 10
    assert _loo_class_mean_accuracy(centres[y] + rng.normal(size=(40, 16)), y) == 1.0
    assert _loo_class_mean_accuracy(rng.normal(size=(40, 16)), y) < 0.5  # 0.25 is chance


def test_a_lone_image_of_a_class_is_scored_without_leaking_its_own_mean():
    f = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    # the third image is the only one of class 1: left out, class 1 has no mean and it cannot be right
    assert _loo_class_mean_accuracy(f, np.array([0, 0, 1])) == pytest.approx(2 / 3)


@pytest.mark.parametrize("separation, mult", [(1.0, 0.1), (0.0, 1.0), (0.5, math.sqrt(0.1))])
def test_multiplier_is_log_linear_in_the_separation(separation, mult):
    assert backbone_lr_mult_from_probe(ProbeResult(0.0, 0.5, 10, separation)) == pytest.approx(mult)


@pytest.mark.parametrize("name", ["test_resnet", "tv:squeezenet1_0"])
def test_probe_reads_the_classifier_input_of_either_zoo(tiny_data, name):
    backbone, _ = create_backbone(name, 3, "none")
    index = scan_image_folder(tiny_data)
    probe = probe_features(backbone, index, backbone.data_config.with_size(32 if name == "test_resnet" else 64))
    assert probe.images == 24 and probe.chance == pytest.approx(1 / 3)
    assert 0.0 <= probe.separation <= 1.0 and 0.0 <= probe.accuracy <= 1.0
    assert backbone.training  # left as it was found


def test_run_from_pretrained_weights_records_the_probe_and_its_multiplier(tiny_data, test_resnet_weights, tmp_path):
    import yaml

    from finetune.config import RunConfig
    from finetune.training.fit import fit

    config = RunConfig(backbone="test_resnet", data=tiny_data, weights=str(test_resnet_weights), image_size=32,
                       epochs=1, workers=0, limit_train_batches=1, progress=False, export=False, output=tmp_path / "r")
    saved = yaml.safe_load(fit(config).config_path.read_text())
    probe = saved["resolved"]["feature_probe"]
    assert saved["backbone_lr_mult"] == pytest.approx(round(0.1 ** probe["separation"], 4))
    assert saved["sources"]["backbone_lr_mult"].startswith("auto: the starting features classify")
    scratch = RunConfig(backbone="test_resnet", data=tiny_data, weights="none", image_size=32, epochs=1, workers=0,
                        limit_train_batches=1, progress=False, export=False, output=tmp_path / "s")
    saved = yaml.safe_load(fit(scratch).config_path.read_text())
    assert "feature_probe" not in saved["resolved"] and saved["backbone_lr_mult"] is None  # none: 1, no probe
