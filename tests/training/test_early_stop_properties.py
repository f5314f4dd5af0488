"""Properties of --early-stop's patience under any validation cadence: "stops when the monitored figure has
not improved for `patience_epochs` epochs", with a validation every `val_every` epochs."""
from __future__ import annotations

import copy
import logging
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.trainer.states import TrainerFn

from finetune.training.callbacks.early_stop import PhaseEarlyStopping
from finetune.training.freeze import FreezeSchedule

SETTINGS = settings(max_examples=100, deadline=None)


def _validations_until_stop(patience: int, every: int, mode: str = "max") -> int:
    """Validations without improvement after the best one until the callback stops the run."""
    stopper = PhaseEarlyStopping("val/acc1", mode, patience_epochs=patience, val_every=every)
    best, worse = (1.0, 0.5) if mode == "max" else (0.5, 1.0)
    stop, _ = stopper._evaluate_stopping_criteria(torch.tensor(best))
    assert not stop  # the first value is an improvement
    for count in range(1, patience + 2):
        stop, _ = stopper._evaluate_stopping_criteria(torch.tensor(worse))
        if stop:
            return count
    raise AssertionError(f"no stop after {patience + 1} validations without improvement")


@SETTINGS
@given(st.integers(1, 200), st.integers(1, 30), st.sampled_from(["max", "min"]))
def test_the_run_stops_at_the_first_validation_patience_epochs_after_the_best(patience, every, mode):
    validations = _validations_until_stop(patience, every, mode)
    assert validations * every >= patience  # never before `patience` epochs without improvement
    assert (validations - 1) * every < patience  # and at the first validation that reaches them


@SETTINGS
@given(st.integers(1, 200), st.integers(1, 30))
def test_patience_in_validations_is_rounded_up(patience, every):
    assert PhaseEarlyStopping("val/acc1", "max", patience, every).patience == math.ceil(patience / every)


def _epochs(stopper: PhaseEarlyStopping, schedule: FreezeSchedule, scores: list[float], first: int = 0,
            max_epochs: int | None = 0) -> int | None:
    """Feeds one validation an epoch from epoch `first` on; the epoch the callback stops at, else None.

    max_epochs 0 stands for a run of len(scores) epochs; -1 and None are what Lightning reads as unlimited."""
    module = SimpleNamespace(freeze_schedule=schedule)
    last = max_epochs if max_epochs != 0 else len(scores)
    for epoch, score in enumerate(scores[first:], start=first):
        stopper.on_train_epoch_start(SimpleNamespace(current_epoch=epoch, max_epochs=last), module)
        if stopper._evaluate_stopping_criteria(torch.tensor(score))[0]:
            return epoch
    return None


# Frozen for epochs 0-2, all layers train from epoch 3: the best score comes at epoch 1, then nothing improves.
SCHEDULE = FreezeSchedule(initial=4, milestones=((3, 0),))
SCORES = [0.5, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]


def test_patience_restarts_at_the_unfreeze_and_stops_patience_epochs_later():
    """Patience 2: the frozen phase may not stop (an unfreeze is ahead); epoch 3 restarts the count, so the
    run stops at epoch 4, the second epoch of the new phase without beating 0.8."""
    stopper = PhaseEarlyStopping("val/acc1", "max", patience_epochs=2)
    assert _epochs(stopper, SCHEDULE, SCORES) == 4
    assert stopper.restarts == [3]


@pytest.mark.parametrize("cut", [2, 3, 4])
def test_a_resumed_callback_stops_where_the_uninterrupted_one_does(cut):
    """state_dict -> load_state_dict into a new callback (what a resume does) continues the same count."""
    first = PhaseEarlyStopping("val/acc1", "max", patience_epochs=2)
    assert _epochs(first, SCHEDULE, SCORES[:cut]) is None
    saved = copy.deepcopy(first.state_dict())
    resumed = PhaseEarlyStopping("val/acc1", "max", patience_epochs=2)
    resumed.load_state_dict(copy.deepcopy(saved))
    assert resumed.restarts == first.restarts and resumed.wait_count == first.wait_count
    assert float(resumed.best_score) == pytest.approx(0.8)
    assert _epochs(resumed, SCHEDULE, SCORES, first=cut) == 4
    assert resumed.restarts == [3]


