"""Random streams saved in every checkpoint and restored on resume."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


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
