"""The fine-tuning policies of a run (freezing, discriminative LRs, schedules, the LR range test),
regularization and distillation, selection and stopping, class imbalance and tracking: the second part
of RunConfig's fields (finetune/config/schema.py), after the core settings (finetune/config/core.py)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from finetune.config.choices import ClassWeights, FreezePolicy, Logger, Monitor, Sampler, Schedule, one_of
from finetune.config.core import CoreSettings
from finetune.config.limits import MAX_EPOCHS, MAX_STEPS

_RANGE_TEST = "of the LR range test (`finetune lr-find`, and `run --lr auto`)"


class PolicySettings(CoreSettings):
    """The core settings, then the fine-tuning policies, regularization, distillation, selection and tracking."""

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
    class_weights: str = Field("none", description="Per-class weights of the training loss: " + one_of(
        ClassWeights, {"auto": "inverse effective number of samples, Cui et al. 2019, mean 1 over the train images"},
        otherwise="PATH to a YAML/JSON mapping class: weight") + ".")
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
