"""How well a pretrained network's features fit a task, measured before training: the domain check
behind `--freeze-until auto`.

Transfer learning rests on one premise: along a network pretrained on a related domain, the
features grow more useful for the new classes with depth. When the data is far from that domain
(silhouettes for a network trained on textures), the last groups encode what the old task needed
and discard what separates the new classes: their output fits the task no better, or worse, than
the first group's generic edge and colour statistics. Freezing such groups keeps exactly the part
that does not transfer.

The measure is leave-one-out nearest-class-mean top-1 on average-pooled, L2-normalised features of
a small sample of train images (a classifier with nothing to fit, so few images suffice and it
costs one forward pass). The comparison is between two figures of the same network on the same
images: no threshold to tune. Evidence (benchmarks/results/feature-probe.md): resnet18 trained on
textures probes 10-shot silhouettes at 0.33 in its stem and 0.20 in layer4 (seed 0's split); training
every layer took test top-1 from 0.52 (last group + head) to 0.68. Wherever the last group fit better
than the stem (lite0 ImageNet on all three tasks, the textures source on textures and faces), the
data-size rule won.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from finetune.data.data_config import DataConfig
from finetune.data.images import BadImageError, load_image
from finetune.data.scan import DatasetIndex, paths_by_label
from finetune.data.transforms import build_eval_transform
from finetune.models.backbone import Backbone

PROBE_PER_CLASS = 16  # nearest-mean needs few images per class; both figures are read on the same images
# Images in all, in one fp32 eval forward pass. Measured on one thread of a busy 2-core CPU at 224 px,
# 100 images took 10 s (resnet18) and 30 s (resnet50): under 1% of the training run it decides.
PROBE_MAX = 160
# The draw is the same whatever --seed (with a flat folder the val split, hence the train images,
# still follows --seed).
PROBE_SEED = 0
BATCH = 16


@dataclass(frozen=True)
class FeatureFit:
    """Nearest-class-mean top-1 of the first and the last backbone group's output on `images` train images."""

    first: str
    first_fit: float
    last: str
    last_fit: float
    images: int

    @property
    def deep_features_no_better(self) -> bool:
        """Freezing keeps the deep features because they suit the data better than generic early
        ones; when they are no better (a tie included), nothing speaks for keeping them."""
        return self.last_fit <= self.first_fit

    def describe(self) -> str:
        return (f"nearest-class-mean top-1 on {self.images} train images: {self.last} {self.last_fit:.2f}, "
                f"{self.first} {self.first_fit:.2f}")


def nearest_mean_loo(features: Tensor, labels: Tensor) -> float:
    """Leave-one-out nearest-class-mean top-1 (cosine similarity) over the images whose class has
    another image; each is compared with its own class's mean without itself.

    Args:
        features: (N, D).
        labels: (N,) class indices.
    """
    f = F.normalize(features.double(), dim=1)
    classes = int(labels.max()) + 1
    sums = torch.zeros(classes, f.shape[1], dtype=f.dtype).index_add_(0, labels, f)
    counts = torch.bincount(labels, minlength=classes)
    sim = f @ F.normalize(sums, dim=1).T  # a class's mean direction is its sum's direction
    own = F.normalize(sums[labels] - f, dim=1)  # own class without the image itself
    sim[torch.arange(len(f)), labels] = (f * own).sum(1)
    sim[:, counts == 0] = -torch.inf
    scored = counts[labels] >= 2
    if not scored.any():
        return float("nan")
    return float((sim.argmax(1) == labels)[scored].double().mean())


def _pool(output: Tensor, channels_last_output: bool) -> Tensor:
    """(N, D) from a group's output: spatial/token average for NCHW, NHWC and (N, tokens, D) tensors."""
    if output.ndim == 4:
        return output.mean((1, 2)) if channels_last_output else output.mean((2, 3))
    if output.ndim == 3:
        return output.mean(1)
    return output.flatten(1)


def _channels_last_stages(backbone: Backbone) -> bool:
    """Whether the stages pass (N, H, W, C) tensors: timm's swin-style models say so in `output_fmt`;
    torchvision's Swin permutes after its patch embedding and says nothing."""
    if getattr(backbone.model, "output_fmt", "NCHW") == "NHWC":
        return True
    return backbone.zoo == "torchvision" and type(backbone.model).__name__.startswith("SwinTransformer")


