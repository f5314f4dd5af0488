"""The training-set profile (flip test, grey test) and the `--augment auto` policy chosen from it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageDraw

from finetune.data.policy import SMALL_INPUT, AugmentPolicy, auto_augment_policy
from finetune.data.profile import (
    EXPOSURE_SPREAD,
    TONE_MIN_IMAGES,
    DataProfile,
    FlipEvidence,
    flip_changes_label,
    flip_test,
    profile_training_set,
    tonal_spread,
)
from finetune.data.real import make_real_task
from finetune.data.scan import scan_image_folder
from finetune.data.synthetic import draw_letter


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
    evidence = flip_test([img, img], np.array([0, 1]))
    assert all(np.isnan(v) for v in evidence[:4]) and evidence.images == 0
    assert not flip_changes_label(evidence, 2)


@pytest.mark.parametrize("nn, with_mirrors, margin, n, expected", [
    (0.95, 0.40, 0.08, 200, True),   # letters-like: the mirror images take half the originals
    (0.95, 0.92, 0.05, 200, False),  # within the margin
    (0.50, 0.10, 0.30, 10, False),   # 10 images of 2 classes: 0.5 is chance, nothing to learn from
    (0.80, 0.85, 0.05, 200, False),  # mirror images that help
])
def test_flip_fall_must_exceed_the_margin(nn, with_mirrors, margin, n, expected):
    assert flip_changes_label(FlipEvidence(nn, 0.0, with_mirrors, margin, n), 2) is expected


def _letter(ch: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A letter in PIL's bundled font, of random size and position: 'b' mirrored is 'd', 'p' is 'q'."""
    return draw_letter(ch, rng, size)


def test_letters_that_mirror_into_each_other_turn_flipping_off(tmp_path, write_folder):
    profile = profile_training_set(scan_image_folder(write_folder(tmp_path, list("bdpq"), _letter)))
    assert profile.flip_changes_label
    policy = auto_augment_policy(profile, 32)
    assert not policy.flip
    # the evidence reaches the plan: the two top-1 figures and the margin the fall exceeded
    assert (f"top-1 {profile.flip_nn:.2f} -> {profile.flip_nn_with_mirrors:.2f} with labelled mirror images"
            in policy.describe())
    assert f"beyond the margin {profile.flip_margin:.2f}" in policy.describe()


_PHOTOS = {"chelsea": "skimage", "coffee": "skimage", "astronaut": "skimage", "rocket": "skimage",
           "china.jpg": "sklearn"}


def _photo(name: str) -> np.ndarray:
    if _PHOTOS[name] == "sklearn":
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    import skimage.data

    return getattr(skimage.data, name)()


def _object_crop(name: str, rng: np.random.Generator) -> Image.Image:
    """A 64-96 px crop around the middle of a photo (a cat, a coffee cup, an astronaut...): the crops of
    one class overlap, so each image's nearest neighbour is a near-duplicate that its mirror image lacks."""
    photo = _photo(name)
    h, w = photo.shape[:2]
    side = int(rng.integers(64, 97))
    cy, cx = h / 2 + rng.uniform(-0.1, 0.1) * h, w / 2 + rng.uniform(-0.1, 0.1) * w
    y, x = int(np.clip(cy - side / 2, 0, h - side)), int(np.clip(cx - side / 2, 0, w - side))
    return Image.fromarray(photo[y:y + side, x:x + side])


def test_crops_of_a_few_photos_keep_the_flip(tmp_path, write_folder):
    """Mirrored photos of a cat are photos of a cat: flipping stays on, although the mirror images'
    own nearest-neighbour top-1 falls (they have no overlapping crop to find)."""
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    folder = write_folder(tmp_path, list(_PHOTOS), _object_crop, train=30, val=1)
    profile = profile_training_set(scan_image_folder(folder))
    assert profile.flip_nn > 0.9 and profile.flip_nn - profile.flip_nn_flipped > 0.1  # the near-duplicate fall
    assert not profile.flip_changes_label
    assert auto_augment_policy(profile, 64).flip
    assert "mirror images keep their class (nearest-neighbour top-1" in auto_augment_policy(profile, 64).describe()


