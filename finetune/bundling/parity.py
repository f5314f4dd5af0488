"""Parity of exported graphs with the eager model: max |logit difference| on real images."""
from __future__ import annotations

import numpy as np

from finetune.errors import FinetuneError

PARITY_TOLERANCE = 1e-3  # fp32 graphs differ from eager only by op ordering: ~1e-5 is typical


class ExportError(FinetuneError):
    """An export failed a check (parity, missing images); the bundle is not usable."""


def max_abs_diff(reference: np.ndarray, other: np.ndarray) -> float:
    """Largest absolute elementwise difference of two (B, C) logit arrays."""
    if reference.shape != other.shape:
        raise ExportError(f"exported model returns shape {other.shape}, eager model {reference.shape}")
    return float(np.max(np.abs(reference.astype(np.float64) - other.astype(np.float64))))


def check_parity(name: str, reference: np.ndarray, other: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> float:
    """Returns the max abs difference; raises ExportError when it exceeds `tolerance`."""
    diff = max_abs_diff(reference, other)
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(f"{name} logits differ from the eager model by {diff:.3g} (> {tolerance:g}) "
                          f"on {len(reference)} validation images: the exported graph is not faithful")
    return diff


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose argmax agrees, for two (N, C) score arrays."""
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1))) if len(a) else float("nan")
