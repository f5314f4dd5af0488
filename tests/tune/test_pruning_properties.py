"""Properties of trial pruning for any trial length: the pruners `finetune tune` makes give no verdict
before their warm-up ("median (after a quarter of the epochs)"; asha's first rung at 1/9 of them), and
a trial far below the others is pruned once it is past it. Driven through TrialPruning, as a run is."""
from __future__ import annotations

from types import SimpleNamespace

import optuna
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune.search.pruning import TrialPruning
from finetune.search.study import make_pruner

optuna.logging.set_verbosity(optuna.logging.WARNING)
SETTINGS = settings(max_examples=60, deadline=None)
# The share of the epochs each pruner waits for, from make_pruner's documentation.
WARMUP_SHARE = {"median": 1 / 4, "asha": 1 / 9}


def _trainer(acc: float, epoch: int) -> SimpleNamespace:
    return SimpleNamespace(sanity_checking=False, callback_metrics={"val/acc1": torch.tensor(acc)},
                           is_global_zero=True, current_epoch=epoch, should_stop=False,
                           strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision))


def _run(trial: optuna.Trial, accs: list[float]) -> TrialPruning:
    """Validates after every epoch until the callback stops the run, as the Trainer would."""
    callback = TrialPruning(trial)
    for epoch, acc in enumerate(accs):
        trainer = _trainer(acc, epoch)
        callback.on_train_epoch_end(trainer, None)
        callback.on_validation_end(trainer, None)
        if trainer.should_stop:
            break
    return callback


@SETTINGS
@given(st.sampled_from(sorted(WARMUP_SHARE)), st.integers(1, 120), st.integers(2, 4))
def test_no_trial_is_pruned_before_the_warmup_and_a_hopeless_one_is_after_it(name, epochs, good_trials):
    study = optuna.create_study(direction="maximize", pruner=make_pruner(name, epochs))
    for _ in range(good_trials):  # finished trials that scored 0.9 at every epoch
        trial = study.ask()
        _run(trial, [0.9] * epochs)
        study.tell(trial, 0.9)
    hopeless = _run(study.ask(), [0.0] * epochs)
    if hopeless.pruned_at is not None:
        assert hopeless.epochs_run >= WARMUP_SHARE[name] * epochs  # no verdict before the warm-up
    if name == "median" or epochs >= 2:  # past the warm-up, below the finished trials' median or best third
        assert hopeless.pruned_at is not None
