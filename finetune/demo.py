"""`finetune demo`: transfer learning in miniature on generated data, in a few minutes on a CPU.

A backbone is trained from scratch on a source task (5 textures), then fine-tuned on a different
target task (5 other patterns) with only a few images per class and its early layers frozen; the
same backbone trained on the target from scratch is the baseline.
"""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from finetune.config import RunConfig
from finetune.data.synthetic import make_image_folder
from finetune.training.fit import RunResult, fit

IMAGE_SIZE = 64  # generated images are 64 px: large enough for resnet18's stride 32, small enough for 2 CPU cores


def make_demo_data(root: Path) -> tuple[Path, Path]:
    """Source: 5 textures x 150 train images; target: 5 other patterns x 8 train images (the scarce case)."""
    source = make_image_folder(root / "textures", "textures", train_per_class=150, val_per_class=20, size=IMAGE_SIZE, seed=1)
    target = make_image_folder(root / "patterns", "patterns", train_per_class=8, val_per_class=30, size=IMAGE_SIZE, seed=2)
    return source, target


def _timed_fit(config: RunConfig, console: Console) -> tuple[RunResult, float]:
    start = time.perf_counter()
    result = fit(config, console)
    return result, time.perf_counter() - start


def run_demo(output: Path, backbone: str = "resnet18", freeze_until: str = "layer3", epochs: int = 10,
             console: Console | None = None) -> dict[str, RunResult]:
    """Runs source pretraining, target fine-tuning and the scratch baseline; prints the comparison."""
    console = console or Console()
    source, target = make_demo_data(output / "data")
    common = dict(backbone=backbone, image_size=IMAGE_SIZE, batch_size=32, epochs=epochs, workers=0, seed=0)
    console.rule("1/3 source task: textures, from scratch")
    pre, t_pre = _timed_fit(RunConfig(data=source, weights="none", lr=3e-3, export=False,
                                      output=output / "source", **common), console)
    console.rule(f"2/3 target task: patterns, fine-tuned from the source checkpoint, frozen until {freeze_until}")
    tuned, t_tuned = _timed_fit(RunConfig(data=target, weights=str(pre.best_checkpoint), freeze_until=freeze_until,
                                          output=output / "finetuned", **common), console)
    console.rule("3/3 target task: patterns, from scratch")
    scratch, t_scratch = _timed_fit(RunConfig(data=target, weights="none", export=False,
                                              output=output / "scratch", **common), console)
    table = Table(title="Val top-1: source task (textures), then target task (patterns, 8 train images per class)", title_justify="left")
    for col in ("run", "weights", "val top-1", "time"):
        table.add_column(col)
    table.add_row("source pretraining (textures)", "none", f"{pre.best_val_acc1:.3f}", f"{t_pre:.0f} s")
    table.add_row(f"fine-tuned, frozen until {freeze_until}", "source best.ckpt", f"{tuned.best_val_acc1:.3f}", f"{t_tuned:.0f} s")
    table.add_row("from scratch", "none", f"{scratch.best_val_acc1:.3f}", f"{t_scratch:.0f} s")
    console.print(table)
    console.print(f"Fine-tuning minus scratch: {tuned.best_val_acc1 - scratch.best_val_acc1:+.3f} top-1. Runs in {output}.")
    console.print(f"The fine-tuned model is exported to {tuned.run_dir / 'model'}: try "
                  f"`finetune predict --model {tuned.run_dir / 'model'} {target / 'val'}`")
    return {"source": pre, "finetuned": tuned, "scratch": scratch}
