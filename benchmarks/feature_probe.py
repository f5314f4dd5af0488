"""How well each layer group's frozen features fit a task: leave-one-out nearest-class-mean top-1 on the train images.

The evidence behind the domain check of `--freeze-until auto` (finetune/training/feature_fit.py, which
compares the first and the last group and supplies the measure used here). For each layer group below
the head, the group's output is average-pooled, L2-normalised, and every train image is classified by
the nearest class mean of the others. Compares lite0's ImageNet weights with resnet18 trained by the
toolkit on the textures task.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/feature_probe.py [--work runs/bq-source]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import quality  # noqa: E402

from finetune.data.real import TASKS, make_real_task  # noqa: E402
from finetune.data.scan import scan_image_folder  # noqa: E402
from finetune.data.transforms import build_eval_transform  # noqa: E402
from finetune.models.backbone import create_backbone  # noqa: E402
from finetune.training.feature_fit import group_outputs, nearest_mean_loo  # noqa: E402


def probe(backbone: str, weights: str, data: Path, size: int = 32) -> list[tuple[str, float]]:
    """(group, LOO nearest-mean top-1) for every group below the head, input side first."""
    index = scan_image_folder(data)
    net, _ = create_backbone(backbone, len(index.classes), weights)
    x, y = quality._load_split(data / "train", index.classes, build_eval_transform(net.data_config.with_size(size)))
    names = [g.name for g in net.groups[:-1]]
    pooled = group_outputs(net, list(x), names)
    return [(name, nearest_mean_loo(pooled[name], y)) for name in names]


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
