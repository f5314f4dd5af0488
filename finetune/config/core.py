"""The core settings of a run: backbone and weights, data, the basic optimisation, run directory, hardware,
evaluation and export. The first part of RunConfig's fields (finetune/config/schema.py), in the order
`config.yaml` and the help list them; finetune/config/policies.py holds the rest."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from finetune.config.choices import (
    ACCELERATORS,
    Accelerator,
    Augment,
    FeatureCache,
    Optimizer,
    Precision,
    Tta,
    one_of,
)
from finetune.config.limits import MAX_BATCH, MAX_EPOCHS, MAX_IMAGE_SIZE, MAX_NODES, MAX_SEED, MAX_VIEWS

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


class CoreSettings(BaseModel):
    """The core settings of a run; RunConfig adds the fine-tuning policies and its rules."""

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
        "Validation fraction, stratified by class, for the DIR/<class>/ layout and label tables without a "
        "split column."))
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
