"""The `finetune` command line: parses options, builds a RunConfig, calls the library."""
from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
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
            field = "--" + str(err["loc"][0]).replace("_", "-")  # union members add type names to loc
            if err["type"] == "missing":
                err_console.print(f"[red]Error:[/red] {field} is required (on the command line or in the recipe)")
            else:
                err_console.print(f"[red]Error:[/red] {field}: {escape(err['msg'])} (got {escape(repr(err.get('input')))})")
        raise typer.Exit(2) from None
    except FinetuneError as e:
        err_console.print(f"[red]Error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None


Backbone = Annotated[str, typer.Option(help="timm model name (resnet50, convnext_tiny, test_resnet) or tv:NAME for a torchvision model (tv:resnet18).")]
# run's --backbone and --data may be left out with --resume, which takes them from the saved config.


@app.command()
def run(
    ctx: typer.Context,
    backbone: Annotated[Optional[str], typer.Option(help="timm model name (resnet50, convnext_tiny, test_resnet) or tv:NAME for a torchvision model (tv:resnet18). Required here or in the recipe (not with --resume).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Image folder: DIR/train/<class>/ + DIR/val/<class>/ [+ DIR/test/<class>/], or DIR/<class>/ split by --val-split. Required here or in the recipe (not with --resume).")] = None,
    recipe: Annotated[Optional[str], typer.Option(help="Recipe name (see `finetune recipes`) or YAML path. Precedence: defaults < recipe < flags given here. Default: none.")] = None,
    weights: Annotated[str, typer.Option(help="imagenet (the zoo's pretrained weights, from --weights-dir, the local cache or the hub), none (random init), or PATH to a .safetensors/.pth/.ckpt state dict or a checkpoint of this toolkit.")] = "imagenet",
    weights_dir: Annotated[Optional[Path], typer.Option(help="Folder searched first for <backbone>.safetensors when --weights imagenet. Default: $FINETUNE_WEIGHTS_DIR if set.")] = None,
    weights_partial: Annotated[bool, typer.Option("--weights-partial/--no-weights-partial", help="Train even when --weights PATH leaves more than 10% of the backbone's (non-head) tensors missing or mismatched, i.e. at random init. Default: off, such weights are an error naming the tensors.")] = False,
    freeze_until: Annotated[Optional[str], typer.Option(help="Freeze every layer before LAYER; LAYER and later layers train (see `finetune layers`). Aliases: stem, head; none: nothing frozen. auto (default): from the median train images per class: <10 head only; <100 last layer group + head; <1000 last half of the groups; else everything; every layer with --weights none, and the policy's part with --freeze-policy/--freeze-epochs/--unfreeze-every.")] = "auto",
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs. Default: from the train-set size, about 400 optimizer steps within 10-60 epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per batch per device. Default: from the train-set size, the largest of 8, 16, 32 that keeps 10+ steps an epoch.")] = None,
    val_every: Annotated[Optional[int], typer.Option(help="Validate every N epochs, the last included (best.ckpt is chosen among these). Default: about 20 validations a run (the largest divisor of --epochs up to epochs/20).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels. Default: the backbone's own (its pretrained data config).")] = None,
    lr: Annotated[str, typer.Option(help="The head's peak learning rate (backbone groups: see --backbone-lr-mult, --lr-decay), or auto: run the LR range test first and use its suggestion.")] = "1e-3",
    optimizer: Annotated[str, typer.Option(help="Optimizer: adamw, adam, sgd, rmsprop.")] = "adamw",
    weight_decay: Annotated[float, typer.Option(help="Weight decay; never applied to biases and normalisation layers.")] = 0.01,
    momentum: Annotated[float, typer.Option(help="Momentum of sgd and rmsprop (an error with adam/adamw, which have none).")] = 0.9,
    augment: Annotated[str, typer.Option(help="Train augmentation: auto (from the data: translation only under 64 px, else a random crop keeping 50% of the area, 25% with 100+ images per class; flip unless mirroring changes the class; no colour jitter on grey images), none (the eval resize + center crop), light (+ flip), standard (random resized crop 8-100% area, flip, colour jitter 0.6-1.4, PCA lighting 0.1) or strong (standard + a TrivialAugment-like op + random erasing). Default: auto. See `finetune augment-preview`.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for the train/val split, the new head's init and augmentation.")] = 42,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes. Default: min(4, CPU cores).")] = None,
    val_split: Annotated[float, typer.Option(help="Validation fraction, stratified by class, for the DIR/<class>/ layout.")] = 0.2,
    output: Annotated[Optional[Path], typer.Option(help="Run directory. Default: runs/<date>-<backbone>. A folder that is not empty is refused: see --resume and --overwrite.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="Start afresh in a non-empty --output: removes the earlier run's config.yaml, metrics.csv, hparams.yaml, bad_files.txt, plots, checkpoints/, model/, eval-*/ and tracker logs (tensorboard/, mlflow.db, mlartifacts/) first; other files stay.")] = False,
    precision: Annotated[str, typer.Option(help="auto, 32, bf16-mixed or 16-mixed. auto: bf16-mixed on a GPU or CPU with native bf16, else 32.")] = "auto",
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="NHWC memory format. Default: on with mixed precision.")] = None,
    accelerator: Annotated[str, typer.Option(help="Lightning accelerator: auto, cpu, gpu (= cuda), mps or tpu.")] = "auto",
    devices: Annotated[str, typer.Option(help="Number of devices (cpu: processes), GPU ids such as 0,1, -1 (every GPU) or auto.")] = "auto",
    strategy: Annotated[str, typer.Option(help="Lightning strategy: auto, ddp, ddp_spawn, fsdp...")] = "auto",
    num_nodes: Annotated[int, typer.Option(help="Machines taking part in distributed training.")] = 1,
    limit_train_batches: Annotated[str, typer.Option(help="Train batches per epoch: a whole number is a count (1: one batch), a decimal a fraction (0.5: half, 1.0: all).")] = "1.0",
    limit_val_batches: Annotated[str, typer.Option(help="Validation batches per epoch: a whole number is a count (1: one batch), a decimal a fraction (0.5: half, 1.0: all).")] = "1.0",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")] = True,
    # Evaluation and export after training.
    tta: Annotated[str, typer.Option(help="Test-time augmentation of the final evaluation, stored as the bundle's default: none, flip, five-crop, ten-crop, scales.")] = "none",
    export: Annotated[bool, typer.Option("--export/--no-export", help="Write the export bundle (ONNX + safetensors + config.json) to RUN_DIR/model/ at the end. Default: on.")] = True,
    # Fine-tuning policies: freezing, gradual unfreezing, discriminative LRs, schedules, LR finder, resume.
    freeze_policy: Annotated[Optional[str], typer.Option(help="linear-probe (only the head trains), bn-only (BatchNorm affine + head train; with --freeze-until: only before LAYER) or full (everything trains). Default: --freeze-until alone decides.")] = None,
    train_bn: Annotated[bool, typer.Option("--train-bn/--no-train-bn", help="BatchNorm layers in the frozen part keep training (affine and running statistics). Default: off, frozen BatchNorm is bit-identical.")] = False,
    freeze_epochs: Annotated[Optional[int], typer.Option(help="Train N epochs with the freeze policy (default policy: linear-probe), then unfreeze everything. Default: no unfreezing.")] = None,
    unfreeze_every: Annotated[Optional[int], typer.Option(help="Unfreeze one more layer group from the top every K epochs (first at K, or at --freeze-epochs). Default: off.")] = None,
    lr_decay: Annotated[Optional[float], typer.Option(help="Layer-wise LR decay: each group below the head gets F x the LR of the group above it; replaces --backbone-lr-mult. Default: off.")] = None,
    backbone_lr_mult: Annotated[float, typer.Option(help="LR of every backbone group as a multiple of the head's --lr (1: one LR for the whole network, as the plain loop; measured better than 0.1 on real images).")] = 1.0,
    schedule: Annotated[str, typer.Option(help="LR schedule: cosine, step, onecycle or constant; one factor scales every group.")] = "cosine",
    warmup_epochs: Annotated[float, typer.Option(help="Linear LR warmup, in epochs (fractions allowed).")] = 0.0,
    step_size: Annotated[int, typer.Option(help="step schedule: epochs between LR drops.")] = 7,
    gamma: Annotated[float, typer.Option(help="step schedule: LR factor at each drop.")] = 0.1,
    min_lr: Annotated[float, typer.Option(help="Floor of the head's LR for cosine, step and onecycle (groups keep their ratios).")] = 0.0,
    scale_lr: Annotated[bool, typer.Option("--scale-lr/--no-scale-lr", help="Linear scaling rule: multiply --lr by the global batch size (--batch-size x devices) / 256. Default: off.")] = False,
    nesterov: Annotated[bool, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum, with --optimizer sgd. Default: off.")] = False,
    lr_find_start_lr: Annotated[float, typer.Option(help="--lr auto: first LR of the range test.")] = 1e-7,
    lr_find_end_lr: Annotated[float, typer.Option(help="--lr auto: last LR of the range test.")] = 10.0,
    lr_find_steps: Annotated[int, typer.Option(help="--lr auto: steps of the range test.")] = 100,
    resume: Annotated[Optional[Path], typer.Option(help="Continue RUN_DIR from checkpoints/last.ckpt with its config.yaml; only --epochs (to extend), --workers, --progress, --accelerator, --devices, --strategy, --num-nodes and --limit-*-batches may be given with it. Default: a new run.")] = None,
    # Regularization and distillation.
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing eps of the training targets, applied once (also with mixing). 0: off.")] = 0.0,
    mixup: Annotated[float, typer.Option(help="Mixup alpha: lambda ~ Beta(alpha, alpha) per batch (0.2-0.4 typical). 0: off.")] = 0.0,
    cutmix: Annotated[float, typer.Option(help="CutMix alpha: box area ~ Beta(alpha, alpha) per batch (1.0 typical). 0: off.")] = 0.0,
    mix_prob: Annotated[float, typer.Option(help="Probability that a training batch is mixed (with --mixup/--cutmix).")] = 1.0,
    mix_switch_prob: Annotated[float, typer.Option(help="With --mixup and --cutmix both on: probability that a mixed batch uses cutmix.")] = 0.5,
    mix_off_epoch: Annotated[int, typer.Option(help="Epoch (0-based) from which training batches are no longer mixed, so the last epochs see clean images. 0: mix in every epoch.")] = 0,
    teacher: Annotated[Optional[str], typer.Option(help="Distill from a teacher: a run directory or .ckpt of this toolkit, an exported bundle directory, or a backbone name with --teacher-weights. Same classes as the student required. Default: no teacher.")] = None,
    teacher_weights: Annotated[Optional[Path], typer.Option(help="Weights (.safetensors/.pth) of a backbone-name --teacher, with a head for this task's classes. Default: none (a run, checkpoint or bundle --teacher brings its own).")] = None,
    kd_alpha: Annotated[float, typer.Option(help="Weight A of distillation: (1-A) x task loss + A x T^2 x KL(teacher || student).")] = 0.5,
    kd_temperature: Annotated[float, typer.Option(help="Distillation softmax temperature T.")] = 4.0,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Keep an exponential moving average of the weights, validate it next to the raw weights (val_ema/KEY for the --monitor figure KEY), and keep the better one in best.ckpt.")] = False,
    ema_decay: Annotated[float, typer.Option(help="EMA decay per optimizer step.")] = 0.999,
    ema_warmup: Annotated[bool, typer.Option("--ema-warmup/--no-ema-warmup", help="Ramp the EMA decay up from 0 over the first steps (0.8 after 10, 0.95 after 100).")] = True,
    head_dropout: Annotated[float, typer.Option(help="Dropout probability right before the classifier head. 0: off.")] = 0.0,
    drop_path: Annotated[float, typer.Option(help="Stochastic depth (drop path) rate, for backbones that have it. 0: the backbone's default.")] = 0.0,
    # Selection, early stopping, class imbalance, trackers, console.
    monitor: Annotated[str, typer.Option(help="Validation figure that picks best.ckpt and drives --early-stop and --ema selection: acc1, balanced-acc (mean of the class recalls), macro-f1 or loss (lower is better).")] = "acc1",
    early_stop: Annotated[Optional[int], typer.Option(help="Stop when --monitor has not improved for N epochs; the patience restarts at each unfreeze. The result is best.ckpt. Default: off, every epoch trains.")] = None,
    early_stop_min_delta: Annotated[float, typer.Option(help="With --early-stop: the smallest change of --monitor that counts as an improvement.")] = 0.0,
    class_weights: Annotated[str, typer.Option(help="Per-class weights of the training loss: none, auto (inverse effective number of samples, Cui et al. 2019, mean 1 over the train images) or PATH to a YAML/JSON mapping class: weight.")] = "none",
    sampler: Annotated[str, typer.Option(help="Train batches: shuffle (every image once an epoch) or balanced (classes drawn equally often, with repetition). Not with --class-weights.")] = "shuffle",
    logger: Annotated[list[str], typer.Option(help="Experiment tracker, repeatable: csv (metrics.csv only; it is always written), tensorboard (RUN_DIR/tensorboard) or mlflow (a local store RUN_DIR/mlflow.db, or --mlflow-uri).")] = ["csv"],
    mlflow_uri: Annotated[Optional[str], typer.Option(help="With --logger mlflow: the tracking server or store URI. Default: sqlite:///RUN_DIR/mlflow.db (artifacts in RUN_DIR/mlartifacts).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose/--no-verbose", help="Show Lightning's own messages and the libraries' warnings. Default: off, one line per epoch.")] = False,
) -> None:
    """Fine-tune BACKBONE on the image folder DATA and write a run directory."""
    settings: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("ctx", "resume")}
    from finetune.config import resolve_config
    from finetune.run.fit import fit

    if resume is not None:
        _resume(ctx, resume, settings)
        return
    # Compared by name: Typer's ParameterSource is its own enum, not click's.
    explicit = {name for name in settings if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
    with warnings.catch_warnings(record=True) as caught:  # recipe values the flags switch off
        warnings.simplefilter("always", UserWarning)
        config, sources = _exit_on_user_error(lambda: resolve_config(settings, explicit, recipe))
    for warning in caught:
        err_console.print(f"[yellow]Warning:[/yellow] {escape(str(warning.message))}")
    _exit_on_user_error(lambda: fit(config, console, sources=sources))


def _resume(ctx: typer.Context, run_dir: Path, settings: dict[str, Any]) -> None:
    """`run --resume`: the saved config plus the options given on the command line."""
    from finetune.run.fit import fit
    from finetune.run.resume import resume_config

    # Compared by name: Typer may carry its own copy of click's ParameterSource enum.
    given = {k: v for k, v in settings.items() if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    config = _exit_on_user_error(lambda: resume_config(run_dir, given))
    sources = {k: "command line (--resume)" for k in given}  # merged into the first start's record
    _exit_on_user_error(lambda: fit(config, console, ckpt_path=run_dir / "checkpoints" / "last.ckpt", sources=sources))


@app.command("lr-find")
def lr_find(
    backbone: Backbone,
    data: Annotated[Path, typer.Option(help="Image folder, as for `finetune run`.")],
    weights: Annotated[str, typer.Option(help="imagenet, none, or PATH (as for `finetune run`).")] = "imagenet",
    weights_dir: Annotated[Optional[Path], typer.Option(help="Folder searched first for <backbone>.safetensors. Default: $FINETUNE_WEIGHTS_DIR if set.")] = None,
    freeze_until: Annotated[Optional[str], typer.Option(help="Freeze every layer before LAYER; none: nothing frozen; auto (default): the layers `run` would train.")] = "auto",
    freeze_policy: Annotated[Optional[str], typer.Option(help="linear-probe, bn-only or full (as for `finetune run`). Default: --freeze-until alone decides.")] = None,
    train_bn: Annotated[bool, typer.Option("--train-bn/--no-train-bn", help="BatchNorm in the frozen part trains. Default: off.")] = False,
    lr_decay: Annotated[Optional[float], typer.Option(help="Layer-wise LR decay per group below the head. Default: off.")] = None,
    backbone_lr_mult: Annotated[float, typer.Option(help="Backbone LR as a multiple of the head's.")] = 1.0,
    optimizer: Annotated[str, typer.Option(help="Optimizer: adamw, adam, sgd, rmsprop.")] = "adamw",
    weight_decay: Annotated[float, typer.Option(help="Weight decay; never applied to biases and normalisation layers.")] = 0.01,
    nesterov: Annotated[bool, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum with sgd. Default: off.")] = False,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per batch. Default: as `finetune run` picks it from the train-set size.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels. Default: the backbone's own.")] = None,
    augment: Annotated[str, typer.Option(help="Train augmentation: auto, none, light, standard or strong. Default: auto.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for the split and augmentation.")] = 42,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader workers. Default: min(4, CPU cores).")] = None,
    val_split: Annotated[float, typer.Option(help="Validation fraction for the DIR/<class>/ layout.")] = 0.2,
    precision: Annotated[str, typer.Option(help="auto, 32, bf16-mixed or 16-mixed.")] = "auto",
    accelerator: Annotated[str, typer.Option(help="cpu, gpu or auto (one device).")] = "auto",
    start_lr: Annotated[float, typer.Option(help="First head LR of the range test.")] = 1e-7,
    end_lr: Annotated[float, typer.Option(help="Last head LR of the range test.")] = 10.0,
    num_steps: Annotated[int, typer.Option(help="Steps of the range test (stops early when the loss diverges).")] = 100,
    output: Annotated[Path, typer.Option(help="Folder for lr_find.png.")] = Path("."),
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")] = True,
) -> None:
    """LR range test: raise the LR exponentially, plot loss vs LR to OUTPUT/lr_find.png, print a suggested --lr."""
    options = {k: v for k, v in locals().items() if k not in ("start_lr", "end_lr", "num_steps", "output")}
    from finetune.config import RunConfig
    from finetune.run.lr_find import run_lr_find

    range_test = {"lr_find_start_lr": start_lr, "lr_find_end_lr": end_lr, "lr_find_steps": num_steps}
    config = _exit_on_user_error(lambda: RunConfig(**options, **range_test, lr="auto", output=output))
    result = _exit_on_user_error(lambda: run_lr_find(config, console))
    console.print(f"Suggested --lr {result.suggestion:.2e}  (plot: {result.plot})")


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
    output: Annotated[Path, typer.Option(help="Where the task's images and the two runs go.")] = Path("runs/demo"),
    backbone: Annotated[str, typer.Option(help="Backbone, fine-tuned from its ImageNet weights and trained from scratch.")] = "tf_efficientnet_lite0",
    task: Annotated[str, typer.Option(help="Real task: textures, silhouettes or faces.")] = "textures",
    shots: Annotated[int, typer.Option(help="Train images per class.")] = 10,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of each run. Default: as `finetune run` picks them.")] = None,
) -> None:
    """Real ImageNet transfer on real photos (installed offline), against the same backbone from scratch."""
    from finetune.run.demo import run_demo

    _exit_on_user_error(lambda: run_demo(output, backbone=backbone, task=task, shots=shots, epochs=epochs, console=console))


@app.command("runs")
def runs_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder holding run directories (searched 3 levels deep).")] = Path("runs"),
) -> None:
    """List runs: backbone, data, best val figure, epochs, wall time, and the settings given beyond the defaults."""
    from finetune.run.listing import find_runs

    found = _exit_on_user_error(lambda: find_runs(folder))
    table = Table(title=f"Runs in {folder} ({len(found)})", title_justify="left")
    for col, justify in (("run", "left"), ("backbone", "left"), ("data", "left"), ("best val", "right"),
                         ("epochs", "right"), ("wall", "right"), ("settings given", "left")):
        table.add_column(col, justify=justify)
    for r in found:
        best = f"{r.best[0].removeprefix('val/')} {r.best[1]:.4f} @{r.best[2] + 1}" if r.best else "-"
        given = " ".join(f"{k}={v}" for k, v in r.changed.items())
        recipe = r.settings.get("recipe")
        table.add_row(_shown_path(r.path, folder), str(r.settings.get("backbone")), Path(str(r.settings.get("data"))).name,
                      best, f"{r.epochs}/{r.planned_epochs}", f"{r.seconds:.0f}s", (f"recipe={Path(recipe).stem} " if recipe else "") + given)
    console.print(table)


