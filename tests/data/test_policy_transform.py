"""The train pipeline that an `--augment auto` policy builds."""
from __future__ import annotations

import numpy as np
import pytest

from finetune.data.data_config import DataConfig
from finetune.data.policy import AugmentPolicy
from finetune.data.transforms import build_transform

DC = DataConfig(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", 1.0)


def _square_image() -> np.ndarray:
    """32x32 black with a white 8x8 square in the left half: flips and scale changes both show."""
    img = np.zeros((32, 32, 3), np.uint8)
    img[12:20, 6:14] = 255  # 6 px from the edge: the 4 px reflect padding never shows a mirror of it
    return img


def _names(policy: AugmentPolicy) -> list[str]:
    return [type(t).__name__ for t in build_transform(DC, train=True, preset=policy).pipeline.transforms]


def test_translation_only_keeps_the_scale_and_never_mirrors():
    transform = build_transform(DC, train=True, preset=AugmentPolicy(None, flip=False, colour=False), seed=0)
    for _ in range(20):
        x = transform(_square_image())  # (3, 32, 32), normalised: white is 1, black -1
        bright = (x[0] > 0.5).float()
        assert bright.sum() == 64  # an 8x8 square stays 8x8: translation only, reflect padding
        cols = bright.sum(0).nonzero().flatten()
        assert cols.max() <= 13 + 4  # shifted by at most 1/8 of the side, never mirrored to the right half


def test_flip_and_crop_follow_the_policy():
    assert "HorizontalFlip" not in _names(AugmentPolicy((0.5, 1.0), flip=False, colour=True))
    names = _names(AugmentPolicy((0.5, 1.0), flip=True, colour=True))
    assert names[0] == "RandomResizedCrop" and "HorizontalFlip" in names
    crop = build_transform(DC, train=True, preset=AugmentPolicy((0.5, 1.0), True, True)).pipeline.transforms[0]
    assert tuple(crop.scale) == (0.5, 1.0)


def test_grey_policy_does_not_colour_grey_images():
    transform = build_transform(DC, train=True, preset=AugmentPolicy(None, flip=True, colour=False), seed=1)
    grey = np.repeat(np.random.default_rng(0).integers(0, 255, (32, 32, 1), dtype=np.uint8), 3, axis=2)
    for _ in range(10):
        x = transform(grey)
        assert np.allclose(x[0], x[1], atol=1e-6) and np.allclose(x[1], x[2], atol=1e-6)


@pytest.mark.parametrize("colour", [False, True])
def test_no_photometric_jitter_keeps_every_pixel_value(colour):
    img = _square_image()  # black and white: saturation jitter leaves it as it is
    still = build_transform(DC, train=True, preset=AugmentPolicy(None, True, colour, photometric=False), seed=2)
    jittered = build_transform(DC, train=True, preset=AugmentPolicy(None, True, colour, photometric=True), seed=2)
    assert all(set(np.unique(still(img).numpy().round(4))) <= {-1.0, 1.0} for _ in range(10))
    assert any(set(np.unique(jittered(img).numpy().round(4))) - {-1.0, 1.0} for _ in range(10))
    if not colour:  # nothing left to jitter: no jitter step at all
        assert "ColorJitter" not in _names(AugmentPolicy(None, True, False, photometric=False))


def test_auto_needs_the_measured_policy():
    with pytest.raises(ValueError, match="AugmentPolicy"):
        build_transform(DC, train=True, preset="auto")
