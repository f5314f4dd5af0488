"""The training-set profile (flip test, grey test) and the `--augment auto` policy chosen from it."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from finetune.data.policy import SMALL_INPUT, AugmentPolicy, auto_augment_policy
from finetune.data.profile import (
    EXPOSURE_SPREAD,
    TONE_MIN_IMAGES,
    DataProfile,
    flip_changes_label,
    flip_test,
    profile_training_set,
    tonal_spread,
)
from finetune.data.real import make_real_task
from finetune.data.scan import scan_image_folder


def _blob(kind: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A mirror-symmetric shape in colour: the class survives a horizontal flip."""
    img = Image.new("RGB", (size, size), (20, 40, 60))
    d = ImageDraw.Draw(img)
    r, cy = int(rng.integers(6, 12)), int(rng.integers(12, size - 12))
    box = [size // 2 - r, cy - r, size // 2 + r, cy + r]
    colour = tuple(int(c) for c in rng.integers(80, 255, size=3))
    (d.ellipse if kind == "circle" else d.rectangle)(box, fill=colour)
    return img


def test_mirroring_that_swaps_classes_is_detected(arrows_data):
    profile = profile_training_set(scan_image_folder(arrows_data))
    assert profile.flip_changes_label
    assert profile.flip_nn > 0.9 and profile.flip_nn_flipped < 0.2  # every mirrored arrow finds the other class
    assert profile.grey


def test_mirror_symmetric_classes_keep_the_flip(tmp_path, write_folder):
    profile = profile_training_set(scan_image_folder(write_folder(tmp_path, ["circle", "square"], _blob)))
    assert not profile.flip_changes_label
    assert not profile.grey  # coloured shapes
    assert profile.train_images == 40 and profile.per_class == 20 and profile.classes == 2


def test_flip_test_needs_two_images_per_class():
    img = np.zeros((16, 16), np.uint8)
    assert all(np.isnan(v) for v in flip_test([img, img], np.array([0, 1])))
    assert not flip_changes_label(float("nan"), float("nan"), 2, 2)


@pytest.mark.parametrize("nn_acc, flipped, n, expected", [
    (0.95, 0.40, 200, True),   # digits-like: a large drop
    (0.95, 0.92, 200, False),  # within noise
    (0.50, 0.10, 10, False),   # 10 images at 2 classes: 0.5 is chance, nothing to learn from
])
def test_flip_drop_must_exceed_noise(nn_acc, flipped, n, expected):
    assert flip_changes_label(nn_acc, flipped, n, 2) is expected


def _profile(per_class=10.0, grey=False, flips=False, exposure=True) -> DataProfile:
    return DataProfile(int(per_class * 5), per_class, 5, grey, 0.9, 0.3 if flips else 0.9, flips,
                       0.5 if exposure else 0.0, exposure)


@pytest.mark.parametrize("task, varies", [("textures", True), ("faces", True), ("silhouettes", False)])
def test_exposure_test_tells_photos_from_black_and_white_silhouettes(tmp_path, task, varies):
    profile = profile_training_set(scan_image_folder(make_real_task(task, tmp_path, 20)))
    assert profile.exposure_varies is varies
    # far from the threshold on both sides: photos 0.4+, silhouettes that all span black to white 0
    assert profile.tonal_spread > 3 * EXPOSURE_SPREAD if varies else profile.tonal_spread < EXPOSURE_SPREAD / 3


def _white_on_black(kind: str, rng: np.random.Generator) -> Image.Image:
    """A white square on black, anywhere: every image spans the same tonal range."""
    img, r = Image.new("L", (32, 32), 0), int(rng.integers(4, 10))
    ImageDraw.Draw(img).rectangle([16 - r, 16 - r, 16 + r, 16 + r], fill=255)
    return img


def test_too_few_images_to_tell_keep_the_brightness_jitter(tmp_path, write_folder):
    few = TONE_MIN_IMAGES // 2 - 1  # a class: two classes hold fewer than TONE_MIN_IMAGES in all
    folder = write_folder(tmp_path / "few", ["a", "b"], _white_on_black, train=few)
    profile = profile_training_set(scan_image_folder(folder))
    assert np.isnan(profile.tonal_spread) and profile.exposure_varies
    enough = write_folder(tmp_path / "enough", ["a", "b"], _white_on_black, train=TONE_MIN_IMAGES)
    assert not profile_training_set(scan_image_folder(enough)).exposure_varies  # the same images, more of them


def test_tonal_spread_sees_darker_brighter_and_flatter_exposures_but_not_content():
    rng = np.random.default_rng(0)
    shapes = []  # black-and-white shapes of every size: the content differs, the exposure does not
    for i in range(12):
        img = np.zeros((16, 16), np.uint8)
        img[2:4 + i, 3:5 + i] = 255
        shapes.append(img)
    base = rng.integers(0, 100, (16, 16)).astype(np.uint8)
    shifted = [base + 20 * i for i in range(8)]  # brighter and brighter, the same tonal range
    stretched = [(base * (0.5 + 0.25 * i)).astype(np.uint8) for i in range(8)]  # ranges 50-200
    assert tonal_spread(shapes) == 0.0
    assert tonal_spread(shifted) > EXPOSURE_SPREAD and tonal_spread(stretched) > EXPOSURE_SPREAD
    assert np.isnan(tonal_spread(shifted[:TONE_MIN_IMAGES - 1]))  # too few images to tell: jitter stays on
    assert np.allclose(tonal_spread([np.repeat(g[..., None], 3, 2) for g in stretched]),
                       tonal_spread(stretched), atol=0.02)  # an RGB copy of a grey set reads the same


def test_images_of_one_tonal_range_get_no_brightness_contrast_jitter():
    flat = auto_augment_policy(_profile(grey=True, exposure=False), 32)
    assert not flat.photometric and not flat.colour
    assert "no brightness/contrast jitter" in " ".join(flat.reasons)
    assert "no photometric jitter" in flat.describe()
    assert auto_augment_policy(_profile(exposure=True), 32).photometric
    colour = auto_augment_policy(_profile(grey=False, exposure=False), 32)  # saturation still varies
    assert colour.colour and not colour.photometric and "saturation jitter only" in colour.describe()


def test_policies_saved_before_the_exposure_test_keep_their_jitter():
    saved = {"crop_scale": None, "flip": True, "colour": False, "reasons": ["r"]}  # an older config.yaml
    assert AugmentPolicy.from_dict(saved).photometric
    policy = AugmentPolicy(None, True, False, ("r",), photometric=False)
    assert AugmentPolicy.from_dict(policy.to_dict()) == policy


def test_small_inputs_get_no_scale_changing_crop():
    assert auto_augment_policy(_profile(), SMALL_INPUT - 1).crop_scale is None
    assert auto_augment_policy(_profile(), SMALL_INPUT).crop_scale == (0.5, 1.0)


def test_more_images_per_class_allow_smaller_crops():
    few, many = auto_augment_policy(_profile(10), 224), auto_augment_policy(_profile(500), 224)
    assert many.crop_scale[0] < few.crop_scale[0]


def test_policy_follows_the_flip_and_grey_tests():
    policy = auto_augment_policy(_profile(grey=True, flips=True), 32)
    assert not policy.flip and not policy.colour
    assert "mirroring changes the class" in policy.describe()
    policy = auto_augment_policy(_profile(grey=False, flips=False), 32)
    assert policy.flip and policy.colour


def test_a_class_with_one_image_does_not_switch_the_flip_test_off(arrows_data, tmp_path):
    import shutil

    root = tmp_path / "arrows"
    shutil.copytree(arrows_data, root)
    (root / "train" / "up").mkdir()
    shutil.copy(next((root / "train" / "left").iterdir()), root / "train" / "up" / "lone.png")
    (root / "val" / "up").mkdir()
    shutil.copy(next((root / "val" / "left").iterdir()), root / "val" / "up" / "lone.png")
    assert profile_training_set(scan_image_folder(root)).flip_changes_label
