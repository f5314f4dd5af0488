"""How well each layer group's frozen features fit a task: leave-one-out nearest-class-mean top-1 on the train images.

A candidate signal for how much of a pretrained network to train (issue: the frozen part should follow
how far the data is from the weights' domain). For each layer group below the head, the group's output
is average-pooled, L2-normalised, and every train image is classified by the nearest class mean of the
others. Compares lite0's ImageNet weights with resnet18 trained by the toolkit on the textures task.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/feature_probe.py [--work runs/bq-source]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import quality  # noqa: E402

from finetune.data.real import TASKS, make_real_task  # noqa: E402
from finetune.data.scan import scan_image_folder  # noqa: E402
from finetune.data.transforms import build_eval_transform  # noqa: E402
from finetune.models.backbone import create_backbone  # noqa: E402


def loo_nearest_mean(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Leave-one-out nearest-class-mean top-1 with cosine similarity."""
    f = F.normalize(features, dim=1)
    classes = int(labels.max()) + 1
    sums = torch.zeros(classes, f.shape[1]).index_add_(0, labels, f)
    counts = torch.bincount(labels, minlength=classes).float()
    correct = 0
    for i in range(len(f)):
        s, c = sums.clone(), counts.clone()
        s[labels[i]] -= f[i]
        c[labels[i]] -= 1
        correct += int((F.normalize(s / c[:, None].clamp(min=1), dim=1) @ f[i]).argmax() == labels[i])
    return correct / len(f)


def probe(backbone: str, weights: str, data: Path, size: int = 32) -> list[tuple[str, float]]:
    """(group, LOO nearest-mean top-1) for every group below the head, input side first."""
    index = scan_image_folder(data)
    net, _ = create_backbone(backbone, len(index.classes), weights)
    x, y = quality._load_split(data / "train", index.classes, build_eval_transform(net.data_config.with_size(size)))
    outputs: dict[str, torch.Tensor] = {}
    model = net.model.eval()
    for group in net.groups[:-1]:
        model.get_submodule(group.unit_names[-1]).register_forward_hook(
            lambda m, i, o, name=group.name: outputs.__setitem__(name, o))
    with torch.no_grad():
        model(x)
    pooled = {k: (v.mean((2, 3)) if v.ndim == 4 else v.flatten(1)) for k, v in outputs.items()}
    return [(g.name, loo_nearest_mean(pooled[g.name], y)) for g in net.groups[:-1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-probe"))
    parser.add_argument("--shots", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    source = str(quality.source_weights(args.work))
    for task in TASKS:
        data = args.work / "data" / f"{task}-{args.shots}-0"
        if not data.is_dir():
            make_real_task(task, data, args.shots, seed=0)
        for label, backbone, weights in (("lite0 ImageNet", quality.IMAGENET_BACKBONE, "imagenet"),
                                         ("resnet18 textures source", quality.SOURCE_BACKBONE, source)):
            cells = " ".join(f"{name} {acc:.2f}" for name, acc in probe(backbone, weights, data))
            print(f"| {task} | {label} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
