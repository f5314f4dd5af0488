"""The options of the `finetune` commands: made from RunConfig fields where the option is a run
setting (a field is the one declaration of its setting), declared here where it is not.

A command made from fields takes `**settings` and gets its Typer signature from `with_parameters`.
Unions and Literals come in as strings for RunConfig to parse and check, exactly as from a recipe:
`--lr auto` or `--lr 1e-3`, `--limit-train-batches 1` (a count) or `0.5` (a fraction), and a bad
`--augment` is refused by RunConfig in one line that names the valid choices. The help shows their
choices all the same (`<auto|none|light|standard|strong>`), and groups `run`'s options into the panels
of PANELS. A default is stated once: shown by Typer, or said in the help where the default is None
(where it is worked out at run time).
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Optional, TypeVar, Union, get_args, get_origin

import typer
from pydantic.fields import FieldInfo

from finetune.config import (
    REQUIRED_ELSEWHERE,
    Augment,
    DemoTask,
    ExportFormat,
    QuantizeMode,
    RunConfig,
    Split,
    Tta,
    one_of,
)
from finetune.config.choices import noted
from finetune.errors import FinetuneError

F = TypeVar("F", bound=Callable[..., Any])
PARSED_BY_TYPER = (str, int, float, bool, Path)
CONTEXT = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)


# The panels of `run`'s help, in the order shown; each RunConfig field is in exactly one (tests/test_help.py).
# `run` lists its options in this order, and `lr-find` and `tune` show the panels of the fields they take.
RUN_DIR_PANEL = "Recipe and run directory"
PANELS: dict[str, tuple[str, ...]] = {
    "Model and weights": ("backbone", "weights", "weights_dir", "weights_partial"),
    "Data": ("data", "labels", "path_column", "label_column", "split_column", "val_split", "image_size",
             "batch_size", "sampler", "class_weights", "seed"),
    RUN_DIR_PANEL: ("recipe", "output", "overwrite"),  # and --resume
    "Schedule and optimisation": ("epochs", "lr", "optimizer", "weight_decay", "momentum", "nesterov",
                                  "backbone_lr_mult", "lr_decay", "schedule", "warmup_epochs", "step_size", "gamma",
                                  "min_lr", "scale_lr", "limit_train_batches", "limit_val_batches"),
    "Freezing": ("freeze_until", "freeze_policy", "train_bn", "freeze_epochs", "unfreeze_every"),
    "Augmentation and regularization": ("augment", "label_smoothing", "mixup", "cutmix", "mix_prob",
                                        "mix_switch_prob", "mix_off_epoch", "head_dropout", "drop_path", "ema",
                                        "ema_decay", "ema_warmup"),
    "Distillation": ("teacher", "teacher_weights", "kd_alpha", "kd_temperature"),
    "Evaluation and export": ("val_every", "monitor", "early_stop", "early_stop_min_delta", "tta", "export"),
    "Hardware": ("accelerator", "devices", "strategy", "num_nodes", "precision", "channels_last", "workers",
                 "feature_cache", "image_cache", "cache_views"),
    "Tracking and console": ("logger", "mlflow_uri", "progress", "verbose"),
    "LR range test": ("lr_find_start_lr", "lr_find_end_lr", "lr_find_steps"),
}
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}


def run_fields() -> list[str]:
    """RunConfig's fields in the order of `run`'s help: panel by panel, then any field of no panel."""
    placed = [name for names in PANELS.values() for name in names if name in RunConfig.model_fields]
    return placed + [name for name in RunConfig.model_fields if name not in PANEL_OF]


def choices_metavar(choices: Sequence[Any]) -> str:
    """How the help shows an option's values: `<val|test>`, as Typer shows a Literal's."""
    return "<" + "|".join(str(c) for c in choices) + ">"


def shown_values(annotation: Any) -> list[str]:
    """The values or types a field's annotation allows, for its metavar: float | Literal["auto"] -> float, auto."""
    origin = get_origin(annotation)
    if origin in (Union, UnionType, list):
        return [v for a in get_args(annotation) if a is not NoneType for v in shown_values(a)]
    if origin is Annotated:
        return shown_values(get_args(annotation)[0])
    if origin is Literal:
        return [str(a) for a in get_args(annotation)]
    return [getattr(annotation, "__name__", str(annotation)).lower()]


