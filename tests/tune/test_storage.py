"""Counting a shared study's trials: N in all, none run twice, and the storage a --storage names."""
from __future__ import annotations

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.trial import TrialState

from finetune.errors import FinetuneError
from finetune.search import storage
from finetune.search.storage import claim_trial, open_storage


def _study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study()


def test_a_trial_asked_after_the_study_filled_up_is_surplus_and_never_runs(monkeypatch):
    study = _study()
    for _ in range(2):
        trial = claim_trial(study, 2)
        study.tell(trial, 0.5)
    # Another worker counted before these two were asked: its pre-check passes, its trial number does not.
    monkeypatch.setattr(storage, "taken", lambda s: 1)
    assert claim_trial(study, 2) is None
    late = study.trials[-1]
    assert late.number == 2 and late.state == TrialState.FAIL and late.user_attrs["outcome"] == "surplus"
    monkeypatch.undo()
    assert claim_trial(study, 3).number == 3  # a surplus trial takes no slot: --trials 3 still runs a third


def test_settings_enqueued_by_two_workers_run_once():
    study = _study()
    for _ in range(2):
        study.enqueue_trial({"x": 1.0}, user_attrs={"enqueued": "base settings"})
    first = claim_trial(study, 3)
    first.suggest_float("x", 0, 2)
    study.tell(first, 1.0)
    second = claim_trial(study, 3)
    assert second.number == 2 and "enqueued" not in second.user_attrs
    assert study.trials[1].user_attrs["outcome"] == "surplus"


def test_storage_choices(tmp_path):
    assert open_storage(tmp_path, None) == f"sqlite:///{tmp_path.absolute() / 'study.db'}"
    assert open_storage(tmp_path, "postgresql://host/db") == "postgresql://host/db"
    assert isinstance(open_storage(tmp_path, str(tmp_path / "shared" / "study.log")), JournalStorage)
    with pytest.raises(FinetuneError, match="expected an RDB URL"):
        open_storage(tmp_path, "study.db")
