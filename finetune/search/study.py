"""`finetune.tune` (the API) and `finetune tune` (the command): a hyperparameter study, coarse to fine,
on Optuna, by one or many workers."""
from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, get_args

import optuna
from optuna.pruners import BasePruner, MedianPruner, NopPruner, SuccessiveHalvingPruner
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from finetune.config import Pruner, RunConfig
from finetune.data.datamodule import EVAL_BATCH_FACTOR
from finetune.data.scan import DatasetIndex
from finetune.data.tables import TableSpec, scan_data
from finetune.errors import FinetuneError
from finetune.evaluation.evaluate import evaluate
from finetune.reporter import Reporter, as_reporter
from finetune.run.auto_defaults import resolve_data_defaults
from finetune.run.fit import fit
from finetune.run.interrupts import stopping
from finetune.search import outputs
from finetune.search.budget import estimate
from finetune.search.sampling import GLOBAL_EVERY, TrialSeededRandomSampler
from finetune.search.space import Param, Space, default_space, load_space, narrow, parse_param, space_to_dict, suggest
from finetune.search.storage import claim_trial, counts, open_storage
from finetune.search.trial import join_trial_as_rank, run_trial, trial_config

STAGE1_SHARE = 2 / 3  # of --trials: many cheap trials explore, fewer long ones refine
STAGE1_FRACTION = 1 / 3  # of the full epochs: enough to rank settings, a third of the cost
TOP_SHARE = 1 / 4  # stage 2 narrows around the best quarter of stage 1's completed trials
PRUNERS: tuple[str, ...] = get_args(Pruner)
# Settings that differ between workers of one study without changing a trial's result.
NOT_COMPARED = ("output", "progress", "workers", "overwrite", "export")


@dataclass(frozen=True)
class Stage:
    """One stage of a study.

    Attributes:
        number: 1 (coarse) or 2 (fine).
        trials: Trials of this stage, counted over every worker.
        fraction: Share of the full epochs each trial trains.
        random_trials: Trials drawn at random before TPE proposes the rest.
    """

    number: int
    trials: int
    fraction: float
    random_trials: int


@dataclass
class TuneResult:
    """What a study produced. Paths are inside `study_dir`.

    Attributes:
        study_dir: The study folder.
        best_config: The run settings of the best trial (its own epochs).
        best_value: Its val top-1.
        best_trial: (stage, trial number) of the best trial.
        best_yaml: The recipe reproducing it.
        trials_csv: Every trial's settings, outcome, val top-1, epochs and wall time.
        plots: Name -> PNG.
        warnings: Best values at the edge of their range.
        final_run: The --final-run run directory, or None.
        final_top1: (split, top-1) of the final run: test when the data has a test split, else val.
    """

    study_dir: Path
    best_config: RunConfig | None
    best_value: float | None
    best_trial: tuple[int, int] | None
    best_yaml: Path | None
    trials_csv: Path
    plots: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    final_run: Path | None = None
    final_top1: tuple[str, float] | None = None