def field_metavar(info: FieldInfo) -> str | None:
    """The metavar of a field's option where it has several values or types (choices, number | auto), else None
    (Typer's own: <int>, <path>...). A str field with a fixed list names it in json_schema_extra["choices"]."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    values = list(extra.get("choices") or []) or shown_values(info.annotation)
    return choices_metavar(values) if len(values) > 1 else None


def check_choice(flag: str, value: str, choices: Sequence[str]) -> str:
    """`value` if it is one of `choices`, else FinetuneError naming the flag, the value and the choices."""
    if value not in choices:
        raise FinetuneError(f"unknown {flag} {value!r}; valid: {', '.join(choices)}")
    return value


def parameter(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    """A command parameter, e.g. `parameter("top_k", Annotated[int, typer.Option(help=...)], 5)`."""
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)


def cli_type(annotation: Any) -> Any:
    """The type Typer parses a field's flag as: the field's own where Typer knows it, else str."""
    optional = False
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(members) < len(get_args(annotation))
        annotation = members[0] if len(members) == 1 else str  # 1e-3 | "auto": RunConfig parses the string
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is list:
        annotation = list[cli_type(get_args(annotation)[0])]  # a repeatable option
    elif annotation not in PARSED_BY_TYPER:
        annotation = str  # a Literal: RunConfig names the valid choices
    return Optional[annotation] if optional else annotation


def config_option(name: str, field: str | None = None, *, required: bool = True) -> inspect.Parameter:
    """The parameter `name` (flag --name) of a command, made from RunConfig field `field` (default: `name`).

    Args:
        name: Parameter name; the flag is its dashed form.
        field: The RunConfig field it sets, where the command names the flag its own way.
        required: Whether a required field must be given here. False: it may come from elsewhere
            (a recipe, a resumed run's config.yaml), so the option defaults to None.
    """
    info = RunConfig.model_fields[field or name]
    kind = cli_type(info.annotation)
    flag = "--" + name.replace("_", "-")
    decls = (f"{flag}/--no-{flag[2:]}",) if kind in (bool, Optional[bool]) else ()
    if not info.is_required():
        default = copy.copy(info.default)  # a list default must not be shared with RunConfig's
    elif required:
        default = inspect.Parameter.empty
    else:
        kind, default = Optional[kind], None
    help_text = info.description if required or not info.is_required() else f"{info.description} {REQUIRED_ELSEWHERE}"
    details = dict(metavar=field_metavar(info), rich_help_panel=PANEL_OF.get(field or name))
    return parameter(name, Annotated[kind, typer.Option(*decls, help=help_text, **details)], default)


def config_options(names: Iterable[str], aliases: Mapping[str, str] | None = None,
                   *, required: bool = True) -> list[inspect.Parameter]:
    """`config_option` for each name; `aliases` maps a command's own option names to their fields."""
    return [config_option(name, (aliases or {}).get(name), required=required) for name in names]


def with_parameters(params: list[inspect.Parameter]) -> Callable[[F], F]:
    """Gives a command the signature that Typer reads its options from (the function takes `**kwargs`)."""
    def apply(fn: F) -> F:
        fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        fn.__annotations__ = {p.name: p.annotation for p in params}
        return fn

    return apply


def given_on_command_line(ctx: typer.Context, names: Iterable[str]) -> set[str]:
    """The options among `names` that the user typed (not defaulted)."""
    # Compared by name: Typer may carry its own copy of click's ParameterSource enum.
    return {name for name in names if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}


# ----- options that are not run settings (their defaults are in the commands' signatures) ---------
TTA_CHOICES = one_of(Tta)
TTA_METAVAR = choices_metavar(get_args(Tta))
# Choices of options acted on by modules that the CLI imports only once a command runs (most import torch): the
# help shows them, and eval and export check theirs before that import. Spelled in finetune/config/choices.py,
# which those modules read too.
SPLITS: tuple[str, ...] = get_args(Split)
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
QUANTIZE_MODES: tuple[str, ...] = get_args(QuantizeMode)
DEMO_TASKS: tuple[str, ...] = get_args(DemoTask)

RESUME = parameter("resume", Annotated[Optional[Path], typer.Option(help=(
    "Continue RUN_DIR from checkpoints/last.ckpt with its config.yaml; only --epochs (to extend), --workers, "
    "--progress, --accelerator, --devices, --strategy, --num-nodes and --limit-*-batches may be given with it. "
    "Default: a new run."), rich_help_panel=RUN_DIR_PANEL)], None)
# The settings naming a label table and its columns: every command that reads data takes them.
TABLE_OPTIONS = ("labels", "path_column", "label_column", "split_column")
# lr-find's own names for the range test's fields, and the run settings it takes.
LR_FIND_ALIASES = {"start_lr": "lr_find_start_lr", "end_lr": "lr_find_end_lr", "num_steps": "lr_find_steps"}
LR_FIND_OPTIONS = ("backbone", "data", *TABLE_OPTIONS, "weights", "weights_dir", "freeze_until", "freeze_policy",
                   "train_bn",
                   "lr_decay", "backbone_lr_mult", "optimizer", "weight_decay", "nesterov", "batch_size",
                   "image_size", "augment", "seed", "workers", "val_split", "precision", "accelerator",
                   *LR_FIND_ALIASES, "progress")
PLOT_FOLDER = parameter("output", Annotated[Path, typer.Option(
    help="Folder for lr_find.png.", rich_help_panel=PANEL_OF["lr_find_steps"])], Path("."))

Backbone = Annotated[str, typer.Option(help=RunConfig.model_fields["backbone"].description)]
DemoOutput = Annotated[Path, typer.Option(help="Where the task's images and the two runs go.")]
DemoBackbone = Annotated[str, typer.Option(
    help="Backbone, fine-tuned from its ImageNet weights and trained from scratch.")]
DemoTaskOption = Annotated[str, typer.Option(help=f"Real task: {one_of(DemoTask)}.",
                                             metavar=choices_metavar(DEMO_TASKS))]
Shots = Annotated[int, typer.Option(help="Train images per class.")]
DemoEpochs = Annotated[Optional[int], typer.Option(help="Epochs of each run. Default: as `finetune run` picks them.")]
RunsFolder = Annotated[Path, typer.Argument(help="Folder holding run directories (searched 3 levels deep).")]
RunDirs = Annotated[list[Path], typer.Argument(help="Two or more run directories.")]
CurvesPlot = Annotated[Path, typer.Option(help="PNG overlaying the runs' val top-1 and val loss curves.")]
RecipeName = Annotated[str, typer.Argument(help="Recipe name or YAML path.")]
BackboneFilter = Annotated[Optional[str], typer.Option("--filter", help=(
    "Substring or wildcard pattern, e.g. resnet or convnext_*. Default: all (slow: over a thousand models)."))]
LocalWeightsDir = Annotated[Optional[Path], typer.Option(help=(
    "Folder with <backbone>.safetensors files counted as local weights. Default: $FINETUNE_WEIGHTS_DIR."))]

# Every command that reads a trained model takes it as --model. `export RUN_DIR` is the earlier form, kept
# working (hidden, with a warning) so that scripts written for it still run.
TrainedModel = Annotated[Optional[Path], typer.Option(help=(
    "Run directory (uses checkpoints/best.ckpt) or a .ckpt file. Required."))]
OldTrainedModel = Annotated[Optional[Path], typer.Argument(hidden=True, show_default=False, help=(
    "Deprecated spelling of --model."))]
BundleDir = Annotated[Optional[Path], typer.Option(help="Bundle directory. Default: the run directory's model/.")]
Formats = Annotated[str, typer.Option(help=(
    f"Comma-separated graph formats: {', '.join(noted(ExportFormat, {'onnx': 'always written'}))}."),
    metavar=choices_metavar(EXPORT_FORMATS))]
Quantize = Annotated[Optional[str], typer.Option(help=(
    f"Also write an int8 model: {one_of(QuantizeMode, {'int8': 'static QDQ, calibrated on training images'})}. "
    "Default: none."),
    metavar=choices_metavar(QUANTIZE_MODES))]
ExportData = Annotated[Optional[Path], typer.Option(help=(
    "Image folder for the parity check and int8 calibration. Default: the run's --data."))]
BundleTta = Annotated[Optional[str], typer.Option(help=(
    f"Default TTA stored in config.json: {TTA_CHOICES}. Default: the run's --tta."), metavar=TTA_METAVAR)]

EvalModel = Annotated[Path, typer.Option(help="Bundle directory, run directory or .ckpt file.")]
EvalData = Annotated[Path, typer.Option(help="Image folder with the model's classes.")]
SplitOption = Annotated[str, typer.Option(help=f"Split to evaluate: {one_of(Split)}.", metavar=choices_metavar(SPLITS))]
EvalTta = Annotated[str, typer.Option(help=(
    f"Test-time augmentation, all views in one forward pass, softmax averaged: {TTA_CHOICES} (five-crop: "
    "corners + center; ten-crop: and their mirrors)."), metavar=TTA_METAVAR)]
Calibrate = Annotated[bool, typer.Option("--calibrate/--no-calibrate", help=(
    "Fit a softmax temperature on the val split and store it in the bundle's config.json."))]
EvalSaliency = Annotated[int, typer.Option(min=0, help=(
    "Grad-CAM overlays (where the network looked for the class it predicted) of the N most confident mistakes, "
    "in OUTPUT/saliency/. Convolutional backbones only: a ViT-like model is skipped with a note."))]
EvalOutput = Annotated[Optional[Path], typer.Option(help=(
    "New or empty folder for metrics.json and the PNGs. Default: a new eval-SPLIT (or eval-SPLIT-N) in the run "
    "directory, or beside a bundle or .ckpt; never overwritten."))]

Models = Annotated[list[Path], typer.Option(
    help="Bundle, run directory or .ckpt; repeat to ensemble (probabilities averaged).")]
TopK = Annotated[int, typer.Option(help="Classes listed per image.")]
PredictTta = Annotated[Optional[str], typer.Option(
    help=f"Test-time augmentation: {TTA_CHOICES}. Default: each bundle's own.", metavar=TTA_METAVAR)]
PredictSaliency = Annotated[Optional[Path], typer.Option(help=(
    "Folder for one Grad-CAM overlay per image: where the network looked for its top class (one --model; files "
    "already there are kept). Convolutional backbones only: a ViT-like model is skipped with a note. Default: none."))]
PredictionsFile = Annotated[Optional[Path], typer.Option(
    help="Write the predictions to FILE.csv or FILE.json (by extension).")]

PreviewData = Annotated[Path, typer.Option(help="Image folder, as for `finetune run`.")]
LabelTable = Annotated[Optional[Path], typer.Option(help=(
    "Label table of the images in --data, as for `finetune run --labels` (.csv, .tsv, .parquet, .jsonl). Default: "
    "class folders, or a metadata.csv/metadata.jsonl in --data."))]
PathColumn = Annotated[Optional[str], typer.Option(help=RunConfig.model_fields["path_column"].description)]
LabelColumn = Annotated[Optional[str], typer.Option(help=RunConfig.model_fields["label_column"].description)]
SplitColumn = Annotated[Optional[str], typer.Option(help=RunConfig.model_fields["split_column"].description)]
PredictTable = Annotated[Optional[Path], typer.Option("--labels", help=(
    "Predict the files a table lists (.csv, .tsv, .parquet, .jsonl; paths relative to --data) instead of IMAGES; "
    "where it has labels, top-1 accuracy on the labelled rows is reported too. Default: none."))]
PredictData = Annotated[Optional[Path], typer.Option("--data", help=(
    "Folder the --labels table's paths are relative to. Required with --labels."))]
PredictImages = Annotated[Optional[list[Path]], typer.Argument(help=(
    "Image files and/or folders (searched recursively); or none, with --labels."), show_default=False)]
_PRESETS = [a for a in get_args(Augment) if a != "auto"]
PreviewAugment = Annotated[str, typer.Option(help=(
    f"auto (chosen from the data, as `finetune run` does) or a preset: {', '.join(_PRESETS[:-1])} or {_PRESETS[-1]}."),
    metavar=choices_metavar(get_args(Augment)))]
PreviewFile = Annotated[Path, typer.Option(help="PNG file to write.")]
PreviewBackbone = Annotated[str, typer.Option(help="Backbone whose preprocessing (size, mean, std) is used.")]
ImageSize = Annotated[Optional[int], typer.Option(help="Input side in pixels. Default: the backbone's own.")]
Count = Annotated[int, typer.Option(help="Number of augmented images in the grid.")]
PreviewSeed = Annotated[int, typer.Option(help="Seed of the augmentations.")]
