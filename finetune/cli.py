"""The `finetune` command line: parses options, builds a RunConfig, calls the library."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from finetune.errors import FinetuneError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune pretrained image classifiers (timm and torchvision) on an image folder.")
console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


def _exit_on_user_error(fn: Callable[[], T]) -> T:
    """Runs `fn`; a user error becomes a one-line message and exit status 2, not a traceback."""
    try:
        return fn()
    except ValidationError as e:
        for err in e.errors():
            field = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-")
            if err["type"] == "missing":
                err_console.print(f"[red]Error:[/red] {field} is required (on the command line or in the recipe)")
            else:
                err_console.print(f"[red]Error:[/red] {field}: {err['msg']} (got {err.get('input')!r})")
        raise typer.Exit(2) from None
    except FinetuneError as e:
        err_console.print(f"[red]Error:[/red] {e}")
        raise typer.Exit(2) from None


Backbone = Annotated[str, typer.Option(help="timm model name (resnet50, convnext_tiny, test_resnet) or tv:NAME for a torchvision model (tv:resnet18).")]


@app.command()
def run(
    ctx: typer.Context,
    backbone: Annotated[Optional[str], typer.Option(help="timm model name (resnet50, convnext_tiny, test_resnet) or tv:NAME for a torchvision model (tv:resnet18). Required here or in the recipe.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Image folder: DIR/train/<class>/ + DIR/val/<class>/ [+ DIR/test/<class>/], or DIR/<class>/ split by --val-split. Required here or in the recipe.")] = None,
    recipe: Annotated[Optional[str], typer.Option(help="Recipe name (see `finetune recipes`) or YAML path. Precedence: defaults < recipe < flags given here. Default: none.")] = None,
    weights: Annotated[str, typer.Option(help="imagenet (the zoo's pretrained weights, from --weights-dir, the local cache or the hub), none (random init), or PATH to a .safetensors/.pth/.ckpt state dict or a checkpoint of this toolkit.")] = "imagenet",
    weights_dir: Annotated[Optional[Path], typer.Option(help="Folder searched first for <backbone>.safetensors when --weights imagenet. Default: $FINETUNE_WEIGHTS_DIR if set.")] = None,
    freeze_until: Annotated[Optional[str], typer.Option(help="Freeze every layer before LAYER; LAYER and later layers train (see `finetune layers`). Aliases: stem, head. auto: from the median train images per class: <10 head only; <100 last layer group + head; <1000 last half of the groups; else everything. Default: nothing frozen.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Images per batch per device.")] = 32,
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels. Default: the backbone's own (its pretrained data config).")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate (peak of the cosine schedule).")] = 1e-3,
    optimizer: Annotated[str, typer.Option(help="Optimizer: adamw, adam, sgd, rmsprop.")] = "adamw",
    weight_decay: Annotated[float, typer.Option(help="Weight decay; never applied to biases and normalisation layers.")] = 0.01,
    augment: Annotated[str, typer.Option(help="Train augmentation: light (resize, center crop, flip) or standard (random resized crop 8-100% area, flip).")] = "standard",
    seed: Annotated[int, typer.Option(help="Seed for the train/val split, the new head's init and augmentation.")] = 42,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes. Default: min(4, CPU cores).")] = None,
    val_split: Annotated[float, typer.Option(help="Validation fraction, stratified by class, for the DIR/<class>/ layout.")] = 0.2,
    output: Annotated[Optional[Path], typer.Option(help="Run directory. Default: runs/<date>-<backbone>.")] = None,
    precision: Annotated[str, typer.Option(help="auto, 32, bf16-mixed or 16-mixed. auto: bf16-mixed on a GPU or CPU with native bf16, else 32.")] = "auto",
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="NHWC memory format. Default: on with mixed precision.")] = None,
    accelerator: Annotated[str, typer.Option(help="cpu, gpu or auto (Lightning accelerator).")] = "auto",
    devices: Annotated[str, typer.Option(help="Number of devices (or ids such as 0,1) or auto.")] = "auto",
    strategy: Annotated[str, typer.Option(help="Lightning strategy: auto, ddp, ddp_spawn, fsdp...")] = "auto",
    num_nodes: Annotated[int, typer.Option(help="Machines taking part in distributed training.")] = 1,
    limit_train_batches: Annotated[float, typer.Option(help="Train batches per epoch: a fraction (<=1) or a count (>1).")] = 1.0,
    limit_val_batches: Annotated[float, typer.Option(help="Validation batches per epoch: a fraction (<=1) or a count (>1).")] = 1.0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")] = True,
) -> None:
    """Fine-tune BACKBONE on the image folder DATA and write a run directory."""
    settings: dict[str, Any] = {k: v for k, v in locals().items() if k != "ctx"}
    from finetune.config import resolve_config
    from finetune.training.fit import fit

    # Compared by name: Typer's ParameterSource is its own enum, not click's.
    explicit = {name for name in settings if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
    config, sources = _exit_on_user_error(lambda: resolve_config(settings, explicit, recipe))
    _exit_on_user_error(lambda: fit(config, console, sources=sources))


@app.command()
def layers(backbone: Backbone) -> None:
    """List the layer names of BACKBONE, in order, with parameter counts (valid --freeze-until values)."""
    from finetune.models.backbone import list_layers

    rows = _exit_on_user_error(lambda: list_layers(backbone))
    table = Table(title=f"Layers of {backbone} (input to output)", title_justify="left")
    table.add_column("layer")
    table.add_column("params", justify="right")
    for name, count in rows:
        table.add_row(name, f"{count:,}")
    table.caption = "--freeze-until LAYER freezes every layer above LAYER in this list. Aliases: stem (first), head (last)."
    console.print(table)


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="Where the generated data and the three runs go.")] = Path("runs/demo"),
    backbone: Annotated[str, typer.Option(help="Backbone trained on the source task, then fine-tuned.")] = "resnet18",
    freeze_until: Annotated[str, typer.Option(help="Layer to freeze up to when fine-tuning on the target task.")] = "layer3",
    epochs: Annotated[int, typer.Option(help="Epochs for each of the three runs.")] = 10,
) -> None:
    """Transfer learning in miniature: pretrain on generated shapes, fine-tune on textures, compare with scratch."""
    from finetune.demo import run_demo

    _exit_on_user_error(lambda: run_demo(output, backbone=backbone, freeze_until=freeze_until, epochs=epochs, console=console))


recipes_app = typer.Typer(help="List the shipped recipes, or show one.", invoke_without_command=True)
app.add_typer(recipes_app, name="recipes")


@recipes_app.callback()
def recipes_list(ctx: typer.Context) -> None:
    """List the recipes with their one-line descriptions."""
    if ctx.invoked_subcommand is not None:
        return
    from finetune.config import list_recipes

    table = Table(title="Recipes (use with: finetune run --recipe NAME)", title_justify="left")
    table.add_column("name")
    table.add_column("when to use it")
    for recipe in _exit_on_user_error(list_recipes):
        table.add_row(recipe.name, recipe.description)
    console.print(table)


@recipes_app.command("show")
def recipes_show(name: Annotated[str, typer.Argument(help="Recipe name or YAML path.")]) -> None:
    """Print one recipe: its notes and its settings."""
    from finetune.config import load_recipe

    recipe = _exit_on_user_error(lambda: load_recipe(name))
    console.print(f"[bold]{recipe.name}[/bold]  ({recipe.path})")
    console.print(recipe.path.read_text(), markup=False, highlight=False)


@app.command()
def backbones(
    filter: Annotated[Optional[str], typer.Option("--filter", help="Substring or wildcard pattern, e.g. resnet or convnext_*. Default: all (slow: over a thousand models).")] = None,
    weights_dir: Annotated[Optional[Path], typer.Option(help="Folder with <backbone>.safetensors files counted as local weights. Default: $FINETUNE_WEIGHTS_DIR.")] = None,
) -> None:
    """List backbone names with parameter counts and whether pretrained weights are on this machine."""
    from finetune.models.catalog import list_backbones

    rows = _exit_on_user_error(lambda: list_backbones(filter, weights_dir=weights_dir, progress=True))
    table = Table(title=f"Backbones matching {filter!r}" if filter else "Backbones", title_justify="left")
    for col, justify in (("name", "left"), ("params", "right"), ("local weights", "left")):
        table.add_column(col, justify=justify)
    for info in rows:
        table.add_row(info.name, f"{info.params / 1e6:.1f}M" if info.params is not None else "?", info.local_weights or "-")
    table.caption = f"{len(rows)} backbones. Local weights load offline with --weights imagenet."
    console.print(table)


if __name__ == "__main__":
    app()
