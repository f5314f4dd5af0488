"""Continuing a run from its directory: saved config and metrics.csv (RNG streams: training/callbacks/rng_state.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger

from finetune.config import RunConfig, read_run_yaml
from finetune.errors import FinetuneError
from finetune.run.run_dir import check_resumable
from finetune.training.callbacks.epoch_record import EPOCHS_FROM, read_rows
from finetune.training.checkpoint_format import read_checkpoint

# Options that may change when a run is resumed: how long and where it runs, never what it trains.
RESUME_OVERRIDES = ("epochs", "workers", "progress", "accelerator", "devices", "strategy", "num_nodes",
                    "limit_train_batches", "limit_val_batches", "verbose")


def resume_config(run_dir: Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The config saved in RUN_DIR/config.yaml with the allowed overrides applied.

    Raises:
        FinetuneError: No config.yaml or last.ckpt there, a config.yaml that is not the mapping `finetune run`
            writes (`RunConfig.from_yaml`), a last.ckpt that training cannot continue from (`checkpoint_epoch`),
            or an override outside RESUME_OVERRIDES.
    """
    run_dir = Path(run_dir)
    check_resumable(run_dir)
    bad = sorted(set(overrides or {}) - set(RESUME_OVERRIDES))
    if bad:
        flags = ", ".join("--" + b.replace("_", "-") for b in bad)
        allowed = ", ".join("--" + o.replace("_", "-") for o in RESUME_OVERRIDES)
        raise FinetuneError(f"--resume continues with the saved config.yaml; {flags} cannot change. "
                            f"Options that may be given with --resume: {allowed}")
    checkpoint_epoch(run_dir / "checkpoints" / "last.ckpt")  # refused here, before anything is built
    saved = RunConfig.from_yaml(run_dir / "config.yaml").model_dump()
    if "epochs" in (overrides or {}) and _auto_source(run_dir, "val_every"):
        saved["val_every"] = None  # re-resolved for the new length, so that its last epoch is validated
    RunConfig.model_validate({"backbone": "-", "data": ".", **(overrides or {})}, context={"unused": "allow"})
    return RunConfig.from_record({**saved, **(overrides or {}), "output": str(run_dir.absolute())}, allow_unused=False)


def _auto_source(run_dir: Path, key: str) -> bool:
    """Whether config.yaml says `key` was resolved from the data rather than given."""
    sources = read_run_yaml(run_dir / "config.yaml").get("sources") or {}
    return str(sources.get(key, "")).startswith("auto")


def checkpoint_epoch(ckpt_path: Path) -> int:
    """The epoch (0-based) a checkpoint to resume from was written in; memory-mapped, so no tensor is read.

    Raises:
        FinetuneError: The file does not load as a checkpoint of this toolkit (`read_checkpoint`: truncated,
            pickled objects...), or it lacks the training state Lightning continues from (a best.ckpt).
    """
    ckpt = read_checkpoint(ckpt_path, mmap=True)
    if ckpt.lacking_resume_state:
        raise FinetuneError(f"--resume: {ckpt_path} has no {', '.join(ckpt.lacking_resume_state)}, so training "
                            f"cannot continue from it (best.ckpt keeps the weights only); resume from the last.ckpt "
                            f"that `finetune run` wrote, or start a new run with --weights {ckpt_path}")
    return ckpt.epoch


def previous_metrics(metrics_csv: Path, last_epoch: int) -> list[dict[str, str]]:
    """Rows of an earlier metrics.csv up to and including `last_epoch` (the checkpoint's, counted from 0 as
    Lightning counts), with epochs counted from 1."""
    rows = [r for r in read_rows(metrics_csv)
            if r.get("epoch", "") == "" or int(r["epoch"]) <= last_epoch + EPOCHS_FROM]
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
