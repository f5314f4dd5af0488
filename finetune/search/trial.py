"""One trial of a study: a `fit` run with sampled settings, and how its end is recorded."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import Trial, TrialState
from rich.console import Console

from finetune.config import RunConfig
from finetune.errors import FinetuneError
from finetune.run.fit import fit
from finetune.search.pruning import TrialPruning
from finetune.training.callbacks.divergence import DivergenceError

# A bad setting (a layer name the backbone lacks, settings that contradict each other, memory) ends
# its trial, recorded with the reason; the study goes on. Anything else is a bug and stops the study.
SETTING_ERRORS = (FinetuneError, ValueError, torch.OutOfMemoryError)
# Lightning's DDP launcher starts ranks 1..N-1 by running the same command again: they find the trial
# they belong to here, and join its run instead of starting a study of their own.
TRIAL_ENV = "FINETUNE_TUNE_TRIAL"


def trial_config(base: RunConfig, params: Mapping[str, Any], epochs: int, run_dir: Path) -> RunConfig:
    """The run settings of one trial: the base config, the sampled values, the stage's epochs,
    and the trial's own folder (no progress bar, no export: trials are compared, not shipped)."""
    values = {**base.model_dump(), **params, "epochs": epochs, "output": run_dir, "overwrite": True,
              "progress": False, "export": False}
    return RunConfig.model_validate(values)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's per-run banners and warnings would bury the study's own progress lines."""
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def join_trial_as_rank() -> bool:
    """In a process the DDP launcher started for a trial: trains this rank of it and returns True.

    The rank holds no trial: its pruning callback only votes, and how the trial ended (pruned,
    diverged, failed) is recorded by global zero, which raised or stopped at the same step.
    """
    shared = os.environ.get(TRIAL_ENV)
    if shared is None:
        return False
    config = RunConfig.model_validate_json(shared)
    with contextlib.suppress(*SETTING_ERRORS), _quiet():
        fit(config, Console(file=io.StringIO()), callbacks=[TrialPruning(None)])
    return True


def run_trial(study: optuna.Study, trial: Trial, base: RunConfig, params: Mapping[str, Any], epochs: int,
              run_dir: Path) -> str:
    """Trains one trial and tells the study how it ended.

    A completed trial's value is its best val top-1. A pruned run is PRUNED. A run stopped by the
    divergence guard is PRUNED too, with outcome "diverged": like a pruned trial it was stopped for
    being bad, and TPE learns from PRUNED trials (it ranks them below completed ones), whereas it
    ignores FAIL ones and would keep sampling the exploding region. A setting error is FAIL with
    its reason; the study continues.

    Returns:
        The outcome: "complete", "pruned", "diverged" or "failed".
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("epochs", epochs)
    start = time.perf_counter()
    pruning = TrialPruning(trial)
    outcome, value = "failed", None
    with open(run_dir / "log.txt", "w") as log:
        try:
            config = trial_config(base, params, epochs, run_dir)
            with _quiet():  # the trial's config reaches the ranks a DDP launcher starts, and only them
                result = fit(config, Console(file=log, width=120), callbacks=[pruning],
                             child_env={TRIAL_ENV: config.model_dump_json()})
            outcome, value = ("pruned", None) if pruning.pruned_at is not None else ("complete", result.best_val_acc1)
        except DivergenceError as e:
            outcome = "diverged"
            trial.set_user_attr("reason", str(e))
        except SETTING_ERRORS as e:
            trial.set_user_attr("reason", f"{type(e).__name__}: {e}")
        except KeyboardInterrupt:
            _record(study, trial, "interrupted", None, pruning, start)
            raise
        except BaseException as e:  # a bug: recorded, then it stops the study with its traceback
            trial.set_user_attr("reason", f"{type(e).__name__}: {e}")
            _record(study, trial, "failed", None, pruning, start)
            raise
    _record(study, trial, outcome, value, pruning, start)
    return outcome


def _record(study: optuna.Study, trial: Trial, outcome: str, value: float | None, pruning: TrialPruning,
            start: float) -> None:
    trial.set_user_attr("outcome", outcome)
    trial.set_user_attr("epochs_run", pruning.epochs_run)
    trial.set_user_attr("wall_s", round(time.perf_counter() - start, 2))
    if pruning.best is not None:
        trial.set_user_attr("best_reported", pruning.best)
    state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED,
             "diverged": TrialState.PRUNED}.get(outcome, TrialState.FAIL)
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
