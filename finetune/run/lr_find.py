"""The LR range test: raise the LR exponentially over a few steps, watch the loss, suggest an LR (or
none, where the loss shows no clear descent).

Written here rather than with Lightning's `Tuner.lr_find`, which sets every parameter group to
one LR: with discriminative LRs the test must move all groups together and keep their ratios.
"""
from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from rich.console import Console
from rich.markup import escape

from finetune.config import RunConfig
from finetune.quiet import quiet_lightning
from finetune.run.devices import device_trainer
from finetune.run.interrupts import fit_or_stop
from finetune.run.progress import RangeTestBar, bar_wanted
from finetune.training.callbacks.lr_range_test import LRRangeTest, smooth, smoothed_variance
from finetune.training.module import FinetuneModule

# The first tenth of the test (fastai skips num_it // 10, Lightning 10 of its 100 steps): its mean is
# the curve's starting level, and no LR is suggested from it, where the smoothed loss is an average of
# a few batches and moves with each one. At least 3 batches, so that one batch is not the level.
START_FRACTION = 10
MIN_START = 3
# A fall is clear when it exceeds 3 standard errors of the batch-to-batch noise. The lowest of many
# smoothed points is a minimum, so flat curves of pure noise still pass now and then: 0.3-1.1% of them
# for normal and heavy-tailed noise over 30-300 steps (benchmarks/results/lr-find-rule.md). A false
# pass suggests an LR from noise; a refusal keeps the default LR, the cheaper mistake.
CLEAR = 3.0
# Within one standard error of the starting level the curve has not yet left it.
LEVEL = 1.0


@dataclass(frozen=True)
class Suggestion:
    """What the range test's curve says: an LR, or none, and why, in one line.

    Attributes:
        lr: The suggested head LR, or None where the curve shows no clear descent.
        reason: One line: the fall that was measured, or why there is no suggestion.
        index: The step of the suggestion (None without one).
    """

    lr: float | None
    reason: str
    index: int | None = None


@dataclass(frozen=True)
class LRFindResult:
    """Outcome of a range test.

    Attributes:
        lrs: Head LR at each step taken.
        losses: Smoothed training loss at each step.
        suggestion: The head LR at the steepest descent of the smoothed loss, or None where the curve
            shows no clear descent.
        plot: Where the loss-vs-LR plot was written, if anywhere.
        reason: One line: the descent the suggestion comes from, or why there is none.
        raw_losses: Training loss at each step, before smoothing.
    """

    lrs: list[float]
    losses: list[float]
    suggestion: float | None
    plot: Path | None = None
    reason: str = ""
    raw_losses: list[float] = field(default_factory=list)

    @property
    def lr(self) -> float:
        """The head LR to train with: the suggestion, or RunConfig's default LR where there is none."""
        return self.suggestion if self.suggestion is not None else RunConfig.model_fields["lr"].default


