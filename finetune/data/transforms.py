"""Albumentations pipelines built from the pretrained weights' DataConfig.

Every size, mean, std and filter comes from the DataConfig; presets are looked up by name in
PRESETS so that more augmentation recipes can be added next to "standard".
"""
from __future__ import annotations

from typing import Any, Callable

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from finetune.data.augment import PCALighting, colour_jitter, random_erasing, trivial_augment
from finetune.data.data_config import INTERPOLATIONS, DataConfig
from finetune.data.policy import AugmentPolicy
from finetune.data.resize import pil_filter, pil_resize, pil_resize_shorter

__all__ = [
    "CV2_FLAGS",
    "PRESETS",
    "AlbumentationsTransform",
    "PILResizeShorter",
    "RandomResizedCrop",
    "build_eval_transform",
    "build_train_transform",
    "build_transform",
    "cv2_flag",
    "pil_filter",
    "pil_resize_shorter",
]

CV2_FLAGS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}


def cv2_flag(interpolation: str) -> int:
    """Returns the OpenCV interpolation flag for an interpolation name (one of INTERPOLATIONS)."""
    if interpolation not in CV2_FLAGS:
        raise ValueError(f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
    return CV2_FLAGS[interpolation]


class PILResizeShorter(A.ImageOnlyTransform):
    """Resizes the shorter side to `size` with PIL's filters.

    Why not `A.SmallestMaxSize`: OpenCV's bilinear/bicubic do not antialias when downscaling, while
    the PIL-based eval transforms the pretrained weights were evaluated with do; and the exported
    inference path (PIL + numpy only) must reproduce this step exactly, so both call
    `pil_resize_shorter`.
    """

    def __init__(self, size: int, interpolation: str = "bilinear", p: float = 1.0):
        super().__init__(p=p)
        pil_filter(interpolation)  # fail at build time, not in a dataloader worker
        self.size, self.interpolation = size, interpolation

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return pil_resize_shorter(img, self.size, self.interpolation)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "interpolation")


class RandomResizedCrop(A.RandomResizedCrop):
    """`A.RandomResizedCrop` whose resize is PIL's, the filter the eval transform uses.

    Same name as the albumentations step it replaces, so pipelines still read "RandomResizedCrop".

    Why: OpenCV's bilinear/bicubic sample without antialiasing, so a crop shrunk 8x keeps one
    pixel in 8 while eval averages them all; the network would train on aliased images and be
    evaluated on smooth ones. `area_for_downscale` would antialias with a box filter instead of the
    weights' own bicubic or bilinear. The crop sampling is albumentations' own.
    """

    def __init__(self, size: tuple[int, int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), interpolation: str = "bilinear", p: float = 1.0):
        # cv2_flag checks the name at build time, not in a dataloader worker; `apply` never uses the flag.
        super().__init__(size=size, scale=scale, ratio=ratio, interpolation=cv2_flag(interpolation), p=p)
        self.pil_interpolation = interpolation

    def apply(self, img: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        """Crops (x_min, y_min, x_max, y_max) and resizes to `size`: (H, W, C) uint8 -> (h, w, C) uint8."""
        x_min, y_min, x_max, y_max = crop_coords
        return pil_resize(np.ascontiguousarray(img[y_min:y_max, x_min:x_max]), self.size, self.pil_interpolation)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "scale", "ratio", "pil_interpolation")


class AlbumentationsTransform:
    """A picklable image -> tensor callable around an `A.Compose`.

    Attributes:
        pipeline: The albumentations pipeline; its last step must be ToTensorV2.
    """

    def __init__(self, pipeline: A.Compose):
        self.pipeline = pipeline

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """Maps an (H, W, 3) uint8 RGB image to a (3, S, S) float32 tensor."""
        return self.pipeline(image=image)["image"]

    def set_random_seed(self, seed: int | None) -> None:
        """Reseeds the augmentations (Compose keeps its own RNG, untouched by np.random.seed)."""
        self.pipeline.set_random_seed(seed)

    def __repr__(self) -> str:
        return f"AlbumentationsTransform({self.pipeline!r})"


def _normalize_to_tensor(dc: DataConfig) -> list[A.BasicTransform]:
    # (x / 255 - mean) / std: dc.mean and dc.std are on the 0-1 scale, as timm and torchvision store them.
    return [A.Normalize(mean=dc.mean, std=dc.std, max_pixel_value=255.0), ToTensorV2()]


def _random_crop_flip(dc: DataConfig) -> list[A.BasicTransform]:
    s = dc.input_size
    crop = RandomResizedCrop(size=(s, s), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation=dc.interpolation)
    return [crop, A.HorizontalFlip(p=0.5)]


def _standard_train(dc: DataConfig) -> list[A.BasicTransform]:
    # Colour jitter 0.6-1.4 and AlexNet PCA lighting (std 0.1): the classic ImageNet ResNet recipe.
    return [*_random_crop_flip(dc), colour_jitter(), PCALighting(0.1), *_normalize_to_tensor(dc)]


