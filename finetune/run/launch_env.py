"""The environment of a run's processes: what the processes a multi-process launcher starts inherit, set
only where there is one, and variables a run sets for itself, put back when it ends."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

import pytorch_lightning as pl


@contextlib.contextmanager
def shared_with_ranks(trainer: pl.Trainer, env: dict[str, str]) -> Iterator[None]:
    """Within the block (the training, whose start is when the launcher starts the processes), `env` (the run
    dir, plan.shared_env, the caller's child_env) is in os.environ where the strategy starts processes of
    its own (DDP), which read it; a single-process run leaves os.environ alone."""
    if trainer.strategy.launcher is None:
        yield
        return
    with restored_environ(env):
        os.environ.update(env)
        yield


@contextlib.contextmanager
def restored_environ(keys: Iterable[str]) -> Iterator[None]:
    """On leaving, `keys` of os.environ are as they were on entering (set to their value, or unset)."""
    previous = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
