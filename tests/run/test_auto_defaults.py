"""Input size, batch size and epochs chosen from the training set when the user gives none of them."""
from __future__ import annotations

import math

import pytest

from finetune.models.backbone import create_backbone
from finetune.run.auto_defaults import (
    BATCH_RANGE,
    EPOCH_RANGE,
    MIN_STEPS_PER_EPOCH,
    TARGET_STEPS,
    VALIDATIONS,
    auto_batch_size,
    auto_epochs,
    auto_val_every,
)


@pytest.mark.parametrize("images, batch", [(20, 8), (50, 8), (160, 16), (200, 16), (320, 32), (100_000, 32)])
def test_batch_keeps_ten_steps_an_epoch_within_its_range(images, batch):
    assert auto_batch_size(images) == batch
    if images >= BATCH_RANGE[0] * MIN_STEPS_PER_EPOCH:
        assert math.ceil(images / batch) >= MIN_STEPS_PER_EPOCH


@pytest.mark.parametrize("images", [20, 50, 100, 500, 2000, 100_000])
def test_tiny_sets_get_enough_steps_and_large_ones_few_epochs(images):
    batch = auto_batch_size(images)
    epochs = auto_epochs(images, batch)
    assert EPOCH_RANGE[0] <= epochs <= EPOCH_RANGE[1]
    steps = epochs * math.ceil(images / batch)
    assert steps >= min(TARGET_STEPS, EPOCH_RANGE[1] * math.ceil(images / batch))
    if images >= 2000:
        assert epochs == EPOCH_RANGE[0]


@pytest.mark.parametrize("epochs, every", [(1, 1), (10, 1), (20, 1), (31, 1), (40, 2), (58, 2), (60, 3)])
def test_validation_cadence_keeps_the_last_epoch_and_about_twenty_checks(epochs, every):
    assert auto_val_every(epochs) == every
    assert epochs % every == 0 and epochs // every <= max(VALIDATIONS, epochs)


def test_run_with_defaults_resolves_batch_epochs_and_augmentation_from_the_data(arrows_data, tmp_path):
    """A run given no batch size, epochs or augmentation measures the data, trains with what it chose,
    and records each choice with its reason."""
    import csv

    import yaml

    from finetune.config import RunConfig
    from finetune.run.fit import fit

    config = RunConfig(backbone="test_resnet", data=arrows_data, weights="none", image_size=32, workers=0,
                       limit_train_batches=1, progress=False, export=False, output=tmp_path / "run")
    result = fit(config)
    saved = yaml.safe_load(result.config_path.read_text())
    assert saved["batch_size"] == 8 and saved["epochs"] == 60  # 40 images -> batch 8, 5 steps an epoch -> 60 epochs
    assert saved["augment"] == "auto"
    assert saved["sources"]["augment"].startswith("auto: translate by up to 1/8, no flip")
    assert saved["sources"]["batch_size"].startswith("auto: 40 train images -> 8")
    assert saved["resolved"]["data_profile"]["flip_changes_label"] is True
    with open(result.metrics_csv, newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["epoch"]]
    assert len({row["epoch"] for row in rows}) == 60
    validated = sorted(int(row["epoch"]) for row in rows if row.get("val/acc1"))
    assert saved["val_every"] == 3 and validated == list(range(3, 61, 3))  # 20 validations, the last epoch's included
    assert saved["sources"]["val_every"].startswith("auto: 60 epochs -> every 3 (20 validations, the last included")
    assert result.best_checkpoint.is_file()


def test_a_cadence_that_skips_the_last_epoch_is_refused_and_auto_epochs_round_up_to_it(arrows_data):
    from finetune.config import RunConfig
    from finetune.data.data_config import DataConfig
    from finetune.data.scan import scan_image_folder
    from finetune.run.auto_defaults import resolve_data_defaults

    with pytest.raises(ValueError, match=r"--val-every 5 would leave the last of --epochs 3 unvalidated.*\[1, 3\]"):
        RunConfig(backbone="test_resnet", data=".", epochs=3, val_every=5)
    config = RunConfig(backbone="test_resnet", data=arrows_data, val_every=7, augment="none")
    auto = resolve_data_defaults(config, scan_image_folder(arrows_data), DataConfig(32, (0.5,) * 3, (0.5,) * 3))
    assert auto.config.epochs == 63  # 60 rounded up to a multiple of 7


def test_last_checkpoint_is_written_after_every_epoch_whatever_the_cadence(tmp_path, arrows_data):
    from finetune.config import RunConfig
    from finetune.run.fit import build_trainer

    config = RunConfig(backbone="test_resnet", data=arrows_data, epochs=4, val_every=2, progress=False)
    trainer = build_trainer(config, tmp_path, "32", 5)
    last = next(c for c in trainer.checkpoint_callbacks if c.filename == "last")
    assert last._should_save_on_train_epoch_end(trainer)  # Lightning's default saves only after validation epochs


