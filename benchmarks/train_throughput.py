"""Training throughput: `finetune.fit` against the plain PyTorch loop, side by side in one process.

    .venv/bin/python benchmarks/train_throughput.py --quick     # resnet18 at 128 px, the three scenarios
    .venv/bin/python benchmarks/train_throughput.py             # resnet18/50 at 128 and 224 px
    .venv/bin/python benchmarks/train_throughput.py --only overhead   # Lightning's per-step overhead alone

Both legs read the same folder of JPEG photos (crops of scikit-image's bundled photos; the plain loop
decodes them every epoch, fit once into memory), with the same batch size and DataLoader workers,
random-init weights (speed does not depend on their values). Scenarios: full fine-tuning,
`--freeze-until layer3`, and a linear probe.

- plain: the textbook loop: fp32, SGD(momentum 0.9), torchvision's RandomResizedCrop + flip.
- finetune: `fit` with its defaults (mixed precision and channels_last where the device has them,
  fused optimizer, its data pipeline); epochs after the first are counted (its metrics.csv img/s).
- Lightning's per-step overhead: each step of a `fit` with no DataLoader workers is timed from the
  timing callback's on_train_batch_start to its on_train_batch_end (training_step, backward,
  optimizer and scheduler step; not the batch's loading and transfer, nor the hooks Lightning runs
  after the callbacks'), then one raw step with the same precision, memory format, optimizer and
  batch on in-memory tensors runs right after it, so a drift of the machine's speed reaches both.
  The table gives the median of the pairs' ratios (fit / raw - 1) and its quartiles.
- Time to the first training step: from the call of `fit` to its first batch.
- Raw-step ceiling: the toolkit's step against the plain loop's step, both on in-memory tensors: what
  the precision and memory format alone give on this device.

On a GPU it runs there too (--accelerator cuda), and then also runs timm `benchmark.py`'s train mode
on the same model (`--timm-bench on` does that on a CPU). Prints a table of img/s and ratios.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torchvision
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from quality import setup_process  # noqa: E402 - the benchmarks share one process setup

from finetune.config import RunConfig  # noqa: E402
from finetune.heap import keep_freed_memory  # noqa: E402
from finetune.run.fit import fit  # noqa: E402
from finetune.training.precision import resolve_channels_last, resolve_precision  # noqa: E402

SCENARIOS = {"full": None, "freeze-until layer3": "layer3", "linear probe": "fc"}
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def make_jpeg_folder(root: Path, per_class: int, side: int = 256, seed: int = 0) -> Path:
    """root/train/<photo>/N.jpg: random side x side crops of scikit-image's photos, one class each;
    root/val/ holds a few more (finetune needs a val split; the plain loop ignores it)."""
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        photo = np.asarray(getattr(skdata, name)())
        for split, count in (("train", per_class), ("val", 2)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                y = rng.integers(0, photo.shape[0] - side // 2)
                x = rng.integers(0, photo.shape[1] - side // 2)
                crop = Image.fromarray(photo[y:y + side // 2, x:x + side // 2]).resize((side, side))
                crop.convert("RGB").save(folder / f"{i}.jpg", quality=90)
    return root


def _freeze(model: nn.Module, first_trained: str | None) -> None:
    """requires_grad off for every parameter before the first one whose name starts with `first_trained`."""
    if first_trained is None:
        return
    training = False
    for name, p in model.named_parameters():
        training = training or name.startswith(first_trained)
        p.requires_grad_(training)


def plain_loop(data: Path, backbone: str, size: int, batch: int, workers: int, epochs: int,
               first_trained: str | None, device: str) -> float:
    """img/s of the textbook loop's epochs after the first."""
    import timm
    from torchvision import transforms as T

    tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = torchvision.datasets.ImageFolder(str(data / "train"), tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0, drop_last=True)
    model = timm.create_model(backbone, num_classes=len(ds.classes)).to(device)
    _freeze(model, first_trained)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    loss_fn, rates = nn.CrossEntropyLoss(), []
    model.train()
    for epoch in range(epochs):
        start, seen = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            seen += len(y)
        _sync(device)
        if epoch:
            rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates)