@app.command("compare")
def compare_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run directories.")],
    output: Annotated[Path, typer.Option(help="PNG overlaying the runs' val top-1 and val loss curves.")] = Path("compare.png"),
) -> None:
    """Print the settings that differ between runs, side by side, and plot their val curves together."""
    from finetune.run.listing import plot_comparison, read_run, setting_differences

    if len(run_dirs) < 2:
        err_console.print(f"[red]Error:[/red] compare needs two or more run directories, got {len(run_dirs)}")
        raise typer.Exit(2)
    found = [_exit_on_user_error(lambda d=d: read_run(d)) for d in run_dirs]
    labels = [d.name or str(d) for d in run_dirs]
    table = Table(title="Settings that differ", title_justify="left")
    table.add_column("setting")
    for label in labels:
        table.add_column(label)
    for key, values in setting_differences(found).items():
        table.add_row(key, *(str(v) for v in values))
    table.add_row("best val top-1", *(f"{r.best_acc1:.4f} (epoch {r.best[2] + 1})" if r.best else "-" for r in found))
    table.add_row("epochs trained", *(str(r.epochs) for r in found))
    table.add_row("wall", *(f"{r.seconds:.0f}s" for r in found))
    console.print(table)
    console.print(f"Curves: {plot_comparison(found, labels, output)}")


