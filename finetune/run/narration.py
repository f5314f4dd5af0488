"""What `fit` says about a run: the data, the weights, the precision, the plan, and how it ended.

Each function words one part of the narration for a `finetune.reporter.Reporter`; the numbers it
states are also in the run's `RunResult`.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only
from rich.markup import escape

from finetune.config import RunConfig
from finetune.data.balance import imbalance_ratio, imbalance_warning
from finetune.pathtext import escaped, printable
from finetune.reporter import Reporter
from finetune.run.plan import RunPlan
from finetune.training.callbacks.chance import ChanceWatch
from finetune.training.callbacks.early_stop import PhaseEarlyStopping
from finetune.training.module import FinetuneModule
from finetune.training.monitor import selection_metric


def shown(path: Path | str) -> str:
    """A path as typed from here: relative below the working directory, else absolute; escaped
    (finetune/pathtext.py), so that a name that is not UTF-8 prints, and exactly."""
    with contextlib.suppress(ValueError):
        return escaped(Path(path).relative_to(Path.cwd()))
    return escaped(path)


def weights_text(report) -> str:
    """Where the weights came from, and what of them was left out or filled in."""
    details = report.details() if hasattr(report, "details") else ""
    return report.source + (f"; {details}" if details else "")


@rank_zero_only
def announce(reporter: Reporter, plan: RunPlan, report, module: FinetuneModule, world_size: int = 1) -> None:
    """The data, the weights, the precision and the plan table, before training."""
    config = plan.config
    _announce_data(reporter, plan)
    reporter.info(f"Weights: {weights_text(report)}")
    for caution in plan.cautions:
        reporter.warning(escape(caution))
    missing = getattr(report, "missing", [])
    if config.weights_partial and missing:
        reporter.warning(f"--weights-partial: {len(missing)} tensors of the model were not in "
                         f"{report.source} and keep their random init")
    reporter.info(f"Precision: {plan.precision} ({plan.precision_why})")
    if module.frozen_units and not plan.feature_cache.use:  # said once it is filled, when it is used
        reporter.info(f"Feature cache: off ({plan.feature_cache.why})")
    if module.teacher is not None:
        reporter.info(f"Teacher: {module.teacher.source} "
                      f"(kd-alpha {config.kd_alpha}, kd-temperature {config.kd_temperature})")
    if "freeze_until" in plan.decided and config.weights != "none":  # the frozen part the data chose
        reporter.info(f"freeze-until {plan.sources['freeze_until']}")
    reporter.plan(module, world_size)


def _announce_data(reporter: Reporter, plan: RunPlan) -> None:
    config, index = plan.config, plan.index
    counts = ", ".join(f"{split} {len(getattr(index, split) or [])}" for split in ("train", "val", "test"))
    table = f", labels from {shown(index.table)}" if index.table is not None else ""
    reporter.info(f"Data: {shown(config.data)} ({index.layout} layout{table}), {len(index.classes)} classes, "
                  f"{counts} images", whole=True)
    if index.bad_files:
        first = "; ".join(f"{shown(p)} ({printable(reason)})" for p, reason in index.bad_files[:3])
        more = f"; and {len(index.bad_files) - 3} more" if len(index.bad_files) > 3 else ""
        reporter.warning(f"Skipped {len(index.bad_files)} unreadable files: {escape(first)}{more} "
                         "(all in bad_files.txt)", label="", whole=True)  # paths are never broken
    train_counts = index.counts("train")
    reporter.info(f"Train images per class: {min(train_counts.values())}-{max(train_counts.values())} "
                  f"(imbalance {imbalance_ratio(train_counts):.1f}:1)")
    warning = imbalance_warning(train_counts)
    if warning:
        reporter.warning(warning)


def say_decided(reporter: Reporter, plan: RunPlan, ckpt_path: Path | None, resumed_epoch: int | None) -> None:
    """The settings the data decided (but --freeze-until, said before the plan table), and where a resumed
    run continues."""
    for key in plan.decided:
        if key != "freeze_until":
            reporter.info(f"{key.replace('_', '-')} {plan.sources[key]}")
    if ckpt_path:
        reporter.info(f"Resuming from {ckpt_path} (epoch {resumed_epoch + 1} of {plan.config.epochs})")


def say_lr_found(reporter: Reporter, found, plot: Path) -> None:
    """The LR range test's suggestion, or why it made none."""
    where = f"(plot: {plot})"
    if found.suggestion is None:
        reporter.info(f"LR finder: no suggestion, {found.reason}; keeping the default lr {found.lr:.2e} {where}",
                      whole=True)
    else:
        reporter.info(f"LR finder: suggested lr {found.suggestion:.2e} {where}")


def stopped_early(trainer: pl.Trainer) -> int | None:
    """The epoch (counted from 1) after which early stopping ended the run; None when it did not."""
    stopper = next((c for c in trainer.callbacks if isinstance(c, PhaseEarlyStopping)), None)
    return stopper.stopped_epoch + 1 if stopper is not None and stopper.stopped_epoch > 0 else None


def say_result(reporter: Reporter, trainer: pl.Trainer, config: RunConfig, best: float, epoch: int,
               run_dir: Path) -> None:
    """How the run ended: early stop, the best val top-1 and its epoch, val stuck at chance, the run dir."""
    stopper = next((c for c in trainer.callbacks if isinstance(c, PhaseEarlyStopping)), None)
    if stopped_early(trainer) is not None:
        reporter.info(f"Early stop after epoch {stopper.stopped_epoch + 1} of {config.epochs}: "
                      f"{stopper.monitor} did not improve for {stopper.patience_epochs} epochs")
    chosen = "" if config.monitor == "acc1" else f", chosen by {selection_metric(config.monitor, config.ema)}"
    # Validation runs at the training precision; a bf16 figure can differ by an image or two from the fp32
    # evaluation that follows, so the line says which it is.
    precision = str(trainer.precision)
    measured = "" if precision.startswith(("32", "64")) else f"; measured in {precision}, as trained"
    reporter.info(f"[bold]Best val top-1: {best:.4f}[/bold] (epoch {epoch} of {config.epochs}{chosen}{measured})")
    watch = next((c for c in trainer.callbacks if isinstance(c, ChanceWatch)), None)
    if watch is not None and watch.stuck_through is not None:
        later = "" if watch.at_chance(best) else f"; it left chance later, up to {best:.4f}"
        reporter.warning(f"{watch.summary()}{later}")
    reporter.info(f"Run directory: {run_dir}  "
                  "(config.yaml, metrics.csv, checkpoints/best.ckpt, checkpoints/last.ckpt)", whole=True)
