"""How a run ended, read back from what it wrote: the best epoch and its val top-1."""
from __future__ import annotations

from pathlib import Path

from finetune.training.callbacks.epoch_record import EPOCHS_FROM, read_rows
from finetune.training.checkpoint_format import saved_epoch
from finetune.training.monitor import best_row


def best_epoch(metrics_csv: Path, monitor: str = "acc1") -> tuple[float, int]:
    """(val top-1 of the best epoch, that epoch counted from 1) read back from metrics.csv; the best epoch
    is the one best.ckpt holds: the best --monitor figure (with --ema, of the better weights)."""
    best = best_row(read_rows(metrics_csv), monitor)
    return (best[3], best[2]) if best else (float("nan"), -1)


def acc1_at(metrics_csv: Path, epoch: int) -> float:
    """Val top-1 of `epoch` (counted from 1) in metrics.csv (of the weights best.ckpt keeps, with --ema)."""
    for row in read_rows(metrics_csv):
        if row.get("epoch") == str(epoch):
            return float(row.get("val/acc1_selected") or row.get("val/acc1") or "nan")
    return float("nan")


def best_of_run(run_dir: Path, monitor: str = "acc1") -> tuple[float, int]:
    """(val top-1, epoch counted from 1) of the weights checkpoints/best.ckpt holds."""
    metrics_csv, saved = run_dir / "metrics.csv", run_dir / "checkpoints" / "best.ckpt"
    best, epoch = best_epoch(metrics_csv, monitor)
    if saved.is_file() and saved_epoch(saved) + EPOCHS_FROM != epoch:
        # metrics.csv rounds to 6 digits: on a near tie the checkpoint's own epoch is the truth.
        epoch = saved_epoch(saved) + EPOCHS_FROM
        best = acc1_at(metrics_csv, epoch)
    return best, epoch
