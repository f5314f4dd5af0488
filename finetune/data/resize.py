"""Eval-time geometry in plain PIL + numpy: shorter-side resize and center crop.

Kept free of albumentations and OpenCV so that the exported-bundle inference path can import it
and reproduce the training-time eval preprocessing bit for bit.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from finetune.data.data_config import INTERPOLATIONS

PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def pil_filter(interpolation: str) -> Image.Resampling:
    """Returns the PIL resampling filter for an interpolation name (one of INTERPOLATIONS)."""
    if interpolation not in PIL_FILTERS:
        raise ValueError(f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
    return PIL_FILTERS[interpolation]


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Returns (height, width) with the shorter side at `size`, aspect ratio kept.

    The longer side is truncated, as torchvision's `Resize(int)`: 300x400 -> 256 gives 256x341.
    """
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def pil_resize_shorter(img: np.ndarray, size: int, interpolation: str) -> np.ndarray:
    """Resizes so the shorter side is `size` with PIL's antialiased filters.

    Args:
        img: Image, shape (H, W, 3) or (H, W), uint8.
        size: Target length of the shorter side in pixels.
        interpolation: One of "nearest", "bilinear", "bicubic", "lanczos".

    Returns:
        The resized image, shape (H', W', 3) or (H', W'), uint8, min(H', W') == size.
    """
    return pil_resize(img, shorter_side_size(img.shape[0], img.shape[1], size), interpolation)


def pil_resize(img: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Resizes to exactly `size` with PIL's filters, which antialias when downscaling.

    Args:
        img: Image, shape (H, W, 3) or (H, W), uint8.
        size: Target (height, width) in pixels.
        interpolation: One of "nearest", "bilinear", "bicubic", "lanczos".

    Returns:
        The resized image, shape (height, width, 3) or (height, width), uint8; `img` itself when
        it already has that size.
    """
    height, width = size
    if (height, width) == img.shape[:2]:
        return img
    resized = Image.fromarray(img).resize((width, height), resample=pil_filter(interpolation))
    return np.array(resized)  # writable, like the input


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Crops the central size x size window, offsets floor((H - size) / 2) as `A.CenterCrop`.

    Args:
        img: Image, shape (H, W, C) or (H, W) with H, W >= size.
        size: Side of the square crop.

    Returns:
        The crop, shape (size, size, C) or (size, size).
    """
    if img.shape[0] < size or img.shape[1] < size:
        raise ValueError(f"cannot center-crop {size}x{size} from an image of shape {img.shape[:2]}")
    top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return img[top : top + size, left : left + size]
