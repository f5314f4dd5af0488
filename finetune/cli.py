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
            err_console.print(f"[red]Error:[/red] {field}: {err['msg']} (got {err.get('input')!r})")
        raise typer.Exit(2) from None
    except FinetuneError as e:
        err_console.print(f"[red]Error:[/red] {e}")
        raise typer.Exit(2) from None


Backbone = Annotated[str, typer.Option(help="timm model name (resnet50, convnext_tiny, test_resnet) or tv:NAME for a torchvision model (tv:resnet18).")]


@app.command()
def run(
    backbone: Backbone,
    data: Annotated[Path, typer.Option(help="Image folder: DIR/train/<class>/ + DIR/val/<class>/ [+ DIR/test/<class>/], or DIR/<class>/ split by --val-split.")],
    weights: Annotated[str, typer.Option(help="imagenet (the zoo's pretrained weights, from --weights-dir, the local cache or the hub), none (random init), or PATH to a .safetensors/.pth/.ckpt state dict or a checkpoint of this toolkit.")] = "imagenet",
    weights_dir: Annotated[Optional[Path], typer.Option(help="Folder searched first for <backbone>.safetensors when --weights imagenet. Default: $FINETUNE_WEIGHTS_DIR if set.")] = None,
    freeze_until: Annotated[Optional[str], typer.Option(help="Freeze every layer before LAYER; LAYER and later layers train (see `finetune layers`). Aliases: stem, head. Default: nothing frozen.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Images per batch per device.")] = 32,
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels. Default: the backbone's own (its pretrained data config).")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate (peak of the cosine schedule).")] = 1e-3,
    optimizer: Annotated[str, typer.Option(help="Optimizer: adamw, adam, sgd, rmsprop.")] = "adamw",
    weight_decay: Annotated[float, typer.Option(help="Weight decay; never applied to biases and normalisation layers.")] = 0.01,
    augment: Annotated[str, typer.Option(help="Train augmentation: none (the eval resize + center crop), light (+ flip), standard (random resized crop 8-100% area, flip, colour jitter 0.6-1.4, PCA lighting 0.1) or strong (standard + a TrivialAugment-like op + random erasing). See `finetune augment-preview`.")] = "standard",
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
    # Regularization and distillation.
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing eps of the training targets, applied once (also with mixing). 0: off.")] = 0.0,
    mixup: Annotated[float, typer.Option(help="Mixup alpha: lambda ~ Beta(alpha, alpha) per batch (0.2-0.4 typical). 0: off.")] = 0.0,
    cutmix: Annotated[float, typer.Option(help="CutMix alpha: box area ~ Beta(alpha, alpha) per batch (1.0 typical). 0: off.")] = 0.0,
    mix_prob: Annotated[float, typer.Option(help="Probability that a training batch is mixed (with --mixup/--cutmix).")] = 1.0,
    mix_switch_prob: Annotated[float, typer.Option(help="With --mixup and --cutmix both on: probability that a mixed batch uses cutmix.")] = 0.5,
    mix_off_epoch: Annotated[int, typer.Option(help="Epoch (0-based) from which training batches are no longer mixed, so the last epochs see clean images. 0: mix in every epoch.")] = 0,
    teacher: Annotated[Optional[str], typer.Option(help="Distill from a teacher: a run directory or .ckpt of this toolkit, an exported bundle directory, or a backbone name with --teacher-weights. Same classes as the student required. Default: no teacher.")] = None,
    teacher_weights: Annotated[Optional[Path], typer.Option(help="Weights (.safetensors/.pth) of a backbone-name --teacher, with a head for this task's classes.")] = None,
    kd_alpha: Annotated[float, typer.Option(help="Weight A of distillation: (1-A) x task loss + A x T^2 x KL(teacher || student).")] = 0.5,
    kd_temperature: Annotated[float, typer.Option(help="Distillation softmax temperature T.")] = 4.0,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Keep an exponential moving average of the weights, validate it next to the raw weights (val_ema/acc1), and keep the better one in best.ckpt.")] = False,
    ema_decay: Annotated[float, typer.Option(help="EMA decay per optimizer step.")] = 0.999,
    ema_warmup: Annotated[bool, typer.Option("--ema-warmup/--no-ema-warmup", help="Ramp the EMA decay up from 0 over the first steps (0.8 after 10, 0.95 after 100).")] = True,
    head_dropout: Annotated[float, typer.Option(help="Dropout probability right before the classifier head. 0: off.")] = 0.0,
    drop_path: Annotated[float, typer.Option(help="Stochastic depth (drop path) rate, for backbones that have it. 0: the backbone's default.")] = 0.0,
) -> None:
    """Fine-tune BACKBONE on the image folder DATA and write a run directory."""
    settings: dict[str, Any] = dict(locals())
    from finetune.config import RunConfig
    from finetune.training.fit import fit

    config = _exit_on_user_error(lambda: RunConfig(**settings))
    _exit_on_user_error(lambda: fit(config, console))


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


@app.command("augment-preview")
def augment_preview(
    data: Annotated[Path, typer.Option(help="Image folder, as for `finetune run`.")],
    augment: Annotated[str, typer.Option(help="Preset: none, light, standard or strong.")] = "standard",
    output: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("augment-preview.png"),
    backbone: Annotated[str, typer.Option(help="Backbone whose preprocessing (size, mean, std) is used.")] = "resnet18",
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels. Default: the backbone's own.")] = None,
    count: Annotated[int, typer.Option(help="Number of augmented images in the grid.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the augmentations.")] = 0,
) -> None:
    """Write a PNG grid of augmented training images: what the model sees with --augment."""
    from finetune.config import RunConfig
    from finetune.data.preview import write_preview

    # Validates the preset name the same way `finetune run --augment` does.
    _exit_on_user_error(lambda: RunConfig(backbone=backbone, data=data, augment=augment))
    path = _exit_on_user_error(lambda: write_preview(data, augment, output, backbone, image_size, count, seed))
    console.print(f"Wrote {path} ({count} images, --augment {augment})")


if __name__ == "__main__":
    app()
