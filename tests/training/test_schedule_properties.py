"""Properties of the LR schedules for any run length, warm-up and floor (finetune.training.schedules and
docs/guides/freezing.md, "Optimizers and schedules"): a linear warm-up lr/(W+1), 2lr/(W+1), ... up to the peak; cosine
from the peak down to --min-lr; step x gamma every step-size epochs; onecycle from lr/25 up to the peak and
down to lr/25e4 (or --min-lr); never negative, never above the peak."""
from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from finetune.training.schedules import ONECYCLE_DIV, ONECYCLE_FINAL_DIV, ScheduleFactor, ScheduleSpec

SETTINGS = settings(max_examples=80, deadline=None)
totals = st.integers(min_value=1, max_value=3000)
floors = st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=1.0))


@st.composite
def schedules(draw, names=("cosine", "step", "onecycle", "constant")):
    total = draw(totals)
    return ScheduleFactor(draw(st.sampled_from(names)), total, draw(st.integers(1, 50)),
                          draw(st.integers(0, total)), draw(st.integers(1, 30)), draw(st.floats(1e-3, 1.0)),
                          draw(floors))


@SETTINGS
@given(schedules())
def test_the_factor_is_never_negative_nor_above_the_peak(f):
    factors = [f(s) for s in range(f.total_steps + 1)]
    assert min(factors) >= 0 and max(factors) <= 1 + 1e-12


@SETTINGS
@given(schedules(names=("cosine", "step", "constant")))
def test_the_warmup_starts_at_lr_over_w_plus_one_and_rises_linearly_to_the_peak(f):
    w = f.warmup_steps
    assume(w > 0)
    ramp = [f(s) for s in range(w)]
    assert ramp[0] == pytest.approx(1 / (w + 1), rel=1e-12)  # the first step's LR
    assert ramp == pytest.approx([(s + 1) / (w + 1) for s in range(w)], rel=1e-12)
    assert all(a < b for a, b in zip(ramp, ramp[1:]))
    if f.name != "step" or w // f.steps_per_epoch < f.step_size:  # the peak, unless a drop came during the ramp
        assert f(w) == pytest.approx(1.0) and ramp[-1] < f(w)


@SETTINGS
@given(schedules(names=("cosine", "step", "constant")))
def test_without_warmup_the_first_step_is_at_the_peak(f):
    f = ScheduleFactor(f.name, f.total_steps, f.steps_per_epoch, 0, f.step_size, f.gamma, f.min_factor)
    assert f(0) == pytest.approx(1.0)


@SETTINGS
@given(schedules(names=("cosine",)))
def test_cosine_falls_from_the_peak_to_the_floor(f):
    after = [f(s) for s in range(f.warmup_steps, f.total_steps + 1)]
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:]))
    assert min(after) >= f.min_factor - 1e-12
    assert f(max(f.total_steps, f.warmup_steps + 1)) == pytest.approx(f.min_factor, abs=1e-12)  # the run's end


@SETTINGS
@given(schedules(names=("step",)))
def test_step_drops_by_gamma_each_step_size_epochs_down_to_the_floor(f):
    for s in range(f.warmup_steps, f.total_steps + 1):
        drops = s // f.steps_per_epoch // f.step_size
        assert f(s) == pytest.approx(max(f.min_factor, f.gamma ** drops), rel=1e-12)


@SETTINGS
@given(schedules(names=("onecycle",)))
def test_onecycle_rises_from_a_25th_to_the_peak_then_falls_to_its_end(f):
    rise = f.warmup_steps or max(1, round(0.3 * f.total_steps))
    assume(rise < f.total_steps)
    end = f.min_factor or 1 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
    factors = [f(s) for s in range(f.total_steps + 1)]
    assert factors[0] == pytest.approx(1 / ONECYCLE_DIV) and factors[rise] == pytest.approx(1.0)
    assert factors[: rise + 1] == sorted(factors[: rise + 1])
    assert all(b <= a + 1e-12 for a, b in zip(factors[rise:], factors[rise + 1:]))
    assert factors[-1] == pytest.approx(end, abs=1e-12)


@SETTINGS
@given(st.floats(min_value=0, max_value=20), st.integers(1, 100), st.integers(1, 40))
def test_warmup_epochs_become_that_many_epochs_of_steps(epochs, steps_per_epoch, run_epochs):
    """--warmup-epochs E (fractions allowed) warms up for E x steps-per-epoch steps, to the nearest step."""
    factor = ScheduleSpec("cosine", warmup_epochs=epochs).factor(1e-3, run_epochs * steps_per_epoch, steps_per_epoch)
    assert abs(factor.warmup_steps - epochs * steps_per_epoch) <= 0.5


def _torch_onecycle(total: int, rise: int, end: float) -> list[float]:
    """torch's OneCycleLR factors at steps 0..total for a peak at step `rise` and the last step `total`.

    OneCycleLR peaks at step pct_start x total_steps - 1 and ends at step total_steps - 1, hence total + 1 steps.
    """
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1.0, total_steps=total + 1, pct_start=(rise + 1) / (total + 1), anneal_strategy="cos",
        cycle_momentum=False, div_factor=ONECYCLE_DIV, final_div_factor=1 / (ONECYCLE_DIV * end))
    factors = []
    for step in range(total + 1):
        factors.append(opt.param_groups[0]["lr"])
        opt.step()
        if step < total:
            sched.step()
    return factors


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.data())
def test_onecycle_is_torchs_one_cycle_lr(total, data):
    warmup = data.draw(st.integers(0, total - 1))
    f = ScheduleFactor("onecycle", total, warmup_steps=warmup, min_factor=data.draw(floors))
    rise = warmup or max(1, round(0.3 * total))
    assume(rise < total)
    end = f.min_factor or 1 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
    assert [f(s) for s in range(total + 1)] == pytest.approx(_torch_onecycle(total, rise, end), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("total", "warmup"), [(20, 0), (10, 9), (2, 1)])
def test_onecycle_is_torchs_one_cycle_lr_when_the_fall_is_short(total, warmup):
    """Hand-picked lengths, the shortest falls (one step) among them."""
    f = ScheduleFactor("onecycle", total, warmup_steps=warmup)
    end = 1 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
    torch_factors = _torch_onecycle(total, warmup or round(0.3 * total), end)
    assert [f(s) for s in range(total + 1)] == pytest.approx(torch_factors, rel=1e-9, abs=1e-12)


@SETTINGS
@given(schedules(names=("cosine", "onecycle")), st.integers(1, 1000))
def test_past_the_last_step_the_factor_stays_at_the_schedules_end(f, extra):
    """A run that takes more optimizer steps than planned keeps the final LR; it does not climb back up."""
    end = f(max(f.total_steps, f.warmup_steps + 1))
    if f.name == "onecycle":
        assume((f.warmup_steps or max(1, round(0.3 * f.total_steps))) < f.total_steps)
        end = f(f.total_steps)
    assert f(f.total_steps + extra) == pytest.approx(end, abs=1e-12)