def _shown_path(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base)) or "."
    except ValueError:
        return str(path)


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


# ----- evaluation, export, prediction -----------------------------------------------------------
TtaOption = Annotated[str, typer.Option(help="Test-time augmentation, all views in one forward pass, softmax averaged: none, flip, five-crop, ten-crop (corners + center and their mirrors), scales. Default: none (predict: the bundle's default).")]


@app.command("export")
def export_cmd(
    model: Annotated[Path, typer.Argument(help="Run directory (uses checkpoints/best.ckpt) or a .ckpt file.")],
    output: Annotated[Optional[Path], typer.Option(help="Bundle directory. Default: RUN_DIR/model.")] = None,
    format: Annotated[str, typer.Option(help="Comma-separated graph formats: onnx (always written), torchscript.")] = "onnx",
    quantize: Annotated[Optional[str], typer.Option(help="Also write an int8 model: int8 (static QDQ, calibrated on training images). Default: none.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Image folder for the parity check and int8 calibration. Default: the run's --data.")] = None,
    tta: Annotated[Optional[str], typer.Option(help="Default TTA stored in config.json: none, flip, five-crop, ten-crop, scales. Default: the run's --tta.")] = None,
) -> None:
    """Export a trained model to a bundle: safetensors, ONNX (+ TorchScript, + int8), config.json, checked for parity."""
    from finetune.export.bundle import export

    formats = [f.strip() for f in format.split(",") if f.strip()]
    bundle = _exit_on_user_error(lambda: _value_error_is_user_error(lambda: export(model, output, formats, quantize, data, tta)))
    config = json.loads((bundle / "config.json").read_text())
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in config["parity"]["max_abs_diff"].items())
    console.print(f"Bundle: {bundle}  files: {', '.join(config['files'])}", soft_wrap=True)
    console.print(f"Parity (max |logit diff| vs eager, {config['parity']['images']} val images): {diffs}")
    if "int8" in config:
        console.print(f"int8 top-1 agreement with fp32: {config['int8']['top1_agreement']:.4f} on {config['int8']['agreement_images']} val images")


