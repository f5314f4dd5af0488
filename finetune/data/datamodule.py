"""LightningDataModule over an image folder (class folders or a label table): scan once, then train/val/test
dataloaders."""
from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Callable, get_args

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from finetune.config import Sampler
from finetune.data.balance import balanced_sample_weights
from finetune.data.data_config import DataConfig
from finetune.data.dataset import ImageListDataset
from finetune.data.memory import estimated_bytes, memory_budget, transform_presize
from finetune.data.policy import AugmentPolicy
from finetune.data.scan import DatasetIndex
from finetune.data.tables import TableSpec, scan_data
from finetune.data.transforms import build_eval_transform, build_train_transform
from finetune.errors import DataError
from finetune.heap import release_in_child

Transform = Callable[[np.ndarray], torch.Tensor]

# Val/test batches are this many times the training batch. Inference keeps no activations for a
# backward pass, so 4x the batch still needs less memory than one training step; and the training
# batch of a small set is small (8) to give it enough steps, where batching is what makes
# inference fast: resnet18 at 32 px on one core ran 224 img/s at batch 8, 826 at 32, 1248 at 128.
EVAL_BATCH_FACTOR = 4


def _quiet_when_the_reader_left(hook: Callable[..., None]) -> Callable[..., None]:
    """`hook`, except for a connection error raised outside the main thread.

    A worker hands each batch to the training process by a file descriptor, sent from a background thread
    of multiprocessing's resource sharer. When the training process stops mid-handover (Ctrl-C, SIGTERM),
    that thread's accept fails and it prints the traceback through sys.excepthook. The process it served
    is stopping on purpose and says so in one line; the traceback is noise.
    """
    import multiprocessing
    import threading

    benign = (EOFError, ConnectionError, multiprocessing.AuthenticationError)

    def excepthook(kind: type[BaseException], value: BaseException, tb: object) -> None:
        if issubclass(kind, benign) and threading.current_thread() is not threading.main_thread():
            return
        hook(kind, value, tb)

    return excepthook


