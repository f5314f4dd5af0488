"""`finetune.fit`: one fine-tuning run from a RunConfig to a run directory."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only
from rich.console import Console

from finetune.config import RunConfig
from finetune.data.datamodule import ImageFolderDataModule
from finetune.errors import FinetuneError
from finetune.quiet import quiet_lightning
from finetune.reporter import Recorder, Reporter, as_reporter
from finetune.run.devices import device_trainer
from finetune.run.feature_cache import use_feature_cache
from finetune.run.interrupts import after_training, before_training, during_training, fit_or_stop, stopping
from finetune.run.launch_env import restored_environ, shared_with_ranks
from finetune.run.lr_find import find_lr
from finetune.run.memory_check import check_memory
from finetune.run.narration import announce, say_decided, say_lr_found, say_result, shown, stopped_early, weights_text
from finetune.run.outcome import best_of_run
from finetune.run.plan import RunPlan, plan_run, shared_env
from finetune.run.progress import RunProgressBar, bar_wanted
from finetune.run.record import recorded_section, tracker_ids, write_run_files
from finetune.run.result import RunResult
from finetune.run.resume import checkpoint_epoch, previous_metrics
from finetune.run.run_dir import claimed_run_dir, default_run_dir
from finetune.run.trackers import tracker_loggers
from finetune.training.callbacks.chance import ChanceWatch
from finetune.training.callbacks.divergence import DivergenceGuard
from finetune.training.callbacks.early_stop import PhaseEarlyStopping
from finetune.training.callbacks.ema import EmaCallback
from finetune.training.callbacks.epoch_record import EpochLine, EpochRecord
from finetune.training.callbacks.last_checkpoint import LastCheckpoint
from finetune.training.callbacks.rng_state import RNGState
from finetune.training.callbacks.unfreeze import GradualUnfreezing
from finetune.training.checkpoint_format import saved_epoch
from finetune.training.checkpoint_io import AtomicCheckpointIO
from finetune.training.freeze import build_schedule
from finetune.training.module import FinetuneModule
from finetune.training.monitor import monitor_spec, selection_metric
from finetune.training.teacher import Teacher

SKIPPED_FILES = r"skipped \d+ bad file\(s\) in "  # the scan's DataWarning, which the run words itself
DIVERGENCE_FACTOR = 3.0  # the course notes' rule: stop a run whose loss explodes past 3x its start
RUN_DIR_ENV = "FINETUNE_RUN_DIR"  # hands rank 0's run directory to the processes DDP starts
# Lightning's seed_everything writes these for the Trainer to read (seeded DataLoader workers, DDP ranks):
# they hold for the run only.
LIGHTNING_SEED_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")


def resolve_run_dir(config: RunConfig) -> Path:
    if config.output is not None:
        return Path(config.output)
    inherited = os.environ.get(RUN_DIR_ENV)
    return Path(inherited) if inherited else default_run_dir(config.backbone)


def build_trainer(config: RunConfig, run_dir: Path, precision: str, steps_per_epoch: int,
                  callbacks: Sequence[pl.Callback] = (), previous_rows: list[dict[str, str]] | None = None,
                  on_epoch: Callable[[dict, pl.Trainer], None] | None = None,
                  mlflow_run_id: str | None = None, bar: bool | None = None) -> pl.Trainer:
    """A Lightning Trainer writing metrics.csv and checkpoints/{best,last}.ckpt into the run dir.

    `callbacks` join the toolkit's own; `previous_rows` (a resumed run's metrics.csv) are kept;
    `on_epoch` gets each epoch's metrics.csv row (the console line); `mlflow_run_id` continues that
    MLflow run (a resumed run's); `bar`: draw the progress bar (default: as `config.progress` and the terminal ask).
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
    bar = [RunProgressBar()] if (bar_wanted(config.progress) if bar is None else bar) else []
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


def fit(config: RunConfig, reporter: Reporter | Console | None = None, *, console: Console | None = None,
        callbacks: Sequence[pl.Callback] = (), ckpt_path: Path | None = None, sources: dict[str, str] | None = None,
        child_env: Mapping[str, str] | None = None) -> RunResult:
    """Fine-tunes `config.backbone` on `config.data` and writes the run directory.

    Quiet by default: the narration goes to the `finetune` logger (finetune/reporter.py), and what it states
    is in the result. It changes nothing process-wide: the C heap settings that `finetune run` trains under
    are `finetune.keep_freed_memory()`, for the caller to wrap around it.

    Args:
        config: The validated run settings.
        reporter: Where the plan, the epochs and the summary go: a `ConsoleReporter()` prints them as
            `finetune run` does (a rich Console is taken as one); default: the `finetune` logger.
        console: A rich Console to print to, as `reporter=ConsoleReporter(console)`.
        callbacks: Extra Lightning callbacks for the Trainer.
        ckpt_path: A last.ckpt to continue from (see `finetune.run.resume.resume_config`).
        sources: Where each setting came from (default, recipe, command line), for config.yaml.
        child_env: Environment variables for the processes a multi-process strategy (DDP) starts,
            set only while it starts them.

    Returns:
        Paths of everything written, the best validation top-1, and what the narration said.

    Example:
        >>> result = fit(RunConfig(backbone="resnet18", data="mydata", epochs=3))  # doctest: +SKIP
        >>> result.best_val_acc1
    """
    if console is not None and reporter is not None:
        raise TypeError("fit takes reporter or console, not both")
    said = Recorder(as_reporter(console if console is not None else reporter))
    config = config.with_absolute_paths()  # config.yaml and the checkpoints must work from any folder
    run_dir = resolve_run_dir(config)
    with quiet_lightning(config.verbose), restored_environ(LIGHTNING_SEED_ENV), \
            _held(run_dir, config, ckpt_path, said), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SKIPPED_FILES)  # said by announce, once, with bad_files.txt
        return _fit(config, run_dir, said, callbacks, ckpt_path, sources, child_env or {})