@app.command("eval")
def eval_cmd(
    model: Annotated[Path, typer.Option(help="Bundle directory, run directory or .ckpt file.")],
    data: Annotated[Path, typer.Option(help="Image folder with the model's classes.")],
    split: Annotated[str, typer.Option(help="Split to evaluate: val or test.")] = "val",
    tta: TtaOption = "none",
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate", help="Fit a softmax temperature on the val split and store it in the bundle's config.json. Default: off.")] = False,
    output: Annotated[Optional[Path], typer.Option(help="New or empty folder for metrics.json and the PNGs. Default: a new eval-SPLIT (or eval-SPLIT-N) in the run directory, or beside a bundle or .ckpt; never overwritten.")] = None,
) -> None:
    """Evaluate a model: top-1/top-5, per-class figures, confusion matrix, reliability diagram, ECE, with and without TTA."""
    from finetune.evaluation.evaluate import evaluate

    result = _exit_on_user_error(lambda: _value_error_is_user_error(lambda: evaluate(model, data, split, tta, calibrate, output)))
    _print_eval_report(result.metrics)
    console.print(f"Written: {result.output}/metrics.json, confusion_matrix.png, reliability.png")


def _print_eval_report(m: dict) -> None:
    table = Table(title=f"{m['split']} split, {m['images']} images", title_justify="left")
    for col in ("TTA", "top-1", "top-5", "balanced acc", "macro-F1", "ECE"):
        table.add_column(col, justify="right" if col != "TTA" else "left")
    for mode, a in m["accuracy"].items():
        table.add_row(mode, *(f"{a[k]:.4f}" for k in ("top1", "top5", "balanced_acc", "macro_f1", "ece")))
    console.print(table)
    if "calibration" in m:
        c = m["calibration"]
        console.print(f"Temperature {c['temperature']:.3f} (ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f} on {c['ece_measured_on']}), stored in config.json")
    per_class = Table(title="Per class", title_justify="left")
    for col in ("class", "precision", "recall", "accuracy", "support"):
        per_class.add_column(col, justify="left" if col == "class" else "right")
    for r in m["per_class"]:
        per_class.add_row(r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['accuracy']:.3f}", str(r["support"]))
    console.print(per_class)
    for p in m["worst_confused"]:
        console.print(f"  {p['true']} -> {p['predicted']}: {p['count']} ({p['share_of_true']:.0%} of {p['true']})")


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    model: Annotated[list[Path], typer.Option(help="Bundle, run directory or .ckpt; repeat to ensemble (probabilities averaged).")],
    top_k: Annotated[int, typer.Option(help="Classes listed per image.")] = 5,
    tta: Annotated[Optional[str], typer.Option(help="Test-time augmentation: none, flip, five-crop, ten-crop, scales. Default: each bundle's own.")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Write the predictions to FILE.csv or FILE.json (by extension).")] = None,
) -> None:
    """Classify images with one model or an ensemble; unreadable files are reported and skipped."""
    from finetune.inference import Ensemble, Predictor, predict_files
    from finetune.prediction_output import write_predictions

    def go():
        members = [Predictor.from_path(m) for m in model]
        return predict_files(members[0] if len(members) == 1 else Ensemble(members), images, top_k, tta)

    results = _exit_on_user_error(lambda: _value_error_is_user_error(go))
    _print_predictions(results)
    if output is not None:
        _exit_on_user_error(lambda: write_predictions(results, output))
        console.print(f"Written: {output}")
    if results and all(r.error for r in results):
        raise typer.Exit(1)


