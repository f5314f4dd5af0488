"""--freeze-until auto, the default: fewer images per class freeze more."""
from __future__ import annotations

import yaml
from typer.testing import CliRunner

from finetune.cli import app
from finetune.config import RunConfig
from finetune.models.backbone import create_backbone
from finetune.training.auto_freeze import auto_freeze_until, images_per_class, resolve_freeze_until
from finetune.training.feature_fit import FeatureFit


def test_rule_unfreezes_more_with_more_data():
    backbone, _ = create_backbone("test_resnet", 3, "none")  # groups: stem, layer1..layer4, head
    picks = [auto_freeze_until(backbone, n)[0] for n in (5, 50, 500, 5000)]
    assert picks == ["layer4", "layer4", "layer3", "conv1"]  # however few: the last group trains
    assert images_per_class({"a": 3, "b": 8, "c": 900}) == 8  # the median, not the mean


def test_the_printed_reason_says_what_trains_and_from_which_layer():
    backbone, _ = create_backbone("test_resnet", 3, "none")  # groups: stem, layer1..layer4, head
    reasons = {n: auto_freeze_until(backbone, n)[1] for n in (50, 500, 5000)}
    assert "50 train images per class (median) -> train the last group and the head: --freeze-until layer4" \
        in reasons[50]
    assert "-> train the last half of the groups: --freeze-until layer3" in reasons[500]
    assert "5000 train images per class (median) -> train everything: --freeze-until conv1" in reasons[5000]


def test_auto_is_the_default_printed_and_applied(tiny_data, tmp_path, run_args, fitted_resnet_weights):
    result = CliRunner().invoke(app, run_args(tiny_data, tmp_path / "run", "--weights", str(fitted_resnet_weights)))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # a long line wraps between words
    assert "freeze-until auto: 8 train images per class" in said and "--freeze-until layer4" in said
    assert "the features fit the data (nearest-class-mean top-1 on 24 train images: layer4" in said
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["freeze_until"] == "layer4"


def test_weights_whose_last_group_fits_no_better_train_every_layer(tiny_data, tmp_path, run_args,
                                                                   test_resnet_weights, monkeypatch):
    import finetune.run.plan as plan_module

    worse = FeatureFit("stem", 0.42, "layer4", 0.33, 24)
    monkeypatch.setattr(plan_module, "measure_feature_fit", lambda *a, **k: worse)
    result = CliRunner().invoke(app, run_args(tiny_data, tmp_path / "run", "--weights", str(test_resnet_weights)))
    assert result.exit_code == 0, result.output
    assert "the pretrained layer4 fits this data no better than its stem" in " ".join(result.output.split())
    record = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert record["freeze_until"] is None
    assert "every layer trains" in record["sources"]["freeze_until"]


def _resolved(**kw) -> str | None:
    backbone, _ = create_backbone("test_resnet", 3, "none")
    config = RunConfig(**{"backbone": "test_resnet", "data": ".", "weights": "imagenet", **kw})
    return resolve_freeze_until(config, backbone, {"a": 8, "b": 8, "c": 8})[0]


def test_auto_trains_everything_where_nothing_pretrained_is_kept_or_a_policy_sets_the_part():
    assert _resolved() == "layer4"
    assert _resolved(weights="none") is None
    assert _resolved(freeze_policy="linear-probe") is None  # the policy's own frozen part, as before auto
    assert _resolved(freeze_epochs=1) is None and _resolved(unfreeze_every=2) is None
    assert _resolved(freeze_until="none") is None and _resolved(freeze_until="layer3") == "layer3"


def test_nothing_frozen_on_the_command_line(tiny_data, tmp_path, run_args, test_resnet_weights):
    result = CliRunner().invoke(app, run_args(tiny_data, tmp_path / "run", "--weights", str(test_resnet_weights),
                                              "--freeze-until", "none"))
    assert result.exit_code == 0, result.output
    assert "freeze-until auto" not in result.output
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["freeze_until"] is None