def _page_faults() -> int:
    """Minor page faults of this process so far: memory the step touches that the kernel maps in anew."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class StepTimer(pl.Callback):
    """Seconds from fit's start to the first batch, and each step's (epoch, hook-to-hook seconds, page faults)."""

    def __init__(self):
        self.t0, self.first_step, self.steps, self._start, self._faults = time.perf_counter(), None, [], 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        _sync(pl_module.device.type)  # the batch's non-blocking copy to the GPU is not the step's
        now = time.perf_counter()
        if self.first_step is None:
            self.first_step = now - self.t0
        self._start, self._faults = now, _page_faults()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        _sync(pl_module.device.type)
        self.steps.append((trainer.current_epoch, time.perf_counter() - self._start, _page_faults() - self._faults))


def toolkit(data: Path, backbone: str, size: int, batch: int, workers: int, epochs: int,
            first_trained: str | None, accelerator: str, out: Path) -> tuple[float, float, str]:
    """(img/s of epochs after the first, seconds to the first step, precision)."""
    config = RunConfig(backbone=backbone, data=data, weights="none", image_size=size, batch_size=batch, workers=workers,
                       epochs=epochs, val_every=epochs, freeze_until=first_trained, output=out, overwrite=True,
                       progress=False, export=False, accelerator=accelerator, augment="standard")
    timer = StepTimer()
    with contextlib.redirect_stdout(io.StringIO()), keep_freed_memory():  # the heap `finetune run` trains with
        result = fit(config, callbacks=[timer])
    with open(out / "metrics.csv", newline="") as f:
        rates = [float(r["img/s"]) for r in csv.DictReader(f)][1:]
    return statistics.median(rates), timer.first_step, result.precision


class RawStep:
    """One forward/backward/optimizer step on in-memory tensors (no data loading), timed.

    With `fit`'s precision, memory format and fused AdamW it is `fit`'s step without Lightning
    around it; with "32", contiguous and SGD it is the plain loop's step: their ratio is the most
    the precision and memory format can give on this device."""

    def __init__(self, backbone: str, size: int, batch: int, first_trained: str | None, device: str,
                 precision: str, channels_last: bool, optimizer: str = "adamw", frozen_in_eval: bool = False):
        import timm

        self.device = device
        model = timm.create_model(backbone, num_classes=len(PHOTOS)).to(device)
        _freeze(model, first_trained)
        memory = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=memory).train()
        if frozen_in_eval:  # as fit runs its frozen units: BatchNorm statistics stay put
            for module in model.modules():
                own = list(module.parameters(recurse=False))
                if own and not any(p.requires_grad for p in own):
                    module.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        if optimizer == "timm-sgd":  # timm benchmark.py's train mode: create_optimizer_v2("sgd", lr=1e-4)
            from timm.optim import create_optimizer_v2

            self.opt = create_optimizer_v2(model, opt="sgd", lr=1e-4)
        else:
            self.opt = torch.optim.AdamW(params, lr=1e-3, fused=True) if optimizer == "adamw" else \
                torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        self.x = torch.randn(batch, 3, size, size, device=device).to(memory_format=memory)
        self.y = torch.randint(0, len(PHOTOS), (batch,), device=device)
        self.dtype = torch.bfloat16 if precision.startswith("bf16") else \
            torch.float16 if precision.startswith("16") else None

    def __call__(self) -> float:
        start, faults = time.perf_counter(), _page_faults()
        self.opt.zero_grad()
        with torch.autocast(self.device, dtype=self.dtype, enabled=self.dtype is not None):
            loss = nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        _sync(self.device)
        self.faults = _page_faults() - faults
        return time.perf_counter() - start


def raw_step_seconds(backbone: str, size: int, batch: int, first_trained: str | None, device: str,
                     precision: str, channels_last: bool, steps: int = 12, optimizer: str = "adamw") -> float:
    """Median seconds of `steps` RawSteps, after 2 not counted."""
    step = RawStep(backbone, size, batch, first_trained, device, precision, channels_last, optimizer)
    return statistics.median([step() for _ in range(steps + 2)][2:])


def timm_train_rate(backbone: str, size: int, batch: int, first_trained: str | None, device: str, precision: str,
                    channels_last: bool) -> float:
    """img/s of timm's `benchmark.py --bench train` method for the same model: synthetic inputs, timm's
    SGD at lr 1e-4 (create_optimizer_v2), cross-entropy under autocast, and the summed time of the
    timed steps (10 warm-up and 40 timed on a GPU, as benchmark.py; 3 and 12 on a CPU, where a step
    takes seconds). Written here because benchmark.py ships in timm's repository, not its package.
    On a CPU it is the method only: benchmark.py's own autocast is CUDA's."""
    step = RawStep(backbone, size, batch, first_trained, device, precision, channels_last, optimizer="timm-sgd")
    warm, timed = (10, 40) if device == "cuda" else (3, 12)
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # as benchmark.py sets it; put back below for the other legs
    try:
        for _ in range(warm):
            step()
        return timed * batch / sum(step() for _ in range(timed))
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark


class PairedStepTimer(StepTimer):
    """After each of fit's steps, times one raw step: each fit step has a raw step next to it in time,
    so a drift of the machine's speed (it can move by 20% within a minute) reaches both."""

    def __init__(self, make_raw_step):
        super().__init__()
        self.make_raw_step, self.raw_steps, self.raw_faults = make_raw_step, [], []

    def on_fit_start(self, trainer, pl_module):
        self.raw_step = self.make_raw_step()
        for _ in range(2):
            self.raw_step()  # warm-up

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.raw_steps.append(self.raw_step())
        self.raw_faults.append(self.raw_step.faults)


