"""A small run's wall time, start-up included: `finetune run` against a plain in-memory PyTorch loop.

    .venv/bin/python benchmarks/small_run.py [--epochs 30] [--backbone resnet18]

The task: 50 real training images (5 texture photos x 10 patches, see finetune/data/real.py) and
their 200 val patches at 32 px. Both legs run as their own processes from a cold start, train the
same network from random init for the same epochs at the same batch size, and validate every epoch:

- plain: decodes every image once into tensors, then the textbook loop (SGD, momentum 0.9, fp32,
  random flips), keeping the best val epoch;
- finetune: `finetune run --backbone B --data D --weights none --image-size 32 --epochs E` with
  --batch-size and --val-every 1 set to the plain leg's, everything else at its defaults (its scan,
  plan, checkpoints, final evaluation, plots and export bundle included).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 8  # what finetune's auto batch size picks for 50 images


def plain_leg(data: Path, backbone: str, epochs: int) -> None:
    """The plain loop, run in its own process by main()."""
    import timm
    import torch
    from torch import nn

    from finetune.data.images import load_image

    def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        classes = sorted(p.name for p in (data / "train").iterdir())
        items = [(p, i) for i, c in enumerate(classes) for p in sorted((data / split / c).iterdir())]
        x = torch.stack([torch.from_numpy(load_image(p)).permute(2, 0, 1) for p, _ in items]).float() / 255
        x = nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        return (x - 0.5) / 0.25, torch.tensor([i for _, i in items])

    torch.manual_seed(0)
    (xt, yt), (xv, yv) = load("train"), load("val")
    model = timm.create_model(backbone, num_classes=int(yt.max()) + 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    best = 0.0
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt)).split(BATCH):
            x = torch.where((torch.rand(len(idx)) < 0.5)[:, None, None, None], xt[idx].flip(3), xt[idx])
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), yt[idx]).backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            best = max(best, float((model(xv).argmax(1) == yv).float().mean()))
    print(f"plain best val top-1 {best:.3f}")


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--plain-leg", type=Path, default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.plain_leg is not None:
        return plain_leg(args.plain_leg, args.backbone, args.epochs)
    from finetune.data.real import make_real_task

    with tempfile.TemporaryDirectory() as tmp:
        data = make_real_task("textures", Path(tmp) / "data", 10, seed=0)
        plain = _timed([sys.executable, __file__, "--plain-leg", str(data), "--backbone", args.backbone,
                        "--epochs", str(args.epochs)])
        finetune = _timed([str(Path(sys.executable).parent / "finetune"), "run", "--backbone", args.backbone,
                           "--data", str(data), "--weights", "none", "--image-size", "32", "--epochs", str(args.epochs),
                           "--batch-size", str(BATCH), "--val-every", "1", "--output", str(Path(tmp) / "run"),
                           "--no-progress"])
    print(f"| {args.backbone}, 50 images, {args.epochs} epochs, 32 px | plain in-memory loop | finetune run | ratio |")
    print("|---|---|---|---|")
    print(f"| wall seconds, start-up included | {plain:.1f} | {finetune:.1f} | {finetune / plain:.2f}x |")


if __name__ == "__main__":
    main()
