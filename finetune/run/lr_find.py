"""The LR range test: raise the LR exponentially over a few steps, watch the loss, suggest an LR.

Written here rather than with Lightning's `Tuner.lr_find`, which sets every parameter group to
one LR: with discriminative LRs the test must move all groups together and keep their ratios.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from rich.console import Console

from finetune.config import RunConfig
from finetune.heap import keep_freed_memory
from finetune.run.devices import device_trainer
from finetune.training.callbacks.lr_range_test import LRRangeTest
from finetune.training.module import FinetuneModule


@dataclass(frozen=True)
class LRFindResult:
    """Outcome of a range test.

    Attributes:
        lrs: Head LR at each step taken.
        losses: Smoothed training loss at each step.
        suggestion: The head LR at the steepest descent of the smoothed loss.
        plot: Where the loss-vs-LR plot was written, if anywhere.
    """

    lrs: list[float]
    losses: list[float]
    suggestion: float
    plot: Path | None = None


def suggest(lrs: list[float], losses: list[float]) -> float:
    """The LR where the smoothed loss falls fastest per log-LR on its way down to its lowest point.

    The first 10% of steps are skipped (the average is still settling), and so is everything after
    the lowest loss: there training is unstable, and a fall from a spike is not a good LR.
    """
    lrs_a, losses_a = np.asarray(lrs), np.asarray(losses)
    finite = np.isfinite(losses_a)
    lrs_a, losses_a = lrs_a[finite], losses_a[finite]
    if len(lrs_a) < 3:
        raise ValueError(f"the range test has {len(lrs_a)} finite losses; "
                         "raise --lr-find-steps or lower --lr-find-end-lr")
    skip = min(len(lrs_a) - 3, max(0, len(lrs_a) // 10))
    end = max(skip + 3, int(np.argmin(losses_a)) + 1)  # np.gradient needs a few points
    slopes = np.gradient(losses_a[skip:end], np.log(lrs_a[skip:end]))
    return float(lrs_a[skip + int(np.argmin(slopes))])


def plot_lr_find(result: LRFindResult, path: Path) -> Path:
    """Writes loss vs head LR (log x-axis) with the suggestion marked."""
    from finetune.figures import subplots

    fig, ax = subplots(figsize=(6, 4))
    ax.plot(result.lrs[: len(result.losses)], result.losses)
    at = min(range(len(result.lrs)), key=lambda i: abs(math.log(result.lrs[i] / result.suggestion)))
    ax.plot([result.suggestion], [result.losses[min(at, len(result.losses) - 1)]], "o", color="red",
            label=f"suggestion {result.suggestion:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("head learning rate")
    ax.set_ylabel("training loss (smoothed)")
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
        The LRs, smoothed losses and the suggested head LR.
    """
    saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
    frozen_units, was_training = module.frozen_units, module.training
    test = LRRangeTest(start_lr, end_lr, num_steps)
    trainer = device_trainer(
        accelerator, 1, precision=precision, max_steps=num_steps, max_epochs=-1,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=progress, enable_model_summary=False, callbacks=[test],
    )
    try:
        with keep_freed_memory():
            trainer.fit(module, datamodule)
    finally:
        with torch.no_grad():
            module.load_state_dict(saved)
        module.set_frozen_units(frozen_units)
        module.train(was_training)
        module.trainer = None  # detached from the test's Trainer; the real run attaches its own
    result = LRFindResult(test.lrs[: len(test.losses)], test.losses, suggest(test.lrs[: len(test.losses)], test.losses))
    return LRFindResult(result.lrs, result.losses, result.suggestion, plot_lr_find(result, plot) if plot else None)


def run_lr_find(config: RunConfig, console: Console | None = None) -> LRFindResult:
    """`finetune lr-find`: the range test for a run config; writes OUTPUT/lr_find.png.

    Args:
        config: Run settings; data, backbone, weights, freeze policy, LR ratios, optimizer and the
            lr_find_* fields are used. `output` is the folder for the plot (default: the current one).
        console: Where the plan goes.

    Returns:
        The test's LRs, losses, suggestion and plot path.
    """
    from finetune.run.plan import plan_run
    from finetune.training.plan_table import print_plan

    pl.seed_everything(config.seed, workers=True, verbose=False)
    plan, _ = plan_run(config)  # the layers, batch and augmentation `run` would use
    c = plan.config
    module = plan.build_module(lr=c.lr_find_start_lr)
    print_plan(module, console)
    output = Path(c.output) if c.output is not None else Path(".")
    return find_lr(module, plan.datamodule(keep_images=False), start_lr=c.lr_find_start_lr, end_lr=c.lr_find_end_lr,
                   num_steps=c.lr_find_steps, accelerator=c.accelerator, precision=plan.precision,
                   plot=output / "lr_find.png", progress=c.progress)