def plan_stages(trials: int, stages: int) -> list[Stage]:
    """Splits --trials between the stages: two thirds short random trials, then full-length ones
    around the best of them. With --stages 1: full-length trials, the first half random, then TPE."""
    if trials < 1:
        raise FinetuneError(f"--trials {trials}: a study needs at least 1 trial")
    if stages not in (1, 2):
        raise FinetuneError(f"--stages {stages}: valid: 1 (one search) or 2 (coarse, then fine)")
    if stages == 1 or trials < 3:  # stage 2 needs stage-1 results to narrow around
        return [Stage(1, trials, 1.0, max(1, trials // 2))]
    first = max(2, round(trials * STAGE1_SHARE))
    return [Stage(1, first, STAGE1_FRACTION, first), Stage(2, trials - first, 1.0, max(1, (trials - first) // 3))]


def stage_epochs(full: int, fraction: float, val_every: int | None) -> int:
    """A fraction of the full epochs, at least one, and a multiple of a given --val-every."""
    epochs = max(1, round(full * fraction))
    return math.ceil(epochs / val_every) * val_every if val_every else epochs


def full_epochs(config: RunConfig, index: DatasetIndex) -> tuple[int, int]:
    """(epochs, batch size) a `finetune run` of `config` trains with: the given ones, else fit's rules.

    resolve_data_defaults reads the data config only for --augment auto; a preset stands in here,
    so the backbone need not be built for two numbers.
    """
    resolved = resolve_data_defaults(config.model_copy(update={"augment": "none"}), index, None).config
    return resolved.epochs, resolved.batch_size


def make_pruner(pruner: str | BasePruner, epochs: int) -> BasePruner:
    """A pruner for trials of `epochs` epochs: median (after a quarter of the epochs), asha, or none."""
    if isinstance(pruner, BasePruner):
        return pruner
    if pruner == "median":  # the first epochs of fine-tuning rank settings poorly: no verdict before a quarter
        return MedianPruner(n_startup_trials=2, n_warmup_steps=epochs // 4)
    if pruner == "asha":  # rungs at 1/9, 1/3 of the epochs: keep the best third at each
        return SuccessiveHalvingPruner(min_resource=max(1, epochs // 9), reduction_factor=3)
    if pruner == "none":
        return NopPruner()
    raise FinetuneError(f"--pruner {pruner}: valid: {', '.join(PRUNERS)}")


def default_study_dir(backbone: str, root: Path = Path("studies")) -> Path:
    """studies/<date>-<backbone>: the same command on the same day continues the same study."""
    return root / f"{date.today():%Y-%m-%d}-{backbone.replace(':', '_').replace('/', '_')}"


def _sampler(stage: Stage, study: optuna.Study, seed: int, base: dict[str, Any] | None,
             names: list[str]) -> BaseSampler:
    """Random for the stage's first trials, then TPE; both seeded by the study's progress, so that
    a study is reproducible and workers draw different values. Stage 1's random trials are mostly
    local to the base settings (finetune/search/sampling.py says why); stage 2's are drawn over its
    narrowed space."""
    done = sum(counts(t) for t in study.get_trials(deepcopy=False))
    if done < stage.random_trials:
        local = base if stage.number == 1 else None
        return TrialSeededRandomSampler(seed + 1000 * stage.number, local, names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: a trial running on another worker counts as a poor one, not as unexplored
        return TPESampler(seed=seed + 1000 * stage.number + done, n_startup_trials=0, constant_liar=True)


def changeable(space: Space) -> list[str]:
    """The settings a local trial may change: those with another value to take (not a one-value choice)."""
    return [name for name, p in space.items() if p.numeric or len(p.choices) > 1]


def base_values(space: Space, base: RunConfig) -> dict[str, Any] | None:
    """The base settings as a point of `space`, or None when one of them lies outside it."""
    values = {name: getattr(base, name) for name in space}
    return values if all(p.contains(values[name]) for name, p in space.items()) else None


def _open_study(storage: Any, name: str, pruner: BasePruner) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the study prints its own progress lines
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", pruner=pruner,
                               load_if_exists=True)


def _same_study(study: optuna.Study, key: str, value: Any, what: str, study_dir: Path) -> None:
    """The first worker records `value`; later workers and reruns must bring the same one."""
    value = json.loads(json.dumps(value, default=str))
    stored = study.user_attrs.get(key)
    if stored is None:
        study.set_user_attr(key, value)
    elif stored != value:
        diff = sorted(k for k in set(stored) | set(value) if stored.get(k) != value.get(k))
        raise FinetuneError(f"the study in {study_dir} was started with other {what} (differing: {', '.join(diff)}); "
                            "give the same options to continue it, or another --output for a new study")


def _enqueue_base(study: optuna.Study, space: Space, base: RunConfig, reporter: Reporter) -> None:
    """A new study's first trial runs the base settings (the defaults, or the recipe and flags given):
    the study then ranks every setting it tries against them, and stage 2 narrows around them when
    they are among the best. Skipped when a base value lies outside the space."""
    if study.trials:
        return
    values = base_values(space, base)
    if values is None:
        outside = [name for name, p in space.items() if not p.contains(getattr(base, name))]
        reporter.info(f"The base settings are not a trial: {', '.join(outside)} outside the space")
        return
    study.enqueue_trial(values, user_attrs={"enqueued": "base settings"})  # run once, even if two workers enqueue it


def _stage2_space(study2: optuna.Study, study1: optuna.Study, space: Space, base: RunConfig, slots: int) -> Space:
    """Stage 1's space narrowed around its best trials and the base settings, computed by the first
    worker to get here and stored with stage 2, so that every worker samples the same ranges. Trials
    still running on other workers are not waited for: a worker that never returns would hold the
    study up.

    Stage 2 opens with stage 1's best and the base settings, both at full length: a short trial's
    rank is only an estimate, and with the base in the last stage the study's best is never a setting
    that lost to the defaults (or the user's flags) on val at the same length. That holds when the
    base trial completes there: with one slot only stage 1's best runs, and a pruned or timed-out
    base leaves the plain best."""
    stored = study2.user_attrs.get("space")
    if stored is not None:
        return {k: parse_param(k, v, where="stored stage-2 space") for k, v in stored.items()}
    done = sorted((t for t in study1.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
                  key=lambda t: -t.value)
    if not done:
        return dict(space)  # nothing to narrow around: stage 2 searches the whole space, longer
    top = [t.params for t in done[:max(1, round(len(done) * TOP_SHARE))]]
    anchor = base_values(space, base)
    narrowed = narrow(space, top + ([anchor] if anchor is not None else []))
    # Enqueued before the space is stored: a worker that finds the space finds these trials too.
    study2.enqueue_trial(top[0], user_attrs={"enqueued": "best of stage 1"})
    if anchor is not None and anchor != top[0] and slots > 1:
        study2.enqueue_trial(anchor, user_attrs={"enqueued": "base settings"})
    study2.set_user_attr("space", space_to_dict(narrowed))
    return narrowed


def print_space(reporter: Reporter, space: Mapping[str, Param], title: str) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("setting")
    table.add_column("searched over")
    for name, p in space.items():
        table.add_row(name.replace("_", "-"), p.describe())
    reporter.table(table)


class Progress:
    """One line per finished trial: done, pruned, diverged and failed so far (all workers), and the best."""

    def __init__(self, reporter: Reporter, total: int, studies: dict[int, optuna.Study]) -> None:
        self.reporter, self.total, self.studies = reporter, total, studies

    def trial_done(self, stage: int, number: int, outcome: str) -> None:
        rows = outputs.trial_rows(sorted(self.studies.items()))
        ended = [r for r in rows if r["outcome"] != "running"]
        by = {o: sum(r["outcome"] == o for r in ended) for o in ("pruned", "diverged", "failed")}
        best = max((r for r in ended if r["outcome"] == "complete" and r["stage"] == stage),
                   key=lambda r: r["val_acc1"], default=None)
        this = next(r for r in rows if r["stage"] == stage and r["trial"] == number)
        value = f" val top-1 {this['val_acc1']:.4f}" if this["val_acc1"] is not None else ""
        best_text = (f"best of stage {stage} {best['val_acc1']:.4f} (trial {best['trial']})" if best
                     else "no trial completed yet")
        self.reporter.info(f"stage {stage} trial {number}: {outcome}{value} ({this['wall_s']:.0f} s) | "
                              f"{len(ended)}/{self.total} done: {by['pruned']} pruned, {by['diverged']} diverged, "
                           f"{by['failed']} failed | {best_text}")


def _run_stage(study: optuna.Study, stage: Stage, space: Space, base: RunConfig, full: int, study_dir: Path,
               deadline: float | None, progress: Progress) -> None:
    anchor = base_values(space, base)
    while deadline is None or time.monotonic() < deadline:
        study.sampler = _sampler(stage, study, base.seed, anchor, changeable(space))
        trial = claim_trial(study, stage.trials)
        if trial is None:
            return
        trial.set_user_attr("stage", stage.number)
        params = suggest(trial, space)
        epochs = stage_epochs(params.get("epochs", full), stage.fraction, base.val_every)
        run_dir = study_dir / "trials" / f"stage{stage.number}-{trial.number:03d}"
        with stopping(lambda _, number=trial.number: f"in trial {number} (stage {stage.number}), recorded as "
                      f"interrupted: run the same command again to continue the study in {study_dir}"):
            outcome = run_trial(study, trial, base, params, epochs, run_dir)
        progress.trial_done(stage.number, trial.number, outcome)


def _best(studies: dict[int, optuna.Study], base: Mapping[str, Any] | None = None,
          val_images: int = 0) -> tuple[int, FrozenTrial] | None:
    """The best completed trial of the last stage that completed any: later stages train longer.

    The base settings (the trial whose values are `base`) stay the choice unless a trial beats their
    val top-1 by more than its standard error on `val_images` images, sqrt(p (1 - p) / n): the
    one-standard-error rule of model selection (Breiman et al. 1984; Hastie et al., The Elements of
    Statistical Learning, 7.10). The best of a dozen trials on a few hundred val images beats the
    base by a point or two by chance alone: on the source regime of benchmarks/tune_quality.py, a
    pick that beat the default by 0.002 on 500 val images lost 0.039 on test.
    """
    for stage in sorted(studies, reverse=True):
        done = studies[stage].get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            continue
        best = max(done, key=lambda t: t.value)
        kept = next((t for t in done if base is not None and t.params == dict(base)), None)
        if kept is not None and best.value <= kept.value + standard_error(kept.value, val_images):
            return stage, kept
        return stage, best
    return None


def validated_images(val_images: int, limit: int | float, eval_batch: int) -> int:
    """The val images a trial's top-1 is measured on: all of them, or those of the batches
    --limit-val-batches keeps (an int: that many; a float: that share, counted as Lightning counts)."""
    batches = math.ceil(val_images / eval_batch)
    kept = min(batches, limit) if isinstance(limit, int) else max(1, int(batches * limit))
    return min(val_images, kept * eval_batch)


def standard_error(accuracy: float, images: int) -> float:
    """The standard error of a top-1 measured on `images` images (0 images: 0, ties only)."""
    return math.sqrt(accuracy * (1 - accuracy) / images) if images > 0 else 0.0


def tune(config: RunConfig, space: Mapping[str, Param] | str | Path | None = None, *, trials: int = 20,
         timeout: float | None = None, storage: str | None = None, output: str | Path | None = None,
         stages: int = 2, final_run: bool = False, pruner: str | BasePruner = "median",
         reporter: Reporter | Console | None = None, console: Console | None = None) -> TuneResult:
    """Searches the settings of `config` that `space` varies, and writes the study folder.

    Args:
        config: The base run settings; each trial overrides the searched ones.
        space: A space (`finetune.search.space`), the path of a --space YAML file, or None for the
            default space of the backbone.
        trials: Trials of the whole study, over every worker sharing its storage.
        timeout: Seconds after which this worker starts no new trial.
        storage: None (SQLite in the study folder), an RDB URL, or a journal file path (*.log).
        output: The study folder. Default: studies/<date>-<backbone>.
        stages: 2: short random trials, then longer TPE trials in the range of the best; 1: one search.
        final_run: Train the best settings for the full epochs, export them and report test top-1.
        pruner: One of PRUNERS (median, asha, none), or an Optuna pruner.
        reporter: Where the space, the estimate, a line per trial and the summary go: a `ConsoleReporter()`
            prints them as `finetune tune` does (a rich Console is taken as one); default: the `finetune`
            logger (finetune/reporter.py). Each trial's own narration is in its folder's log.txt.
        console: A rich Console to print to, as `reporter=ConsoleReporter(console)`.

    Returns:
        The best config and the paths written.

    Example:
        >>> result = finetune.tune(RunConfig(backbone="resnet18", data="mydata"), trials=12)  # doctest: +SKIP
        >>> result.best_yaml
    """
    if join_trial_as_rank():  # a DDP rank started for a trial of this study: it trained its part
        study_dir = Path(output) if output is not None else default_study_dir(config.backbone)
        return TuneResult(study_dir, None, None, None, None, study_dir / "trials.csv")
    if console is not None and reporter is not None:
        raise TypeError("tune takes reporter or console, not both")
    reporter = as_reporter(console if console is not None else reporter)
    base = config.model_copy(update={"output": None}).with_absolute_paths()
    space = load_space(space) if isinstance(space, (str, Path)) else dict(space or default_space(base))
    plan = plan_stages(trials, stages)
    if isinstance(pruner, str) and pruner not in PRUNERS:
        raise FinetuneError(f"--pruner {pruner}: valid: {', '.join(PRUNERS)}")
    study_dir = Path(output) if output is not None else default_study_dir(base.backbone)
    study_dir.mkdir(parents=True, exist_ok=True)
    index = scan_data(base.data, TableSpec.of(base), val_split=base.val_split, seed=base.seed, progress=False)
    full, batch = full_epochs(base, index)
    store = open_storage(study_dir, storage)
    studies = {s.number: _open_study(store, f"{study_dir.name}-stage{s.number}",
                                     make_pruner(pruner, stage_epochs(full, s.fraction, base.val_every))) for s in plan}
    settings = {k: v for k, v in base.model_dump(mode="json").items() if k not in NOT_COMPARED}
    _same_study(studies[1], "settings", settings, "run settings", study_dir)
    _same_study(studies[1], "space", space_to_dict(space), "search space", study_dir)
    _enqueue_base(studies[1], space, base, reporter)
    reporter.info(f"Study: {study_dir} (storage {storage or study_dir / 'study.db'}); "
                  "rerun the same command to continue it")
    print_space(reporter, space, "Search space (stage 1)" if len(plan) > 1 else "Search space")
    _print_mix(reporter, plan[0], base_values(space, base) is not None)
    _print_estimate(reporter, base, index, batch, plan, full, timeout)
    deadline = time.monotonic() + timeout if timeout else None
    progress = Progress(reporter, trials, studies)
    stage_spaces = {}
    for stage in plan:
        stage_spaces[stage.number] = (space if stage.number == 1
                                      else _stage2_space(studies[2], studies[1], space, base, stage.trials))
        if stage.number == 2:
            print_space(reporter, stage_spaces[2], "Stage 2 space (around the best of stage 1 and the base settings)")
        _run_stage(studies[stage.number], stage, stage_spaces[stage.number], base, full, study_dir, deadline, progress)
    scored = validated_images(len(index.val), base.limit_val_batches, batch * EVAL_BATCH_FACTOR)
    return _finish(reporter, base, studies, stage_spaces, space, study_dir, index, full, scored, final_run)


def _print_mix(reporter: Reporter, stage: Stage, anchored: bool) -> None:
    """Says which of stage 1's random trials stay near the base settings and which draw everything."""
    numbers = range(1 if anchored else 0, stage.random_trials)
    if not anchored or not numbers:
        return
    local = [n for n in numbers if n % GLOBAL_EVERY]
    wide = [n for n in numbers if not n % GLOBAL_EVERY]
    line = "Stage 1: trial 0 runs the base settings"
    line += f"; {_listed(local)} one or two of them" if local else ""
    line += f"; {_listed(wide)} every setting" if wide else ""
    reporter.info(line + " (each changed value drawn at random over its range)")


def _listed(numbers: list[int]) -> str:
    return ("trial " if len(numbers) == 1 else "trials ") + ", ".join(map(str, numbers)) + (
        " draws" if len(numbers) == 1 else " draw")


def _print_estimate(reporter: Reporter, base: RunConfig, index: DatasetIndex, batch: int, plan: list[Stage],
                    full: int, timeout: float | None) -> None:
    per_stage = [(s.trials, stage_epochs(full, s.fraction, base.val_every)) for s in plan]
    est = estimate(base, index, batch, per_stage)
    stages = ", ".join(f"stage {i + 1}: {n} trials x {e} epochs" for i, (n, e) in enumerate(per_stage))
    line = (f"Estimate: one batch of {batch} takes {est.batch_s:.3f} s, an epoch {est.epoch_s:.1f} s -> about "
            f"{est.total_s / 60:.1f} min on one worker ({stages}); pruning shortens it, more workers divide it")
    if timeout and timeout < est.total_s:
        line += (f". --timeout {timeout:g} s stops starting trials before that: "
                 f"expect about {timeout / est.total_s:.0%} of them")
    reporter.info(line)


def _finish(reporter: Reporter, base: RunConfig, studies: dict[int, optuna.Study], stage_spaces: dict[int, Space],
            space: Space, study_dir: Path, index: DatasetIndex, full: int, scored: int,
            final_run: bool) -> TuneResult:
    """trials.csv, plots, best.yaml, the summary and the optional final run."""
    rows = outputs.trial_rows(sorted(studies.items()))
    result = TuneResult(study_dir, None, None, None, None, outputs.write_trials_csv(rows, study_dir / "trials.csv"))
    if rows:
        result.plots["history"] = outputs.plot_history(rows, study_dir / "history.png")
        result.plots["params"] = outputs.plot_params(rows, space, study_dir / "params.png")
    best = _best(studies, base_values(space, base), scored)
    if best is None:
        reporter.table(outputs.summary_table(rows, list(space)))
        reporter.info("[yellow]No trial completed: no best.yaml.[/yellow] See the reasons in trials.csv.")
        return result
    stage, trial = best
    importances = outputs.plot_importances(studies, study_dir / "importances.png")
    if importances is not None:
        result.plots["importances"] = importances
    result.best_config = trial_config(base, trial.params, trial.user_attrs["epochs"], Path(trial.user_attrs["run_dir"]))
    result.best_value, result.best_trial = trial.value, (stage, trial.number)
    header = (f"Best trial of the study {study_dir.name} (stage {stage}, trial {trial.number}): val top-1 "
              f"{trial.value:.4f} after {trial.user_attrs['epochs']} epochs, on {base.data}.\n"
              f"Made by `finetune tune`; use with: finetune run --recipe {study_dir / 'best.yaml'} --data DATA")
    result.best_yaml = outputs.write_best_yaml(result.best_config, header, study_dir / "best.yaml")
    result.warnings = outputs.edge_warnings(trial, stage_spaces.get(stage, space), space)
    outputs.print_summary(reporter, rows, list(space), result.warnings)
    reporter.info(f"Best: stage {stage} trial {trial.number}, val top-1 {trial.value:.4f}. "
                  f"Written: {result.best_yaml}, {result.trials_csv}, "
                  + ", ".join(str(p) for p in result.plots.values()))
    top = max(studies[stage].get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    if top.value > trial.value:
        reporter.info(f"Kept the base settings: trial {top.number}'s val top-1 {top.value:.4f} is within one "
                      f"standard error ({standard_error(trial.value, scored):.4f}, {scored} val "
                      "images) of theirs, which chance alone explains")
    if final_run:
        result.final_run, result.final_top1 = _final_run(reporter, result.best_config, trial, full, study_dir, index)
    return result


def _final_run(reporter: Reporter, best: RunConfig, trial: FrozenTrial, full: int, study_dir: Path,
               index: DatasetIndex) -> tuple[Path, tuple[str, float]]:
    """The best settings trained for the full epochs and exported; scored on test when there is one
    (trials selected on val, so val would flatter it)."""
    epochs = trial.params.get("epochs", full)
    config = RunConfig.model_validate({**best.model_dump(), "epochs": epochs, "output": study_dir / "final",
                                       "overwrite": True, "export": True, "progress": False})
    reporter.info(f"Final run: the best settings for {epochs} epochs -> {config.output}")
    run = fit(config, reporter)
    if index.test is None:
        reporter.info(f"[bold]Final run: val top-1 {run.best_val_acc1:.4f}[/bold] (no test split in {best.data}; "
                      "val selected the settings, so this figure is optimistic)")
        return run.run_dir, ("val", run.best_val_acc1)
    metrics = evaluate(run.run_dir, best.data, "test", output=run.run_dir / "eval-test",
                       labels=TableSpec.of(best)).metrics
    top1 = metrics["accuracy"]["none"]["top1"]
    reporter.info(f"[bold]Final run: test top-1 {top1:.4f}[/bold] ({metrics['images']} test images)")
    return run.run_dir, ("test", top1)
