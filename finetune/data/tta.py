"""Test-time augmentation views, in plain numpy + PIL so the bundle inference path can use them.

Every view is an (S, S, 3) crop with S = input_size, so the views of a whole batch of images stack
into one array and go through the network in a single forward pass.
"""
from __future__ import annotations

from typing import get_args

import numpy as np

from finetune.config import Tta as TTA
from finetune.data.data_config import DataConfig
from finetune.data.resize import center_crop, pil_resize_shorter

TTA_MODES: tuple[str, ...] = get_args(TTA)  # spelled once, in finetune.config
# Shorter side of the "scales" views relative to the eval resize (input_size / crop_pct):
# a tighter, the standard and a wider crop around the center.
SCALE_FACTORS = (0.875, 1.0, 1.143)


def check_tta(tta: str) -> str:
    """Returns `tta` if it is a known mode; else raises ValueError listing the valid ones."""
    if tta not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {tta!r}; valid: {', '.join(TTA_MODES)}")
    return tta


def view_count(tta: str) -> int:
    """Number of views a mode produces per image: none 1, flip 2, five-crop 5, ten-crop 10, scales 3."""
    return {"none": 1, "flip": 2, "five-crop": 5, "ten-crop": 10, "scales": len(SCALE_FACTORS)}[check_tta(tta)]


def five_crops(img: np.ndarray, size: int) -> list[np.ndarray]:
    """Four corner crops and the center crop (torchvision's FiveCrop order: tl, tr, bl, br, center).

    Args:
        img: Image, shape (H, W, 3) with H, W >= size.
        size: Side of each square crop.

    Returns:
        Five arrays of shape (size, size, 3).
    """
    h, w = img.shape[:2]
    corners = [img[:size, :size], img[:size, w - size:], img[h - size:, :size], img[h - size:, w - size:]]
    return [*corners, center_crop(img, size)]


def hflip(img: np.ndarray) -> np.ndarray:
    """Mirrors an (H, W, C) image left-right."""
    return img[:, ::-1]


def tta_views(img: np.ndarray, dc: DataConfig, tta: str = "none") -> list[np.ndarray]:
    """The views of one decoded image for a TTA mode, before normalisation.

    Args:
        img: Decoded RGB image, shape (H, W, 3), uint8.
        dc: The model's preprocessing; views use its eval resize (shorter side input_size / crop_pct).
        tta: One of TTA_MODES. ten-crop is five-crop plus the mirror of each crop (as AlexNet).

    Returns:
        `view_count(tta)` arrays of shape (S, S, 3), S = dc.input_size; the first is always the
        plain eval view when tta is none, flip or scales.
    """
    check_tta(tta)
    s = dc.input_size
    if tta == "scales":
        sizes = [max(s, int(round(dc.resize_size * f))) for f in SCALE_FACTORS]
        return [center_crop(pil_resize_shorter(img, n, dc.interpolation), s) for n in sizes]
    resized = pil_resize_shorter(img, dc.resize_size, dc.interpolation)
    if tta in ("five-crop", "ten-crop"):
        crops = five_crops(resized, s)
        return crops + [hflip(c) for c in crops] if tta == "ten-crop" else crops
    view = center_crop(resized, s)
    return [view, hflip(view)] if tta == "flip" else [view]


def normalize(views: list[np.ndarray], dc: DataConfig) -> np.ndarray:
    """Stacks views and normalises them as the training eval transform does.

    Args:
        views: Arrays of shape (S, S, 3), uint8.
        dc: Mean and std on the 0-1 scale.

    Returns:
        Network input, shape (V, 3, S, S), float32: (x / 255 - mean) / std.
    """
    x = np.stack(views).astype(np.float32)
    # Same arithmetic as albumentations' Normalize(max_pixel_value=255): (x - 255 mean) / (255 std).
    mean = np.asarray(dc.mean, np.float32) * np.float32(255.0)
    std = np.asarray(dc.std, np.float32) * np.float32(255.0)
    return np.ascontiguousarray(((x - mean) / std).transpose(0, 3, 1, 2))


def average_views(probs: np.ndarray, views: int) -> np.ndarray:
    """Averages per-view class probabilities back to one row per image.

    Args:
        probs: Softmax outputs, shape (N * views, C), the views of each image consecutive.
        views: Views per image.

    Returns:
        Shape (N, C): the mean over each image's views.
    """
    return probs.reshape(-1, views, probs.shape[-1]).mean(axis=1)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature, shape (N, C) -> (N, C), numerically stable."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def batch_inputs(images: list[np.ndarray], dc: DataConfig, tta: str = "none") -> np.ndarray:
    """Network inputs for decoded images: (N * V, 3, S, S) float32, each image's V views consecutive."""
    return normalize([v for img in images for v in tta_views(img, dc, tta)], dc)