def step_overhead(data: Path, backbone: str, size: int, batch: int, epochs: int, first_trained: str | None,
                  accelerator: str, device: str, out: Path) -> tuple[list[float], float, float]:
    """Lightning's per-step overhead of each step after the first epoch: fit's hook-to-hook seconds
    over the seconds of the raw step run right after it, minus 1; and the median page faults of a fit
    step and of a raw step.

    fit runs with no workers (loading falls between its steps), without the feature cache (the raw
    step runs the whole network) and with the augmentation off (cheap loading); the raw step has
    fit's precision, memory format, fused AdamW and batch, on in-memory tensors."""
    config = RunConfig(backbone=backbone, data=data, weights="none", image_size=size, batch_size=batch, workers=0,
                       epochs=epochs, val_every=epochs, freeze_until=first_trained, output=out, overwrite=True,
                       progress=False, export=False, accelerator=accelerator, augment="none", feature_cache="off")
    precision = resolve_precision("auto", accelerator)[0]
    timer = PairedStepTimer(lambda: RawStep(backbone, size, batch, first_trained, device, precision,
                                            resolve_channels_last(None, precision), frozen_in_eval=True))
    with contextlib.redirect_stdout(io.StringIO()), keep_freed_memory():  # the heap `finetune run` trains with
        result = fit(config, callbacks=[timer])
    assert result.precision == precision, (result.precision, precision)
    counted = [(s, f, r, rf) for (epoch, s, f), r, rf in zip(timer.steps, timer.raw_steps, timer.raw_faults)
               if epoch > 0]  # epoch 0 warms up
    if not counted:
        raise SystemExit(f"{backbone} {size}px: fit stopped in its first epoch; no step to compare")
    return ([s / r - 1 for s, _, r, _ in counted], statistics.median(f for _, f, _, _ in counted),
            statistics.median(rf for *_, rf in counted))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18 at 128 px only")
    parser.add_argument("--backbones", nargs="*", default=None, help="default: resnet18 resnet50 (--quick: resnet18)")
    parser.add_argument("--sizes", nargs="*", type=int, default=None, help="default: 128 224 (--quick: 128)")
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--images", type=int, default=192, help="training images (6 classes)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up, the rest are counted")
    parser.add_argument("--overhead-epochs", type=int, default=5,
                        help="epochs of the overhead's fit (no workers); the first is warm-up")
    parser.add_argument("--only", choices=["throughput", "overhead"], default=None,
                        help="measure one of the two (default: both)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--accelerator", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=["cpu", "cuda"])
    parser.add_argument("--timm-bench", choices=["auto", "on", "off"], default="auto",
                        help="with the throughput measurement, also run timm benchmark.py's train mode on the same "
                             "model, with fit's precision and memory format (auto: on a GPU)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error(f"--epochs must be 2 or more (the first is warm-up), not {args.epochs}")
    if args.overhead_epochs < 2:
        parser.error(f"--overhead-epochs must be 2 or more (the first is warm-up), not {args.overhead_epochs}")
    setup_process(args.threads)
    backbones = args.backbones or (["resnet18"] if args.quick else ["resnet18", "resnet50"])
    sizes = args.sizes or ([128] if args.quick else [128, 224])
    throughput, overhead = args.only != "overhead", args.only != "throughput"
    timm_bench = throughput and (args.timm_bench == "on" or (args.timm_bench == "auto" and args.accelerator == "cuda"))
    accelerator = "gpu" if args.accelerator == "cuda" else "cpu"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_jpeg_folder(Path(tmp) / "data", args.images // len(PHOTOS))
        for backbone in backbones:
            for size in sizes:
                for scenario in args.scenarios:
                    first, row = SCENARIOS[scenario], {"backbone": backbone, "size": size, "scenario": scenario}
                    if throughput:
                        plain = plain_loop(data, backbone, size, args.batch, args.workers, args.epochs, first,
                                           args.accelerator)
                        rate, first_step, precision = toolkit(data, backbone, size, args.batch, args.workers,
                                                                 args.epochs, first, accelerator, Path(tmp) / "run")
                        channels_last = resolve_channels_last(None, precision)
                        raw = raw_step_seconds(backbone, size, args.batch, first, args.accelerator, precision,
                                               channels_last)
                        raw_fp32 = raw_step_seconds(backbone, size, args.batch, first, args.accelerator, "32", False,
                                                    optimizer="sgd")
                        row |= {"plain": plain, "rate": rate, "ceiling": raw_fp32 / raw, "first": first_step,
                                "precision": precision + (" + channels_last" if channels_last else "")}
                        if timm_bench:
                            row["timm"] = timm_train_rate(backbone, size, args.batch, first, args.accelerator,
                                                          precision, channels_last)
                    if overhead:
                        row["overhead"], row["faults"], row["raw_faults"] = step_overhead(
                            data, backbone, size, args.batch, args.overhead_epochs, first, accelerator,
                            args.accelerator, Path(tmp) / "run")
                    rows.append(row)
                    print(_row_text(row), flush=True)
    text = _table(rows, args, throughput, overhead)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(("# Training throughput" if throughput else "# Lightning's per-step overhead")
                            + "\n\n" + text)


def _overhead_text(overheads: list[float]) -> str:
    """"+1.2% (+0.4% to +2.0%)": the median of the paired steps' overheads and their quartiles."""
    if len(overheads) < 2:
        return f"{overheads[0]:+.1%} (one pair)"
    low, mid, high = statistics.quantiles(overheads, n=4)
    return f"{mid:+.1%} ({low:+.1%} to {high:+.1%})"


def _row_text(row: dict) -> str:
    parts = []
    if "rate" in row:
        parts.append(f"plain {row['plain']:.1f} img/s, finetune {row['rate']:.1f} img/s "
                     f"({row['rate'] / row['plain']:.2f}x; raw-step ceiling {row['ceiling']:.2f}x), "
                     f"first step {row['first']:.1f} s")
    if "timm" in row:
        parts.append(f"timm benchmark.py train {row['timm']:.1f} img/s "
                     f"(finetune at {row['rate'] / row['timm']:.0%} of it)")
    if "overhead" in row:
        parts.append(f"Lightning step overhead {_overhead_text(row['overhead'])}, page faults a step: "
                     f"fit {row['faults']:.0f}, raw {row['raw_faults']:.0f}")
    return f"{row['backbone']} {row['size']}px {row['scenario']}: " + "; ".join(parts)


def _table(rows: list[dict], args: argparse.Namespace, throughput: bool, overhead: bool) -> str:
    device = torch.cuda.get_device_name() if args.accelerator == "cuda" else f"CPU, {args.threads} threads"
    head = [f"Device: {device}; {args.images} JPEG images, batch {args.batch}"]
    if throughput:
        head.append(f"{args.workers} workers, {args.epochs} epochs (the first not counted)")
    if overhead:
        head.append(f"overhead: a {args.overhead_epochs}-epoch fit with no workers, each step after the first epoch "
                    "paired with a raw step run right after it")
    columns = ["backbone", "size", "scenario"]
    if throughput:
        columns += ["plain fp32 img/s", "finetune img/s", "ratio", "raw-step ceiling", "first step (s)",
                    "finetune precision"]
    timm_bench = any("timm" in row for row in rows)
    if timm_bench:
        columns += ["timm benchmark.py train img/s", "finetune / timm"]
    if overhead:
        columns += ["Lightning step overhead: median (quartiles)", "page faults a step: fit / raw (median)"]
    lines = ["; ".join(head) + ".", "", f"Command: `{' '.join(['benchmarks/train_throughput.py', *sys.argv[1:]])}`",
             "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [row["backbone"], str(row["size"]), row["scenario"]]
        if throughput:
            cells += [f"{row['plain']:.1f}", f"{row['rate']:.1f}", f"{row['rate'] / row['plain']:.2f}x",
                      f"{row['ceiling']:.2f}x", f"{row['first']:.1f}", row["precision"]]
        if timm_bench:
            cells += [f"{row['timm']:.1f}", f"{row['rate'] / row['timm']:.0%}"]
        if overhead:
            cells += [_overhead_text(row["overhead"]), f"{row['faults']:.0f} / {row['raw_faults']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if throughput:
        lines += ["", "raw-step ceiling: a forward/backward/optimizer step on in-memory tensors with finetune's "
                  "precision, memory format and fused AdamW, against the same step in fp32 with SGD: the ratio the "
                  "data pipeline and the framework can at most keep."]
    if timm_bench:
        lines += ["", "timm benchmark.py train: its train mode's method (synthetic inputs, SGD lr 1e-4, cross-entropy "
                  "under autocast) on the same model, precision and memory format; finetune / timm is the share of "
                  "that synthetic rate fit keeps with real images, its data pipeline, validation and checkpoints."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
