"""`finetune.fit`: one fine-tuning run from a RunConfig to a run directory."""
from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only
from rich.console import Console
from rich.markup import escape

from finetune import atomic
from finetune.config import RunConfig, read_run_yaml
from finetune.data.balance import imbalance_ratio, imbalance_warning
from finetune.data.datamodule import ImageFolderDataModule
from finetune.errors import FinetuneError
from finetune.heap import keep_freed_memory
from finetune.pathtext import escaped, printable
from finetune.quiet import quiet_lightning
from finetune.run.devices import device_trainer
from finetune.run.interrupts import after_training, before_training, during_training, fit_or_stop, stopping
from finetune.run.lr_find import find_lr
from finetune.run.memory_check import check_memory
from finetune.run.plan import RunPlan, plan_run, shared_env
from finetune.run.progress import RunProgressBar, bar_wanted
from finetune.run.resume import checkpoint_epoch, previous_metrics
from finetune.run.run_dir import claimed_run_dir, default_run_dir
from finetune.run.trackers import tracker_loggers
from finetune.training.callbacks.chance import ChanceWatch
from finetune.training.callbacks.divergence import DivergenceGuard
from finetune.training.callbacks.early_stop import PhaseEarlyStopping
from finetune.training.callbacks.ema import EmaCallback
from finetune.training.callbacks.epoch_record import EPOCHS_FROM, EpochLine, EpochRecord, read_rows
from finetune.training.callbacks.last_checkpoint import LastCheckpoint
from finetune.training.callbacks.rng_state import RNGState
from finetune.training.callbacks.unfreeze import GradualUnfreezing
from finetune.training.checkpoint_format import saved_epoch
from finetune.training.checkpoint_io import AtomicCheckpointIO
from finetune.training.freeze import build_schedule
from finetune.training.module import FinetuneModule
from finetune.training.monitor import best_row, monitor_spec, selection_metric
from finetune.training.plan_table import print_plan
from finetune.training.teacher import Teacher

SKIPPED_FILES = r"skipped \d+ bad file\(s\) in "  # the scan's DataWarning, which the run words itself
DIVERGENCE_FACTOR = 3.0  # the course notes' rule: stop a run whose loss explodes past 3x its start
RUN_DIR_ENV = "FINETUNE_RUN_DIR"  # hands rank 0's run directory to the processes DDP starts


@dataclass(frozen=True)
class RunResult:
    """What a run produced. Paths are inside `run_dir`."""

    run_dir: Path
    config_path: Path
    metrics_csv: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_val_acc1: float
    best_epoch: int  # counted from 1, as on the console and in metrics.csv
    precision: str


def resolve_run_dir(config: RunConfig) -> Path:
    if config.output is not None:
        return Path(config.output)
    inherited = os.environ.get(RUN_DIR_ENV)
    return Path(inherited) if inherited else default_run_dir(config.backbone)


@contextlib.contextmanager
def _shared_run_dir(run_dir: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """Exports the run dir, and `env` (plan.shared_env), to child processes for the duration of the run only."""
    exported = {RUN_DIR_ENV: str(run_dir), **(env or {})}
    previous = {k: os.environ.get(k) for k in exported}
    os.environ.update(exported)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def build_trainer(config: RunConfig, run_dir: Path, precision: str, steps_per_epoch: int,
                  callbacks: Sequence[pl.Callback] = (), previous_rows: list[dict[str, str]] | None = None,
                  on_epoch: Callable[[dict, pl.Trainer], None] | None = None,
                  mlflow_run_id: str | None = None) -> pl.Trainer:
    """A Lightning Trainer writing metrics.csv and checkpoints/{best,last}.ckpt into the run dir.

    `callbacks` join the toolkit's own; `previous_rows` (a resumed run's metrics.csv) are kept;
    `on_epoch` gets each epoch's metrics.csv row (the console line); `mlflow_run_id` continues that
    MLflow run (a resumed run's).
    """
    monitor, mode = selection_metric(config.monitor, config.ema), monitor_spec(config.monitor).mode
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode=mode,
        auto_insert_metric_name=False, enable_version_counter=False, save_on_train_epoch_end=False,
    )
    # Lightning's save_last only refreshes last.ckpt when best.ckpt changes; --resume needs recent epochs.
    last = LastCheckpoint(run_dir / "checkpoints")
    record = EpochRecord(run_dir / "metrics.csv", previous_rows, on_epoch)
    stopping = [PhaseEarlyStopping(monitor, mode, config.early_stop, config.val_every or 1, config.early_stop_min_delta)
                if config.early_stop else None]
    loggers = tracker_loggers(config, run_dir, mlflow_run_id)
    # LearningRateMonitor feeds the trackers each step's LRs; metrics.csv has each group's LR per epoch.
    lr_monitor = [LearningRateMonitor(logging_interval="step")] if loggers else []
    bar = [RunProgressBar()] if bar_wanted(config.progress) else []
    return device_trainer(
        config.accelerator, config.lightning_devices(), config.strategy, config.num_nodes,
        default_root_dir=run_dir,
        max_epochs=config.epochs,
        precision=precision,
        logger=loggers or False,
        callbacks=[checkpoint, last, record, *lr_monitor, *guard_callbacks(config, run_dir), *callbacks,
                   *(c for c in stopping if c is not None), *bar],
        plugins=[AtomicCheckpointIO(inference_only=("best.ckpt",))],
        limit_train_batches=config.limit_train_batches,
        limit_val_batches=config.limit_val_batches,
        check_val_every_n_epoch=config.val_every or 1,
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
        enable_progress_bar=bool(bar),
        enable_model_summary=False,
    )


