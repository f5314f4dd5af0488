"""The frozen-feature cache: when it applies, its key, and filling it.

When the frozen part of the network sees no random input (`--augment none`) and stays frozen for the
whole run, its output for an image never changes: it is computed once and the rest of the network
trains on the stored tensors (`finetune.data.feature_cache`). With `--cache-views K` the same is done
for K augmented views of each training image.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from finetune.config import RunConfig
from finetune.data.datamodule import ImageFolderDataModule, worker_init_fn
from finetune.data.feature_cache import FeatureDataModule, FeatureStore, StoredSplit
from finetune.models.backbone import Backbone
from finetune.training.feature_split import FeatureSplit, NotSplittable, inside, split_network
from finetune.training.freeze import FreezeSchedule


@dataclass(frozen=True)
class CacheChoice:
    """Whether a run trains on cached features, and why.

    Attributes:
        use: Train on stored features.
        why: The reason, for the console and config.yaml.
        views: K augmented views per training image (None: the one deterministic input).
    """

    use: bool
    why: str
    views: int | None = None


def cache_choice(config: RunConfig, schedule: FreezeSchedule, random_augment: bool, world_size: int) -> CacheChoice:
    """Decides from the settings alone whether the cache applies (the network's graph is checked later)."""
    if config.feature_cache == "off":
        return CacheChoice(False, "--feature-cache off")
    blockers = [
        (schedule.initial == 0, "nothing is frozen"),
        (bool(schedule.milestones), "the frozen part shrinks during the run (gradual unfreezing)"),
        (schedule.train_bn, "BatchNorm layers of the frozen part train (--train-bn / bn-only)"),
        (config.mixup > 0 or config.cutmix > 0, "mixup/cutmix mix the images before the frozen part"),
        (config.teacher is not None, "the distillation teacher needs the images"),
        (config.ema, "--ema validates a copy of the whole network"),
        (world_size > 1, "it runs in one process only"),
        (config.limit_train_batches != 1.0 or isinstance(config.limit_train_batches, int),
         "--limit-train-batches stops the epoch early, where the shuffle of cached and image batches would part"),
        (random_augment and not config.cache_views, "a random augmentation reaches the frozen part (--augment none, "
                                                    "or --cache-views K, would cache it)"),
    ]
    for blocked, why in blockers:
        if blocked:
            return CacheChoice(False, why)
    if random_augment:
        return CacheChoice(True, f"--cache-views {config.cache_views}: {config.cache_views} augmented views of each "
                                 "training image, view e mod K in epoch e", config.cache_views)
    return CacheChoice(True, "exact: the frozen part sees no random augmentation")


def _tensor_digest(h: "hashlib._Hash", tensor: torch.Tensor) -> None:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    h.update(str((tuple(tensor.shape), tensor.dtype)).encode())
    h.update(flat.view(torch.uint8).numpy().tobytes())


def _file_ids(items: list[tuple[Path, int]]) -> list[tuple[str, int, int, int]]:
    out = []
    for path, label in items:
        st = Path(path).stat()
        out.append((str(Path(path).absolute()), st.st_size, st.st_mtime_ns, label))
    return out


def cache_key(backbone: Backbone, split: FeatureSplit, later_units: set[str], preprocessing: dict,
              items: dict[str, list[tuple[Path, int]]], precision: str, channels_last: bool) -> str:
    """A hash of everything the stored features depend on.

    The frozen weights (every tensor outside the layers that train, buffers included), the cut, the
    preprocessing (data config, augmentation, views, seed), the identity of every image file (path, size,
    modification time) and label, the numeric precision and memory format, and the torch version.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"backbone": backbone.name, "boundary": split.boundary, "prefix": split.prefix.code,
                         "preprocessing": preprocessing, "precision": precision, "channels_last": channels_last,
                         "torch": torch.__version__,
                         "files": {s: _file_ids(v) for s, v in items.items()}}, sort_keys=True,
                        default=str).encode())
    for name, tensor in sorted(backbone.model.state_dict().items()):
        if not inside(name, later_units):
            h.update(name.encode())
            _tensor_digest(h, tensor)
    return h.hexdigest()[:32]


@torch.no_grad()
def _rows(split: FeatureSplit, loader: DataLoader, device: torch.device, context: Callable[[], AbstractContextManager],
          channels_last: bool, passes: int, progress: str | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    batches = (batch for _ in range(passes) for batch in loader)
    if progress:
        from rich.progress import track

        batches = track(batches, description=progress, total=passes * len(loader), transient=True)
    for images, labels in batches:
        images = images.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with context():
            yield split.prefix(images), labels


@torch.no_grad()
def _check_fixed(split: FeatureSplit, model: torch.nn.Module, images: ImageFolderDataModule, device: torch.device,
                 context: Callable[[], AbstractContextManager], channels_last: bool) -> None:
    """Refuses a prefix whose output changes between two calls in the training state or in eval mode.

    The traced code cannot show it: a dropout module outside every layer (a ViT's `head_drop` with
    --head-dropout, `pos_drop`) is not frozen, so it stays in training mode, and traces to the same call
    in both states. Run on one val batch, with the random streams restored afterwards.
    """
    x = next(iter(DataLoader(images.datasets["val"], batch_size=min(8, len(images.datasets["val"])))))[0].to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    flags = {m: m.training for m in model.modules()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), context():
        first, second = split.prefix(x), split.prefix(x)
        model.eval()
        evaluated = split.prefix(x)
    for m, flag in flags.items():
        m.training = flag
    if not (torch.equal(first, second) and torch.equal(first, evaluated)):
        raise NotSplittable("the frozen part's output changes in training (a dropout outside its layers, such as "
                            "--head-dropout before a transformer's head)")


@dataclass
class CachedFeatures:
    """What `prepare_feature_cache` built: the split network and the feature loaders."""

    split: FeatureSplit
    datamodule: FeatureDataModule
    key: str
    reused: bool

    def describe(self) -> str:
        train = self.datamodule.features["train"]
        where = "in memory" if train.in_memory else "memory-mapped from disk"
        views = f", {train.views} views" if train.views else ""
        total = sum(s.nbytes for s in self.datamodule.features.values())
        verb = "reused" if self.reused else "computed"
        return (f"features of {self.split.boundary}'s input {verb} ({total / 2**20:.1f} MB{views}, {where}; "
                f"key {self.key[:12]})")


def prepare_feature_cache(backbone: Backbone, frozen_units: int, images: ImageFolderDataModule, choice: CacheChoice,
                          device: torch.device, context: Callable[[], AbstractContextManager] | None,
                          channels_last: bool,
                          precision: str, preprocessing: dict, progress: bool = False,
                          root: Path | None = None) -> CachedFeatures:
    """Cuts the network before its first trained layer and fills (or reuses) the cache of every split.

    The network must be on `device`, in its final memory format and in its training state (frozen
    layers in eval mode), as the run trains it: the traced graphs keep references to its tensors.
    `context` makes the autocast context the training steps run in (Lightning's precision plugin).

    Raises:
        NotSplittable: The network cannot be cut exactly there (a skip connection crosses, no trace...).
    """
    units = [u.name for u in backbone.units]
    split = split_network(backbone.model, units, frozen_units)
    images.setup()
    _check_fixed(split, backbone.model, images, device, context or nullcontext, channels_last)
    # Training and validation only: the final evaluation runs the whole network on the test images.
    items = {"train": images.index.train, "val": images.index.val}
    key = cache_key(backbone, split, set(units[frozen_units:]), {**preprocessing, "views": choice.views},
                    items, precision, channels_last)
    store = FeatureStore(key, root)
    reused = all(store.has(s) for s in items)
    for name in items:
        if store.has(name):
            continue
        dataset = images.datasets[name]
        passes = choice.views if name == "train" and choice.views else 1
        loader = DataLoader(dataset, batch_size=images.eval_batch_size, shuffle=False, num_workers=images.workers,
                            generator=torch.Generator().manual_seed(images.seed),
                            worker_init_fn=worker_init_fn if images.workers else None)
        rows = _rows(split, loader, device, context or nullcontext, channels_last, passes,
                     f"Caching {name} features" if progress else None)
        store.write(name, rows, len(dataset), choice.views if name == "train" else None)
    stored: dict[str, StoredSplit] = {name: store.read(name) for name in items}
    return CachedFeatures(split, FeatureDataModule(images, stored), key, reused)
