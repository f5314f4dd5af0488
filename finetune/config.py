"""The typed run configuration: every setting of `finetune run`, validated, saved with the run.

Each setting is declared once, here: a RunConfig field holds its type, default, range and help, and
the `run`, `lr-find` and `tune` options are made from the fields (finetune/options.py). Each choice
list is spelled once, as one of the Literal aliases below.
"""
from __future__ import annotations

import difflib
import importlib.resources
import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from finetune.errors import FinetuneError
from finetune.pathtext import check_model_path, escaped, unescaped
from finetune.untrusted import parse_yaml, read_text, read_yaml

Precision = Literal["auto", "32", "bf16-mixed", "16-mixed"]
Optimizer = Literal["adamw", "adam", "sgd", "rmsprop"]
Augment = Literal["auto", "none", "light", "standard", "strong"]
FreezePolicy = Literal["linear-probe", "bn-only", "full"]
Schedule = Literal["cosine", "step", "onecycle", "constant"]
Monitor = Literal["acc1", "balanced-acc", "macro-f1", "loss"]
Sampler = Literal["shuffle", "balanced"]
FeatureCache = Literal["auto", "off"]
Logger = Literal["csv", "tensorboard", "mlflow", "wandb"]
Tta = Literal["none", "flip", "five-crop", "ten-crop", "scales"]
# Lightning's accelerator names, plus its alias gpu and auto.
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"]
ACCELERATORS: tuple[str, ...] = get_args(Accelerator)
DEVICES_HELP = "a device count (1, 2), GPU ids such as 0,1, -1 (every GPU) or auto"
BATCHES_HELP = "a whole number of batches (1, 10) or a fraction of them such as 0.5 (1.0: all)"
# Settings that may name a file or folder, and the paths config.yaml's `resolved` section records. YAML text is
# Unicode and has no escape for a byte, so config.yaml holds them `escaped` (finetune/pathtext.py): a name that
# is not UTF-8 stays exact, and `RunConfig.from_yaml` reads it back. A plain name is written unchanged.
PATH_SETTINGS = ("data", "labels", "weights_dir", "output", "teacher_weights", "weights", "teacher", "recipe",
                 "class_weights")