def guard_callbacks(config: RunConfig, run_dir: Path) -> list[pl.Callback]:
    """The divergence guard (always: a loss past 3x its start and ln(C) stops the run), and EMA with --ema."""
    guards: list[pl.Callback] = [DivergenceGuard(DIVERGENCE_FACTOR, run_dir / "checkpoints")]
    if config.ema:
        guards.append(EmaCallback(config.ema_decay, config.ema_warmup, config.monitor))
    return guards


def best_epoch(metrics_csv: Path, monitor: str = "acc1") -> tuple[float, int]:
    """(val top-1 of the best epoch, that epoch counted from 1) read back from metrics.csv; the best epoch
    is the one best.ckpt holds: the best --monitor figure (with --ema, of the better weights)."""
    best = best_row(read_rows(metrics_csv), monitor)
    return (best[3], best[2]) if best else (float("nan"), -1)


def fit(config: RunConfig, console: Console | None = None, *, callbacks: Sequence[pl.Callback] = (),
        ckpt_path: Path | None = None, sources: dict[str, str] | None = None) -> RunResult:
    """Fine-tunes `config.backbone` on `config.data` and writes the run directory.

    Args:
        config: The validated run settings.
        console: Where the plan and summary go (default: stdout).
        callbacks: Extra Lightning callbacks for the Trainer.
        ckpt_path: A last.ckpt to continue from (see `finetune.run.resume.resume_config`).
        sources: Where each setting came from (default, recipe, command line), for config.yaml.

    Returns:
        Paths of everything written, and the best validation top-1.

    Example:
        >>> result = fit(RunConfig(backbone="resnet18", data="mydata", epochs=3))  # doctest: +SKIP
        >>> result.best_val_acc1
    """
    console = console or Console()
    config = config.with_absolute_paths()  # config.yaml and the checkpoints must work from any folder
    run_dir = resolve_run_dir(config)
    with quiet_lightning(config.verbose), keep_freed_memory(), _held(run_dir, config, ckpt_path, console), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SKIPPED_FILES)  # said by _announce, once, with bad_files.txt
        return _fit(config, run_dir, console, callbacks, ckpt_path, sources)


@contextlib.contextmanager
def _held(run_dir: Path, config: RunConfig, ckpt_path: Path | None, console: Console) -> Iterator[None]:
    """Holds the run directory for the run (rank 0; the processes DDP starts inherit it in RUN_DIR_ENV)."""
    if rank_zero_only.rank != 0 or os.environ.get(RUN_DIR_ENV) == str(run_dir):
        yield
        return
    with claimed_run_dir(run_dir, config.overwrite, resuming=ckpt_path is not None,
                         created=config.output is None) as removed:
        if removed:
            console.print(f"--overwrite: removed the earlier run's {', '.join(removed)} from {_shown(run_dir)}",
                          soft_wrap=True)
        yield


def _fit(config: RunConfig, run_dir: Path, console: Console, callbacks: Sequence[pl.Callback],
         ckpt_path: Path | None, sources: dict[str, str] | None) -> RunResult:
    with stopping(before_training(run_dir, ckpt_path is not None, saved_epoch)):
        plan, trainer, module, datamodule = _prepare(config, run_dir, console, callbacks, ckpt_path, sources)
    with stopping(during_training(trainer, run_dir, plan.config.epochs, saved_epoch)):
        with _shared_run_dir(run_dir, shared_env(plan)):
            fit_or_stop(trainer, module, datamodule, ckpt_path=ckpt_path)
    with stopping(after_training(run_dir)):
        module.feature_split = None  # the module runs on images again
        result = _finish(console, trainer, run_dir, plan.precision, plan.config)
        if trainer.is_global_zero:
            from finetune.run.report import finish_run  # curves, final evaluation, export bundle

            finish_run(plan.config, run_dir, plan.index, console)
    return result


