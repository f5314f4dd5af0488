"""Continuing a run from its directory: saved config, RNG streams and metrics.csv."""
from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
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


class RNGState(pl.Callback):
    """Saves the random streams a run draws from in every checkpoint and restores them on resume.

    Lightning checkpoints hold weights, optimizer and loops but no RNG state, so a resumed run
    would shuffle and augment differently from an uninterrupted one. Covered: torch (CPU and CUDA),
    numpy, Python `random`, the train loader's shuffle generator and the train transform's own RNG.
    With --workers > 0 the workers' streams live in other processes and are not covered.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        state = {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        loader = trainer.train_dataloader if trainer is not None else None
        if getattr(loader, "generator", None) is not None:
            state["loader"] = loader.generator.get_state()
        transform = _train_transform(trainer)
        if transform is not None:
            state["transform"] = [(t.random_generator.bit_generator.state, t.py_random.getstate())
                                  for t in _rng_holders(transform)]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict  # the loaders do not exist yet; applied before the next epoch draws

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        _set_numpy_state(state["numpy"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        loader = trainer.train_dataloader
        if "loader" in state and getattr(loader, "generator", None) is not None:
            loader.generator.set_state(state["loader"])
        transform = _train_transform(trainer)
        if "transform" in state and transform is not None:
            for t, (numpy_state, python_state) in zip(_rng_holders(transform), state["transform"], strict=True):
                t.random_generator.bit_generator.state = numpy_state
                t.py_random.setstate(python_state)
        # Lightning drew this epoch's iterator (shuffle order, base seed) in setup_data, before any hook
        # of a resumed run; draw it again from the restored streams, as Lightning does at every later epoch.
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if fetcher is not None:
            iter(fetcher)

    _trainer: pl.Trainer | None = None


def _numpy_state() -> tuple:
    # Checkpoints load with weights_only=True, which refuses numpy arrays: the key table goes as a tensor.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached


def _set_numpy_state(state: tuple) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _rng_holders(pipeline: Any) -> list[Any]:
    """The Compose and every transform inside it: a seeded Compose gives each one its own generators."""
    out = [pipeline]
    for t in getattr(pipeline, "transforms", []):
        out.extend(_rng_holders(t))
    return [t for t in out if hasattr(t, "random_generator") and hasattr(t, "py_random")]


def _train_transform(trainer: pl.Trainer | None) -> Any:
    """The albumentations Compose of the train split, which keeps its own RNG (None if not ours)."""
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    pipeline = getattr(getattr(dm, "train_transform", None), "pipeline", None)
    return pipeline if hasattr(pipeline, "random_generator") and hasattr(pipeline, "py_random") else None


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
