"""Defaults that follow from the data: input size, batch size, epochs, validation cadence and augmentation.

Each rule reads measured properties of the training set (finetune.data.profile) and the input size,
never a dataset's name. The evidence for each is in benchmarks/results/quality.md, and for the input
size in benchmarks/results/input-size.md.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetune.config import RunConfig, divisors
from finetune.data.data_config import DataConfig
from finetune.data.policy import AugmentPolicy, auto_augment_policy
from finetune.data.profile import DataProfile, image_sides, profile_training_set
from finetune.data.scan import DatasetIndex
from finetune.models.backbone import Backbone
from finetune.models.zoo import InputLimits

MIN_STEPS_PER_EPOCH = 10  # below this a "epoch" of a tiny set is one or two noisy steps
BATCH_RANGE = (8, 32)  # 8: BatchNorm statistics stay usable; 32: the usual fine-tuning batch
TARGET_STEPS = 400  # optimizer steps a tiny set gets: the textbook loop's 25 epochs x ~16 steps
EPOCH_RANGE = (10, 60)
# best.ckpt is chosen among about this many points; validating a tiny set every epoch cost more than training
VALIDATIONS = 20
BATCH_RULE = (f"the largest power of two in {BATCH_RANGE[0]}-{BATCH_RANGE[1]} "
              f"giving {MIN_STEPS_PER_EPOCH}+ steps an epoch")
EPOCHS_RULE = f"about {TARGET_STEPS} optimizer steps, {EPOCH_RANGE[0]}-{EPOCH_RANGE[1]} epochs"


# With --image-size left out a run trains at the backbone's own size, however small its images: ImageNet
# weights fine-tuned at their own 224 px beat 2x the images' side on all four benchmark tasks (25-73 px
# images, by 0.025-0.169 test top-1) and the images' own side by more (benchmarks/results/input-size.md).
# The features were learned at that scale; upsampling brings small images to it. The images' size only
# names, in the plan, the faster size a user may trade accuracy for: UPSAMPLE x their median side.
UPSAMPLE = 2


def faster_image_size(median_side: float, own: int, limits: InputLimits,
                      accepts: Callable[[int], bool] = lambda side: True) -> int:
    """The input side that follows images whose median shorter side is `median_side` px.

    UPSAMPLE times the images' side, rounded up to a multiple of the network's stride (a last feature map
    of whole cells), at least one stride and the weights' smallest side, at most the backbone's own
    size; the backbone's own size where its weights take no other. Then up by one stride at a time
    until the network `accepts` it (or the own size is reached).

    e.g. 28 px silhouettes -> 64; 80 px photo crops -> 160; 500 px photos -> 224 (own 224, stride 32).
    """
    if limits.fixed:
        return own
    stride = limits.stride
    floor = stride * math.ceil(max(stride, limits.min_side) / stride)
    side = min(own, max(floor, stride * math.ceil(UPSAMPLE * median_side / stride)))
    while side < own and not accepts(side):
        side = min(own, side + stride)
    return side


def resolve_image_size(image_size: int | None, index: DatasetIndex, backbone: Backbone,
                       started: dict[str, Any] | None = None) -> tuple[int, str | None]:
    """The input side of a run: (`image_size`, None) when given, else (the backbone's own, "auto: why").

    The reason gives the train images' median side (read from the headers of the data profile's sample)
    and, where one exists, the faster size that follows them (`faster_image_size`).

    Args:
        image_size: --image-size, or None.
        index: The scanned image folder (a sample of its train split is measured).
        backbone: The network (its own size, stride and the sides its weights take).
        started: A resumed run's recorded `resolved` section. The run keeps the size it started at; a
            config.yaml that records no size (written by a version that left it to the backbone) has it
            in `resolved.data_config`.
    """
    if image_size is not None:
        return image_size, None
    own, name = backbone.data_config.input_size, backbone.name
    if started is not None:
        kept = int((started.get("data_config") or {}).get("input_size") or own)
        return kept, f"auto, kept from the run's start: {kept} px"
    limits = backbone.input_limits()
    if limits.fixed:
        return own, f"auto: {own} px, the only size {name}'s weights take"
    sides = image_sides(index)
    if not sides:
        return own, f"auto: {own} px, {name}'s own (no readable train image to measure)"
    median = statistics.median(sides)
    images = f"the train images' median side is {median:g} px ({len(sides)} sampled)"
    faster = faster_image_size(median, own, limits, backbone.accepts_input)
    if faster >= own:
        return own, f"auto: {own} px, {name}'s own ({images})"
    return own, (f"auto: {own} px, {name}'s own; {images}: --image-size {faster} trains faster, but ImageNet "
                 f"weights fine-tuned less accurately below their own size on every task measured")


def auto_batch_size(train_images: int) -> int:
    """The largest power of two in BATCH_RANGE that still gives MIN_STEPS_PER_EPOCH steps.

    e.g. 50 images -> 8, 200 -> 16, 400 or more -> 32.
    """
    fit = max(1, train_images // MIN_STEPS_PER_EPOCH)
    power = 2 ** int(math.log2(fit))
    return int(min(BATCH_RANGE[1], max(BATCH_RANGE[0], power)))


def auto_val_every(epochs: int) -> int:
    """The largest divisor of `epochs` not above ceil(epochs / VALIDATIONS): about VALIDATIONS
    validations, the last epoch always among them (Lightning validates when (epoch + 1) % N == 0).

    e.g. 10 -> 1, 31 -> 1 (prime), 40 -> 2, 60 -> 3.
    """
    limit = max(1, math.ceil(epochs / VALIDATIONS))
    return max(n for n in divisors(epochs) if n <= limit)


def auto_epochs(train_images: int, batch_size: int) -> int:
    """Enough epochs for about TARGET_STEPS optimizer steps, within EPOCH_RANGE.

    e.g. 50 images at batch 8 (7 steps an epoch) -> 58; 2,000 at batch 32 -> 10.
    """
    steps = max(1, math.ceil(train_images / batch_size))
    return int(min(EPOCH_RANGE[1], max(EPOCH_RANGE[0], math.ceil(TARGET_STEPS / steps))))


@dataclass(frozen=True)
class DataDefaults:
    """The settings a run left to the data, resolved from its training set.

    Attributes:
        config: The config with `batch_size` and `epochs` filled in.
        augment: The preset name the user chose, or the AugmentPolicy `--augment auto` chose.
        profile: What was measured of the training set (None when the augmentation was not left to the data).
        sources: "auto: why" for each setting resolved here, for config.yaml.
    """

    config: RunConfig
    augment: str | AugmentPolicy
    profile: DataProfile | None
    sources: dict[str, str]


def resolve_data_defaults(config: RunConfig, index: DatasetIndex, data_config: DataConfig,
                          world_size: int = 1, started: dict[str, Any] | None = None) -> DataDefaults:
    """Fills the settings left at None/auto (batch size, epochs, validation cadence, augmentation)
    from the training set.

    Args:
        config: The run's settings.
        index: The scanned image folder (its train split is measured).
        data_config: The preprocessing the run trains with (its input size).
        world_size: Training processes. Each sees 1/world_size of the images an epoch with its own
            batch (--batch-size is per device), so the rules read that share: 4 GPUs on 200 images
            take the batch and epochs of 50 images, not a 2-step epoch at batch 16.
        started: A resumed run's recorded `resolved` section. Its `--augment auto` policy is kept, so
            that the run trains on to its end as it began, whatever the rules of this version.
    """
    n, updates, sources = len(index.train), {}, {}
    share = -(-n // max(1, world_size))
    over = f" over {world_size} processes ({share} each)" if world_size > 1 else ""
    if config.batch_size is None:
        updates["batch_size"] = auto_batch_size(share)
        sources["batch_size"] = f"auto: {n} train images{over} -> {updates['batch_size']} ({BATCH_RULE})"
    batch = updates.get("batch_size", config.batch_size)
    if config.epochs is None:
        updates["epochs"] = auto_epochs(share, batch)
        if config.val_every:  # a given cadence: round up so that the last epoch is validated
            updates["epochs"] = -(-updates["epochs"] // config.val_every) * config.val_every
        sources["epochs"] = f"auto: {math.ceil(share / batch)} steps an epoch -> {updates['epochs']} ({EPOCHS_RULE})"
    epochs = updates.get("epochs", config.epochs)
    if config.val_every is None:
        updates["val_every"] = auto_val_every(epochs)
        every = updates["val_every"]
        count = epochs // every  # the cadence divides the epochs: the last epoch is validated
        sources["val_every"] = (f"auto: {epochs} epoch{'s' * (epochs != 1)} -> every {every} "
                                f"({count} validation{'s' * (count != 1)}, the last included; "
                                f"the cadence aims at about {VALIDATIONS})")
    profile, augment = None, config.augment
    if config.augment == "auto" and started and "augment_policy" in started:
        augment = AugmentPolicy.from_dict(started["augment_policy"])
        sources["augment"] = f"auto, kept from the run's start: {augment.describe()}"
    elif config.augment == "auto":
        # A run started by a version that recorded its data profile but no policy: the policy is
        # rebuilt from what was measured then, not from the images now. A profile older than the
        # exposure test has no exposure_varies, and DataProfile's default (True) gives the brightness/
        # contrast jitter every run of that version trained with.
        recorded = started.get("data_profile") if started else None
        profile = DataProfile.from_dict(recorded) if recorded else profile_training_set(index)
        augment = auto_augment_policy(profile, data_config.input_size)
        from_start = ", from the measurements at the run start" if recorded else ""
        sources["augment"] = f"auto{from_start}: {augment.describe()}"
    return DataDefaults(config.model_copy(update=updates), augment, profile, sources)
