"""metrics.csv with one row per epoch, and the one console line per epoch made from that row.

Written by hand rather than through Lightning's CSVLogger, which writes one sparse row per logging
call (most cells empty) and has no place for the LR of each group, img/s or the epoch's seconds.
"""
from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from finetune import atomic

# metrics.csv counts epochs from 1, as the console, the progress bar and RunResult.best_epoch do: one
# numbering for everything a person reads. Version 0.1 counted from 0: a file with an epoch 0 is one of
# those, and `read_rows` renumbers it (a file counted from 1 never has one).
EPOCHS_FROM = 1
# Column groups of metrics.csv, left to right (a stable sort keeps first-seen order within a group):
# a name ending in "/" is a prefix, any other an exact column.
_COLUMN_ORDER = ("epoch", "train/", "val/", "val_ema/", "lr/", "freeze/", "img/s", "epoch_seconds")


def _column_rank(column: str) -> int:
    for i, name in enumerate(_COLUMN_ORDER):
        if column == name or (name.endswith("/") and column.startswith(name)):
            return i
    return len(_COLUMN_ORDER)


class EpochRecord(pl.Callback):
    """Writes RUN_DIR/metrics.csv: one row per epoch, every figure of that epoch in a named column.

    Columns: epoch (counted from 1); the epoch means of the training figures (train/loss, train/acc1, with a
    teacher train/task_loss and train/kd_loss); after a validation epoch val/loss, val/acc1,
    val/acc5, val/balanced_acc, val/macro_f1, val/recall/<class> (and val_ema/..., with --ema);
    lr/<group> (each layer group's LR at the epoch's start); freeze/trainable_groups; img/s
    (training images per second, validation excluded); epoch_seconds (the whole epoch, validation
    included). A column appears from the first epoch that has it; earlier rows leave it empty.

    The file is rewritten whole after each epoch through a temporary file, so a run stopped at any
    moment leaves a complete metrics.csv. A resumed run passes the rows it already had.

    Args:
        path: metrics.csv.
        previous_rows: Rows of a run being resumed, kept first.
        on_row: Called with each new row (the console line).
    """

    def __init__(self, path: Path, previous_rows: list[dict[str, str]] | None = None,
                 on_row: Callable[[dict[str, Any], pl.Trainer], None] | None = None) -> None:
        self.path, self.on_row = Path(path), on_row
        self.rows: list[dict[str, Any]] = [dict(r) for r in previous_rows or []]
        self._val: dict[str, float] = {}
        self._lrs: dict[str, float] = {}
        self._images, self._start, self._train_seconds = 0, 0.0, None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val, self._images, self._train_seconds = {}, 0, None
        self._start = time.perf_counter()
        self._lrs = {}
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:  # a layer group and its no-decay half share one LR
                name = group.get("layer_group") or group.get("name") or f"group{len(self._lrs)}"
                self._lrs.setdefault(f"lr/{name}", float(group["lr"]))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._images += len(batch[0]) * trainer.world_size  # every process trains on its own share

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._start

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._val = {k: _number(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "val_ema/"))}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = time.perf_counter() - self._start
        train_seconds = self._train_seconds if self._train_seconds is not None else seconds
        train = {_epoch_name(k): _number(v) for k, v in trainer.callback_metrics.items()
                 if k.startswith(("train/", "freeze/")) and not k.endswith("_step")}
        row: dict[str, Any] = {"epoch": trainer.current_epoch + EPOCHS_FROM, **train, **self._val, **self._lrs,
                               "img/s": round(self._images / train_seconds, 2) if train_seconds > 0 else "",
                               "epoch_seconds": round(seconds, 3)}
        self.rows = [r for r in self.rows if _epoch_of(r) != row["epoch"]] + [row]
        if trainer.is_global_zero:
            self._write()
            if self.on_row is not None:
                self.on_row(row, trainer)

    def _write(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns.extend(k for k in row if k not in columns)
        columns.sort(key=_column_rank)
        with atomic.open_replacing(self.path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()}
                             for row in self.rows)


def _epoch_name(key: str) -> str:
    """train/loss_epoch -> train/loss: a row is an epoch, the suffix says nothing more."""
    return key.removesuffix("_epoch")


def read_rows(path: Path) -> list[dict[str, str]]:
    """metrics.csv's rows with epochs counted from 1 (a file of version 0.1, counted from 0, is renumbered);
    [] when there is none."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    numbered = [int(r["epoch"]) for r in rows if r.get("epoch", "") != ""]
    if numbered and min(numbered) < EPOCHS_FROM:
        for row in rows:
            if row.get("epoch", "") != "":
                row["epoch"] = str(int(row["epoch"]) + EPOCHS_FROM)
    return rows


def _epoch_of(row: dict[str, Any]) -> int | None:
    value = row.get("epoch", "")
    return int(value) if str(value) != "" else None


def _number(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def epoch_line(row: dict[str, Any], epoch: int, total: int, eta_seconds: float | None) -> str:
    """`epoch 3/60  loss 0.412/0.387 (train/val)  val top-1 0.912  lr 9.8e-04  412 img/s  ETA 1:10` (`epoch`
    counted from 1)."""
    parts = [f"epoch {epoch}/{total}"]
    train, val = row.get("train/loss"), row.get("val/loss")
    if _present(train) and _present(val):
        parts.append(f"loss {train:.3f}/{val:.3f} (train/val)")
    elif _present(train):
        parts.append(f"train loss {train:.3f}")
    if _present(row.get("val/acc1")):
        parts.append(f"val top-1 {row['val/acc1']:.3f}")
    lrs = [v for k, v in row.items() if k.startswith("lr/")]
    if lrs:
        parts.append(f"lr {max(lrs):.1e}")  # the head's: the largest of the groups
    if _present(row.get("img/s")):
        parts.append(f"{row['img/s']:.0f} img/s")
    if eta_seconds is not None:
        parts.append(f"ETA {_clock(eta_seconds)}")
    return "  ".join(parts)


def _present(value: Any) -> bool:
    return value not in (None, "") and not (isinstance(value, float) and math.isnan(value))


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class EpochLine:
    """Prints `epoch_line` for each row: next to the progress bar when there is one, else to `say`.

    The ETA is the mean epoch time so far times the epochs left, ending early if early stopping
    ends the run.
    """

    def __init__(self, say: Callable[..., None]) -> None:
        self.say = say
        self._seconds: list[float] = []

    def __call__(self, row: dict[str, Any], trainer: pl.Trainer) -> None:
        self._seconds.append(float(row["epoch_seconds"]))
        total = trainer.max_epochs or row["epoch"]
        left = total - row["epoch"]
        eta = sum(self._seconds) / len(self._seconds) * left if left > 0 else None
        beside_bar(trainer, self.say, epoch_line(row, row["epoch"], total, eta))


def beside_bar(trainer: pl.Trainer, say: Callable[..., None], line: str) -> None:
    """Prints `line` above the progress bar when one is shown (so the bar is not torn), else with `say`;
    wrapped at spaces on a narrow terminal, never inside a word."""
    bar = trainer.progress_bar_callback
    if bar is not None and bar.is_enabled and hasattr(bar, "print"):
        bar.print(line)
    else:
        say(line)