def suggest(lrs: Sequence[float], losses: Sequence[float]) -> Suggestion:
    """The LR where the smoothed loss falls fastest on its way down, or none without a clear fall.

    The losses are smoothed (`smooth`). The first tenth of the steps sets the starting level, the
    smoothed value there; the batch-to-batch noise is the spread of successive raw losses up to the
    lowest smoothed point. With no fall below the starting level of more than CLEAR standard errors
    there is no suggestion. Else the descent is the unbroken fall of the smoothed curve that first takes
    it that far below, from its last point still within LEVEL standard errors of the start, to the
    lowest point; the suggestion is its steepest point per log-LR. Past the lowest point training is
    unstable, and a fall from a spike there is no good LR. Scaling or shifting the losses does not
    change the suggestion.

    Args:
        lrs: Head LR of each step, increasing.
        losses: Raw training loss of each step (non-finite from the first such on: the test stopped).

    Returns:
        The suggestion, or none with the reason.
    """
    n = _finite_steps(losses)
    lrs_a, raw = np.asarray(lrs[:n], dtype=float), np.asarray(losses[:n], dtype=float)
    start = max(MIN_START, n // START_FRACTION)
    if n < 2 * start:
        return Suggestion(None, f"the range test has {n} finite losses, too few to judge (at least "
                                f"{2 * MIN_START}): give it more steps, or a lower start LR if the loss blew up")
    smoothed = np.asarray(smooth(raw))
    low = start + int(np.argmin(smoothed[start:]))
    level = smoothed[start - 1]
    # Successive differences: the trend cancels. The smoothing's rounding error is the finest noise there is.
    noise = max(float(np.std(np.diff(raw[: low + 1]))) / math.sqrt(2),
                n * np.finfo(float).eps * float(np.abs(raw[: low + 1]).max()))

    def error(i: int) -> float:
        """Standard error of the fall from the starting level to step i (a bound: the two share losses)."""
        return noise * math.sqrt(smoothed_variance(start) + smoothed_variance(i + 1))

    fall = level - smoothed[low]
    if low == start:
        return Suggestion(None, f"the smoothed loss is lowest right after the first tenth of the test (lr "
                                f"{lrs_a[low]:.2e}): the test starts past any descent; give it a lower start LR")
    if not fall > CLEAR * error(low):
        return Suggestion(None, f"no clear descent: the smoothed loss falls at most {max(fall, 0):.3g} below its "
                                f"starting level {level:.3g}, under {CLEAR:g} standard errors of its batch-to-batch "
                                f"noise ({CLEAR:g} x {error(low):.2g})")
    begin = _descent_start(smoothed, start, low, lambda i: level - smoothed[i] > CLEAR * error(i),
                           lambda i: level - smoothed[i] <= LEVEL * error(i))
    slopes = np.gradient(smoothed, np.log(lrs_a))  # per log-LR: the test's LRs are evenly spaced in it
    at = begin + int(np.argmin(slopes[begin:low]))
    return Suggestion(float(lrs_a[at]), f"steepest fall of the smoothed loss on its descent from {level:.3g} to "
                                        f"{smoothed[low]:.3g} ({fall / error(low):.1f} standard errors of its noise; "
                                        f"lowest at lr {lrs_a[low]:.2e})", at)


def _finite_steps(losses: Sequence[float]) -> int:
    """How many losses come before the first non-finite one."""
    finite = np.isfinite(np.asarray(losses, dtype=float))
    return len(finite) if finite.all() else int(np.argmin(finite))


def _descent_start(smoothed: np.ndarray, start: int, low: int, clear: Callable[[int], bool],
                   level: Callable[[int], bool]) -> int:
    """First step of the descent: back from the first clearly lower step along falling values, but
    not before the last step still at the starting level."""
    first = next(i for i in range(start, low + 1) if clear(i))
    begin = first
    while begin > start and smoothed[begin - 1] > smoothed[begin]:
        begin -= 1
    at_level = [i for i in range(start, first) if level(i)]
    return min(max([begin, *at_level[-1:]]), low - 1)  # one step before the lowest, at least


def plot_lr_find(result: LRFindResult, path: Path) -> Path:
    """Writes loss vs head LR (log x-axis): raw and smoothed, the suggestion marked or the reason for none."""
    from finetune.figures import subplots

    fig, ax = subplots(figsize=(6, 4))
    lrs = result.lrs[: len(result.losses)]
    if result.raw_losses:
        ax.plot(lrs, result.raw_losses[: len(lrs)], color="0.8", linewidth=0.8, label="training loss")
    ax.plot(lrs, result.losses, label="smoothed")
    finite = [v for v in result.losses if math.isfinite(v)]
    if finite:  # the raw losses' spikes past the divergence would flatten the smoothed curve
        low, high = min(finite + [v for v in result.raw_losses if math.isfinite(v)]), max(finite)
        ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low) or None)
    if result.suggestion is not None:
        at = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i] / result.suggestion)))
        ax.plot([result.suggestion], [result.losses[at]], "o", color="red",
                label=f"suggestion {result.suggestion:.2e}")
    else:
        ax.set_title(textwrap.fill(f"no suggestion: {result.reason}", 70), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("head learning rate")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def find_lr(module: FinetuneModule, datamodule: pl.LightningDataModule, *, start_lr: float = 1e-7,
            end_lr: float = 10.0, num_steps: int = 100, accelerator: str = "auto", precision: str = "32",
            plot: Path | None = None, progress: bool = False) -> LRFindResult:
    """Runs the range test on `module`'s current freeze policy and LR ratios, then restores it.

    Weights and BatchNorm buffers are copied before and loaded back after, so the module is left
    exactly as it was (the optimizer of the test is thrown away).

    Args:
        module: The module to test; its `config.lr` is not used.
        datamodule: Training batches (cycled when `num_steps` exceeds an epoch).
        start_lr: First head LR.
        end_lr: Last head LR.
        num_steps: Optimizer steps; the test stops early when the loss diverges.
        accelerator: Lightning accelerator (one device).
        precision: Lightning precision.
        plot: Where to write lr_find.png (None: no plot).
        progress: Show a progress bar.

    Returns:
        The LRs, the smoothed and raw losses, and the suggested head LR (None, with the reason, where the
        loss shows no clear descent).
    """
    saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
    frozen_units, was_training = module.frozen_units, module.training
    test = LRRangeTest(start_lr, end_lr, num_steps)
    trainer = device_trainer(
        accelerator, 1, precision=precision, max_steps=num_steps, max_epochs=-1,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[test, *([RangeTestBar(test)] if bar_wanted(progress) else [])],
    )
    try:
        fit_or_stop(trainer, module, datamodule)  # Ctrl-C: Interrupted, not Lightning's sys.exit(1)
    finally:
        with torch.no_grad():
            module.load_state_dict(saved)
        module.set_frozen_units(frozen_units)
        module.train(was_training)
        module.trainer = None  # detached from the test's Trainer; the real run attaches its own
    lrs = test.lrs[: len(test.losses)]
    found = suggest(lrs, test.raw_losses)
    result = LRFindResult(lrs, test.losses, found.lr, None, found.reason, test.raw_losses)
    return dataclasses.replace(result, plot=plot_lr_find(result, plot)) if plot else result


def run_lr_find(config: RunConfig, console: Console | None = None) -> LRFindResult:
    """`finetune lr-find`: the range test for a run config; writes OUTPUT/lr_find.png.

    Args:
        config: Run settings; data, backbone, weights, freeze policy, LR ratios, optimizer and the
            lr_find_* fields are used. `output` is the folder for the plot (default: the current one).
        console: Where the plan goes.

    Returns:
        The test's LRs, losses, suggestion (or the reason for none) and plot path.
    """
    from finetune.run.plan import plan_run
    from finetune.training.plan_table import print_plan

    with quiet_lightning(config.verbose):
        pl.seed_everything(config.seed, workers=True, verbose=False)
        plan, _ = plan_run(config)  # the layers, batch and augmentation `run` would use
        c = plan.config
        module = plan.build_module(lr=c.lr_find_start_lr)
        print_plan(module, console)
        for caution in plan.cautions if console is not None else ():
            console.print(f"[yellow]Warning: {escape(caution)}[/yellow]", soft_wrap=True)
        output = Path(c.output) if c.output is not None else Path(".")
        return find_lr(module, plan.datamodule(keep_images=False), start_lr=c.lr_find_start_lr,
                       end_lr=c.lr_find_end_lr, num_steps=c.lr_find_steps, accelerator=c.accelerator,
                       precision=plan.precision, plot=output / "lr_find.png", progress=c.progress)