RECORDED_PATHS = ("run_dir",)


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask: a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def divisors(n: int) -> list[int]:
    """The divisors of `n`, ascending: pairs (d, n // d) up to sqrt(n), so a huge count costs no more than
    a thousand steps."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


def one_of(choices: Any, notes: Mapping[str, str] | None = None) -> str:
    """The choices of a Literal alias as help text, each with its note: "a, b (note) or c".

    Raises:
        ValueError: A note for a name that is not one of the choices (a renamed or dropped choice).
    """
    names, notes = get_args(choices), notes or {}
    if set(notes) - set(names):
        raise ValueError(f"notes for {sorted(set(notes) - set(names))}, which are not among {names}")
    shown = [f"{name} ({notes[name]})" if name in notes else name for name in names]
    return f"{', '.join(shown[:-1])} or {shown[-1]}"


# Appended to a required field's help by the commands that also take it from a recipe or a run (run, tune).
REQUIRED_ELSEWHERE = "Required here or in the recipe (not with --resume)."
_COUNT_OR_FRACTION = "a whole number is a count (1: one batch), a decimal a fraction (0.5: half, 1.0: all)."
_AUTO_FREEZE = (
    "auto: from the median train images per class: <100 last layer group + head; <1000 "
    "last half of the groups; else everything; but everything when the pretrained last group fits the train "
    "images no better than the first (weights from another domain); every layer with --weights none, and the "
    "policy's part with --freeze-policy/--freeze-epochs/--unfreeze-every.")
_AUTO_AUGMENT = (
    "from the data: translation only under 64 px, else a random crop keeping 50% of the area, 25% with 100+ images "
    "per class; flip unless mirroring changes the class; no colour jitter on grey images, no brightness/contrast "
    "jitter on images that do not vary in exposure")
_RANGE_TEST = "of the LR range test (`finetune lr-find`, and `run --lr auto`)"
# Upper bounds of the counts. Each lies far above any real run (100,000 epochs of one batch at ten
# steps a second take three hours) and low enough that a mistyped value (an extra digit, a pasted
# number) fails at once with its range, instead of hanging or exhausting memory.
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_IMAGE_SIZE = 16_384  # one 3 x 16384 x 16384 float input is 3.2 GB
MAX_STEPS = 1_000_000
MAX_VIEWS = 1_000
MAX_NODES = 10_000
MAX_SEED = 2**32 - 1  # numpy and Lightning seeds: outside 0..2^32-1 Lightning draws a random seed instead


# The errors of a number outside a field's range (ge/gt/le/lt) or not finite: what RunConfig.from_record forgives.
_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"})
# What the same settings are called in timm's train.py, Hugging Face's Trainer and fastai, where string
# similarity would not find ours (learning_rate is nearer lr_find_steps than lr).
OTHER_NAMES = {"learning_rate": "lr", "num_epochs": "epochs", "num_train_epochs": "epochs", "bs": "batch_size",
               "per_device_train_batch_size": "batch_size", "img_size": "image_size", "input_size": "image_size",
               "model": "backbone", "model_name": "backbone", "arch": "backbone", "data_dir": "data",
               "dataset": "data", "num_workers": "workers", "pretrained": "weights", "opt": "optimizer",
               "wd": "weight_decay", "output_dir": "output", "smoothing": "label_smoothing", "amp": "precision"}


class RunConfig(BaseModel):
    """Settings of one fine-tuning run. Each field's description is its option's help on the command line."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    backbone: str = Field(description=(
        "timm model name (resnet50, convnext_tiny, efficientnet_b0) or tv:NAME for a torchvision model "
        "(tv:resnet18); `finetune backbones` lists them."))
    data: Path = Field(description=(
        "Image folder: DIR/train/<class>/ + DIR/val/<class>/ [+ DIR/test/<class>/], or DIR/<class>/ split by "
        "--val-split; or the folder a --labels table's paths are relative to."))
    labels: Path | None = Field(None, description=(
        "Label table of the images in --data: .csv, .tsv, .parquet or .jsonl/.ndjson, one row per image: its path "
        "relative to --data, its label, and optionally its split (train, val, test), else val is held out by "
        "--val-split. Default: class folders, or a metadata.csv/metadata.jsonl in --data (Hugging Face's "
        "imagefolder)."))
    path_column: str | None = Field(None, description=(
        "Column of the label table holding the image paths. Default: the first of file_name, filename, image, "
        "image_id, path, file (any case)."))
    label_column: str | None = Field(None, description=(
        "Column of the label table holding the labels. Default: the first of label, labels, class, category, tags "
        "(any case)."))
    split_column: str | None = Field(None, description=(
        "Column of the label table holding the splits. Default: split or subset (any case), where present."))
    weights: str = Field("imagenet", description=(
        "imagenet (the zoo's pretrained weights, from --weights-dir, the local cache or the hub), none (random "
        "init), or PATH to a .safetensors/.pth/.ckpt state dict or a checkpoint of this toolkit."))
    weights_dir: Path | None = Field(None, description=(
        "Folder searched first for <backbone>.safetensors when --weights imagenet. "
        "Default: $FINETUNE_WEIGHTS_DIR if set."))
    weights_partial: bool = Field(False, description=(
        "Train even when --weights PATH leaves more than 10% of the backbone's (non-head) tensors missing or "
        "mismatched, i.e. at random init; without it such weights are an error naming the tensors."))
    # auto: the data decides (finetune/training/auto_freeze.py); None (--freeze-until none): nothing frozen.
    freeze_until: str | None = Field("auto", description=(
        "Freeze every layer before LAYER; LAYER and later layers train (see `finetune layers`). Aliases: stem, "
        "head; none: nothing frozen. " + _AUTO_FREEZE))
    epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS, description=(
        "Training epochs. Default: from the train-set size, about 400 optimizer steps within 10-60 epochs."))
    val_every: int | None = Field(None, ge=1, le=MAX_EPOCHS, description=(
        "Validate every N epochs, the last included (best.ckpt is chosen among these). Default: about 20 "
        "validations a run (the largest divisor of --epochs up to epochs/20)."))
    batch_size: int | None = Field(None, ge=1, le=MAX_BATCH, description=(
        "Images per batch per device. Default: from the train-set size, the largest of 8, 16, 32 that keeps 10+ "
        "steps an epoch."))
    image_size: int | None = Field(None, ge=16, le=MAX_IMAGE_SIZE, description=(
        "Input side in pixels. Default: the backbone's own (its pretrained data config), however small the images: "
        "pretrained weights fine-tune best at the scale they learned; the plan names the faster size that follows "
        "the images (twice their median side, a multiple of the network's stride)."))
    lr: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(1e-3, description=(
        "The head's peak learning rate (backbone groups: see --backbone-lr-mult, --lr-decay), or auto: run the LR "
        "range test first and use its suggestion."))
    optimizer: Optimizer = Field("adamw", description=f"Optimizer: {one_of(Optimizer)}.")
    weight_decay: float = Field(0.01, ge=0, description=(
        "Weight decay; never applied to biases and normalisation layers."))
    momentum: float = Field(0.9, ge=0, lt=1, description=(
        "Momentum of sgd and rmsprop (an error with adam/adamw, which have none)."))
    augment: Augment = Field("auto", description=(
        "Train augmentation: " + one_of(Augment, {
            "auto": _AUTO_AUGMENT, "none": "the eval resize + center crop", "light": "+ flip",
            "standard": "random resized crop 8-100% area, flip, colour jitter 0.6-1.4, PCA lighting 0.1",
            "strong": "standard + a TrivialAugment-like op + random erasing"})
        + ". See `finetune augment-preview`."))
    seed: int = Field(42, ge=0, le=MAX_SEED, description=(
        "Seed for the train/val split, the new head's init and augmentation."))
    workers: int | None = Field(None, ge=0, description="DataLoader worker processes. Default: min(4, CPU cores).")
    val_split: float = Field(0.2, gt=0, lt=1, description=(
        "Validation fraction, stratified by class, for the DIR/<class>/ layout."))
    output: Path | None = Field(None, description=(
        "Run directory. Default: runs/<date>-<backbone>. A folder that is not empty is refused: see --resume and "
        "--overwrite."))
    overwrite: bool = Field(False, description=(
        "Start afresh in a non-empty --output: removes the earlier run's config.yaml, metrics.csv, hparams.yaml, "
        "bad_files.txt, plots, checkpoints/, model/, eval-*/ and tracker logs (tensorboard/, mlflow.db, "
        "mlartifacts/) first; other files stay."))
    precision: Precision = Field("auto", description=(
        f"{one_of(Precision)}. auto: bf16-mixed on a GPU or CPU with native bf16, else 32."))
    channels_last: bool | None = Field(None, description="NHWC memory format. Default: on with mixed precision.")
    feature_cache: FeatureCache = Field("auto", description=(
        "Frozen-feature cache: run the frozen part once per image and train the rest on its stored output. "
        + one_of(FeatureCache, {"auto": "where it is exact (a frozen part, no random augmentation reaching it, no "
                                "mixing, teacher, EMA or unfreezing, one process) or with --cache-views",
                                "off": "never"})
        + ". Stored under the cache folder, keyed on the frozen weights, the preprocessing and the image files."))
    image_cache: FeatureCache = Field("auto", description=(
        "Decode the train and val images once into memory, shared with the workers, instead of in every epoch: "
        + one_of(FeatureCache, {"auto": "when they fit a quarter of the available memory", "off": "never"})
        + ". Stored pre-resized where the transform starts with the eval resize, so the inputs are unchanged."))
    cache_views: int = Field(0, ge=0, le=MAX_VIEWS, description=(
        "With a random augmentation: cache K augmented views of each training image and train epoch e on view "
        "e mod K (not exact: K fixed draws instead of a fresh one every epoch). 0: off."))
    accelerator: str = Field("auto", description=f"Lightning accelerator: {one_of(Accelerator, {'gpu': '= cuda'})}.",
                             json_schema_extra={"choices": list(ACCELERATORS)})  # the help's <auto|cpu|...>
    devices: str = Field("auto", description=(
        "Number of devices (cpu: processes), GPU ids such as 0,1, -1 (every GPU) or auto."))
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, ddp_spawn, fsdp...")
    num_nodes: int = Field(1, ge=1, le=MAX_NODES, description="Machines taking part in distributed training.")
    # As in Lightning: an int is a count of batches (1: one), a float a fraction of them (1.0: all).
    limit_train_batches: int | float = Field(1.0, description="Train batches per epoch: " + _COUNT_OR_FRACTION)
    limit_val_batches: int | float = Field(1.0, description="Validation batches per epoch: " + _COUNT_OR_FRACTION)
    progress: bool = Field(True, description="Show the progress bar.")
    recipe: str | None = Field(None, description=(
        "Recipe name (see `finetune recipes`) or YAML path. Precedence: defaults < recipe < flags given here. "
        "Default: none."))

    # Evaluation and export after training (finetune/evaluation, finetune/export).
    tta: Tta = Field("none", description=(
        f"Test-time augmentation of the final evaluation, stored as the bundle's default: {one_of(Tta)}."))
    export: bool = Field(True, description=(
        "Write the export bundle (ONNX + safetensors + config.json) to RUN_DIR/model/ at the end."))

    # Fine-tuning policies: freezing, gradual unfreezing, discriminative LRs, schedules, LR finder.
    freeze_policy: FreezePolicy | None = Field(None, description=one_of(FreezePolicy, {
        "linear-probe": "only the head trains",
        "bn-only": "BatchNorm affine + head train; with --freeze-until: only before LAYER",
        "full": "everything trains"}) + ". Default: --freeze-until alone decides.")
    train_bn: bool = Field(False, description=(
        "BatchNorm layers in the frozen part keep training (affine and running statistics); without it frozen "
        "BatchNorm is bit-identical."))
    freeze_epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS, description=(
        "Train N epochs with the freeze policy (default policy: linear-probe), then unfreeze everything. "
        "Default: no unfreezing."))
    unfreeze_every: int | None = Field(None, ge=1, le=MAX_EPOCHS, description=(
        "Unfreeze one more layer group from the top after every K epochs (first after K, or after --freeze-epochs). "
        "Default: off."))
    lr_decay: float | None = Field(None, gt=0, le=1, description=(
        "Layer-wise LR decay: each group below the head gets F x the LR of the group above it; replaces "
        "--backbone-lr-mult. Default: off."))
    # At most 1: a pretrained body learning faster than the new head is not fine-tuning (and `tune` then never
    # reads the default 1 as an edge of its range to widen). 1, the plain loop's single LR: on the real-image
    # benchmark a 0.1 backbone LR lost 0.09 (faces) and 0.08-0.10 (textures) test top-1 to 1;
    # benchmarks/results/quality.md.
    backbone_lr_mult: float | None = Field(1.0, gt=0, le=1, description=(
        "LR of every backbone group as a multiple of the head's --lr (1: one LR for the whole network, as the "
        "plain loop; measured better than 0.1 on real images)."))
    schedule: Schedule = Field("cosine", description=f"LR schedule: {one_of(Schedule)}; one factor scales every group.")
    warmup_epochs: float = Field(0.0, ge=0, le=MAX_EPOCHS, description=(
        "Linear LR warmup, in epochs (fractions allowed)."))
    step_size: int = Field(7, ge=1, le=MAX_EPOCHS, description="step schedule: epochs between LR drops.")
    gamma: float = Field(0.1, gt=0, le=1, description="step schedule: LR factor at each drop.")
    min_lr: float = Field(0.0, ge=0, description=(
        "Floor of the head's LR for cosine, step and onecycle (groups keep their ratios)."))
    scale_lr: bool = Field(False, description=(
        "Linear scaling rule: multiply --lr by the global batch size (--batch-size x devices) / 256."))
    nesterov: bool = Field(False, description="Nesterov momentum, with --optimizer sgd.")
    lr_find_start_lr: float = Field(1e-7, gt=0, description=f"First head LR {_RANGE_TEST}.")
    lr_find_end_lr: float = Field(10.0, gt=0, description=f"Last head LR {_RANGE_TEST}.")
    lr_find_steps: int = Field(100, ge=5, le=MAX_STEPS, description=(
        f"Steps {_RANGE_TEST}; it stops early when the loss diverges."))

    @model_validator(mode="before")
    @classmethod
    def _known_settings(cls, data: Any) -> Any:
        """An unknown keyword names the nearest setting, as the command line does for an unknown option
        (pydantic alone says only "Extra inputs are not permitted")."""
        if isinstance(data, Mapping):
            for key in data:
                if key not in cls.model_fields:
                    near = ([OTHER_NAMES[key]] if key in OTHER_NAMES
                            else difflib.get_close_matches(str(key), list(cls.model_fields), n=1, cutoff=0.5))
                    hint = f"did you mean {near[0]!r}?" if near else "see RunConfig.model_fields for the settings"
                    raise FinetuneError(f"unknown setting {key!r}; {hint}")
        return data

    @field_validator("val_every")
    @classmethod
    def _last_epoch_validated(cls, v: int | None, info: ValidationInfo) -> int | None:
        epochs = info.data.get("epochs")
        if v is not None and epochs is not None and epochs % v:
            raise ValueError(f"--val-every {v} would leave the last of --epochs {epochs} unvalidated (Lightning "
                             f"validates when the epoch count is a multiple); choose one of {divisors(epochs)}")
        return v

    @field_validator("lr", mode="before")
    @classmethod
    def _lr_number_or_auto(cls, v: Any) -> Any:
        if isinstance(v, str) and v != "auto":
            try:
                return float(v)
            except ValueError:
                raise ValueError("expected a positive number such as 1e-3, or auto (run the LR finder)") from None
        return v

    @field_validator("freeze_until", mode="before")
    @classmethod
    def _none_freezes_nothing(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.lower() == "none" else v

    @field_validator("freeze_policy")
    @classmethod
    def _policy_vs_freeze_until(cls, v: str | None, info: ValidationInfo) -> str | None:
        layer = info.data.get("freeze_until")
        if v in ("linear-probe", "full") and layer and layer != "auto":  # auto defers to the policy
            raise ValueError(f"{v} sets the frozen part itself and cannot be combined with --freeze-until "
                             f"{layer}; use --freeze-policy bn-only with --freeze-until, or drop one")
        return v

    @field_validator("freeze_epochs", "unfreeze_every")
    @classmethod
    def _something_to_unfreeze(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("freeze_policy") == "full":
            raise ValueError("--freeze-policy full freezes nothing, so there is nothing to unfreeze; "
                             "use linear-probe or bn-only, --freeze-until, or no --freeze-policy")
        return v

    @field_validator("scale_lr")
    @classmethod
    def _scale_needs_fixed_lr(cls, v: bool, info: ValidationInfo) -> bool:
        if v and info.data.get("lr") == "auto":
            raise ValueError("--lr auto measures the LR for this batch size; --scale-lr rescales a hand-picked --lr")
        return v

    @field_validator("nesterov")
    @classmethod
    def _nesterov_is_sgd(cls, v: bool, info: ValidationInfo) -> bool:
        if v and info.data.get("optimizer") != "sgd":
            raise ValueError(f"--nesterov applies to --optimizer sgd, not {info.data.get('optimizer')}")
        return v

    @field_validator("lr_find_end_lr")
    @classmethod
    def _range_rises(cls, v: float, info: ValidationInfo) -> float:
        start = info.data.get("lr_find_start_lr")
        if start is not None and v <= start:
            raise ValueError(f"the range test needs --lr-find-end-lr above --lr-find-start-lr ({start})")
        return v

    # Regularization and distillation: soft-target loss, batch mixing, teacher, EMA, head dropout.
    label_smoothing: float = Field(0.0, ge=0, lt=1, description=(
        "Label smoothing eps of the training targets, applied once (also with mixing). 0: off."))
    mixup: float = Field(0.0, ge=0, description=(
        "Mixup alpha: lambda ~ Beta(alpha, alpha) per batch (0.2-0.4 typical). 0: off."))
    cutmix: float = Field(0.0, ge=0, description=(
        "CutMix alpha: box area ~ Beta(alpha, alpha) per batch (1.0 typical). 0: off."))
    mix_prob: float = Field(1.0, ge=0, le=1, description=(
        "Probability that a training batch is mixed (with --mixup/--cutmix)."))
    mix_switch_prob: float = Field(0.5, ge=0, le=1, description=(
        "With --mixup and --cutmix both on: probability that a mixed batch uses cutmix."))
    mix_off_epoch: int = Field(0, ge=0, le=MAX_EPOCHS, description=(
        "Mix only the first N epochs; the epochs after them train on clean images. 0: mix in every epoch."))
    teacher: str | None = Field(None, description=(
        "Distill from a teacher: a run directory or .ckpt of this toolkit, an exported bundle directory, or a "
        "backbone name with --teacher-weights. Same classes as the student required. Default: no teacher."))
    teacher_weights: Path | None = Field(None, description=(
        "Weights (.safetensors/.pth) of a backbone-name --teacher, with a head for this task's classes. "
        "Default: none (a run, checkpoint or bundle --teacher brings its own)."))
    kd_alpha: float = Field(0.5, ge=0, le=1, description=(
        "Weight A of distillation: (1-A) x task loss + A x T^2 x KL(teacher || student)."))
    kd_temperature: float = Field(4.0, gt=0, description="Distillation softmax temperature T.")
    ema: bool = Field(False, description=(
        "Keep an exponential moving average of the weights, validate it next to the raw weights (val_ema/KEY for "
        "the --monitor figure KEY), and keep the better one in best.ckpt."))
    ema_decay: float = Field(0.999, gt=0, lt=1, description="EMA decay per optimizer step.")
    ema_warmup: bool = Field(True, description=(
        "Ramp the EMA decay up from 0 over the first steps (0.8 after 10, 0.95 after 100)."))
    head_dropout: float = Field(0.0, ge=0, lt=1, description=(
        "Dropout probability right before the classifier head. 0: off."))
    drop_path: float = Field(0.0, ge=0, lt=1, description=(
        "Stochastic depth (drop path) rate, for backbones that have it. 0: the backbone's default."))

    # Selection and stopping, class imbalance, the run record and the console.
    monitor: Monitor = Field("acc1", description=(
        "Validation figure that picks best.ckpt and drives --early-stop and --ema selection: "
        + one_of(Monitor, {"balanced-acc": "mean of the class recalls", "loss": "lower is better"}) + "."))
    early_stop: int | None = Field(None, ge=1, le=MAX_EPOCHS, description=(
        "Stop when --monitor has not improved for N epochs; the patience restarts at each unfreeze. The result is "
        "best.ckpt. Default: off, every epoch trains."))
    early_stop_min_delta: float = Field(0.0, ge=0, description=(
        "With --early-stop: the smallest change of --monitor that counts as an improvement."))
    class_weights: str = Field("none", description=(
        "Per-class weights of the training loss: none, auto (inverse effective number of samples, Cui et al. "
        "2019, mean 1 over the train images) or PATH to a YAML/JSON mapping class: weight."))
    sampler: Sampler = Field("shuffle", description="Train batches: " + one_of(Sampler, {
        "shuffle": "every image once an epoch", "balanced": "classes drawn equally often, with repetition"})
        + ". Not with --class-weights.")
    logger: list[Logger] = Field(["csv"], description="Experiment tracker, repeatable: " + one_of(Logger, {
        "csv": "metrics.csv only; it is always written", "tensorboard": "RUN_DIR/tensorboard",
        "mlflow": "a local store RUN_DIR/mlflow.db, or --mlflow-uri",
        "wandb": "Weights & Biases, files in RUN_DIR/wandb or $WANDB_DIR; offline when its host does not answer"})
        + ".")
    mlflow_uri: str | None = Field(None, description=(
        "With --logger mlflow: the tracking server or store URI. Default: sqlite:///RUN_DIR/mlflow.db (artifacts "
        "in RUN_DIR/mlartifacts)."))
    verbose: bool = Field(False, description=(
        "Show Lightning's own messages and the libraries' warnings; without it, one line per epoch."))

    @field_validator("weights_dir", "teacher_weights", "weights", "teacher")
    @classmethod
    def _model_path_utf8(cls, v: Any, info: ValidationInfo) -> Any:
        """A run loads these with torch, onnxruntime and safetensors, by their absolute paths (the run
        directory is checked where it is claimed: finetune/run/run_dir.py)."""
        path = Path(v).expanduser() if v is not None else None
        if path is not None and (isinstance(v, Path) or path.exists()):  # str settings may be names: imagenet
            check_model_path(os.path.abspath(path), "--" + str(info.field_name).replace("_", "-"))
        return v

    @field_validator("class_weights")
    @classmethod
    def _weights_setting(cls, v: str) -> str:
        if v in ("none", "auto") or Path(v).expanduser().is_file():
            return v
        raise ValueError(f"expected none, auto, or the path of a YAML/JSON file mapping each class to its weight; "
                         f"{v!r} is neither a choice nor an existing file")

    @field_validator("sampler")
    @classmethod
    def _one_imbalance_remedy(cls, v: str, info: ValidationInfo) -> str:
        if v == "balanced" and info.data.get("class_weights", "none") != "none":
            raise ValueError(f"--sampler balanced with --class-weights {info.data['class_weights']} corrects the "
                             "imbalance twice; use one of them")
        return v

    @field_validator("logger", mode="before")
    @classmethod
    def _logger_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("devices", mode="before")
    @classmethod
    def _devices_to_str(cls, v: Any) -> str:
        return str(v)

    @field_validator("devices")
    @classmethod
    def _devices_format(cls, v: str) -> str:
        ids = v.rstrip(",").split(",")
        if v in ("auto", "-1") or (v.rstrip(",") and all(i.isdigit() for i in ids)):
            return v
        raise ValueError(f"expected {DEVICES_HELP}")

    @field_validator("accelerator")
    @classmethod
    def _known_accelerator(cls, v: str) -> str:
        if v not in ACCELERATORS:
            raise ValueError(f"expected one of {', '.join(ACCELERATORS)}")
        return v

    @field_validator("limit_train_batches", "limit_val_batches", mode="before")
    @classmethod
    def _count_or_fraction(cls, v: Any) -> int | float:
        """'1' is one batch and '1.0' all of them, as an int and a float are for Lightning."""
        if isinstance(v, str):
            try:
                v = int(v)
            except ValueError:
                try:
                    v = float(v)
                except ValueError:
                    raise ValueError(f"expected {BATCHES_HELP}") from None
        if isinstance(v, float) and v > 1 and v.is_integer():
            v = int(v)  # 2.0 from a YAML file: a count
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (isinstance(v, float) and v > 1):
            raise ValueError(f"expected {BATCHES_HELP}")
        return v

    @model_validator(mode="after")
    def _no_ignored_settings(self, info: ValidationInfo) -> "RunConfig":
        """A setting that would change nothing is a mistake: say what it needs (recipes: see resolve_config)."""
        if (info.context or {}).get("unused") == "allow":
            return self
        unused = unused_settings(self.model_dump())
        if unused:
            raise FinetuneError("; ".join(f"--{k.replace('_', '-')} {_flag_value(self, k)} {why}"
                                          for k, why in unused.items()))
        return self

    def resolved_backbone_lr_mult(self) -> float:
        """The backbone groups' LR multiplier. None is what runs of earlier versions saved for "default":
        0.1 with pretrained weights and 1 without, so that resuming them keeps their LRs."""
        if self.backbone_lr_mult is not None:
            return self.backbone_lr_mult
        return 1.0 if self.weights == "none" else 0.1

    def resolved_workers(self) -> int:
        """DataLoader workers: the explicit value, else min(4, cores); never more than the cores this process
        may use: more only contend for them (and thousands never start)."""
        return min(self.workers, usable_cpus()) if self.workers is not None else min(4, usable_cpus())

    def lightning_devices(self) -> int | str:
        return int(self.devices) if self.devices.isdigit() else self.devices

    def with_absolute_paths(self) -> "RunConfig":
        """The same settings with every file path made absolute, so the run's record works from any folder.

        Names stay as they are: --weights imagenet/none, a backbone-name --teacher, a recipe name.
        """
        update: dict[str, Any] = {}
        for key in ("data", "labels", "weights_dir", "teacher_weights", "output"):
            if getattr(self, key) is not None:
                update[key] = Path(os.path.abspath(Path(getattr(self, key)).expanduser()))
        for key in ("weights", "teacher", "recipe", "class_weights"):
            value = getattr(self, key)
            if value and value not in ("imagenet", "none", "auto") and Path(value).expanduser().exists():
                update[key] = os.path.abspath(Path(value).expanduser())
        return self.model_copy(update=update)

    def to_yaml(self, extra: dict[str, Any] | None = None, sources: dict[str, str] | None = None) -> str:
        """The run's config.yaml: every setting, then what was resolved at run time and where each came from."""
        data = _convert_paths(self.model_dump(mode="json"), PATH_SETTINGS, escaped)
        if extra:
            data["resolved"] = _convert_paths(extra, RECORDED_PATHS, escaped)
        if sources:
            data["sources"] = sources
        return yaml.safe_dump(data, sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        """Reads a run's config.yaml back (its resolved and sources sections are records, not settings).

        Raises:
            FinetuneError: Not bounded UTF-8 YAML of a mapping (`untrusted.read_yaml`).
            ValidationError: A setting out of range.
        """
        data = read_run_yaml(path)
        settings = {k: v for k, v in data.items() if k in cls.model_fields}
        return cls.from_record(_convert_paths(settings, PATH_SETTINGS, unescaped), allow_unused=False)

    @classmethod
    def from_record(cls, saved: Mapping[str, Any], allow_unused: bool = True) -> "RunConfig":
        """A saved run's settings (config.yaml, a checkpoint's record), validated as any others, except that a
        range a later version narrowed does not refuse what an earlier one wrote (a --seed below 0, a
        --backbone-lr-mult above 1): the model trained with it and stays usable.

        `allow_unused`: settings that only some flag would use pass (a module rebuilt for inference has no
        teacher for its kd_* settings); False for a run that trains again (--resume).
        """
        context = {"unused": "allow"} if allow_unused else None
        try:
            return cls.model_validate(saved, context=context)
        except ValidationError as e:
            ranged = {err["loc"][0] for err in e.errors() if err["type"] in _RANGE_ERRORS and err["loc"]}
            if not ranged or any(err["type"] not in _RANGE_ERRORS for err in e.errors()):
                raise
        config = cls.model_validate({k: v for k, v in saved.items() if k not in ranged}, context=context)
        return config.model_copy(update={k: saved[k] for k in ranged})  # as written; not validated again


def _convert_paths(values: Mapping[str, Any], keys: tuple[str, ...], convert: Callable[[str], str]) -> dict[str, Any]:
    """`values` with `convert` applied to the strings under `keys` (escaped or unescaped paths)."""
    return {k: convert(v) if k in keys and isinstance(v, str) else v for k, v in values.items()}


def read_run_yaml(path: str | Path) -> dict[str, Any]:
    """A run's config.yaml as a mapping whose `resolved` and `sources` sections, when present, are mappings.

    Raises:
        FinetuneError: Not bounded UTF-8 YAML (`untrusted.read_yaml`), or not of that shape.
    """
    data = read_yaml(path, "run config") or {}
    if not isinstance(data, dict):
        raise FinetuneError(f"run config {path} holds a {type(data).__name__}, not the mapping of settings "
                            f"that `finetune run` writes")
    for section in ("resolved", "sources"):
        if not isinstance(data.get(section) or {}, dict):
            raise FinetuneError(f"run config {path}: its {section} section is a {type(data[section]).__name__}, "
                                f"not a mapping")
    return data


def _is_default(values: Mapping[str, Any], key: str) -> bool:
    return key not in values or values[key] == RunConfig.model_fields[key].default


def _flag_value(config: RunConfig, key: str) -> str:
    value = getattr(config, key)
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def unused_settings(values: Mapping[str, Any]) -> dict[str, str]:
    """Settings changed from their default that would have no effect, each with what it needs.

    Args:
        values: RunConfig field values (missing keys count as defaults).

    Returns:
        Field name -> why it is unused, e.g. {"ema_decay": "has no effect without --ema"}.
    """
    unused: dict[str, str] = {}
    if not values.get("teacher"):
        unused.update({k: "has no effect without --teacher" for k in ("teacher_weights", "kd_alpha", "kd_temperature")
                       if not _is_default(values, k)})
    optimizer = values.get("optimizer", RunConfig.model_fields["optimizer"].default)
    if optimizer in ("adam", "adamw") and not _is_default(values, "momentum"):
        unused["momentum"] = f"has no effect with --optimizer {optimizer}; momentum applies to sgd and rmsprop"
    if not values.get("ema"):
        unused.update({k: "has no effect without --ema" for k in ("ema_decay", "ema_warmup")
                       if not _is_default(values, k)})
    if not values.get("early_stop") and not _is_default(values, "early_stop_min_delta"):
        unused["early_stop_min_delta"] = "has no effect without --early-stop"
    if "mlflow" not in (values.get("logger") or []) and not _is_default(values, "mlflow_uri"):
        unused["mlflow_uri"] = "has no effect without --logger mlflow"
    if values.get("feature_cache") == "off" and not _is_default(values, "cache_views"):
        unused["cache_views"] = "has no effect with --feature-cache off"
    schedule = values.get("schedule", RunConfig.model_fields["schedule"].default)
    if schedule != "step":
        unused.update({k: f"has no effect with --schedule {schedule}; it needs --schedule step"
                       for k in ("step_size", "gamma") if not _is_default(values, k)})
    return unused


# ----- recipes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """A YAML file of RunConfig settings with a header comment on when to use it."""

    name: str
    path: Path
    description: str
    notes: str
    values: dict[str, Any]


def recipes_dir() -> Path:
    """The shipped recipes' folder: package data (finetune/recipes/), so an installed wheel carries it too."""
    return Path(str(importlib.resources.files("finetune").joinpath("recipes")))


def recipe_names() -> list[str]:
    """The names of the shipped recipes, sorted."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, sorted by name."""
    return [load_recipe(name) for name in recipe_names()]


def _recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    if name_or_path in recipe_names():
        return recipes_dir() / f"{name_or_path}.yaml"
    near = difflib.get_close_matches(name_or_path, recipe_names(), n=1)
    hint = f"did you mean '{near[0]}'? " if near else ""
    raise FinetuneError(f"recipe '{name_or_path}' is neither a recipe name nor a .yaml file; {hint}"
                        f"recipes: {', '.join(recipe_names()) or 'none found'}")


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return "\n".join(lines).strip()


def load_recipe(name_or_path: str) -> Recipe:
    """Loads and validates a recipe by name (see `finetune recipes`) or path.

    Raises:
        FinetuneError: Unknown recipe, a file that is not bounded UTF-8 YAML (`finetune.untrusted`), an
            unknown key (naming the nearest valid key), or a bad value (naming the allowed range or choices).
    """
    path = _recipe_path(name_or_path)
    text = read_text(path, "recipe")
    values = parse_yaml(text, f"recipe {path}") or {}
    if not isinstance(values, dict):
        raise FinetuneError(f"recipe {path}: expected a mapping of settings, got {type(values).__name__}")
    _check_keys(path, values)
    _check_values(path, values)
    notes = _header(text)
    return Recipe(path.stem, path, notes.splitlines()[0] if notes else "", notes, values)


def _check_keys(path: Path, values: dict[str, Any]) -> None:
    valid = [k for k in RunConfig.model_fields if k != "recipe"]
    for key in values:
        if key not in valid:
            near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"did you mean '{near[0]}'?" if near else f"valid keys: {', '.join(valid)}"
            raise FinetuneError(f"recipe {path}: unknown key '{key}'; {hint}")


def _check_values(path: Path, values: dict[str, Any]) -> None:
    try:  # placeholders for the two required fields: a recipe need not name a backbone or data
        # A recipe may set values that only some flags use (kd_alpha for a --teacher given later).
        RunConfig.model_validate({"backbone": "-", "data": ".", **values}, context={"unused": "allow"})
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0])  # union members add their type names to loc; the field is enough
        raise FinetuneError(f"recipe {path}: {key}: {err['msg']} (got {err.get('input')!r})") from None


def resolve_config(cli_values: dict[str, Any], explicit: set[str],
                   recipe: str | None) -> tuple[RunConfig, dict[str, str]]:
    """Merges settings with the precedence defaults < recipe < flags given on the command line.

    Args:
        cli_values: Every CLI option's value, given or defaulted.
        explicit: Names of the options the user actually gave.
        recipe: Recipe name or path, or None.

    Returns:
        The validated config and, for every field, where its value came from
        ("default", "recipe <name>", or "command line").
    """
    loaded = load_recipe(recipe) if recipe else None
    fields = RunConfig.model_fields
    # An unset required option (None) must not hide the recipe's value or the "required" message.
    merged = {k: v for k, v in cli_values.items() if k in fields and not (v is None and fields[k].is_required())}
    sources = {k: "default" for k in RunConfig.model_fields}
    for key, value in (loaded.values if loaded else {}).items():
        if key not in explicit:
            merged[key], sources[key] = value, f"recipe {loaded.name}"
    for key in explicit & set(RunConfig.model_fields):
        sources[key] = "command line"
    if loaded:
        by_path = recipe.endswith((".yaml", ".yml"))
        merged["recipe"], sources["recipe"] = str(loaded.path) if by_path else loaded.name, "command line"
        _drop_unused_recipe_values(merged, sources, loaded.name)
    return RunConfig(**merged), sources


def _drop_unused_recipe_values(merged: dict[str, Any], sources: dict[str, str], recipe: str) -> None:
    """A recipe value that the flags switch off (its ema_decay with --no-ema) is a warning, not an error.

    The value goes back to its default and `sources` records why; unused values given on the
    command line are left for RunConfig to reject.
    """
    for key, why in unused_settings(merged).items():
        if sources[key].startswith("recipe"):
            value = merged.pop(key)
            warnings.warn(f"recipe {recipe} sets {key} {value} but it {why}; not used", UserWarning, stacklevel=3)
            sources[key] = f"default (recipe {recipe}'s {value} not used: {why.removeprefix('has ')})"