def _strong_train(dc: DataConfig) -> list[A.BasicTransform]:
    # Standard plus one TrivialAugment op per image, and random erasing on the normalised image.
    normalize, to_tensor = _normalize_to_tensor(dc)
    return [*_random_crop_flip(dc), trivial_augment(), colour_jitter(), PCALighting(0.1),
            normalize, random_erasing(), to_tensor]


def _standard_eval(dc: DataConfig) -> list[A.BasicTransform]:
    # Shorter side to input_size / crop_pct (e.g. 224 / 0.875 = 256), then the central input_size square.
    resize = PILResizeShorter(dc.resize_size, dc.interpolation)
    return [resize, A.CenterCrop(dc.input_size, dc.input_size), *_normalize_to_tensor(dc)]


def _light_train(dc: DataConfig) -> list[A.BasicTransform]:
    # The eval geometry plus a flip: for small objects that a random crop could cut away.
    return [*_standard_eval(dc)[:2], A.HorizontalFlip(p=0.5), *_normalize_to_tensor(dc)]


def _policy_train(dc: DataConfig, policy: AugmentPolicy) -> list[A.BasicTransform]:
    """The train steps of an `--augment auto` policy (see finetune.data.policy for the rules)."""
    s = dc.input_size
    if policy.crop_scale is None:
        # Translation only: the eval geometry, reflect-padded by 1/8 of the side, cropped back at random.
        pad = max(1, s // 8)
        geometry = [*_standard_eval(dc)[:2],
                    A.PadIfNeeded(s + 2 * pad, s + 2 * pad, border_mode=cv2.BORDER_REFLECT_101),
                    A.RandomCrop(s, s)]
    else:
        geometry = [RandomResizedCrop(size=(s, s), scale=policy.crop_scale, ratio=(3 / 4, 4 / 3),
                                      interpolation=dc.interpolation)]
    flip = [A.HorizontalFlip(p=0.5)] if policy.flip else []
    # Mild photometric jitter (0.8-1.2): brightness and contrast where exposure varies, saturation where
    # there is colour to jitter.
    tone = (0.8, 1.2) if policy.photometric else (1.0, 1.0)
    saturation = (0.8, 1.2) if policy.colour else (1.0, 1.0)
    jitter = [A.ColorJitter(brightness=tone, contrast=tone, saturation=saturation, hue=(0.0, 0.0), p=1.0)
              ] if policy.photometric or policy.colour else []
    return [*geometry, *flip, *jitter, *_normalize_to_tensor(dc)]


# name -> (train steps, eval steps); every preset shares the eval steps unless it says otherwise.
PRESETS: dict[str, tuple[Callable[[DataConfig], list], Callable[[DataConfig], list]]] = {
    "none": (_standard_eval, _standard_eval),  # train on exactly what evaluation sees
    "light": (_light_train, _standard_eval),
    "standard": (_standard_train, _standard_eval),
    "strong": (_strong_train, _standard_eval),
}


def build_transform(dc: DataConfig, train: bool, preset: str | AugmentPolicy = "standard",
                    seed: int | None = None) -> AlbumentationsTransform:
    """Builds the train or eval transform of a preset, or of an `--augment auto` policy.

    Args:
        dc: The pretrained weights' preprocessing (size, mean, std, interpolation, crop_pct).
        train: Random augmentations if True, the deterministic eval pipeline if False.
        preset: A key of PRESETS, or the AugmentPolicy that `--augment auto` chose for the data.
        seed: Seed of the augmentations' own RNG (None: fresh entropy).

    Returns:
        A callable mapping an (H, W, 3) uint8 RGB image to a (3, S, S) float32 tensor,
        S = dc.input_size.
    """
    if isinstance(preset, AugmentPolicy):
        steps = _policy_train(dc, preset) if train else _standard_eval(dc)
        return AlbumentationsTransform(A.Compose(steps, seed=seed))
    if preset == "auto":
        raise ValueError("--augment auto is chosen from the training set: pass the AugmentPolicy that "
                         "finetune.data.policy.auto_augment_policy returns")
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; valid: {', '.join(PRESETS)}")
    steps = PRESETS[preset][0 if train else 1](dc)
    return AlbumentationsTransform(A.Compose(steps, seed=seed))


def build_train_transform(dc: DataConfig, seed: int | None = None,
                          preset: str | AugmentPolicy = "standard") -> AlbumentationsTransform:
    """The train pipeline of `preset`; standard: RandomResizedCrop(0.08-1, 3/4-4/3) + flip + colour
    jitter + PCA lighting + normalize."""
    return build_transform(dc, train=True, preset=preset, seed=seed)


def build_eval_transform(dc: DataConfig) -> AlbumentationsTransform:
    """PIL shorter-side resize to dc.resize_size + center crop + normalize -> (3, S, S)."""
    return build_transform(dc, train=False)
