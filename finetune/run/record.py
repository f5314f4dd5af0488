"""A run's config.yaml as `fit` writes it: the settings, the plan's resolved values and their sources, kept
across --resume; bad_files.txt beside it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from finetune import atomic
from finetune.config import read_run_yaml
from finetune.run.plan import RunPlan


def recorded_section(run_dir: Path) -> dict[str, Any]:
    """config.yaml's `resolved` section (a resumed run's augmentation, tracker ids); {} without one."""
    path = run_dir / "config.yaml"
    return read_run_yaml(path).get("resolved") or {} if path.is_file() else {}


def tracker_ids(trainer: pl.Trainer) -> dict[str, str]:
    """The MLflow run id (creating the run) and the W&B run id, for config.yaml and a later --resume."""
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    ids = {"mlflow_run_id": lg.run_id for lg in trainer.loggers if isinstance(lg, MLFlowLogger)}
    return {**ids, **{"wandb_run_id": lg.version for lg in trainer.loggers if isinstance(lg, WandbLogger)}}


def write_run_files(plan: RunPlan, run_dir: Path, resuming: bool = False,
                     trackers: dict[str, str] | None = None) -> None:
    """config.yaml: the settings, then the plan's resolved values and where each setting came from."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = plan.record()
    resolved = {"run_dir": str(run_dir.absolute()), **record["resolved"], **(trackers or {})}
    sources = record["sources"]
    if plan.lr_find is not None:
        resolved["lr_find"] = {**plan.lr_find, "plot": "lr_find.png"}
    if resuming:
        resolved, sources = merge_record(run_dir / "config.yaml", resolved, sources)
    atomic.write_text(run_dir / "config.yaml", plan.config.to_yaml(resolved, sources))  # whole, for --resume
    if plan.index.bad_files:
        plan.index.write_bad_files(run_dir / "bad_files.txt")


def merge_record(path: Path, resolved: dict, sources: dict[str, str] | None) -> tuple[dict, dict[str, str]]:
    """A resumed run keeps what its first start recorded (where each value came from, the LR finder's
    result) and updates what is measured again or was given with --resume."""
    old = read_run_yaml(path) if path.is_file() else {}
    return {**old.get("resolved", {}), **resolved}, {**old.get("sources", {}), **(sources or {})}