def worker_init_fn(worker_id: int) -> None:
    """Limits threads and gives each dataloader worker its own random streams.

    OpenCV otherwise starts a thread per core in every worker (albumentations issue #1246), and
    torch does the same for intra-op work: N workers x N cores threads thrash the CPU. Forked
    workers also inherit identical numpy/random/albumentations RNG states, which would repeat the
    same augmentations in every worker, and the training process's heap settings (finetune.heap).
    Ctrl-C reaches every process of the terminal's group: workers leave it to the training process,
    which stops them, instead of each printing its own KeyboardInterrupt traceback.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.excepthook = _quiet_when_the_reader_left(sys.excepthook)
    release_in_child()
    cv2.setNumThreads(0)
    torch.set_num_threads(1)
    info = torch.utils.data.get_worker_info()
    seed = info.seed % 2**32  # differs per worker and per epoch (base_seed + worker_id)
    np.random.seed(seed)
    random.seed(seed)
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


class ImageFolderDataModule(pl.LightningDataModule):
    """Train/val[/test] dataloaders over an image folder scanned by `scan_data` (class folders, or the label
    table `labels`: a path or a `finetune.data.tables.TableSpec`).

    The scan runs in `__init__` (unless `index` is given): it is cheap, and the class count must be
    known before the model (its head) is built.

    Attributes:
        index: The scan result (classes, splits, bad files).
        classes: Sorted class names; label i is classes[i].
        num_classes: len(classes).
        keep_images: Decode the train and val images once into shared memory when they fit the memory
            budget (`finetune.data.memory`), instead of in every epoch; `memory_note` says what happened.
    """

    def __init__(
        self,
        data_dir: str | Path,
        data_config: DataConfig,
        batch_size: int = 32,
        workers: int = 0,
        val_split: float = 0.2,
        seed: int = 0,
        pin_memory: bool | None = None,
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
        index: DatasetIndex | None = None,
        augment: str | AugmentPolicy = "standard",
        sampler: str = "shuffle",
        keep_images: bool = False,
        labels: str | Path | TableSpec | None = None,
    ):
        super().__init__()
        self.data_config, self.batch_size, self.workers, self.seed = data_config, batch_size, workers, seed
        self.eval_batch_size = batch_size * EVAL_BATCH_FACTOR
        if sampler not in get_args(Sampler):
            raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(get_args(Sampler))}")
        self.sampler = sampler
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        # A caller that already scanned (to size the head) passes its index: no second decode pass.
        self.index = index if index is not None else scan_data(data_dir, labels, val_split=val_split, seed=seed)
        self.train_transform = train_transform or build_train_transform(data_config, seed=seed, preset=augment)
        self.eval_transform = eval_transform or build_eval_transform(data_config)
        self.datasets: dict[str, ImageListDataset] = {}
        self.keep_images = keep_images
        self.memory_note: str | None = None  # what keep_images did, for the console

    @property
    def classes(self) -> list[str]:
        return self.index.classes

    @property
    def num_classes(self) -> int:
        return len(self.index.classes)

    def setup(self, stage: str | None = None) -> None:
        """Builds the datasets of every split present (idempotent)."""
        if self.datasets:
            return
        self.datasets["train"] = ImageListDataset(self.index.train, self.train_transform)
        self.datasets["val"] = ImageListDataset(self.index.val, self.eval_transform)
        if self.index.test is not None:
            self.datasets["test"] = ImageListDataset(self.index.test, self.eval_transform)
        if self.keep_images:
            self.memory_note = self._keep_in_memory(("train", "val"))

    def _keep_in_memory(self, splits: tuple[str, ...]) -> str:
        """Decodes the splits' images into shared memory when they fit the budget; says what it did."""
        sets = [self.datasets[s] for s in splits]
        need = sum(estimated_bytes([p for p, _ in d.items], transform_presize(d.transform)) for d in sets)
        budget = memory_budget()
        if need > budget:
            return (f"off: the decoded images would take about {need / 2**20:.0f} MB, over the budget of "
                    f"{budget / 2**20:.0f} MB (a quarter of the available memory); read from the files every epoch")
        start = time.perf_counter()
        kept = [d.keep_in_memory(os.cpu_count() or 1) for d in sets]
        sides = sorted({f"{k.presize.side} px" if k.presize else "full size" for k in kept})
        return (f"{sum(len(k) for k in kept)} {' + '.join(splits)} images decoded once into memory "
                f"({sum(k.nbytes for k in kept) / 2**20:.1f} MB, shorter side {', '.join(sides)}; "
                f"{time.perf_counter() - start:.1f} s)")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        sampler = None
        if shuffle and self.sampler == "balanced":
            # One generator for the sampler and the loader: the loader's is what a checkpoint saves.
            labels = [label for _, label in self.index.train]
            sampler = WeightedRandomSampler(balanced_sample_weights(labels, self.num_classes), len(labels),
                                            replacement=True, generator=generator)
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            drop_last=shuffle and self._last_batch_of_one(len(self.datasets[split])),
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            worker_init_fn=worker_init_fn if self.workers > 0 else None,
            persistent_workers=self.workers > 0,
            generator=generator,
        )

    def _last_batch_of_one(self, n: int) -> bool:
        """Whether the last training batch of each process would hold a single image.

        BatchNorm cannot normalise one image (BatchNorm1d raises; 2-D layers get degenerate
        statistics), so that batch is dropped; any larger short batch still carries data and
        is kept, since tiny datasets are common here. Under DDP each process sees ceil(n / world).
        """
        world = getattr(self.trainer, "world_size", 1) if self.trainer is not None else 1
        return -(-n // world) % self.batch_size == 1

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches: images (B, 3, S, S) float32, labels (B,) int64."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Batches of eval_batch_size in scan order: images (B, 3, S, S) float32, labels (B,) int64."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Batches of the test split in scan order; raises DataError when there is none."""
        if self.index.test is None:
            raise DataError(
                f"{self.index.root} has no test split: add {self.index.root}/test/<class>/* "
                f"(the split layout: train/, val/, test/), or evaluate on the val split"
            )
        return self._loader("test", shuffle=False)