def test_auto_batch_and_epochs_read_each_process_share_of_the_images():
    from types import SimpleNamespace

    from finetune.config import RunConfig
    from finetune.data.data_config import DataConfig
    from finetune.run.auto_defaults import resolve_data_defaults
    from finetune.run.devices import planned_world_size

    index = SimpleNamespace(train=[("x.png", 0)] * 200)  # the rules read only the train-set size here
    config = RunConfig(backbone="test_resnet", data=".", augment="none")
    dc = DataConfig(32, (0.5,) * 3, (0.5,) * 3)
    one = resolve_data_defaults(config, index, dc, world_size=1)
    four = resolve_data_defaults(config, index, dc, world_size=4)
    # One process: 200 images -> batch 16, 13 steps an epoch -> 31 epochs. Four: 50 images each ->
    # batch 8, 7 steps -> 58 epochs, about the same 400 steps, not 4-step epochs at batch 16.
    assert (one.config.batch_size, one.config.epochs) == (16, 31)
    assert (four.config.batch_size, four.config.epochs) == (8, 58)
    assert "200 train images over 4 processes (50 each) -> 8" in four.sources["batch_size"]
    assert four.sources["epochs"].startswith("auto: 7 steps an epoch")
    assert planned_world_size("cpu", 3, "ddp") == 3 and planned_world_size("cpu", "auto") == 1


def test_the_data_profile_does_not_depend_on_the_run_seed(tmp_path):
    """augment-preview (its own --seed) and runs with different --seed must see the same auto policy."""
    from finetune.config import RunConfig
    from finetune.data.data_config import DataConfig
    from finetune.data.scan import scan_image_folder
    from finetune.data.synthetic import make_image_folder
    from finetune.run.auto_defaults import resolve_data_defaults

    data = make_image_folder(tmp_path / "d", "shapes", train_per_class=60, val_per_class=2, size=32,
                             classes=("circle", "square"), seed=0)  # 60 > the 40 a class the profile samples
    index, dc = scan_image_folder(data), DataConfig(32, (0.5,) * 3, (0.5,) * 3)
    profiles = [resolve_data_defaults(RunConfig(backbone="test_resnet", data=data, seed=s), index, dc).profile
                for s in (1, 2)]
    assert profiles[0] == profiles[1]


# ----- the input size --------------------------------------------------------------------------------
CNN = dict(fixed=False, min_side=1, stride=32)  # a timm/torchvision CNN: any side, total stride 32


@pytest.mark.parametrize("median, own, size", [
    (28, 224, 64),    # 2 x 28 = 56, rounded up to 2 strides
    (80, 224, 160),   # 2 x 80 = 160: already 5 strides
    (100, 224, 224),  # 200 -> 224 (7 strides), at the own size
    (500, 224, 224),  # large photos: the backbone's own size, never more
    (8, 224, 32),     # 16 px of input would be half a stride: one stride is the floor
    (32, 160, 64),
])
def test_the_size_that_follows_the_images_stays_within_the_backbones(median, own, size):
    """Hand-worked: twice the median side, rounded up to a multiple of 32, within [32, own]."""
    from finetune.models.zoo import InputLimits
    from finetune.run.auto_defaults import faster_image_size

    assert faster_image_size(median, own, InputLimits(**CNN)) == size


def test_the_size_that_follows_the_images_is_one_the_weights_and_the_network_take():
    from finetune.models.zoo import InputLimits
    from finetune.run.auto_defaults import faster_image_size

    assert faster_image_size(28, 224, InputLimits(True, 224, 16)) == 224  # a ViT's position table: its size only
    assert faster_image_size(28, 299, InputLimits(False, 75, 32)) == 96  # torchvision Inception: 75 px at least
    assert faster_image_size(28, 224, InputLimits(**CNN), accepts=lambda side: side >= 100) == 128  # probed up
    assert faster_image_size(28, 224, InputLimits(**CNN), accepts=lambda side: False) == 224  # own size stays


