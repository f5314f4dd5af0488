"""The `finetune tune` command: `run`'s options, generated from its signature, plus the study's own."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, get_args

import typer

from finetune.config import Pruner, one_of
from finetune.console import console, user_errors
from finetune.options import (
    CONTEXT,
    check_choice,
    choices_metavar,
    given_on_command_line,
    parameter,
    with_parameters,
)

# Options of `run` that a study sets itself: each trial has its own folder, no bar and no bundle.
NOT_FROM_RUN = ("ctx", "resume", "output", "overwrite", "progress", "export")
STUDY_PANEL = "Study"  # the study's own options, listed before the run settings it searches over
PRUNERS: tuple[str, ...] = get_args(Pruner)  # checked here: finetune.search.study imports optuna


def _study_option(*decls: str, help: str, **kwargs: Any) -> Any:
    """typer.Option in the study's own panel of `tune --help`."""
    return typer.Option(*decls, help=help, rich_help_panel=STUDY_PANEL, **kwargs)


def _tune_options() -> list[inspect.Parameter]:
    """The study's own options, listed before `run`'s."""
    return [
        parameter("trials", Annotated[int, _study_option(help=(
            "Trials of the whole study, counted over every worker that shares it (not per worker)."))], 20),
        parameter("stages", Annotated[int, _study_option(help=(
            "2: two thirds of the trials short (a third of the epochs) and random, then full-length TPE trials in "
            "ranges narrowed around the best quarter; 1: full-length trials, random then TPE."))], 2),
        parameter("space", Annotated[Optional[Path], _study_option(help=(
            "YAML file of SETTING: {log-uniform: [LOW, HIGH]} | {uniform: [LOW, HIGH]} | {int: [LOW, HIGH]} | "
            "{choice: [A, B, ...]}, keys being `run` settings; replaces the default space (lr, backbone-lr-mult, "
            "weight-decay in log space, freeze-until over the layer groups, augment, label-smoothing, mixup)."))],
            None),
        parameter("pruner", Annotated[str, _study_option(help=(
            "Stops poor trials from their per-epoch val top-1: " + one_of(Pruner, {
                "median": "below the median of earlier trials at the same epoch, after a quarter of the epochs",
                "asha": "successive halving"}) + "."),
            metavar=choices_metavar(PRUNERS))], "median"),
        parameter("timeout", Annotated[Optional[float], _study_option(help=(
            "Seconds after which this worker starts no new trial (the running one finishes). Default: none."))],
            None),
        parameter("storage", Annotated[Optional[str], _study_option(help=(
            "Where the study lives: an RDB URL (sqlite:///..., postgresql://..., mysql://...) or a journal file "
            "FILE.log on a shared filesystem. Workers giving the same --output and --storage share one study. "
            "Default: sqlite:///OUTPUT/study.db."))], None),
        parameter("output", Annotated[Optional[Path], _study_option(help=(
            "Study folder: trials/, study.db, trials.csv, PNG plots, best.yaml. Default: studies/<date>-<backbone>; "
            "the same command continues the study in it."))], None),
        parameter("final_run", Annotated[bool, _study_option("--final-run/--no-final-run", help=(
            "Train the best settings for the full epochs into OUTPUT/final, export them and report test top-1 (val "
            "when there is no test split)."))], False),
    ]


def register_tune(app: typer.Typer, run: Callable[..., None]) -> None:
    """Adds `finetune tune` to `app`, with every option of `run` (but those a study sets itself):
    an option added to `run` appears in `tune` without being declared twice."""
    own = _tune_options()
    names = {p.name for p in own}
    inherited = [p for name, p in inspect.signature(run, eval_str=True).parameters.items()
                 if name not in NOT_FROM_RUN and name not in names]
    params = [CONTEXT, *own, *inherited]

    def tune(**kwargs: Any) -> None:
        _tune(kwargs.pop("ctx"), {k: kwargs.pop(k) for k in names}, kwargs)

    with_parameters(params)(tune)
    tune.__doc__ = ("Search hyperparameters of BACKBONE on DATA with Optuna: short random trials, then longer ones "
                    "around the best; writes trials.csv, plots and best.yaml (a recipe for `finetune run`).")
    app.command("tune")(tune)


@user_errors
def _tune(ctx: typer.Context, study: dict[str, Any], settings: dict[str, Any]) -> None:
    """Resolves the base config as `run` does (defaults < recipe < flags), then runs the study."""
    from finetune.config import resolve_config
    from finetune.data.scan import check_data_folder

    check_choice("--pruner", study["pruner"], PRUNERS)
    config, _ = resolve_config(settings, given_on_command_line(ctx, settings), settings.get("recipe"))
    check_data_folder(config.data.expanduser())  # before optuna, torch and Lightning are imported
    if config.labels is not None:
        from finetune.data.tables import check_table_file

        check_table_file(config.labels.expanduser())
    from finetune.heap import keep_freed_memory
    from finetune.reporter import ConsoleReporter
    from finetune.search.study import tune

    with keep_freed_memory():  # the process-wide C heap settings trials train with (finetune/heap.py)
        tune(config, study["space"], trials=study["trials"], timeout=study["timeout"], storage=study["storage"],
             output=study["output"], stages=study["stages"], final_run=study["final_run"], pruner=study["pruner"],
             reporter=ConsoleReporter(console))