def test_a_checkpoint_of_lightnings_early_stopping_loads_with_no_restarts():
    """A state saved by Lightning's own EarlyStopping has no "restarts": it loads, with none recorded."""
    plain = EarlyStopping("val/acc1", mode="max", patience=2)
    plain._evaluate_stopping_criteria(torch.tensor(0.8))
    plain._evaluate_stopping_criteria(torch.tensor(0.7))
    stopper = PhaseEarlyStopping("val/acc1", "max", patience_epochs=2)
    stopper.load_state_dict(plain.state_dict())
    assert stopper.restarts == [] and stopper.wait_count == 1 and float(stopper.best_score) == pytest.approx(0.8)
    assert stopper._evaluate_stopping_criteria(torch.tensor(0.7))[0]  # the second validation without improvement


def test_loading_a_state_leaves_it_whole():
    """The checkpoint's dict is the caller's: loading it twice gives two callbacks with the same restarts."""
    first = PhaseEarlyStopping("val/acc1", "max", patience_epochs=2)
    _epochs(first, SCHEDULE, SCORES[:4])
    saved = first.state_dict()
    for _ in range(2):
        again = PhaseEarlyStopping("val/acc1", "max", patience_epochs=2)
        again.load_state_dict(saved)
        assert again.restarts == [3]


def _trainer(epoch: int, metrics: dict[str, float], max_epochs: int = 10) -> SimpleNamespace:
    """The parts of a fitting Trainer that EarlyStopping's hooks read, after a validation that logged `metrics`."""
    return SimpleNamespace(
        current_epoch=epoch, max_epochs=max_epochs, callback_metrics={k: torch.tensor(v) for k, v in metrics.items()},
        state=SimpleNamespace(fn=TrainerFn.FITTING), sanity_checking=False, fast_dev_run=False, should_stop=False,
        strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision),
        val_check_interval=1.0, check_val_every_n_epoch=1, global_rank=0, world_size=1)


def test_the_check_runs_when_validation_ends_and_names_the_patience(caplog):
    """ModelCheckpoint saves at validation end, after this callback (Lightning orders it last): the count it saves
    holds the validation just run only if the check runs in on_validation_end, with the default cadence too."""
    stopper = PhaseEarlyStopping("val/acc1", "max", patience_epochs=2)
    module = SimpleNamespace()  # a module with no freeze schedule: plain early stopping
    stopper.setup(_trainer(0, {}), module, "fit")
    stopped = []
    with caplog.at_level(logging.DEBUG, logger="pytorch_lightning.callbacks.early_stopping"):
        for epoch, score in enumerate([0.8, 0.7, 0.7]):
            trainer = _trainer(epoch, {"val/acc1": score, "train/loss": 1.0})
            stopper.on_train_epoch_start(trainer, module)
            stopper.on_validation_end(trainer, module)
            assert stopper.wait_count == epoch  # counted at validation end
            stopper.on_train_epoch_end(trainer, module)
            assert stopper.wait_count == epoch  # and not a second time at epoch end
            stopped.append(trainer.should_stop)
    assert stopped == [False, False, True]
    assert stopper.stopped_epoch == 2 and stopper.patience_epochs == 2  # what the end-of-run line reports
    # The project reports the stop itself: Lightning's own lines (improved by..., signaling...) stay out of the log.
    assert not [r for r in caplog.records if r.name.startswith("pytorch_lightning.callbacks.early_stopping")]


def test_a_missing_metric_is_an_error_that_names_it():
    """A monitor no validation logs (a typo, a metric the module does not compute) fails loudly, never silently
    turning early stopping off."""
    stopper = PhaseEarlyStopping("val/macro_f1", "max", patience_epochs=2)
    with pytest.raises(RuntimeError, match="val/macro_f1.*val/acc1"):
        stopper.on_validation_end(_trainer(0, {"val/acc1": 0.5}), SimpleNamespace())


