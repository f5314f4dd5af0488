"""Batch size and epochs chosen from the training-set size when the user gives neither."""
from __future__ import annotations

import math

import pytest

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
    assert saved["val_every"] == 3 and validated == list(range(2, 60, 3))  # 20 validations, the last epoch's included
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
