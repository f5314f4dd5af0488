"""The pruning callback: reports each validation, skips the sanity check, and stops every rank together."""
from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.pruners import ThresholdPruner

from finetune.search.pruning import TrialPruning


def _trainer(acc: float, epoch: int = 0, *, rank_zero: bool = True, vote=lambda decision, all: decision, sanity=False):
    return SimpleNamespace(sanity_checking=sanity, callback_metrics={"val/acc1": torch.tensor(acc)},
                           is_global_zero=rank_zero, current_epoch=epoch, should_stop=False,
                           strategy=SimpleNamespace(reduce_boolean_decision=vote))


def _trial(lower: float) -> optuna.Trial:
    return optuna.create_study(direction="maximize", pruner=ThresholdPruner(lower=lower)).ask()


def test_reports_each_validation_and_stops_when_the_pruner_says_so():
    trial = _trial(lower=0.5)
    callback = TrialPruning(trial)
    good, bad = _trainer(0.8, 0), _trainer(0.3, 1)
    callback.on_validation_end(good, None)
    assert not good.should_stop and callback.pruned_at is None
    callback.on_validation_end(bad, None)
    assert bad.should_stop and callback.pruned_at == 1
    assert trial.study.trials[0].intermediate_values == {0: pytest.approx(0.8), 1: pytest.approx(0.3)}
    assert callback.best == pytest.approx(0.8)


def test_the_sanity_check_is_not_a_result():
    trial = _trial(lower=0.5)
    callback = TrialPruning(trial)
    trainer = _trainer(0.0, sanity=True)
    callback.on_validation_end(trainer, None)
    assert not trainer.should_stop and trial.study.trials[0].intermediate_values == {}


def test_every_rank_stops_when_one_rank_decides():
    """Under DDP only global zero holds the trial; the others stop when the vote (any rank) says so."""
    votes = []

    def any_rank_pruned(decision, all):
        votes.append((decision, all))
        return True  # global zero voted to prune

    other = _trainer(0.9, 2, rank_zero=False, vote=any_rank_pruned)
    callback = TrialPruning(None)
    callback.on_validation_end(other, None)
    assert other.should_stop and callback.pruned_at == 2
    assert votes == [(False, False)]  # this rank had no verdict of its own, and any rank's verdict suffices


def test_epochs_run_counts_completed_training_epochs_from_zero():
    callback = TrialPruning(_trial(lower=0.0))
    assert callback.epochs_run == 0  # none yet: a trial stopped before its first epoch ran none
    for epoch in range(3):
        callback.on_train_epoch_end(_trainer(0.5, epoch), None)
        assert callback.epochs_run == epoch + 1


def test_a_rank_zero_without_a_trial_reports_nothing_and_does_not_stop():
    """The process that holds no trial (trial=None) only takes part in the vote, even on global rank zero."""
    callback = TrialPruning(None)
    trainer = _trainer(0.1, rank_zero=True)
    callback.on_validation_end(trainer, None)
    assert callback.best is None and callback.pruned_at is None and not trainer.should_stop