def _prepare(config: RunConfig, run_dir: Path, console: Console, callbacks: Sequence[pl.Callback],
             ckpt_path: Path | None, sources: dict[str, str] | None
             ) -> tuple[RunPlan, pl.Trainer, FinetuneModule, ImageFolderDataModule]:
    """Everything before training: the plan, the Trainer, the module and the data, the run files written."""
    pl.seed_everything(config.seed, workers=True, verbose=False)
    started = _recorded_section(run_dir) if ckpt_path else None
    plan, report = plan_run(config, sources, started)
    index = plan.index
    steps = -(-len(index.train) // plan.config.batch_size)
    say = console.print  # above the bar when there is one
    watch = ChanceWatch(list(index.counts("val").values()), plan.config.epochs, console.print)
    policy = [GradualUnfreezing(say), RNGState(), watch, *callbacks]
    resumed_epoch = checkpoint_epoch(ckpt_path) if ckpt_path else None  # one read of a possibly large file
    rows = previous_metrics(run_dir / "metrics.csv", resumed_epoch) if ckpt_path else None
    mlflow_run = started.get("mlflow_run_id") if started else None
    trainer = build_trainer(plan.config, run_dir, plan.precision, steps, policy, rows,
                            EpochLine(functools.partial(console.print, soft_wrap=not console.is_terminal)),
                            mlflow_run)  # into a file or pipe an epoch is one line whatever the width: a record
    check_memory(plan.backbone, build_schedule(plan.config, plan.backbone), plan.data_config.input_size,
                 plan.config.batch_size, plan.precision, trainer.strategy.root_device)
    teacher = None
    if plan.lr_pending:
        plan, teacher = _auto_lr(plan, trainer, run_dir, console)
    module = plan.build_module(teacher=teacher)  # the range test's teacher: loaded once
    if rank_zero_only.rank == 0:  # the Trainer has not set up its ranks yet; DDP children carry theirs in env
        _write_run_files(plan, run_dir, resuming=ckpt_path is not None, trackers=_tracker_ids(trainer))
        _announce(console, plan, report, module, trainer.world_size)
        for key in plan.decided:
            if key != "freeze_until":  # said above, before the plan table
                console.print(f"{key.replace('_', '-')} {plan.sources[key]}")
        if ckpt_path:
            console.print(f"Resuming from {ckpt_path} (epoch {resumed_epoch + 1} of {plan.config.epochs})")
    datamodule = plan.datamodule(keep_images=not plan.feature_cache.use)
    if plan.feature_cache.use:
        datamodule = _feature_cache(plan, module, trainer, datamodule, console)
    datamodule.setup()  # decodes the images into memory (--image-cache) before the bar starts
    if datamodule.memory_note and rank_zero_only.rank == 0:
        console.print(f"Image cache: {datamodule.memory_note}")
    return plan, trainer, module, datamodule


def _feature_cache(plan: RunPlan, module: FinetuneModule, trainer: pl.Trainer, images: ImageFolderDataModule,
                   console: Console) -> ImageFolderDataModule:
    """Fills the frozen-feature cache and points the module at it; the image loaders when the network
    cannot be cut exactly at its frozen boundary (said on the console)."""
    import torch

    from finetune.training.cached_features import prepare_feature_cache
    from finetune.training.feature_split import NotSplittable

    device, c = trainer.strategy.root_device, plan.config
    module.backbone.to(device)  # as Lightning will place it: the traced graphs hold its tensors
    if plan.channels_last:
        module.backbone.to(memory_format=torch.channels_last)
    module.train()
    augment = plan.augment if isinstance(plan.augment, str) else plan.augment.to_dict()
    try:
        cached = prepare_feature_cache(
            module.backbone, module.frozen_units, images, plan.feature_cache, device,
            trainer.precision_plugin.forward_context, plan.channels_last, plan.precision,
            {"data_config": plan.data_config.to_dict(), "augment": augment, "seed": c.seed, "device": device.type},
            progress=c.progress)
    except NotSplittable as e:
        console.print(f"Feature cache: off ({e})")
        return images
    module.feature_split = cached.split
    console.print(f"Feature cache: {cached.describe()}; {plan.feature_cache.why}")
    return cached.datamodule


def _acc1_at(metrics_csv: Path, epoch: int) -> float:
    """Val top-1 of `epoch` (counted from 1) in metrics.csv (of the weights best.ckpt keeps, with --ema)."""
    for row in read_rows(metrics_csv):
        if row.get("epoch") == str(epoch):
            return float(row.get("val/acc1_selected") or row.get("val/acc1") or "nan")
    return float("nan")


def _auto_lr(plan: RunPlan, trainer: pl.Trainer, run_dir: Path, console: Console) -> tuple[RunPlan, Teacher | None]:
    """--lr auto: a range test on its own module and data pipeline. Returns the plan with the suggestion (or
    the default LR, where the test makes none), and the test module's teacher, so that the run does not
    load (and draw random numbers for) it again."""
    if trainer.world_size > 1:
        raise FinetuneError("--lr auto runs the LR range test on one device; run `finetune lr-find` with the "
                            "same options and pass its suggestion as --lr for a multi-device run")
    c = plan.config
    finder = plan.build_module(lr=c.lr_find_start_lr)
    found = find_lr(finder, plan.datamodule(keep_images=False), start_lr=c.lr_find_start_lr, end_lr=c.lr_find_end_lr,
                    num_steps=c.lr_find_steps, accelerator=c.accelerator, precision=plan.precision,
                    plot=run_dir / "lr_find.png" if rank_zero_only.rank == 0 else None)
    plot = f"(plot: {run_dir / 'lr_find.png'})"
    if found.suggestion is None:
        console.print(f"LR finder: no suggestion, {found.reason}; keeping the default lr {found.lr:.2e} {plot}",
                      soft_wrap=True)
    else:
        console.print(f"LR finder: suggested lr {found.suggestion:.2e} {plot}")
    pl.seed_everything(c.seed, workers=True, verbose=False)  # the run draws as if --lr had been given
    return plan.with_lr(found.lr, found.reason, suggested=found.suggestion is not None), finder.teacher


def _recorded_section(run_dir: Path) -> dict[str, Any]:
    """config.yaml's `resolved` section (a resumed run's augmentation, tracker ids); {} without one."""
    path = run_dir / "config.yaml"
    return read_run_yaml(path).get("resolved") or {} if path.is_file() else {}


def _tracker_ids(trainer: pl.Trainer) -> dict[str, str]:
    """The MLflow run id (creating the run) and the W&B run id, for config.yaml and a later --resume."""
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    ids = {"mlflow_run_id": lg.run_id for lg in trainer.loggers if isinstance(lg, MLFlowLogger)}
    return {**ids, **{"wandb_run_id": lg.version for lg in trainer.loggers if isinstance(lg, WandbLogger)}}


def _write_run_files(plan: RunPlan, run_dir: Path, resuming: bool = False,
                     trackers: dict[str, str] | None = None) -> None:
    """config.yaml: the settings, then the plan's resolved values and where each setting came from."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = plan.record()
    resolved = {"run_dir": str(run_dir.absolute()), **record["resolved"], **(trackers or {})}
    sources = record["sources"]
    if plan.lr_find is not None:
        resolved["lr_find"] = {**plan.lr_find, "plot": "lr_find.png"}
    if resuming:
        resolved, sources = _merge_record(run_dir / "config.yaml", resolved, sources)
    atomic.write_text(run_dir / "config.yaml", plan.config.to_yaml(resolved, sources))  # whole, for --resume
    if plan.index.bad_files:
        plan.index.write_bad_files(run_dir / "bad_files.txt")


def _merge_record(path: Path, resolved: dict, sources: dict[str, str] | None) -> tuple[dict, dict[str, str]]:
    """A resumed run keeps what its first start recorded (where each value came from, the LR finder's
    result) and updates what is measured again or was given with --resume."""
    old = read_run_yaml(path) if path.is_file() else {}
    return {**old.get("resolved", {}), **resolved}, {**old.get("sources", {}), **(sources or {})}


def _shown(path: Path | str) -> str:
    """A path as typed from here: relative below the working directory, else absolute; escaped
    (finetune/pathtext.py), so that a name that is not UTF-8 prints, and exactly."""
    with contextlib.suppress(ValueError):
        return escaped(Path(path).relative_to(Path.cwd()))
    return escaped(path)


@rank_zero_only
def _announce(console: Console, plan: RunPlan, report, module: FinetuneModule, world_size: int = 1) -> None:
    config, index = plan.config, plan.index
    counts = ", ".join(f"{split} {len(getattr(index, split) or [])}" for split in ("train", "val", "test"))
    table = f", labels from {_shown(index.table)}" if index.table is not None else ""
    console.print(f"Data: {_shown(config.data)} ({index.layout} layout{table}), {len(index.classes)} classes, "
                  f"{counts} images", soft_wrap=True)
    if index.bad_files:
        first = "; ".join(f"{_shown(p)} ({printable(reason)})" for p, reason in index.bad_files[:3])
        more = f"; and {len(index.bad_files) - 3} more" if len(index.bad_files) > 3 else ""
        console.print(f"[yellow]Skipped {len(index.bad_files)} unreadable files: {escape(first)}{more} "
                      f"(all in bad_files.txt)[/yellow]", soft_wrap=True)  # paths are never broken
    train_counts = index.counts("train")
    console.print(f"Train images per class: {min(train_counts.values())}-{max(train_counts.values())} "
                  f"(imbalance {imbalance_ratio(train_counts):.1f}:1)")
    warning = imbalance_warning(train_counts)
    if warning:
        console.print(f"[yellow]Warning: {warning}[/yellow]")
    details = report.details() if hasattr(report, "details") else ""
    console.print(f"Weights: {report.source}" + (f"; {details}" if details else ""))
    for caution in plan.cautions:
        console.print(f"[yellow]Warning: {escape(caution)}[/yellow]")
    missing = getattr(report, "missing", [])
    if config.weights_partial and missing:
        console.print(f"[yellow]Warning: --weights-partial: {len(missing)} tensors of the model were not in "
                      f"{report.source} and keep their random init[/yellow]")
    console.print(f"Precision: {plan.precision} ({plan.precision_why})")
    if module.frozen_units and not plan.feature_cache.use:  # said once it is filled, when it is used
        console.print(f"Feature cache: off ({plan.feature_cache.why})")
    if module.teacher is not None:
        console.print(f"Teacher: {module.teacher.source} "
                      f"(kd-alpha {config.kd_alpha}, kd-temperature {config.kd_temperature})")
    if "freeze_until" in plan.decided and config.weights != "none":  # the frozen part the data chose
        console.print(f"freeze-until {plan.sources['freeze_until']}")
    print_plan(module, console, world_size)


def _finish(console: Console, trainer: pl.Trainer, run_dir: Path, precision: str, config: RunConfig) -> RunResult:
    ckpt_dir = run_dir / "checkpoints"
    metrics_csv = run_dir / "metrics.csv"
    best, epoch = best_epoch(metrics_csv, config.monitor) if trainer.is_global_zero else (float("nan"), -1)
    saved = ckpt_dir / "best.ckpt"
    if trainer.is_global_zero and saved.is_file() and saved_epoch(saved) + EPOCHS_FROM != epoch:
        # metrics.csv rounds to 6 digits: on a near tie the checkpoint's own epoch is the truth.
        epoch = saved_epoch(saved) + EPOCHS_FROM
        best = _acc1_at(metrics_csv, epoch)
    result = RunResult(run_dir, run_dir / "config.yaml", metrics_csv, ckpt_dir / "best.ckpt",
                       ckpt_dir / "last.ckpt", best, epoch, precision)
    if trainer.is_global_zero:
        stopper = next((c for c in trainer.callbacks if isinstance(c, PhaseEarlyStopping)), None)
        if stopper is not None and stopper.stopped_epoch > 0:
            console.print(f"Early stop after epoch {stopper.stopped_epoch + 1} of {config.epochs}: "
                          f"{stopper.monitor} did not improve for {stopper.patience_epochs} epochs")
        chosen = "" if config.monitor == "acc1" else f", chosen by {selection_metric(config.monitor, config.ema)}"
        console.print(f"[bold]Best val top-1: {best:.4f}[/bold] (epoch {epoch} of {config.epochs}{chosen})")
        watch = next((c for c in trainer.callbacks if isinstance(c, ChanceWatch)), None)
        if watch is not None and watch.stuck_through is not None:
            later = "" if watch.at_chance(best) else f"; it left chance later, up to {best:.4f}"
            console.print(f"[yellow]Warning: {watch.summary()}{later}[/yellow]")
        console.print(f"Run directory: {run_dir}  "
                      "(config.yaml, metrics.csv, checkpoints/best.ckpt, checkpoints/last.ckpt)", soft_wrap=True)
    return result
