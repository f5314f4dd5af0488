"""Batch-level mixup and cutmix: the images are mixed here, the targets in training/losses.py.

Written by hand rather than with timm's `Mixup`, which asserts an even batch size (the last,
short batch of a small dataset is often odd) and silently smooths labels by 0.1 by default;
torchvision's v2.MixUp/CutMix also build the (smoothed-less) targets themselves. Here mixing
returns both label sets and lambda, and the loss builds the soft targets exactly once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class MixedBatch:
    """A batch after mixing.

    Attributes:
        x: Images, shape (B, 3, H, W).
        y: Labels of the images as loaded, shape (B,).
        y_partner: Labels of the images mixed in, shape (B,); equal to `y` when unmixed.
        lam: Share of the original image in every sample (1.0: unmixed).
        mode: "none", "mixup" or "cutmix".
    """

    x: Tensor
    y: Tensor
    y_partner: Tensor
    lam: float = 1.0
    mode: str = "none"

    @classmethod
    def unmixed(cls, x: Tensor, y: Tensor) -> "MixedBatch":
        return cls(x, y, y)


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator | None = None
               ) -> tuple[int, int, int, int]:
    """A box covering about 1 - lam of the image, centred uniformly, clipped at the borders.

    Returns:
        (top, bottom, left, right) pixel bounds, bottom/right exclusive.
    """
    cut = math.sqrt(1.0 - lam)  # side ratio: a box of cut*H x cut*W has area (1 - lam) * H * W
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = int(torch.randint(height, (1,), generator=generator))
    cx = int(torch.randint(width, (1,), generator=generator))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


class BatchMixer:
    """Mixes each training batch with a shuffled copy of itself, one lambda per batch.

    Args:
        mixup_alpha: Beta(alpha, alpha) for mixup's lambda; 0 disables mixup.
        cutmix_alpha: Beta(alpha, alpha) for cutmix's lambda; 0 disables cutmix.
        prob: Probability that a batch is mixed at all.
        switch_prob: With both enabled, probability of cutmix rather than mixup.
        generator: Random source (None: torch's global RNG, seeded by the run's seed).
    """

    def __init__(self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, generator: torch.Generator | None = None):
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup/cutmix alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.generator = prob, switch_prob, generator

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _beta(self, alpha: float) -> float:
        # Beta(a, a) = G1 / (G1 + G2) with G ~ Gamma(a): sampled from `generator` for reproducibility.
        g = torch._standard_gamma(torch.full((2,), float(alpha)), generator=self.generator)
        return float(g[0] / g.sum())

    def _mode(self) -> str:
        if not self.enabled or self._uniform() >= self.prob:
            return "none"
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            return "cutmix" if self._uniform() < self.switch_prob else "mixup"
        return "cutmix" if self.cutmix_alpha > 0 else "mixup"

    def __call__(self, x: Tensor, y: Tensor) -> MixedBatch:
        """Mixes a batch of any size (odd and size-1 batches included).

        Args:
            x: Images, shape (B, 3, H, W).
            y: Labels, shape (B,).
        """
        mode = self._mode()
        if mode == "none":
            return MixedBatch.unmixed(x, y)
        perm = torch.randperm(x.shape[0], generator=self.generator).to(x.device)
        if mode == "mixup":
            lam = self._beta(self.mixup_alpha)
            return MixedBatch(x * lam + x[perm] * (1.0 - lam), y, y[perm], lam, mode)
        return self._cutmix(x, y, perm)

    def _cutmix(self, x: Tensor, y: Tensor, perm: Tensor) -> MixedBatch:
        height, width = x.shape[-2:]
        top, bottom, left, right = cutmix_box(height, width, self._beta(self.cutmix_alpha), self.generator)
        mixed = x.clone()
        mixed[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
        # The clipped box may be smaller than asked: lambda is the share of pixels actually kept.
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
        return MixedBatch(mixed, y, y[perm], lam, "cutmix")