@contextlib.contextmanager
def _held(run_dir: Path, config: RunConfig, ckpt_path: Path | None, said: Reporter) -> Iterator[None]:
    """Holds the run directory for the run (rank 0; the processes DDP starts inherit it in RUN_DIR_ENV)."""
    if rank_zero_only.rank != 0 or os.environ.get(RUN_DIR_ENV) == str(run_dir):
        yield
        return
    with claimed_run_dir(run_dir, config.overwrite, resuming=ckpt_path is not None,
                         created=config.output is None) as removed:
        if removed:
            said.info(f"--overwrite: removed the earlier run's {', '.join(removed)} from {shown(run_dir)}",
                      whole=True)
        yield


def _fit(config: RunConfig, run_dir: Path, said: Recorder, callbacks: Sequence[pl.Callback],
         ckpt_path: Path | None, sources: dict[str, str] | None, child_env: Mapping[str, str]) -> RunResult:
    with stopping(before_training(run_dir, ckpt_path is not None, saved_epoch)):
        plan, trainer, module, datamodule, weights = _prepare(config, run_dir, said, callbacks, ckpt_path, sources)
    with stopping(during_training(trainer, run_dir, plan.config.epochs, saved_epoch)):
        with shared_with_ranks(trainer, {RUN_DIR_ENV: str(run_dir), **shared_env(plan), **child_env}):
            fit_or_stop(trainer, module, datamodule, ckpt_path=ckpt_path)
    with stopping(after_training(run_dir)):
        module.feature_split = None  # the module runs on images again
        result = _finish(said, trainer, run_dir, plan, weights)
        if trainer.is_global_zero:
            from finetune.run.report import finish_run  # curves, final evaluation, export bundle

            written, val_eval = finish_run(plan.config, run_dir, plan.index, said)
            result = dataclasses.replace(result, written=written, val_eval=val_eval)
    return dataclasses.replace(result, warnings=tuple(said.warnings))


