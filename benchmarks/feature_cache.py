"""The frozen-feature cache: epoch time with and without it, against the plain loop, in one process.

    .venv/bin/python benchmarks/feature_cache.py --quick    # resnet18 at 128 px
    .venv/bin/python benchmarks/feature_cache.py            # resnet18/50 at 128 and 224 px

The same JPEG folder as train_throughput.py (crops of scikit-image's photos), `--augment none`, random-
init weights (time does not depend on their values). Scenarios: a linear probe and `--freeze-until
layer4`. Legs, each timed over the epochs after the first (train and validation):

- plain: the textbook loop with the same frozen part: fp32, SGD, torchvision's resize + center crop,
  the frozen part run on every image in every epoch;
- finetune, cache off: `fit` with `--feature-cache off`;
- finetune, cache on: `fit` with its default, which caches where exact. The features are computed
  before the first epoch: the start-up (from the call of `fit` to its first epoch) is reported with
  the cache off, filling it, and reusing it (a second run with the same settings).

Both finetune legs must end with the same weights (compared bit for bit) and the same val top-1.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from quality import setup_process  # noqa: E402 - the benchmarks share one process setup
from train_throughput import _freeze, _sync, make_jpeg_folder  # noqa: E402

from finetune.config import RunConfig  # noqa: E402
from finetune.run.fit import fit  # noqa: E402

SCENARIOS = {"linear probe": "fc", "freeze-until layer4": "layer4"}


class EpochTimer(pl.Callback):
    """Seconds of each epoch (training and validation), and from its creation to the first epoch (start-up)."""

    def __init__(self):
        self.t0, self.epochs, self._start, self.startup = time.perf_counter(), [], 0.0, None

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()
        if self.startup is None:
            self.startup = self._start - self.t0

    def on_train_epoch_end(self, trainer, pl_module):  # after the epoch's validation in Lightning 2
        _sync(pl_module.device.type)
        self.epochs.append(time.perf_counter() - self._start)


def plain_loop(data: Path, backbone: str, size: int, batch: int, workers: int, epochs: int, first_trained: str,
               device: str) -> float:
    """Median seconds of the textbook loop's epochs after the first (train + val)."""
    import timm
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    loaders = [torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(str(data / split), tf), batch_size=batch,
                                           shuffle=split == "train", num_workers=workers,
                                           persistent_workers=workers > 0) for split in ("train", "val")]
    model = timm.create_model(backbone, num_classes=len(loaders[0].dataset.classes)).to(device)
    _freeze(model, first_trained)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    loss_fn, times = nn.CrossEntropyLoss(), []
    for epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        for x, y in loaders[0]:
            opt.zero_grad()
            loss_fn(model(x.to(device)), y.to(device)).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for x, _ in loaders[1]:
                model(x.to(device))
        _sync(device)
        if epoch:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def toolkit(data: Path, backbone: str, size: int, batch: int, workers: int, epochs: int, first_trained: str,
            cache: str, accelerator: str, out: Path) -> tuple[EpochTimer, float, dict[str, torch.Tensor], str]:
    """(epoch timer, best val top-1, the last weights, what the console said of the cache)."""
    config = RunConfig(backbone=backbone, data=data, weights="none", image_size=size, batch_size=batch, workers=workers,
                       epochs=epochs, val_every=1, freeze_until=first_trained, output=out, overwrite=True,
                       progress=False, export=False, accelerator=accelerator, augment="none", feature_cache=cache)
    timer, said = EpochTimer(), io.StringIO()
    from rich.console import Console

    with contextlib.redirect_stdout(io.StringIO()):
        result = fit(config, console=Console(file=said, width=300), callbacks=[timer])
    weights = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    line = next((ln for ln in said.getvalue().splitlines() if ln.startswith("Feature cache")), "")
    return timer, result.best_val_acc1, weights, line


def _times(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio < 10 else f"{ratio:.0f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18 at 128 px only")
    parser.add_argument("--per-class", type=int, default=64, help="training images per class (6 classes)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="markdown table (default: results/feature-cache.md)")
    args = parser.parse_args()
    setup_process(args.threads)
    device = "cuda" if args.accelerator in ("cuda", "gpu") else "cpu"
    models = [("resnet18", 128)] if args.quick else [("resnet18", 128), ("resnet18", 224), ("resnet50", 128),
                                                     ("resnet50", 224)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FINETUNE_CACHE_DIR"] = str(Path(tmp) / "cache")  # a cold cache for the fill
        data = make_jpeg_folder(Path(tmp) / "data", args.per_class)
        for backbone, size in models:
            for scenario, first in SCENARIOS.items():
                plain = plain_loop(data, backbone, size, args.batch, args.workers, args.epochs, first, device)
                common = (data, backbone, size, args.batch, args.workers, args.epochs, first)
                off, acc_off, w_off, _ = toolkit(*common, "off", args.accelerator, Path(tmp) / "off")
                on, acc_on, w_on, line = toolkit(*common, "auto", args.accelerator, Path(tmp) / "on")
                again, _, _, line_again = toolkit(*common, "auto", args.accelerator, Path(tmp) / "again")
                same = w_off.keys() == w_on.keys() and all(torch.equal(w_off[k], w_on[k]) for k in w_off)
                t_off, t_on = statistics.median(off.epochs[1:]), statistics.median(on.epochs[1:])
                row = (backbone, size, scenario, plain, t_off, t_on, t_off / t_on, plain / t_on, off.startup,
                       on.startup, again.startup, acc_off, acc_on, "yes" if same else "NO")
                rows.append(row)
                print(" | ".join(str(round(v, 4)) if isinstance(v, float) else str(v) for v in row), flush=True)
                print(f"    {line}\n    {line_again}", flush=True)
    header = ("| backbone | size | scenario | plain s/epoch | finetune, cache off | finetune, cache on | speed-up | "
              "vs plain | start-up: off / fill / reused | val top-1 off / on | same weights |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")
    body = "\n".join(f"| {b} | {s} | {sc} | {p:.2f} | {o:.2f} | {c:.3f} | {_times(r)} | {_times(vp)} | "
                     f"{u0:.1f} / {u1:.1f} / {u2:.1f} | {ao:.3f} / {ac:.3f} | {same} |"
                     for b, s, sc, p, o, c, r, vp, u0, u1, u2, ao, ac, same in rows)
    command = " ".join(["benchmarks/feature_cache.py", *sys.argv[1:]])
    text = (f"# Frozen-feature cache\n\nDevice: {device}, {args.threads} threads; {6 * args.per_class} JPEG training "
            f"images, batch {args.batch}, {args.workers} workers, {args.epochs} epochs, --augment none.\n\n"
            f"Command: `{command}`\n\nSeconds per epoch (train + validation) after the first:\n\n"
            f"{header}\n{body}\n")
    print(text)
    out = args.out or Path(__file__).parent / "results" / "feature-cache.md"
    out.write_text(text)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