def _smooth(rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour pattern (4x4 blown up to 16x16): a shift by a pixel keeps it alike."""
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((16, 16), Image.Resampling.BILINEAR), np.float32)


def _member(template: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One class member: its class's pattern under a pattern of its own, shifted by up to a pixel;
    nearest neighbours find the class of most members, not of all."""
    img = np.roll(0.45 * template + 0.55 * _smooth(rng), rng.integers(-1, 2, size=2), axis=(0, 1))
    return img.astype(np.uint8)


def _random_set(seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """3-6 classes of noisy copies of random (asymmetric) templates, 6-20 images each."""
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(3, 7))
    templates = [_smooth(rng) for _ in range(classes)]
    labels = np.repeat(np.arange(classes), rng.integers(6, 21, size=classes))
    return [_member(templates[k], rng) for k in labels], labels


@pytest.mark.parametrize("seed", range(8))
def test_a_set_whose_images_equal_their_mirror_images_never_turns_flipping_off(seed):
    images, labels = _random_set(seed)
    symmetric = [np.concatenate([im[:, :8], im[:, :8][:, ::-1]], axis=1) for im in images]
    assert all(np.array_equal(im, im[:, ::-1]) for im in symmetric)
    evidence = flip_test(symmetric, labels)
    assert evidence.nn_with_mirrors == evidence.nn and evidence.nn_flipped == evidence.nn
    assert not flip_changes_label(evidence, int(labels.max()) + 1)


@pytest.mark.parametrize("seed", range(8))
def test_a_set_that_holds_every_mirror_image_in_its_class_never_turns_flipping_off(seed):
    images, labels = _random_set(seed)
    closed = images + [im[:, ::-1] for im in images]  # flip augmentation already done: every class is mirror-closed
    evidence = flip_test(closed, np.concatenate([labels, labels]))
    assert evidence.nn_with_mirrors >= evidence.nn
    assert not flip_changes_label(evidence, int(labels.max()) + 1)


@pytest.mark.parametrize("seed", range(8))
def test_a_class_made_of_another_class_mirror_images_turns_flipping_off(seed):
    images, labels = _random_set(seed)
    twin = int(labels.max()) + 1  # a new class: the mirror images of class 0
    mirrored = [im[:, ::-1] for im, label in zip(images, labels) if label == 0]
    evidence = flip_test(images + mirrored, np.concatenate([labels, np.full(len(mirrored), twin)]))
    assert evidence.nn > 0.7  # unflipped, the classes are told apart (chance: 1/7 to 1/4)
    assert flip_changes_label(evidence, twin + 1)


@pytest.mark.parametrize("seed", range(4))
def test_renaming_the_classes_never_changes_the_evidence(seed):
    images, labels = _random_set(seed)
    images += [im[:, ::-1] for im, label in zip(images, labels) if label == 0]  # a class of mirror images: 'off'
    labels = np.concatenate([labels, np.full(len(images) - len(labels), labels.max() + 1)])
    permutation = np.random.default_rng(seed).permutation(int(labels.max()) + 1)
    assert flip_test(images, permutation[labels]) == flip_test(images, labels)


def test_paired_margin_is_two_standard_errors_of_the_per_image_fall():
    from finetune.data.profile import _paired_margin

    # 10 images, 5 lost to mirror images: differences five 0s and five 1s, variance 0.25, SE sqrt(0.25 / 10)
    before, after = np.ones(10, bool), np.array([1] * 5 + [0] * 5, bool)
    assert _paired_margin(before, after) == pytest.approx(2 * 0.158114, abs=1e-6)
    # all images agree: the variance floor 1/n gives two images in n
    assert _paired_margin(before, before) == pytest.approx(2 / 10)


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


def test_the_plan_gives_the_figures_of_the_flip_decision():
    base = _profile()
    kept = dataclasses.replace(base, flip_nn=0.95, flip_nn_with_mirrors=0.94, flip_margin=0.03)
    assert ("mirror images keep their class (nearest-neighbour top-1 0.95 -> 0.94 with labelled mirror images "
            "among the references: a fall of 0.01, within the margin 0.03)") in auto_augment_policy(kept, 32).reasons
    off = dataclasses.replace(kept, flip_nn_with_mirrors=0.43, flip_margin=0.08, flip_changes_label=True)
    assert ("top-1 0.95 -> 0.43 with labelled mirror images among the references: a fall of 0.52, beyond the "
            "margin 0.08") in auto_augment_policy(off, 32).describe()
    rose = dataclasses.replace(kept, flip_nn_with_mirrors=0.97)
    assert ("top-1 0.95 -> 0.97 with labelled mirror images among the references: no fall, within the "
            "margin 0.03") in auto_augment_policy(rose, 32).describe()


@pytest.mark.parametrize("changes", [False, True])
def test_a_profile_recorded_before_the_mirror_reference_figures_keeps_its_decision(changes):
    recorded = _profile(flips=changes).to_dict()
    for key in ("flip_nn_with_mirrors", "flip_margin"):  # what an older config.yaml holds
        del recorded[key]
    profile = DataProfile.from_dict(recorded)
    assert np.isnan(profile.flip_nn_with_mirrors) and profile.flip_changes_label is changes
    policy = auto_augment_policy(profile, 32)
    assert policy.flip is not changes
    assert ("mirroring changes the class (nearest-neighbour top-1 0.90 -> 0.30 on mirror images)" if changes
            else "mirror images keep their class") in policy.reasons


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