def test_min_delta_is_the_smallest_change_that_counts():
    """With min_delta 0.01, a rise of 0.005 is no improvement: patience 1 stops at the first such validation."""
    stopper = PhaseEarlyStopping("val/acc1", "max", patience_epochs=1, min_delta=0.01)
    assert not stopper._evaluate_stopping_criteria(torch.tensor(0.5))[0]
    assert stopper._evaluate_stopping_criteria(torch.tensor(0.505))[0]
    rising = PhaseEarlyStopping("val/acc1", "max", patience_epochs=1, min_delta=0.01)
    assert not rising._evaluate_stopping_criteria(torch.tensor(0.5))[0]
    assert not rising._evaluate_stopping_criteria(torch.tensor(0.52))[0]  # 0.02 >= 0.01: an improvement


FLAT = [0.8] + [0.5] * 7  # the best at epoch 0, then nothing improves


@pytest.mark.parametrize("max_epochs", [0, -1, None])
def test_a_frozen_phase_never_ends_the_run_while_an_unfreeze_is_ahead(max_epochs):
    """Patience 1, all layers train from epoch 5: epochs 1-4 exhaust the patience but an unfreeze is ahead (in a
    run of 8 epochs, or an unlimited one), so the run goes on; epoch 5 is the new phase's first epoch without
    improvement, and the run stops there."""
    stopper = PhaseEarlyStopping("val/acc1", "max", patience_epochs=1)
    assert _epochs(stopper, FreezeSchedule(initial=4, milestones=((5, 0),)), FLAT, max_epochs=max_epochs) == 5


def test_a_non_finite_metric_stops_even_with_an_unfreeze_ahead():
    stopper = PhaseEarlyStopping("val/acc1", "max", patience_epochs=3)
    assert _epochs(stopper, FreezeSchedule(initial=4, milestones=((5, 0),)), [0.8, float("nan")] + FLAT) == 1


@pytest.mark.parametrize("unfreeze_at", [4, 6])
def test_an_unfreeze_the_run_never_reaches_does_not_hold_the_stop(unfreeze_at):
    """A run of 4 epochs (0-3) never reaches an unfreeze at epoch 4 or later: patience 1 stops at epoch 1."""
    stopper = PhaseEarlyStopping("val/acc1", "max", patience_epochs=1)
    assert _epochs(stopper, FreezeSchedule(initial=4, milestones=((unfreeze_at, 0),)), FLAT[:4]) == 1


def test_a_one_epoch_run_with_several_validations_stops_within_the_epoch():
    """max_epochs 1 with validations inside the epoch (val_check_interval < 1): an unfreeze at epoch 3 is never
    reached, so the second validation without improvement stops the run (patience 1, one validation an epoch)."""
    stopper = PhaseEarlyStopping("val/acc1", "max", patience_epochs=1)
    module = SimpleNamespace(freeze_schedule=FreezeSchedule(initial=4, milestones=((3, 0),)))
    stopper.on_train_epoch_start(SimpleNamespace(current_epoch=0, max_epochs=1), module)
    assert [stopper._evaluate_stopping_criteria(torch.tensor(s))[0] for s in (0.8, 0.5)] == [False, True]


def test_patience_one_stops_at_the_first_epoch_of_the_new_phase_without_improvement():
    """Unfreeze at epoch 3, best 0.8 at epoch 1: the frozen phase is held at epoch 2, and epoch 3, the new phase's
    first epoch, does not beat 0.8: with patience 1 that is the stop."""
    stopper = PhaseEarlyStopping("val/acc1", "max", patience_epochs=1)
    assert _epochs(stopper, SCHEDULE, SCORES) == 3
    assert stopper.restarts == [3]


def test_the_count_restarts_at_every_change_of_the_frozen_part_after_the_first_epoch():
    """Milestones at epochs 0 (a boundary that holds from the start: nothing changes) and 1 (the next change)."""
    stopper = PhaseEarlyStopping("val/acc1", "max", patience_epochs=5)
    assert _epochs(stopper, FreezeSchedule(initial=4, milestones=((0, 2), (1, 0))), [0.5, 0.6, 0.7]) is None
    assert stopper.restarts == [1]
