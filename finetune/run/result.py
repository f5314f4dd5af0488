"""`RunResult`: what `fit` returns."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunResult:
    """What a run produced and what its narration said. Paths are inside `run_dir`."""

    run_dir: Path
    config_path: Path
    metrics_csv: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_val_acc1: float
    best_epoch: int  # counted from 1, as on the console and in metrics.csv
    precision: str
    precision_why: str = ""
    weights: str = ""  # where the weights came from, what of them was left out or filled in
    decided: Mapping[str, str] = field(default_factory=dict)  # setting -> value and why, for those the data chose
    stopped_early_after: int | None = None  # the epoch (from 1) early stopping ended the run after
    written: Mapping[str, Path] = field(default_factory=dict)  # curves, eval (eval-val/), bundle (model/)
    val_eval: Mapping[str, Any] | None = None  # the best checkpoint on val (eval-val/metrics.json)
    warnings: tuple[str, ...] = ()  # every warning the run gave, as plain text
