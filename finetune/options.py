"""The options of the `finetune` commands: made from RunConfig fields where the option is a run
setting (a field is the one declaration of its setting), declared here where it is not.

A command made from fields takes `**settings` and gets its Typer signature from `with_parameters`.
Typer parses no unions or Literals, so such fields come in as strings for RunConfig to parse and
check, exactly as from a recipe: `--lr auto` or `--lr 1e-3`, `--limit-train-batches 1` (a count) or
`0.5` (a fraction), and a bad `--augment` is refused by RunConfig, with the valid choices.
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Optional, TypeVar, Union, get_args, get_origin

import typer

from finetune.config import REQUIRED_ELSEWHERE, Augment, RunConfig, Tta, one_of

F = TypeVar("F", bound=Callable[..., Any])
PARSED_BY_TYPER = (str, int, float, bool, Path)
CONTEXT = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)


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
    return parameter(name, Annotated[kind, typer.Option(*decls, help=help_text)], default)


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
RESUME = parameter("resume", Annotated[Optional[Path], typer.Option(help=(
    "Continue RUN_DIR from checkpoints/last.ckpt with its config.yaml; only --epochs (to extend), --workers, "
    "--progress, --accelerator, --devices, --strategy, --num-nodes and --limit-*-batches may be given with it. "
    "Default: a new run."))], None)
# lr-find's own names for the range test's fields, and the run settings it takes.
LR_FIND_ALIASES = {"start_lr": "lr_find_start_lr", "end_lr": "lr_find_end_lr", "num_steps": "lr_find_steps"}
LR_FIND_OPTIONS = ("backbone", "data", "weights", "weights_dir", "freeze_until", "freeze_policy", "train_bn",
                   "lr_decay", "backbone_lr_mult", "optimizer", "weight_decay", "nesterov", "batch_size",
                   "image_size", "augment", "seed", "workers", "val_split", "precision", "accelerator",
                   *LR_FIND_ALIASES, "progress")
PLOT_FOLDER = parameter("output", Annotated[Path, typer.Option(help="Folder for lr_find.png.")], Path("."))

Backbone = Annotated[str, typer.Option(help="timm model name (resnet50, convnext_tiny, test_resnet) or tv:NAME "
                                            "for a torchvision model (tv:resnet18).")]
DemoOutput = Annotated[Path, typer.Option(help="Where the task's images and the two runs go.")]
DemoBackbone = Annotated[str, typer.Option(
    help="Backbone, fine-tuned from its ImageNet weights and trained from scratch.")]
DemoTask = Annotated[str, typer.Option(help="Real task: textures, silhouettes or faces.")]
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

TrainedModel = Annotated[Path, typer.Argument(help="Run directory (uses checkpoints/best.ckpt) or a .ckpt file.")]
BundleDir = Annotated[Optional[Path], typer.Option(help="Bundle directory. Default: RUN_DIR/model.")]
Formats = Annotated[str, typer.Option(help="Comma-separated graph formats: onnx (always written), torchscript.")]
Quantize = Annotated[Optional[str], typer.Option(help=(
    "Also write an int8 model: int8 (static QDQ, calibrated on training images). Default: none."))]
ExportData = Annotated[Optional[Path], typer.Option(help=(
    "Image folder for the parity check and int8 calibration. Default: the run's --data."))]
BundleTta = Annotated[Optional[str], typer.Option(help=(
    f"Default TTA stored in config.json: {TTA_CHOICES}. Default: the run's --tta."))]

EvalModel = Annotated[Path, typer.Option(help="Bundle directory, run directory or .ckpt file.")]
EvalData = Annotated[Path, typer.Option(help="Image folder with the model's classes.")]
Split = Annotated[str, typer.Option(help="Split to evaluate: val or test.")]
EvalTta = Annotated[str, typer.Option(help=(
    f"Test-time augmentation, all views in one forward pass, softmax averaged: {TTA_CHOICES} (five-crop: "
    "corners + center; ten-crop: and their mirrors). Default: none."))]
Calibrate = Annotated[bool, typer.Option("--calibrate/--no-calibrate", help=(
    "Fit a softmax temperature on the val split and store it in the bundle's config.json. Default: off."))]
EvalSaliency = Annotated[int, typer.Option(min=0, help=(
    "Grad-CAM overlays (where the network looked for the class it predicted) of the N most confident mistakes, "
    "in OUTPUT/saliency/. Convolutional backbones only: a ViT-like model is skipped with a note. Default: 0, none."))]
EvalOutput = Annotated[Optional[Path], typer.Option(help=(
    "New or empty folder for metrics.json and the PNGs. Default: a new eval-SPLIT (or eval-SPLIT-N) in the run "
    "directory, or beside a bundle or .ckpt; never overwritten."))]

Images = Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")]
Models = Annotated[list[Path], typer.Option(
    help="Bundle, run directory or .ckpt; repeat to ensemble (probabilities averaged).")]
TopK = Annotated[int, typer.Option(help="Classes listed per image.")]
PredictTta = Annotated[Optional[str], typer.Option(
    help=f"Test-time augmentation: {TTA_CHOICES}. Default: each bundle's own.")]
PredictSaliency = Annotated[Optional[Path], typer.Option(help=(
    "Folder for one Grad-CAM overlay per image: where the network looked for its top class (one --model; files "
    "already there are kept). Convolutional backbones only: a ViT-like model is skipped with a note. Default: none."))]
PredictionsFile = Annotated[Optional[Path], typer.Option(
    help="Write the predictions to FILE.csv or FILE.json (by extension).")]

PreviewData = Annotated[Path, typer.Option(help="Image folder, as for `finetune run`.")]
_PRESETS = [a for a in get_args(Augment) if a != "auto"]
PreviewAugment = Annotated[str, typer.Option(help=(
    f"auto (chosen from the data, as `finetune run` does) or a preset: {', '.join(_PRESETS[:-1])} or {_PRESETS[-1]}."))]
PreviewFile = Annotated[Path, typer.Option(help="PNG file to write.")]
PreviewBackbone = Annotated[str, typer.Option(help="Backbone whose preprocessing (size, mean, std) is used.")]
ImageSize = Annotated[Optional[int], typer.Option(help="Input side in pixels. Default: the backbone's own.")]
Count = Annotated[int, typer.Option(help="Number of augmented images in the grid.")]
PreviewSeed = Annotated[int, typer.Option(help="Seed of the augmentations.")]
