"""LR schedules as one factor over optimizer steps, applied to every parameter group alike.

Written as plain factors for `torch.optim.lr_scheduler.LambdaLR` rather than torch's StepLR /
OneCycleLR chained by SequentialLR: LambdaLR multiplies each group's own base LR by the same
number, so discriminative ratios hold by construction under every schedule and warmup, and its
state (the step count) resumes without carrying the schedule's length. (timm's schedulers honour
its per-group `lr_scale`; torch's and Lightning's do not, so nothing here relies on that.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

ONECYCLE_DIV = 25.0  # torch OneCycleLR defaults: start at max/25, end at start/1e4
ONECYCLE_FINAL_DIV = 1e4
ONECYCLE_PCT = 0.3


@dataclass(frozen=True)
class ScheduleFactor:
    """LR factor (relative to each group's peak LR) at a 0-based optimizer step.

    Attributes:
        name: cosine | step | onecycle | constant.
        total_steps: Optimizer steps in the whole run.
        steps_per_epoch: Optimizer steps per epoch (for the step schedule's epoch counting).
        warmup_steps: Linear warmup length; onecycle uses it as its rising phase when given.
        step_size: Epochs between drops (step schedule).
        gamma: Factor applied at each drop (step schedule).
        min_factor: Floor of the factor, min_lr / head LR (cosine, step, onecycle).
    """

    name: str
    total_steps: int
    steps_per_epoch: int = 1
    warmup_steps: int = 0
    step_size: int = 7
    gamma: float = 0.1
    min_factor: float = 0.0

    def __call__(self, step: int) -> float:
        if self.name == "onecycle":
            return self._onecycle(step)
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)  # lr/(W+1), 2lr/(W+1), ... then the peak
        if self.name == "constant":
            return 1.0
        if self.name == "step":
            drops = (step // max(1, self.steps_per_epoch)) // self.step_size
            return max(self.min_factor, self.gamma ** drops)
        progress = min((step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps), 1.0)
        return _cosine(1.0, self.min_factor, progress)

    def _onecycle(self, step: int) -> float:
        # torch OneCycleLR's shape (cosine up from 1/25, cosine down), as a factor; momentum is not cycled.
        rise = self.warmup_steps or max(1, round(ONECYCLE_PCT * self.total_steps))
        low = 1.0 / ONECYCLE_DIV
        end = self.min_factor if self.min_factor > 0 else low / ONECYCLE_FINAL_DIV
        if step < rise:
            return _cosine(low, 1.0, step / rise)
        return _cosine(1.0, end, min((step - rise) / max(1, self.total_steps - rise), 1.0))


@dataclass(frozen=True)
class ScheduleSpec:
    """The LR schedule of a run in epochs, as plain values (stored in checkpoints); `factor` turns it
    into steps once the Trainer knows how many there are.

    Attributes:
        name: cosine | step | onecycle | constant.
        warmup_epochs: Linear warmup length (fractions allowed).
        step_size: Epochs between drops (step).
        gamma: Factor at each drop (step).
        min_lr: Floor of the head's LR (cosine, step, onecycle).
    """

    name: str = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 7
    gamma: float = 0.1
    min_lr: float = 0.0

    def factor(self, head_lr: float, total_steps: int, steps_per_epoch: int) -> ScheduleFactor:
        return ScheduleFactor(self.name, total_steps, steps_per_epoch, round(self.warmup_epochs * steps_per_epoch),
                              self.step_size, self.gamma, min(1.0, self.min_lr / head_lr))


def _cosine(start: float, end: float, progress: float) -> float:
    """Cosine interpolation from `start` (progress 0) to `end` (progress 1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
