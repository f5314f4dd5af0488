"""Where a study lives, and how workers sharing it count trials so that the study runs N in all."""
from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, Trial, TrialState

from finetune.errors import FinetuneError

# Trials that never took a slot: one asked after the study was full, or stopped by Ctrl-C (rerun it).
UNCOUNTED = ("surplus", "interrupted")


def open_storage(study_dir: Path, storage: str | None) -> str | BaseStorage:
    """The study's storage: SQLite in the study folder by default, an RDB URL, or a journal file.

    Args:
        study_dir: The study folder (holds study.db by default).
        storage: None, an RDB URL (sqlite:///, postgresql://, mysql://), or a path ending in .log,
            a journal file that processes on several machines can share over a shared filesystem.
    """
    if storage is None:
        return f"sqlite:///{(study_dir / 'study.db').absolute()}"
    if storage.endswith(".log"):
        path = Path(storage).expanduser().absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" in storage:
        return storage
    raise FinetuneError(f"--storage {storage}: expected an RDB URL (sqlite:///study.db, postgresql://..., "
                        "mysql://...) or the path of a journal file ending in .log")


def counts(trial: FrozenTrial) -> bool:
    """Whether a trial takes one of the study's N slots (running ones do: another worker has it;
    enqueued, waiting ones do not yet: the next `ask` runs them)."""
    return trial.state != TrialState.WAITING and trial.user_attrs.get("outcome") not in UNCOUNTED


def taken(study: optuna.Study) -> int:
    """Slots taken: finished trials and those running on some worker."""
    return sum(counts(t) for t in study.get_trials(deepcopy=False))


def claim_trial(study: optuna.Study, n_trials: int) -> Trial | None:
    """Asks a new trial if the study has fewer than `n_trials`, else returns None.

    Two workers may both see N-1 trials and ask at once. Trial numbers are assigned in one order
    by the storage, so the later one finds N earlier trials, records itself as surplus (FAIL,
    never run, not counted) and stops: the study runs exactly N. An enqueued trial that two
    workers both enqueued (same `enqueued` attribute) runs once: the later copy is surplus too.
    """
    while taken(study) < n_trials:
        trial = study.ask()
        earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and counts(t)]
        tag = trial.user_attrs.get("enqueued")
        if tag is not None and any(t.user_attrs.get("enqueued") == tag for t in earlier):
            _surplus(study, trial)
            continue
        if len(earlier) >= n_trials:
            _surplus(study, trial)
            return None
        return trial
    return None


def _surplus(study: optuna.Study, trial: Trial) -> None:
    trial.set_user_attr("outcome", "surplus")
    study.tell(trial, state=TrialState.FAIL)