def _first_tensor(args: Any) -> Tensor | None:
    """The first tensor among a unit's call arguments (PiT passes (x, cls_tokens), CrossViT a list)."""
    if isinstance(args, Tensor):
        return args
    if isinstance(args, (tuple, list)):
        for a in args:
            found = _first_tensor(a)
            if found is not None:
                return found
    return None


def _sample(index: DatasetIndex, seed: int) -> tuple[list, list[int]]:
    """Up to PROBE_PER_CLASS train images of each class, PROBE_MAX in all: with more than PROBE_MAX / 2
    classes, 2 images each of PROBE_MAX / 2 classes drawn at random (both figures read the same ones)."""
    rng = np.random.default_rng(seed)
    by_label = paths_by_label(index.train)
    labels_present = sorted(by_label)
    if 2 * len(labels_present) > PROBE_MAX:
        labels_present = sorted(rng.choice(labels_present, PROBE_MAX // 2, replace=False).tolist())
    per_class = max(2, min(PROBE_PER_CLASS, PROBE_MAX // max(1, len(labels_present))))
    paths, labels = [], []
    for label in labels_present:
        members = by_label[label]
        for i in rng.permutation(len(members))[:per_class]:
            paths.append(members[i])
            labels.append(label)
    return paths, labels


@torch.no_grad()
def group_outputs(backbone: Backbone, batches: Iterable[Tensor], names: Sequence[str]) -> dict[str, Tensor]:
    """Pooled outputs (N, D) of the named groups below the head for batches of preprocessed images,
    in eval mode (no BatchNorm statistics change); each module's train/eval mode is restored.

    A group's output is taken as the input of the next group's first unit: what the network passes
    on, after any parameter-free activation or pooling between units (timm's resnet applies its stem
    ReLU and max-pool outside the stem's units), and for the last group what the head reads.

    Raises:
        RuntimeError: A unit was not called exactly once per batch with a tensor (its input cannot be
            read as the group's output).
    """
    following = {g.name: backbone.groups[i + 1] for i, g in enumerate(backbone.groups[:-1])}
    captured: dict[str, list[Tensor]] = {n: [] for n in names}
    nhwc = _channels_last_stages(backbone)

    def hook(name: str):
        def capture(module, args):
            x = _first_tensor(args)
            if x is None:
                raise RuntimeError(f"{following[name].unit_names[0]} was called without a tensor")
            captured[name].append(_pool(x.float(), nhwc))
        return capture

    hooks = [backbone.model.get_submodule(following[n].unit_names[0]).register_forward_pre_hook(hook(n))
             for n in names]
    modes = {m: m.training for m in backbone.modules()}
    backbone.eval()
    try:
        for calls, batch in enumerate(batches, start=1):
            backbone.model(batch)
            for n in names:
                if len(captured[n]) != calls:
                    raise RuntimeError(f"{following[n].unit_names[0]} ran {len(captured[n]) - calls + 1} times "
                                       f"in one forward pass; its input is not one group output")
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return {n: torch.cat(v) for n, v in captured.items() if v}


def measure_feature_fit(backbone: Backbone, index: DatasetIndex, data_config: DataConfig,
                        seed: int = PROBE_SEED, progress: bool = False) -> FeatureFit | None:
    """Probes the first and the last group below the head on a sample of train images, preprocessed
    as for validation at the run's input size, a batch at a time. None when there is nothing to
    compare (fewer than two body groups, or fewer than two classes with two readable images)."""
    body = backbone.groups[:-1]
    if len(body) < 2:
        return None
    paths, labels = _sample(index, seed)
    transform = build_eval_transform(data_config)
    kept: list[int] = []

    def batches() -> Iterator[Tensor]:
        starts: Iterable[int] = range(0, len(paths), BATCH)
        if progress and len(paths) > BATCH:
            from rich.progress import track

            starts = track(starts, description="Checking the pretrained features")
        for start in starts:
            images = []
            for path, label in zip(paths[start:start + BATCH], labels[start:start + BATCH], strict=True):
                try:
                    images.append(transform(load_image(path)))
                except BadImageError:  # the scan already reported it
                    continue
                kept.append(label)
            if images:
                yield torch.stack(images)

    first, last = body[0].name, body[-1].name
    out = group_outputs(backbone, batches(), (first, last))
    y = torch.tensor(kept, dtype=torch.long)
    if len(y) == 0 or int((torch.bincount(y) >= 2).sum()) < 2:
        return None
    return FeatureFit(first, nearest_mean_loo(out[first], y), last, nearest_mean_loo(out[last], y), len(y))
