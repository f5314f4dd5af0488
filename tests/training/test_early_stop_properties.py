"""Properties of --early-stop's patience under any validation cadence: "stops when the monitored figure has
not improved for `patience_epochs` epochs", with a validation every `val_every` epochs."""
from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune.training.callbacks.early_stop import PhaseEarlyStopping

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