def test_the_probe_finds_the_smallest_side_timms_inception_takes():
    """timm's Inception v3 declares no smallest side; torchvision's copy of the same network declares
    75 px (its weights' meta["min_size"]): the size must land on the first multiple of 32 above it."""
    import torch
    from torchvision.models import Inception_V3_Weights

    from finetune.run.auto_defaults import faster_image_size

    with torch.device("meta"):  # shapes only
        net, _ = create_backbone("inception_v3", 2, "none")
    limits = net.input_limits()
    assert limits.min_side == 1 and not limits.fixed
    smallest = Inception_V3_Weights.DEFAULT.meta["min_size"][0]
    assert faster_image_size(16, net.data_config.input_size, limits, net.accepts_input) == 32 * -(-smallest // 32)


def test_the_size_that_follows_the_images_never_exceeds_the_backbones_and_grows_with_them():
    """Properties over a grid of image sides, own sizes and strides:
    within [stride, own], a multiple of the stride unless it is the own size, monotone in the images,
    and never more than one stride past UPSAMPLE times the images (or the one-stride floor)."""
    from finetune.models.zoo import InputLimits
    from finetune.run.auto_defaults import UPSAMPLE, faster_image_size

    medians = [1, 7.5, 16, 24, 31, 32, 33, 47.5, 64, 80, 95, 111, 112, 113, 150, 223, 224, 300, 1000, 4000]
    for own in (160, 224, 240, 256, 299, 384, 518):
        for stride in (14, 16, 32, 64):
            limits = InputLimits(False, 1, stride)
            sizes = [faster_image_size(m, own, limits) for m in medians]
            assert sizes == sorted(sizes), (own, stride)
            for median, size in zip(medians, sizes):
                assert min(stride, own) <= size <= own, (median, own, stride)
                assert size == own or size % stride == 0, (median, own, stride)
                assert size >= min(own, UPSAMPLE * median), (median, own, stride)
                assert size < max(UPSAMPLE * median + stride, 2 * stride), (median, own, stride)


def _folder(root, side: int, classes=("a", "b"), train: int = 6, val: int = 2):
    """Class folders of random RGB images, `side` px square."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("side, reason", [
    (32, "auto: 160 px, test_resnet's own; the train images' median side is 32 px (12 sampled): "
         "--image-size 64 trains faster"),
    (400, "auto: 160 px, test_resnet's own (the train images' median side is 400 px (12 sampled))"),
])
def test_a_run_records_prints_and_keeps_the_size_it_chose(tmp_path, side, reason):
    """Small images and large ones train at the backbone's own size (test_resnet: 160 px); config.yaml
    holds the number and its reason (for small images, the faster size that follows them), the console
    prints it, and the checkpoint and the bundle keep it."""
    import io
    import json

    import yaml
    from rich.console import Console

    from finetune.config import RunConfig
    from finetune.run.fit import fit
    from finetune.training.module import FinetuneModule

    data = _folder(tmp_path / "data", side)
    config = RunConfig(backbone="test_resnet", data=data, weights="none", epochs=1, workers=0, limit_train_batches=1,
                       progress=False, export=side == 32, output=tmp_path / "run")
    out = io.StringIO()
    result = fit(config, Console(file=out, width=400))
    saved = yaml.safe_load(result.config_path.read_text())
    assert saved["image_size"] == 160 and saved["resolved"]["data_config"]["input_size"] == 160
    assert saved["sources"]["image_size"].startswith(reason)
    assert f"image-size {saved['sources']['image_size']}" in out.getvalue()
    assert FinetuneModule.from_checkpoint(result.best_checkpoint).input_config.input_size == 160
    if config.export:
        bundle = json.loads((result.run_dir / "model" / "config.json").read_text())
        assert bundle["data_config"]["input_size"] == 160


def test_a_backbone_that_takes_one_size_is_given_it(tmp_path):
    from finetune.config import RunConfig
    from finetune.data.scan import scan_image_folder
    from finetune.run.plan import resolve_run

    data = _folder(tmp_path / "data", 32)
    backbone, _ = create_backbone("test_vit", 2, "none")
    plan = resolve_run(RunConfig(backbone="test_vit", data=data, weights="none", workers=0),
                       scan_image_folder(data), backbone)
    assert plan.config.image_size == plan.data_config.input_size == 160
    assert plan.sources["image_size"] == "auto: 160 px, the only size test_vit's weights take"
    assert plan.decided[0] == "image_size"  # decided first: the feature check and the augmentation read it


def test_a_given_size_wins_everywhere(tmp_path):
    from finetune.config import RunConfig
    from finetune.data.scan import scan_image_folder
    from finetune.run.plan import resolve_run
    from finetune.run.preview import backbone_data_config

    data = _folder(tmp_path / "data", 32)
    index = scan_image_folder(data)
    backbone, _ = create_backbone("test_resnet", 2, "none")
    plan = resolve_run(RunConfig(backbone="test_resnet", data=data, weights="none", workers=0, image_size=48),
                       index, backbone, {"image_size": "command line"})
    assert plan.config.image_size == plan.data_config.input_size == 48
    assert plan.sources["image_size"] == "command line" and "image_size" not in plan.decided
    assert not isinstance(plan.augment, str) and plan.augment.crop_scale is None  # the policy read 48 (< 64)
    assert backbone_data_config("test_resnet", 48, index).input_size == 48
    assert backbone_data_config("test_resnet", None, index).input_size == 160  # what `run` would choose


@pytest.mark.parametrize("epochs, said", [(1, "1 epoch -> every 1 (1 validation,"),
                                          (3, "3 epochs -> every 1 (3 validations,"),
                                          (100, "100 epochs -> every 5 (20 validations,")])
def test_the_cadence_line_counts_the_validations_the_run_makes(tiny_data, epochs, said):
    from finetune.config import RunConfig
    from finetune.data.scan import scan_image_folder
    from finetune.models.backbone import create_backbone
    from finetune.run.auto_defaults import resolve_data_defaults

    config = RunConfig(backbone="test_resnet", data=tiny_data, weights="none", epochs=epochs, batch_size=8,
                       augment="none")
    data_config = create_backbone("test_resnet", 3, "none")[0].data_config
    sources = resolve_data_defaults(config, scan_image_folder(tiny_data), data_config).sources
    assert sources["val_every"].startswith(f"auto: {said}"), sources["val_every"]
