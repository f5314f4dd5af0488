"""Decoded images kept in memory for the whole run, shared with the DataLoader workers.

Each image is decoded once, in parallel threads, instead of once per epoch in every worker. Where the
split's transform starts with the eval resize (the shorter side to `resize_size`, as the eval, `none`,
`light` and small-input pipelines do), an image larger than that is stored already reduced by that same
step, so the transform's own resize finds nothing to do and its output is unchanged; a smaller one is
stored as decoded and enlarged by the transform at each use, so the cache never holds more pixels than
the files (32 px images at --image-size 2048 would take 4096 times their size). Other pipelines
(random resized crops) get the full decoded image. All pixels live in one flat uint8 tensor in shared memory:
workers read it, whether forked or spawned, without a copy each.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from finetune.data.images import BadImageError, load_image
from finetune.data.resize import pil_resize_shorter, shorter_side_size


@dataclass(frozen=True)
class Presize:
    """The resize a transform starts with: the shorter side to `side` with `interpolation`."""

    side: int
    interpolation: str


def transform_presize(transform: object) -> Presize | None:
    """The shorter-side resize a transform begins with (an AlbumentationsTransform), else None."""
    from finetune.data.transforms import PILResizeShorter  # transforms imports albumentations: only when asked

    steps = getattr(getattr(transform, "pipeline", None), "transforms", None)
    first = steps[0] if steps else None
    if isinstance(first, PILResizeShorter) and first.p >= 1.0:
        return Presize(first.size, first.interpolation)
    return None


MEMORY_FRACTION = 0.25  # of the memory available when a cache is filled: the rest is the run's
SAMPLED_HEADERS = 256  # images whose size is read to estimate a split's


def available_memory() -> int:
    """Bytes this process can still take: the kernel's estimate of what can be handed out without swapping
    (MemAvailable: free memory plus the page cache it can drop), within the container's limit if any."""
    available = _meminfo_available()
    for limit, used, stat, cache in (("memory.max", "memory.current", "memory.stat", "inactive_file"),  # cgroup v2
                                     ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
                                      "memory/memory.stat", "total_inactive_file")):  # v1
        try:
            cap = Path("/sys/fs/cgroup", limit).read_text().strip()
            if cap.isdigit():
                # The usage counts the page cache too (a dataset just read); its inactive part is handed back
                # on demand, as the kubelet and Docker count it.
                taken = int(Path("/sys/fs/cgroup", used).read_text()) - _stat(Path("/sys/fs/cgroup", stat), cache)
                available = min(available, int(cap) - taken)
            break
        except (OSError, ValueError):
            continue
    return max(0, available)


def _stat(path: Path, key: str) -> int:
    """One figure of a cgroup's memory.stat (0 when absent)."""
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        return 4 << 30


def memory_budget() -> int:
    """Bytes a run keeps in memory caches: a quarter of what this process can still take (available_memory)."""
    return int(available_memory() * MEMORY_FRACTION)


def estimated_bytes(paths: Sequence[Path], presize: Presize | None) -> int:
    """Bytes the decoded images will take, from the headers of up to SAMPLED_HEADERS of them, evenly spread
    (nothing is decoded; a 100k-image folder is not opened file by file)."""
    if not paths:
        return 0
    step = max(1, len(paths) // SAMPLED_HEADERS)
    sample = list(paths[::step])
    total = 0
    for path in sample:
        try:
            with Image.open(path) as im:
                width, height = im.size
        except Exception:  # unreadable now: it will fall back to the file, which reports it
            continue
        if presize is not None and min(height, width) > presize.side:
            height, width = shorter_side_size(height, width, presize.side)
        total += height * width * 3
    return total * len(paths) // len(sample)


class DecodedImages:
    """Decoded (H, W, 3) uint8 images in one shared flat tensor, indexed like the split's items.

    Attributes:
        pixels: Every image's bytes, one after another (in shared memory).
        offsets: (N,) start of each image in `pixels`; shapes: (N, 3) its shape; (0, 0, 0) for an
            image that failed to decode (the dataset reads that one from its file, which says why).
        presize: The resize applied before storing, or None.
    """

    def __init__(self, pixels: torch.Tensor, offsets: np.ndarray, shapes: np.ndarray, presize: Presize | None):
        self.pixels, self.offsets, self.shapes, self.presize = pixels, offsets, shapes, presize

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def nbytes(self) -> int:
        return int(self.pixels.numel())

    def get(self, index: int) -> np.ndarray | None:
        """Image `index` (a writable copy: transforms may work in place), or None if it is not stored."""
        shape = tuple(int(s) for s in self.shapes[index])
        if shape[0] == 0:
            return None
        start = int(self.offsets[index])
        return self.pixels[start:start + shape[0] * shape[1] * shape[2]].numpy().reshape(shape).copy()

    @classmethod
    def decode(cls, paths: Sequence[Path], presize: Presize | None, threads: int) -> "DecodedImages":
        """Decodes (and pre-resizes) every path in parallel threads; PIL releases the GIL as it works."""

        def one(path: Path) -> np.ndarray | None:
            try:
                image = load_image(path)
            except BadImageError:
                return None
            if presize is None or min(image.shape[:2]) <= presize.side:
                return image  # never stored larger than the file holds: an upscale is done per use
            return pil_resize_shorter(image, presize.side, presize.interpolation)

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            images = list(pool.map(one, paths))
        shapes = np.array([im.shape if im is not None else (0, 0, 0) for im in images], dtype=np.int64)
        sizes = shapes.prod(axis=1)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        pixels = torch.empty(int(sizes.sum()), dtype=torch.uint8)
        flat = pixels.numpy()
        for image, start, size in zip(images, offsets, sizes):
            if image is not None:
                flat[start:start + size] = image.reshape(-1)
        try:
            pixels.share_memory_()
        except RuntimeError:  # /dev/shm too small (64 MB in a default Docker container): forked workers
            pass  # still share the pages copy-on-write; spawned ones get a copy each
        return cls(pixels, offsets, shapes, presize)
