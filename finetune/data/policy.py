"""`--augment auto`: the train augmentation chosen from measured properties of the data.

The evidence for each rule is in benchmarks/results/quality.md.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from finetune.data.profile import DataProfile

SMALL_INPUT = 64  # below this side a scale-changing crop throws away most of an image's few pixels


@dataclass(frozen=True)
class AugmentPolicy:
    """The train augmentation `--augment auto` builds, and why.

    Attributes:
        crop_scale: Area range of the random resized crop, or None for a translation-only crop
            (pad by 1/8 of the side, reflecting, and crop back: the small-image practice).
        flip: Horizontal mirroring (off when it turns one class into another).
        colour: Saturation jitter (off for grey images).
        reasons: One phrase per choice, for the plan and config.yaml.
        photometric: Brightness and contrast jitter (off where the training images do not vary in
            exposure).
    """

    crop_scale: tuple[float, float] | None
    flip: bool
    colour: bool
    reasons: tuple[str, ...] = ()
    photometric: bool = True

    def describe(self) -> str:
        crop = "translate by up to 1/8" if self.crop_scale is None else f"crop {self.crop_scale[0]:g}-1 of the area"
        jitter = ("colour jitter" if self.colour else "brightness/contrast only") if self.photometric else (
            "saturation jitter only" if self.colour else "no photometric jitter")
        parts = [crop, "flip" if self.flip else "no flip", jitter]
        return ", ".join(parts) + " (" + "; ".join(self.reasons) + ")"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AugmentPolicy":
        scale = d.get("crop_scale")
        return cls(tuple(scale) if scale else None, bool(d["flip"]), bool(d["colour"]), tuple(d.get("reasons", ())),
                   bool(d.get("photometric", True)))  # configs written before the exposure test always jittered


def auto_augment_policy(profile: DataProfile, input_size: int) -> AugmentPolicy:
    """Chooses the augmentation from the input size, the images per class and the flip and colour tests.

    - Inputs under SMALL_INPUT px: translation only. Scale-changing crops of 32 px images destroy
      them (measured: the ImageNet crop lost 0.3-0.5 top-1 against no augmentation).
    - Larger inputs: a random resized crop keeping at least half the area with under 100 images per
      class (fastai's fine-tuning practice keeps 0.75; ImageNet-from-scratch's 0.08 needs millions of
      images to pay off), a quarter with more.
    - Mirroring unless the flip test finds that mirror images take the place of other classes
      (DataProfile.flip_changes_label; benchmarks/results/flip-rule.md).
    - Colour (saturation) jitter only for colour data: on grey images it adds colours no test image has.
    - Brightness/contrast jitter only where the images vary in exposure (DataProfile.exposure_varies).
      Silhouettes that all span black to white lost 0.020 top-1 to it (32 px, 200 per class, 3 seeds).
    """
    reasons = []
    if input_size < SMALL_INPUT:
        scale = None
        reasons.append(f"input {input_size} px < {SMALL_INPUT}: no scale change")
    else:
        scale = (0.5, 1.0) if profile.per_class < 100 else (0.25, 1.0)
        reasons.append(f"{profile.per_class:g} images per class -> crop down to {scale[0]:g} of the area")
    flip = not profile.flip_changes_label
    reasons.append(_flip_reason(profile))
    if profile.grey:
        reasons.append("grey images: no colour jitter")
    if not profile.exposure_varies:
        reasons.append(f"every image spans the same tonal range (spread {profile.tonal_spread:.2f}): "
                       "no brightness/contrast jitter")
    return AugmentPolicy(scale, flip, not profile.grey, tuple(reasons), profile.exposure_varies)


def _flip_reason(profile: DataProfile) -> str:
    """The flip decision with the figures it came from: nearest-neighbour top-1 of the sampled
    originals, without and with the labelled mirror images among the references (see flip_test)."""
    keep = not profile.flip_changes_label
    if math.isnan(profile.flip_nn_with_mirrors):  # a profile recorded before this test, or too few images
        if keep:
            return "mirror images keep their class"
        return (f"mirroring changes the class (nearest-neighbour top-1 {profile.flip_nn:.2f} -> "
                f"{profile.flip_nn_flipped:.2f} on mirror images)")
    verdict = ("mirror images keep their class", "within") if keep else ("mirroring changes the class", "beyond")
    fall = profile.flip_nn - profile.flip_nn_with_mirrors
    change = f"a fall of {fall:.2f}, {verdict[1]}" if fall > 0 else f"no fall, {verdict[1]}"
    return (f"{verdict[0]} (nearest-neighbour top-1 {profile.flip_nn:.2f} -> {profile.flip_nn_with_mirrors:.2f} "
            f"with labelled mirror images among the references: {change} the margin {profile.flip_margin:.2f})")
