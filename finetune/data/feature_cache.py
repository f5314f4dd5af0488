"""Stored outputs of a network's frozen part, one row per image, and the loaders that serve them.

A split's features are written once to `<cache folder>/features/<key>/<split>.npy` (the key hashes
the frozen weights, the preprocessing and the image files, so any change of these is a new key),
then read back whole into memory when they fit the memory budget, else memory-mapped from disk.
Rows are written as they are computed: the full array is never held in memory to write it.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from finetune import atomic
from finetune.cache import cache_dir
from finetune.data.datamodule import ImageFolderDataModule
from finetune.data.memory import memory_budget

# numpy has no bfloat16: such features are stored as their raw 16-bit patterns and viewed back.
_STORED = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16}


def features_root() -> Path:
    return cache_dir() / "features"


@dataclass(frozen=True)
class StoredSplit:
    """One split's features, in memory or memory-mapped.

    Attributes:
        array: (N, *shape) or, for K augmented views, (K, N, *shape); numpy, possibly a memmap.
        dtype: The torch dtype the rows are viewed as.
        labels: (N,) class indices.
        in_memory: False when `array` is memory-mapped from disk.
        views: K for a split of K augmented views, else None.
    """

    array: np.ndarray
    dtype: torch.dtype
    labels: np.ndarray
    in_memory: bool
    views: int | None = None

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


class FeatureStore:
    """The feature folder of one key: `<split>.npy`, `<split>.labels.npy` and `meta.json` per split."""

    def __init__(self, key: str, root: Path | None = None):
        self.key, self.dir = key, (root or features_root()) / key

    def has(self, split: str) -> bool:
        return (self.dir / f"{split}.done").is_file()

    def write(self, split: str, rows: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int, views: int | None) -> None:
        """Writes `n` rows (batches of (features, labels), in order; `views` passes of them with views).

        The labels are the ones the batches carry (a file that stopped decoding is replaced by another
        image, with that image's label). Everything is written under temporary names and renamed, the
        marker last: a run stopped midway leaves no half split behind, and a reader never sees one.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic.remove_abandoned(self.dir)  # the files of a run killed while filling the cache
        tmp = {name: atomic.temporary_path(self.dir / f"{split}.{name}") for name in ("npy", "labels.npy", "json")}
        out, meta, pos, labels = None, None, 0, []
        try:
            for batch, batch_labels in rows:
                if out is None:
                    shape = ((views,) if views else ()) + (n, *batch.shape[1:])
                    out = np.lib.format.open_memmap(tmp["npy"], mode="w+", dtype=_STORED[batch.dtype], shape=shape)
                    meta = {"dtype": str(batch.dtype).removeprefix("torch."), "shape": list(shape), "views": views}
                flat = out.reshape(-1, *out.shape[2:]) if views else out
                flat[pos:pos + len(batch)] = _as_numpy(batch)
                if pos < n:  # the first pass: the views repeat the same images in the same order
                    labels.extend(int(y) for y in batch_labels)
                pos += len(batch)
            expected = n * (views or 1)
            if out is None or pos != expected:
                raise RuntimeError(f"feature cache: {pos} rows computed for {split}, expected {expected}")
            out.flush()
            del out
            with open(tmp["labels.npy"], "wb") as f:
                np.save(f, np.array(labels, dtype=np.int64))
            tmp["json"].write_text(json.dumps(meta))
            for name, path in tmp.items():
                os.replace(path, self.dir / f"{split}.{name}")
            (self.dir / f"{split}.done").touch()
        finally:
            for path in tmp.values():
                path.unlink(missing_ok=True)

    def read(self, split: str, budget: int | None = None) -> StoredSplit:
        """The split's features: in memory when they fit `budget` bytes (default: `memory_budget()`)."""
        meta = json.loads((self.dir / f"{split}.json").read_text())
        mapped = np.load(self.dir / f"{split}.npy", mmap_mode="r")
        in_memory = mapped.nbytes <= (memory_budget() if budget is None else budget)
        array = np.array(mapped) if in_memory else mapped
        labels = np.load(self.dir / f"{split}.labels.npy")
        return StoredSplit(array, getattr(torch, meta["dtype"]), labels, in_memory, meta["views"])

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _as_numpy(batch: torch.Tensor) -> np.ndarray:
    batch = batch.detach().to("cpu").contiguous()
    return (batch.view(torch.int16) if batch.dtype == torch.bfloat16 else batch).numpy()


def as_tensor(rows: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Stored rows back as a tensor of `dtype` (a copy when memory-mapped: the map is read-only)."""
    if not rows.flags.writeable:
        rows = np.array(rows)
    tensor = torch.from_numpy(rows)
    return tensor.view(dtype) if dtype == torch.bfloat16 else tensor


class FeatureDataset(Dataset):
    """(features, label) pairs of one stored split; with views, `view` picks the augmented view served."""

    def __init__(self, stored: StoredSplit):
        self.stored, self.views, self.view = stored, stored.views, 0

    def __len__(self) -> int:
        return len(self.stored.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rows = self.stored.array[self.view] if self.views else self.stored.array
        return as_tensor(rows[index], self.stored.dtype), int(self.stored.labels[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        # One fancy-indexing read per batch instead of one per image (much faster from a memmap).
        rows = self.stored.array[self.view] if self.views else self.stored.array
        batch = as_tensor(rows[np.asarray(indices)], self.stored.dtype)
        return list(zip(batch, (int(self.stored.labels[i]) for i in indices)))


class FeatureDataModule(ImageFolderDataModule):
    """An ImageFolderDataModule whose splits are stored features instead of images.

    Batching, shuffling (the same seeded generator), the balanced sampler and the last-batch rule
    are the image module's own, so a run on features sees the same batches as on images.
    """

    def __init__(self, images: ImageFolderDataModule, features: dict[str, StoredSplit]):
        # Rows need no decoding: no worker processes (each batch would cross a pipe). The image loaders'
        # persistent workers draw the shuffle generator differently, which `_loader` reproduces.
        self.image_workers = images.workers
        super().__init__(images.index.root, images.data_config, batch_size=images.batch_size, workers=0,
                         seed=images.seed, pin_memory=images.pin_memory, train_transform=images.train_transform,
                         eval_transform=images.eval_transform, index=images.index, sampler=images.sampler)
        self.features = features

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        loader = super()._loader(split, shuffle)
        if self.image_workers == 0:
            return loader
        # A DataLoader with persistent workers draws its workers' base seed from the generator once, at
        # its first epoch; one without workers draws it every epoch, which would shuffle later epochs
        # differently from the same run on images. Keeping one iterator and resetting it draws it once.
        loader.__class__ = _OneIteratorLoader
        return loader

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for split, stored in self.features.items():
            self.datasets[split] = FeatureDataset(stored)

    def show_view(self, epoch: int) -> None:
        """Serves augmented view `epoch mod K` of the training images (no-op without views)."""
        self.setup()
        train = self.datasets["train"]
        if train.views:
            train.view = epoch % train.views


class _OneIteratorLoader(DataLoader):
    """A DataLoader without workers that draws from its generator when one with persistent workers does:
    it keeps its iterator across epochs, resets it, and takes the epoch's batches at once."""

    def __iter__(self):
        if self._iterator is None:
            self._iterator = self._get_iterator()
        else:
            self._iterator._reset(self)
        # Workers are sent their first batches as soon as their iterator is reset, which draws the epoch's
        # shuffle then, not at the first batch: Lightning resets more than once before some epochs.
        self._iterator._sampler_iter = iter(list(self._iterator._sampler_iter))
        return self._iterator
