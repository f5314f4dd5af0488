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
from finetune.training.feature_fit import group_outputs, measure_feature_fit, nearest_mean_loo  # noqa: E402


def probe(backbone: str, weights: str, data: Path, size: int = 32) -> list[tuple[str, float]]:
    """(group, LOO nearest-mean top-1) for every group below the head, input side first."""
    index = scan_image_folder(data)
    net, _ = create_backbone(backbone, len(index.classes), weights)
    x, y = quality._load_split(data / "train", index.classes, build_eval_transform(net.data_config.with_size(size)))
    names = [g.name for g in net.groups[:-1]]
    pooled = group_outputs(net, x.split(16), names)
    return [(name, nearest_mean_loo(pooled[name], y)) for name in names]


def decisions(work: Path, source: str) -> None:
    """What the domain check of `--freeze-until auto` decides in each benchmark regime and seed, with
    the two figures it compares (the run's own sample of at most 160 train images)."""
    print("| regime | task | seed | last group | first group | --freeze-until auto |\n|---|---|---|---|---|---|")
    for regime in ("32px-10shot-imagenet", "32px-200shot-imagenet", "32px-10shot-source"):
        r = quality.REGIMES[regime]
        backbone, weights = ((quality.IMAGENET_BACKBONE, "imagenet") if r.weights == "imagenet"
                             else (quality.SOURCE_BACKBONE, source))
        for task in TASKS:
            net, _ = create_backbone(backbone, 2, weights)  # the head is not probed: its size does not matter
            for seed in range(3):
                data = work / "data" / f"{task}-{r.train_per_class(task)}-{seed}"
                if not data.is_dir():
                    make_real_task(task, data, r.train_per_class(task), seed=seed)
                fit = measure_feature_fit(net, scan_image_folder(data), net.data_config.with_size(r.size))
                verdict = "every layer" if fit.deep_features_no_better else "the size rule"
                print(f"| {regime} | {task} | {seed} | {fit.last} {fit.last_fit:.2f} | {fit.first} {fit.first_fit:.2f} "
                      f"| {verdict} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-probe"))
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--decisions", action="store_true",
                        help="print what --freeze-until auto's domain check decides per regime and seed")
    args = parser.parse_args()
    torch.manual_seed(0)
    source = str(quality.source_weights(args.work))
    if args.decisions:
        decisions(args.work, source)
        return
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
