"""Validation top-1 with and without mixup + label smoothing, and with and without a teacher.

Task: the demo's target task (5 generated patterns, 8 train images per class, 30 val per class,
64 px). The teacher is the same backbone trained on 40 images per class of the same patterns
(a separately generated train set); every student run uses the same seed, epochs and data.

    PYTHONPATH=. python benchmarks/regularization.py [--backbone test_resnet] [--epochs 15] [--output runs/bench-reg]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from finetune.config import RunConfig
from finetune.data.synthetic import make_image_folder
from finetune.run.fit import fit

MIX = {"mixup": 0.2, "label_smoothing": 0.1}


def _data(root: Path) -> tuple[Path, Path]:
    student = make_image_folder(root / "patterns", "patterns", train_per_class=8, val_per_class=30, size=64, seed=2)
    teacher = make_image_folder(root / "patterns_large", "patterns", train_per_class=40, val_per_class=4, size=64,
                                seed=5)
    return student, teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--output", type=Path, default=Path("runs/bench-reg"))
    args = parser.parse_args()
    quiet = Console(quiet=True)
    student_data, teacher_data = _data(args.output / "data")
    common = dict(backbone=args.backbone, weights="none", image_size=64, batch_size=16, epochs=args.epochs,
                  workers=0, seed=0, progress=False, lr=3e-3)
    start = time.perf_counter()
    teacher = fit(RunConfig(data=teacher_data, output=args.output / "teacher", **common), quiet)
    print(f"teacher ({args.backbone}, 40 images/class): val top-1 {teacher.best_val_acc1:.3f} "
          f"({time.perf_counter() - start:.0f} s)")
    runs = {
        "plain": {},
        "mixup 0.2 + smoothing 0.1": MIX,
        "teacher (kd-alpha 0.5, T 4)": {"teacher": str(teacher.run_dir)},
        "teacher + mixup + smoothing": {"teacher": str(teacher.run_dir), **MIX},
    }
    table = Table(title=f"{args.backbone}, patterns task, 8 train images/class, {args.epochs} epochs, seed 0",
                  title_justify="left")
    for col in ("run", "best val top-1", "final val top-1", "time"):
        table.add_column(col)
    for i, (name, extra) in enumerate(runs.items()):
        start = time.perf_counter()
        result = fit(RunConfig(data=student_data, output=args.output / f"student{i}", **common, **extra), quiet)
        table.add_row(name, f"{result.best_val_acc1:.3f}", f"{_final_acc(result.metrics_csv):.3f}",
                      f"{time.perf_counter() - start:.0f} s")
    Console().print(table)


def _final_acc(metrics_csv: Path) -> float:
    import csv

    values = [float(r["val/acc1"]) for r in csv.DictReader(open(metrics_csv)) if r.get("val/acc1")]
    return values[-1]


if __name__ == "__main__":
    main()