def _prepare(config: RunConfig, run_dir: Path, said: Recorder, callbacks: Sequence[pl.Callback],
             ckpt_path: Path | None, sources: dict[str, str] | None
             ) -> tuple[RunPlan, pl.Trainer, FinetuneModule, ImageFolderDataModule, str]:
    """Everything before training: the plan, the Trainer, the module, the data and the weights' description,
    the run files written."""
    pl.seed_everything(config.seed, workers=True, verbose=False)
    started = recorded_section(run_dir) if ckpt_path else None
    plan, report = plan_run(config, sources, started)
    steps = -(-len(plan.index.train) // plan.config.batch_size)
    watch = ChanceWatch(list(plan.index.counts("val").values()), plan.config.epochs, said.info)
    policy = [GradualUnfreezing(said.info), RNGState(), watch, *callbacks]  # said above the bar when there is one
    resumed_epoch = checkpoint_epoch(ckpt_path) if ckpt_path else None  # one read of a possibly large file
    rows = previous_metrics(run_dir / "metrics.csv", resumed_epoch) if ckpt_path else None
    mlflow_run = started.get("mlflow_run_id") if started else None
    trainer = build_trainer(plan.config, run_dir, plan.precision, steps, policy, rows, EpochLine(said.epoch),
                            mlflow_run, bar=said.progress and bar_wanted(plan.config.progress))
    check_memory(plan.backbone, build_schedule(plan.config, plan.backbone), plan.data_config.input_size,
                 plan.config.batch_size, plan.precision, trainer.strategy.root_device)
    teacher = None
    if plan.lr_pending:
        plan, teacher = _auto_lr(plan, trainer, run_dir, said)
    module = plan.build_module(teacher=teacher)  # the range test's teacher: loaded once
    if rank_zero_only.rank == 0:  # the Trainer has not set up its ranks yet; DDP children carry theirs in env
        write_run_files(plan, run_dir, resuming=ckpt_path is not None, trackers=tracker_ids(trainer))
        announce(said, plan, report, module, trainer.world_size)
        say_decided(said, plan, ckpt_path, resumed_epoch)
    datamodule = plan.datamodule(keep_images=not plan.feature_cache.use)
    if plan.feature_cache.use:
        datamodule = use_feature_cache(plan, module, trainer, datamodule, said)
    datamodule.setup()  # decodes the images into memory (--image-cache) before the bar starts
    if datamodule.memory_note and rank_zero_only.rank == 0:
        said.info(f"Image cache: {datamodule.memory_note}")
    return plan, trainer, module, datamodule, weights_text(report)


def _auto_lr(plan: RunPlan, trainer: pl.Trainer, run_dir: Path, said: Reporter) -> tuple[RunPlan, Teacher | None]:
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
    say_lr_found(said, found, run_dir / "lr_find.png")
    pl.seed_everything(c.seed, workers=True, verbose=False)  # the run draws as if --lr had been given
    return plan.with_lr(found.lr, found.reason, suggested=found.suggestion is not None), finder.teacher


def _finish(said: Reporter, trainer: pl.Trainer, run_dir: Path, plan: RunPlan, weights: str) -> RunResult:
    ckpt_dir, config = run_dir / "checkpoints", plan.config
    best, epoch = best_of_run(run_dir, config.monitor) if trainer.is_global_zero else (float("nan"), -1)
    if trainer.is_global_zero:
        say_result(said, trainer, config, best, epoch, run_dir)
    return RunResult(run_dir, run_dir / "config.yaml", run_dir / "metrics.csv", ckpt_dir / "best.ckpt",
                     ckpt_dir / "last.ckpt", best, epoch, plan.precision, plan.precision_why, weights,
                     {key: plan.sources[key] for key in plan.decided}, stopped_early(trainer))