def _print_predictions(results) -> None:
    table = Table(title_justify="left")
    for col in ("image", "prediction", "probability", "next"):
        table.add_column(col)
    for r in results:
        if r.error:
            err_console.print(f"[yellow]Skipped {r.path}: {r.error}[/yellow]")
            continue
        rest = ", ".join(f"{c} {p:.3f}" for c, p in zip(r.classes[1:], r.probabilities[1:]))
        table.add_row(r.path, r.classes[0], f"{r.probabilities[0]:.3f}", rest)
    console.print(table)


def _value_error_is_user_error(fn: Callable[[], T]) -> T:
    """Bad option values deep in the library raise ValueError naming the choices: show them cleanly."""
    try:
        return fn()
    except ValueError as e:
        raise FinetuneError(str(e)) from None


@app.command("augment-preview")
def augment_preview(
    data: Annotated[Path, typer.Option(help="Image folder, as for `finetune run`.")],
    augment: Annotated[str, typer.Option(help="auto (chosen from the data, as `finetune run` does) or a preset: none, light, standard or strong.")] = "auto",
    output: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("augment-preview.png"),
    backbone: Annotated[str, typer.Option(help="Backbone whose preprocessing (size, mean, std) is used.")] = "resnet18",
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels. Default: the backbone's own.")] = None,
    count: Annotated[int, typer.Option(help="Number of augmented images in the grid.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the augmentations.")] = 0,
) -> None:
    """Write a PNG grid of augmented training images: what the model sees with --augment."""
    from finetune.config import RunConfig
    from finetune.run.preview import write_preview

    # Validates the preset name the same way `finetune run --augment` does.
    _exit_on_user_error(lambda: RunConfig(backbone=backbone, data=data, augment=augment))
    path = _exit_on_user_error(lambda: write_preview(data, augment, output, backbone, image_size, count, seed))
    console.print(f"Wrote {path} ({count} images, --augment {augment})")


from finetune.search.command import register_tune  # noqa: E402 - `tune` takes its options from `run`'s signature

register_tune(app, run)

if __name__ == "__main__":
    app()
