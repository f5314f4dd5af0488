"""A map-style dataset over (path, label) pairs from a scan."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from finetune.data.images import BadImageError, load_image
from finetune.data.memory import DecodedImages, transform_presize
from finetune.errors import DataError


class ImageListDataset(Dataset):
    """Decodes images from a list of (path, label) pairs and applies a transform.

    Attributes:
        items: The (path, label) pairs.
        transform: Maps an (H, W, 3) uint8 RGB image to the model input, e.g. a (3, S, S) tensor;
            None returns the decoded array.
        failed: Paths that could not be decoded at load time (in this process: with dataloader
            workers, each worker has its own copy).
        decoded: The images already decoded in memory (`keep_in_memory`), or None: read from the files.
    """

    def __init__(self, items: list[tuple[Path, int]], transform: Callable[[np.ndarray], torch.Tensor] | None = None):
        self.items = list(items)
        self.transform = transform
        self.failed: list[Path] = []
        self.decoded: DecodedImages | None = None

    def keep_in_memory(self, threads: int) -> DecodedImages:
        """Decodes every image once (pre-resized by the transform's own first resize, when it has one)."""
        self.decoded = DecodedImages.decode([p for p, _ in self.items], transform_presize(self.transform), threads)
        return self.decoded

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Returns (image, label): image (3, S, S) float32 after the transform."""
        image, label = self._load_with_fallback(index)
        return (image if self.transform is None else self.transform(image)), label

    def _load_with_fallback(self, index: int) -> tuple[np.ndarray, int]:
        # The scan decoded every file, so a failure here means the file changed since (a sync
        # client, a half-written copy). Crashing hours into an epoch is worse than one substitute
        # sample: take the next index, deterministically so a resumed run sees the same data.
        for offset in range(len(self.items)):
            path, label = self.items[(index + offset) % len(self.items)]
            image = self.decoded.get((index + offset) % len(self.items)) if self.decoded is not None else None
            if image is not None:
                return image, label
            try:
                return load_image(path), label
            except BadImageError as e:
                self._record_failure(path, str(e))
        raise DataError(f"none of the {len(self.items)} images could be decoded (first: {self.items[0][0]})")

    def _record_failure(self, path: Path, reason: str) -> None:
        if path not in self.failed:
            self.failed.append(path)
            warnings.warn(f"{path} could not be decoded at load time ({reason}); using another image", stacklevel=4)
