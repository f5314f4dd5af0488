"""Continuing a run from its directory: saved config and metrics.csv (RNG streams: training/callbacks/rng_state.py)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml
from pytorch_lightning.loggers import CSVLogger

from finetune.config import RunConfig
from finetune.errors import FinetuneError

# Options that may change when a run is resumed: how long and where it runs, never what it trains.
RESUME_OVERRIDES = ("epochs", "workers", "progress", "accelerator", "devices", "strategy", "num_nodes",
                    "limit_train_batches", "limit_val_batches", "verbose")


def resume_config(run_dir: Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The config saved in RUN_DIR/config.yaml with the allowed overrides applied.

    Raises:
        FinetuneError: No config.yaml or last.ckpt there, or an override outside RESUME_OVERRIDES.
    """
    run_dir = Path(run_dir)
    for needed in (run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"):
        if not needed.is_file():
            raise FinetuneError(f"--resume {run_dir}: {needed} is missing; resume needs a run directory "
                                f"written by `finetune run` (config.yaml and checkpoints/last.ckpt)")
    bad = sorted(set(overrides or {}) - set(RESUME_OVERRIDES))
    if bad:
        flags = ", ".join("--" + b.replace("_", "-") for b in bad)
        allowed = ", ".join("--" + o.replace("_", "-") for o in RESUME_OVERRIDES)
        raise FinetuneError(f"--resume continues with the saved config.yaml; {flags} cannot change. "
                            f"Options that may be given with --resume: {allowed}")
    saved = RunConfig.from_yaml(run_dir / "config.yaml").model_dump()
    if "epochs" in (overrides or {}) and _auto_source(run_dir, "val_every"):
        saved["val_every"] = None  # re-resolved for the new length, so that its last epoch is validated
    return RunConfig.model_validate({**saved, **(overrides or {}), "output": str(run_dir.absolute())})


def _auto_source(run_dir: Path, key: str) -> bool:
    """Whether config.yaml says `key` was resolved from the data rather than given."""
    sources = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("sources", {})
    return str(sources.get(key, "")).startswith("auto")


def previous_metrics(metrics_csv: Path, last_epoch: int) -> list[dict[str, str]]:
    """Rows of an earlier metrics.csv up to and including `last_epoch` (the checkpoint's)."""
    if not metrics_csv.is_file():
        return []
    with open(metrics_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("epoch", "") == "" or int(r["epoch"]) <= last_epoch]
    return [{k: v for k, v in r.items() if v != ""} for r in rows]


class ContinuingCSVLogger(CSVLogger):
    """A CSVLogger that keeps the rows of an earlier metrics.csv, which Lightning's would delete."""

    def __init__(self, *args: Any, previous_rows: list[dict[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._previous_rows = list(previous_rows or [])

    @property
    def experiment(self) -> Any:
        experiment = super().experiment
        if self._previous_rows and experiment is not None:
            # Lightning's writer has just deleted metrics.csv: put the earlier rows back on disk at once,
            # so a run stopped before its first log still has its history for the next --resume.
            experiment.metrics = [*self._previous_rows, *experiment.metrics]
            self._previous_rows = []
            experiment.save()
        return experiment
