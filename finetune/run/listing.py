"""Reading run directories back: `finetune runs` (a table of runs) and `finetune compare` (side by side)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.config import read_run_yaml
from finetune.errors import FinetuneError
from finetune.training.callbacks.epoch_record import read_rows
from finetune.training.monitor import best_row

SHOWN_APART = ("backbone", "data", "output", "recipe")  # columns of their own, not "flags"
CONSOLE_ONLY = ("progress", "verbose")  # change what is printed, not what trains


@dataclass(frozen=True)
class RunSummary:
    """What a run directory says about its run.

    Attributes:
        path: The run directory.
        settings: config.yaml's settings (resolved values: auto epochs as the number used).
        sources: Where each setting came from (default, recipe NAME, command line, auto: ...).
        epochs: metrics.csv rows (epochs trained so far).
        best: (monitored figure, its value, its epoch), or None before the first validation.
        best_acc1: Val top-1 at that epoch (nan if not validated yet).
        seconds: Wall seconds of the epochs trained (the sum of epoch_seconds).
        curves: Figure name -> [(epoch, value)], for the val figures.
    """

    path: Path
    settings: dict[str, Any]
    sources: dict[str, str]
    epochs: int
    best: tuple[str, float, int] | None
    best_acc1: float
    seconds: float
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def changed(self) -> dict[str, Any]:
        """Settings given on the command line or by a recipe (not defaults, not derived from the data)."""
        return {k: self.settings.get(k) for k, src in self.sources.items()
                if k not in SHOWN_APART + CONSOLE_ONLY and src.startswith(("command line", "recipe"))}

    @property
    def planned_epochs(self) -> Any:
        return self.settings.get("epochs")


def read_run(run_dir: str | Path) -> RunSummary:
    """Reads RUN_DIR/config.yaml and metrics.csv.

    Raises:
        FinetuneError: RUN_DIR has no config.yaml (not a run directory), or one that is not the mapping
            `finetune run` writes (`read_run_yaml`).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FinetuneError(f"{run_dir} is not a run directory: it has no config.yaml (written by `finetune run`)")
    record = read_run_yaml(config_path)
    sources = record.pop("sources", {}) or {}
    record.pop("resolved", None)
    rows = _metrics_rows(run_dir / "metrics.csv")
    found = best_row(rows, record.get("monitor", "acc1"))
    best, best_acc1 = (found[:3], found[3]) if found else (None, math.nan)
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for name, value in row.items():
            if name.startswith(("val/", "val_ema/")) and value not in ("", None):
                curves.setdefault(name, []).append((int(row["epoch"]), float(value)))
    seconds = sum(float(r.get("epoch_seconds") or 0) for r in rows)
    return RunSummary(run_dir, record, sources, len(rows), best, best_acc1, seconds, curves)


def _metrics_rows(path: Path) -> list[dict[str, str]]:
    """One row per epoch, counted from 1."""
    # Runs of earlier versions wrote Lightning's sparse rows: keep one row per epoch, merged.
    merged: dict[int, dict[str, str]] = {}
    for row in read_rows(path):
        if row.get("epoch", "") != "":
            merged.setdefault(int(row["epoch"]), {}).update({k: v for k, v in row.items() if v != ""})
    return [merged[e] for e in sorted(merged)]


def find_runs(root: str | Path, depth: int = 3) -> list[RunSummary]:
    """Every run directory under `root` (itself included, down to `depth` levels), oldest first.

    Raises:
        FinetuneError: `root` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FinetuneError(f"{root} is not a folder; give the folder that holds the run directories (default: runs)")
    found = [p.parent for p in [root / "config.yaml", *(
        q for d in range(1, depth + 1) for q in root.glob("/".join(["*"] * d) + "/config.yaml"))] if p.is_file()]
    return [read_run(p) for p in sorted(set(found), key=lambda p: (p.stat().st_mtime, str(p)))]


def setting_differences(runs: Sequence[RunSummary]) -> dict[str, list[Any]]:
    """Setting -> its value in each run, for the settings whose values differ between the runs."""
    keys = [k for k in dict.fromkeys(k for r in runs for k in r.settings) if k != "output"]
    return {k: [r.settings.get(k) for r in runs] for k in keys
            if len({repr(r.settings.get(k)) for r in runs}) > 1}


def comparability(runs: Sequence[RunSummary]) -> str | None:
    """Why the runs' val figures do not measure the same images, or None: different data folders, or a
    folder without val/ split with different --val-split or --seed (other images held out)."""
    data = [str(r.settings.get("data")) for r in runs]
    if len(set(data)) > 1:
        return f"the runs trained on different data ({', '.join(dict.fromkeys(data))}): their val figures are not " \
               "measured on the same images"
    held_out = not (Path(data[0]) / "val").is_dir()
    splits = {(r.settings.get("val_split"), r.settings.get("seed")) for r in runs}
    if held_out and len(splits) > 1:
        return (f"{data[0]} has no val/ folder and the runs held out their val images with different --val-split "
                "or --seed: their val figures are measured on different images")
    return None


def plot_comparison(runs: Sequence[RunSummary], labels: Sequence[str], path: str | Path) -> Path:
    """One PNG: val top-1 and val loss per epoch, one line per run, so the curves can be compared."""
    from finetune.figures import save_figure, subplots

    fig, axes = subplots(1, 2, figsize=(11, 4))
    for ax, (key, title) in zip(axes, (("val/acc1", "val top-1"), ("val/loss", "val loss"))):
        for run, label in zip(runs, labels):
            points = run.curves.get(key, [])
            if points:
                ax.plot([e for e, _ in points], [v for _, v in points], "o-", markersize=3, label=label)
        ax.set(xlabel="epoch", ylabel=title, title=title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, Path(path))
