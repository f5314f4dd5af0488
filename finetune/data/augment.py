"""Augmentation ops for the `standard` and `strong` presets that albumentations lacks or that
are assembled from its ops: AlexNet PCA lighting and a TrivialAugment-like policy."""
from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np

# Eigen decomposition of the RGB covariance of ImageNet pixels on the 0-1 scale (Krizhevsky et al.
# 2012, as used by fb.resnet.torch and timm's `Lighting`): columns of the matrix are eigenvectors.
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], dtype=np.float32)
IMAGENET_EIGVEC = np.array([
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
], dtype=np.float32)


class PCALighting(A.ImageOnlyTransform):
    """AlexNet-style lighting noise: adds eigvec @ (alpha * eigval), alpha ~ N(0, std), to every pixel.

    Why not `A.FancyPCA`: it recomputes the PCA from each image's own pixels, which for small or
    nearly uniform images (a texture, a single colour) yields degenerate directions and costs an
    eigendecomposition per image; AlexNet's lighting uses the fixed ImageNet colour PCA.

    Args:
        std: Standard deviation of alpha (AlexNet: 0.1).
        p: Probability of applying.
    """

    def __init__(self, std: float = 0.1, p: float = 1.0):
        super().__init__(p=p)
        self.std = std

    def get_params(self) -> dict[str, Any]:
        return {"alpha": self.random_generator.normal(0.0, self.std, size=3).astype(np.float32)}

    def apply(self, img: np.ndarray, alpha: np.ndarray, **params: Any) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> same shape and dtype, shifted by one RGB offset."""
        shift = IMAGENET_EIGVEC @ (alpha * IMAGENET_EIGVAL) * 255.0  # eigvals are on the 0-1 scale
        return np.clip(img.astype(np.float32) + shift, 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("std",)


def colour_jitter() -> A.ColorJitter:
    """Brightness, contrast and saturation factors uniform in 0.6-1.4, hue unchanged, always on."""
    return A.ColorJitter(brightness=(0.6, 1.4), contrast=(0.6, 1.4), saturation=(0.6, 1.4), hue=(0.0, 0.0), p=1.0)


def trivial_augment() -> A.OneOf:
    """One op per image, chosen uniformly, its magnitude uniform in the op's range (TrivialAugment
    Wide, Mueller & Hutter 2021), built from albumentations ops so it runs in the same pipeline."""
    ops = [
        A.NoOp(p=1.0),
        A.Affine(rotate=(-30, 30), p=1.0),
        A.Affine(shear={"x": (-17, 17), "y": (0, 0)}, p=1.0),
        A.Affine(shear={"x": (0, 0), "y": (-17, 17)}, p=1.0),
        A.Affine(translate_percent={"x": (-0.3, 0.3), "y": (0, 0)}, p=1.0),
        A.Affine(translate_percent={"x": (0, 0), "y": (-0.3, 0.3)}, p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.9, contrast_limit=0.0, p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.9, p=1.0),
        A.ColorJitter(brightness=0, contrast=0, saturation=(0.1, 1.9), hue=0, p=1.0),
        A.Sharpen(alpha=(0.1, 0.9), p=1.0),
        A.Posterize(num_bits=(2, 8), p=1.0),
        A.Solarize(threshold_range=(0.0, 1.0), p=1.0),
        A.AutoContrast(p=1.0),
        A.Equalize(p=1.0),
    ]
    return A.OneOf(ops, p=1.0)


def random_erasing() -> A.Erasing:
    """Random erasing (Zhong et al. 2017) of 2-33% of the area with probability 0.25 (timm's
    --reprob 0.25); applied after normalisation, so the fill 0 is the mean colour."""
    return A.Erasing(scale=(0.02, 0.33), ratio=(0.3, 3.3), fill=0, p=0.25)
