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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from finetune.data.data_config import DataConfig
from finetune.data.images import BadImageError, load_image
from finetune.data.scan import DatasetIndex
from finetune.data.transforms import build_eval_transform
from finetune.models.backbone import Backbone

PROBE_PER_CLASS = 16  # nearest-mean needs few images per class; both figures are read on the same images
# Images in all, in one fp32 eval forward pass. Measured on one thread of a busy 2-core CPU at 224 px,
# 100 images took 10 s (resnet18) and 30 s (resnet50): under 1% of the training run it decides.
PROBE_MAX = 160
PROBE_SEED = 0  # the sample is the same whatever --seed, so runs that differ only in seed train alike
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


def _sample(index: DatasetIndex, seed: int) -> tuple[list, list[int]]:
    rng = np.random.default_rng(seed)
    per_class = max(2, min(PROBE_PER_CLASS, PROBE_MAX // max(1, len(index.classes))))
    by_label: dict[int, list] = {}
    for path, label in index.train:
        by_label.setdefault(label, []).append(path)
    paths, labels = [], []
    for label, members in sorted(by_label.items()):
        for i in rng.permutation(len(members))[:per_class]:
            paths.append(members[i])
            labels.append(label)
    return paths, labels


@torch.no_grad()
def group_outputs(backbone: Backbone, images: Sequence[Tensor], names: Sequence[str],
                  progress: bool = False) -> dict[str, Tensor]:
    """Pooled outputs (N, D) of the named groups below the head for preprocessed images, in eval
    mode (no BatchNorm statistics change); the network's train/eval mode is restored.

    A group's output is taken as the input of the next group's first unit: what the network passes
    on, after any parameter-free activation or pooling between units (timm's resnet applies its stem
    ReLU and max-pool outside the stem's units), and for the last group what the head reads.
    """
    following = {g.name: backbone.groups[i + 1] for i, g in enumerate(backbone.groups[:-1])}
    captured: dict[str, list[Tensor]] = {n: [] for n in names}
    nhwc = getattr(backbone.model, "output_fmt", "NCHW") == "NHWC"  # timm's swin-style stages
    hooks = [backbone.model.get_submodule(following[n].unit_names[0]).register_forward_pre_hook(
        lambda m, args, n=n: captured[n].append(_pool(args[0].float(), nhwc))) for n in names]
    was_training = backbone.training
    backbone.eval()
    starts: Iterable[int] = range(0, len(images), BATCH)
    if progress and len(images) > BATCH:
        from rich.progress import track

        starts = track(starts, description="Checking the pretrained features", transient=True)
    try:
        for start in starts:
            backbone.model(torch.stack(list(images[start:start + BATCH])))
    finally:
        for h in hooks:
            h.remove()
        backbone.train(was_training)
    return {n: torch.cat(v) for n, v in captured.items()}


def measure_feature_fit(backbone: Backbone, index: DatasetIndex, data_config: DataConfig,
                        seed: int = PROBE_SEED, progress: bool = False) -> FeatureFit | None:
    """Probes the first and the last group below the head on a sample of train images, preprocessed
    as for validation at the run's input size. None when there is nothing to compare (fewer than two
    body groups, or fewer than two classes with two readable images)."""
    body = backbone.groups[:-1]
    if len(body) < 2:
        return None
    paths, labels = _sample(index, seed)
    transform = build_eval_transform(data_config)
    images, kept = [], []
    for path, label in zip(paths, labels, strict=True):
        try:
            images.append(transform(load_image(path)))
        except BadImageError:  # the scan already reported it
            continue
        kept.append(label)
    y = torch.tensor(kept, dtype=torch.long)
    if len(y) == 0 or int((torch.bincount(y) >= 2).sum()) < 2:
        return None
    first, last = body[0].name, body[-1].name
    out = group_outputs(backbone, images, (first, last), progress)
    return FeatureFit(first, nearest_mean_loo(out[first], y), last, nearest_mean_loo(out[last], y), len(y))
