"""How well the pretrained features already separate the classes: a quick probe before training.

The probe embeds a stratified sample of training images with the frozen backbone (the input of its
classifier) and scores a leave-one-out nearest-class-mean classifier on them. Features that already
separate the classes (data close to the weights' domain) are worth protecting with a low backbone
LR; features that do not (a far domain: grey textures, silhouettes, medical images) must move.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from finetune.data.data_config import DataConfig
from finetune.data.images import BadImageError, load_image
from finetune.data.scan import DatasetIndex
from finetune.data.transforms import build_eval_transform
from finetune.models.backbone import Backbone

PROBE_PER_CLASS = 20
PROBE_MAX_IMAGES = 200  # a few seconds of forward passes even for resnet50 at 224 px on 2 cores
MULT_RANGE = (0.1, 1.0)  # 0.1: the usual protective fine-tuning start; 1: the backbone learns like the head


@dataclass(frozen=True)
class ProbeResult:
    """Leave-one-out nearest-class-mean top-1 on frozen features.

    Attributes:
        accuracy: Top-1 on the probed images.
        chance: 1 / classes.
        images: Images probed.
        separation: (accuracy - chance) / (1 - chance), clipped to 0-1: 0 at chance, 1 when perfect.
    """

    accuracy: float
    chance: float
    images: int
    separation: float

    def to_dict(self) -> dict:
        return asdict(self)


def probe_features(backbone: Backbone, index: DatasetIndex, data_config: DataConfig, seed: int = 0) -> ProbeResult:
    """Embeds a stratified sample of `index.train` and scores nearest-class-mean on it (see ProbeResult)."""
    x, y = _sample(index, data_config, seed)
    feats = _features(backbone, x)
    accuracy = _loo_class_mean_accuracy(feats, y) if len(y) else math.nan
    chance = 1.0 / len(index.classes)
    separation = 0.0 if math.isnan(accuracy) else min(1.0, max(0.0, (accuracy - chance) / (1.0 - chance)))
    return ProbeResult(accuracy, chance, len(y), separation)


def backbone_lr_mult_from_probe(probe: ProbeResult) -> float:
    """0.1 ** separation: 0.1 when the frozen features already separate the classes, 1 when they are at chance.

    Log-linear between the two ends of MULT_RANGE, so a half-separating feature space gets about 0.32.
    """
    low, high = MULT_RANGE
    return float(high * (low / high) ** probe.separation)


def _sample(index: DatasetIndex, dc: DataConfig, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    per_class = max(2, min(PROBE_PER_CLASS, PROBE_MAX_IMAGES // max(1, len(index.classes))))
    by_label: dict[int, list] = {}
    for path, label in index.train:
        by_label.setdefault(label, []).append(path)
    transform, xs, ys = build_eval_transform(dc), [], []
    for label, paths in sorted(by_label.items()):
        for i in rng.permutation(len(paths))[:per_class]:
            try:
                xs.append(transform(load_image(paths[i])))
            except BadImageError:  # listed by the scan already
                continue
            ys.append(label)
    return (torch.stack(xs) if xs else torch.empty(0)), np.asarray(ys)


@torch.inference_mode()
def _features(backbone: Backbone, x: torch.Tensor) -> np.ndarray:
    """(N, 3, S, S) -> (N, D): the input of the classifier unit, whichever zoo built the network."""
    head = backbone.model.get_submodule(backbone.head_unit().name)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].flatten(1).float()))
    was_training = backbone.training
    backbone.eval()
    try:
        for batch in x.split(32):
            backbone(batch)
    finally:
        hook.remove()
        backbone.train(was_training)
    return torch.cat(captured).numpy() if captured else np.empty((0, 0))


def _loo_class_mean_accuracy(feats: np.ndarray, y: np.ndarray) -> float:
    """Each image is classified by the nearest class mean (cosine) computed without itself."""
    f = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-8)
    classes = np.unique(y)
    sums = np.stack([f[y == c].sum(0) for c in classes])
    counts = np.array([(y == c).sum() for c in classes], dtype=np.float64)
    correct = 0
    for i in range(len(y)):
        k = int(np.searchsorted(classes, y[i]))
        s, n = sums.copy(), counts.copy()
        s[k] -= f[i]
        n[k] -= 1
        means = s / np.maximum(n, 1)[:, None]
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-8)
        score = means @ f[i]
        score[n == 0] = -np.inf  # a class left with no image cannot be predicted
        correct += int(classes[int(score.argmax())] == y[i])
    return correct / len(y)
