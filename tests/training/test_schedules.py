"""LR schedule shapes with warm-up: onecycle's rising phase is --warmup-epochs when given."""
from __future__ import annotations

import pytest

from finetune.run.fit import fit
from finetune.training.schedules import ONECYCLE_DIV, ScheduleFactor


@pytest.mark.parametrize("warmup", [10, 45])
def test_onecycle_peaks_at_the_end_of_warmup(warmup):
    f = ScheduleFactor("onecycle", total_steps=100, steps_per_epoch=10, warmup_steps=warmup)
    factors = [f(s) for s in range(101)]
    assert max(range(101), key=factors.__getitem__) == warmup and factors[warmup] == pytest.approx(1.0)
    assert factors[0] == pytest.approx(1 / ONECYCLE_DIV)
    assert factors[: warmup + 1] == sorted(factors[: warmup + 1])  # rises during warm-up ...
    assert factors[warmup:] == sorted(factors[warmup:], reverse=True)  # ... and only falls after it


def test_onecycle_without_warmup_rises_for_30_percent():
    f = ScheduleFactor("onecycle", total_steps=100)
    factors = [f(s) for s in range(101)]
    assert max(range(101), key=factors.__getitem__) == 30


@pytest.mark.parametrize("name", ["cosine", "step", "constant"])
def test_warmup_is_linear_then_reaches_the_peak(name):
    f = ScheduleFactor(name, total_steps=100, steps_per_epoch=10, warmup_steps=4)
    assert [f(s) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_onecycle_run_peaks_after_the_warmup_epoch(make_config, group_lrs):
    # 24 images / batch 8 = 3 steps per epoch, 2 epochs: warm-up is the first 3 steps, the peak step 3
    # (without the warm-up, onecycle would rise for round(0.3 x 6) = 2 steps).
    fit(make_config(epochs=2, lr=0.01, schedule="onecycle", warmup_epochs=1), callbacks=[group_lrs])
    heads = [s["head"] for s in group_lrs.steps]
    assert len(heads) == 6
    assert max(range(6), key=heads.__getitem__) == 3 and heads[3] == pytest.approx(0.01)
    assert heads[0] == pytest.approx(0.01 / ONECYCLE_DIV) and heads[:4] == sorted(heads[:4])
