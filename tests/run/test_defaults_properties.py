"""Properties of the data-aware defaults on generated inputs: each statement comes from a docstring of
finetune.run.auto_defaults, finetune.training.auto_freeze or finetune.data.policy, checked for any size."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from finetune.config import RunConfig
from finetune.data.data_config import DataConfig
from finetune.data.policy import SMALL_INPUT, auto_augment_policy
from finetune.data.profile import DataProfile
from finetune.data.scan import DatasetIndex
from finetune.models.zoo import InputLimits
from finetune.run.auto_defaults import (
    BATCH_RANGE,
    EPOCH_RANGE,
    MIN_STEPS_PER_EPOCH,
    TARGET_STEPS,
    VALIDATIONS,
    auto_batch_size,
    auto_epochs,
    auto_val_every,
    faster_image_size,
    resolve_data_defaults,
)
from finetune.training.auto_freeze import auto_freeze_until, images_per_class

SETTINGS = settings(max_examples=80, deadline=None)
images = st.integers(min_value=1, max_value=200_000)


@SETTINGS
@given(images, images)
def test_more_images_never_get_a_smaller_batch(a, b):
    small, large = sorted((a, b))
    assert auto_batch_size(small) <= auto_batch_size(large)


@SETTINGS
@given(images)
def test_the_batch_is_the_largest_power_of_two_in_range_giving_ten_steps(n):
    """Steps counted as full batches: a batch that gives 10 of them gives 10 optimizer steps whatever
    the last-batch rule."""
    batch = auto_batch_size(n)
    assert BATCH_RANGE[0] <= batch <= BATCH_RANGE[1] and batch & (batch - 1) == 0
    if batch > BATCH_RANGE[0]:  # above the floor only where the steps allow it
        assert n // batch >= MIN_STEPS_PER_EPOCH
    if batch < BATCH_RANGE[1] and n >= BATCH_RANGE[0] * MIN_STEPS_PER_EPOCH:  # the next power would not
        assert n // (2 * batch) < MIN_STEPS_PER_EPOCH


@SETTINGS
@given(images, images, st.sampled_from([1, 2, 4, 8, 16, 32, 64]))
def test_more_images_at_one_batch_never_get_more_epochs(a, b, batch):
    small, large = sorted((a, b))
    assert auto_epochs(large, batch) <= auto_epochs(small, batch)


@SETTINGS
@given(images, st.sampled_from([1, 2, 4, 8, 16, 32, 64]))
def test_epochs_are_the_fewest_reaching_the_target_steps_within_range(n, batch):
    epochs, steps = auto_epochs(n, batch), math.ceil(n / batch)
    assert EPOCH_RANGE[0] <= epochs <= EPOCH_RANGE[1]
    assert epochs == EPOCH_RANGE[1] or epochs * steps >= TARGET_STEPS
    assert epochs == EPOCH_RANGE[0] or (epochs - 1) * steps < TARGET_STEPS


@SETTINGS
@given(st.integers(min_value=1, max_value=5000))
def test_the_validation_cadence_divides_the_epochs_and_is_the_largest_within_the_aim(epochs):
    every = auto_val_every(epochs)
    limit = math.ceil(epochs / VALIDATIONS)
    assert epochs % every == 0 and 1 <= every <= limit  # the last epoch is validated
    assert not any(epochs % d == 0 for d in range(every + 1, limit + 1))


def _index(n: int) -> DatasetIndex:
    """An index of `n` train images in two classes (nothing is read: the rules see the counts only)."""
    train = [(Path(f"/data/{i}.png"), i % 2) for i in range(n)]
    return DatasetIndex(Path("/data"), "flat", ["a", "b"], train, [])


def _config(**kw) -> RunConfig:
    return RunConfig(backbone="test_resnet", data="/data", weights="none", augment="none", **kw)


DC = DataConfig(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear", crop_pct=1.0)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=5000), st.integers(min_value=1, max_value=16))
def test_several_processes_take_the_defaults_of_their_share_of_the_images(n, world):
    """`world_size` processes on n images get the batch, epochs and cadence of ceil(n / world) images."""
    shared = resolve_data_defaults(_config(), _index(n), DC, world_size=world).config
    alone = resolve_data_defaults(_config(), _index(-(-n // world)), DC, world_size=1).config
    assert (shared.batch_size, shared.epochs, shared.val_every) == (alone.batch_size, alone.epochs, alone.val_every)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=5000), st.integers(min_value=1, max_value=25))
def test_a_given_cadence_rounds_the_epochs_up_to_validate_the_last(n, every):
    resolved = resolve_data_defaults(_config(val_every=every), _index(n), DC).config
    plain = auto_epochs(n, resolved.batch_size)
    assert resolved.epochs % every == 0 and plain <= resolved.epochs < plain + every


def _backbone(groups: int) -> SimpleNamespace:
    """A backbone seen as auto_freeze_until sees it: `groups` layer groups, the head last."""
    named = [SimpleNamespace(unit_names=(f"g{i}.0", f"g{i}.1")) for i in range(groups - 1)]
    return SimpleNamespace(groups=[*named, SimpleNamespace(unit_names=("head",))])


def _first_trained(backbone: SimpleNamespace, per_class: float) -> int:
    layer, _ = auto_freeze_until(backbone, per_class)
    return next(i for i, g in enumerate(backbone.groups) if layer in g.unit_names)


per_class = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@SETTINGS
@given(st.integers(min_value=2, max_value=14), per_class, per_class)
def test_more_images_per_class_never_freeze_more(groups, a, b):
    backbone = _backbone(groups)
    few, many = sorted((a, b))
    assert _first_trained(backbone, many) <= _first_trained(backbone, few)


@SETTINGS
@given(st.integers(min_value=2, max_value=14), per_class)
def test_the_last_group_trains_however_few_the_images_and_everything_with_thousands(groups, n):
    backbone = _backbone(groups)
    first = _first_trained(backbone, n)
    assert first <= groups - 2  # the last group before the head always trains
    if n >= 1000:
        assert first == 0


counts = st.lists(st.integers(min_value=1, max_value=5000), min_size=2, max_size=12)


@SETTINGS
@given(st.integers(min_value=2, max_value=14), counts, st.data())
def test_adding_images_to_any_classes_never_freezes_more(groups, before, data):
    """From class counts to the frozen part: counts that grow class by class never freeze more layers."""
    added = data.draw(st.lists(st.integers(min_value=0, max_value=5000), min_size=len(before), max_size=len(before)))
    after = [c + d for c, d in zip(before, added)]
    backbone = _backbone(groups)
    per = [images_per_class({str(i): c for i, c in enumerate(x)}) for x in (before, after)]
    assert per[0] <= per[1]
    assert _first_trained(backbone, per[1]) <= _first_trained(backbone, per[0])


def _profile(per_class: float, grey: bool = False, flips: bool = False, exposure: bool = True) -> DataProfile:
    return DataProfile(train_images=int(per_class) * 2, per_class=per_class, classes=2, grey=grey, flip_nn=1.0,
                       flip_nn_flipped=1.0, flip_changes_label=flips, exposure_varies=exposure)


@SETTINGS
@given(per_class, per_class, st.integers(min_value=SMALL_INPUT, max_value=1024))
def test_more_images_per_class_never_narrow_the_crop(a, b, size):
    few, many = sorted((a, b))
    low_few = auto_augment_policy(_profile(few), size).crop_scale[0]
    low_many = auto_augment_policy(_profile(many), size).crop_scale[0]
    assert low_many <= low_few
    assert low_few == (0.5 if few < 100 else 0.25)  # at least half the area under 100 per class, a quarter above


@SETTINGS
@given(per_class, st.integers(min_value=1, max_value=1024), st.booleans(), st.booleans(), st.booleans())
def test_the_policy_follows_each_measured_fact(n, size, grey, flips, exposure):
    policy = auto_augment_policy(_profile(n, grey, flips, exposure), size)
    assert (policy.crop_scale is None) == (size < SMALL_INPUT)
    assert policy.colour == (not grey) and policy.flip == (not flips) and policy.photometric == exposure


@SETTINGS
@given(st.floats(min_value=1, max_value=5000), st.floats(min_value=1, max_value=5000),
       st.sampled_from([160, 224, 256, 299, 384]), st.sampled_from([8, 14, 16, 32]))
def test_larger_images_never_get_a_smaller_faster_size(a, b, own, stride):
    small, large = sorted((a, b))
    limits = InputLimits(False, 1, stride)
    assert faster_image_size(small, own, limits) <= faster_image_size(large, own, limits) <= own
