"""Parity of exported graphs with the eager model: max |logit difference| on real images."""
from __future__ import annotations

from statistics import NormalDist

import numpy as np

from finetune.errors import FinetuneError

PARITY_TOLERANCE = 1e-3  # fp32 graphs differ from eager only by op ordering: ~1e-5 is typical
# Static int8 quantization changes few top-1 decisions: torchvision's published int8 ImageNet weights lose at
# most about one point of top-1 (shufflenet_v2_x1_0 69.36 -> 68.36; resnet50 76.13 -> 75.92;
# https://pytorch.org/vision/stable/models.html#quantized-models). A model whose int8 copy changes the
# class of more than 5% of the images is not rounded but broken; a warning needs the measured share to be
# above that with 95% confidence (the Wilson interval's lower end), so a few val images never trigger it.
INT8_MAX_DISAGREEMENT = 0.05


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


def wilson_lower_bound(successes: int, trials: int, z: float = NormalDist().inv_cdf(0.975)) -> float:
    """The lower end of the Wilson score interval (95% for the default z) of a binomial proportion.

    Written here because the package's dependencies have no binomial interval (scipy's binomtest is one, and
    the tests check this against it).
    """
    if trials <= 0:
        return 0.0
    p, z2 = successes / trials, z * z
    centre = p + z2 / (2 * trials)
    spread = z * np.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return float(max(0.0, (centre - spread) / (1 + z2 / trials)))


def int8_warning(agreement: float, images: int) -> str | None:
    """A one-line warning when the int8 copy changes the top-1 class of clearly more than
    INT8_MAX_DISAGREEMENT of the images it was measured on; None otherwise (or with no images)."""
    if not images or not np.isfinite(agreement):
        return None
    changed = round((1 - agreement) * images)
    if wilson_lower_bound(changed, images) <= INT8_MAX_DISAGREEMENT:
        return None
    return (f"model.int8.onnx changes the top-1 class of {changed} of {images} val images "
            f"({changed / images:.0%}; static int8 changes about 1% on ImageNet models): it is not a faithful copy "
            f"of this model; deploy model.onnx")
