"""The typed run configuration: every setting of `finetune run`, validated, saved with the run."""
from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from finetune.errors import FinetuneError

Precision = Literal["auto", "32", "bf16-mixed", "16-mixed"]
Optimizer = Literal["adamw", "adam", "sgd", "rmsprop"]
Augment = Literal["none", "light", "standard", "strong"]
FreezePolicy = Literal["linear-probe", "bn-only", "full"]
Schedule = Literal["cosine", "step", "onecycle", "constant"]


class RunConfig(BaseModel):
    """Settings of one fine-tuning run. Field docs double as the CLI help."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    backbone: str = Field(description="timm model name (resnet50, convnext_tiny) or tv:NAME for torchvision")
    data: Path = Field(description="image folder: DIR/train/<class>, DIR/val/<class> or DIR/<class>")
    weights: str = Field("imagenet", description="imagenet | none | PATH to a state dict or checkpoint")
    weights_dir: Path | None = Field(None, description="folder searched first for <backbone>.safetensors")
    freeze_until: str | None = Field(None, description="freeze every layer before this one")
    epochs: int = Field(5, ge=1, description="training epochs")
    batch_size: int = Field(32, ge=1, description="images per batch and device")
    image_size: int | None = Field(None, ge=16, description="input side in pixels; None: the backbone's own")
    lr: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(1e-3, description="the head's learning rate, or auto (LR range test)")
    optimizer: Optimizer = Field("adamw", description="optimizer")
    weight_decay: float = Field(0.01, ge=0, description="weight decay (not on biases and norm layers)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD/RMSprop momentum")
    augment: Augment = Field("standard", description="train augmentation preset")
    seed: int = Field(42, description="seed for the split, initialisation and augmentation")
    workers: int | None = Field(None, ge=0, description="DataLoader workers; None: min(4, CPU cores)")
    val_split: float = Field(0.2, gt=0, lt=1, description="validation fraction for DIR/<class> layouts")
    output: Path | None = Field(None, description="run directory; None: runs/<date>-<backbone>")
    precision: Precision = Field("auto", description="numeric precision")
    channels_last: bool | None = Field(None, description="NHWC memory format; None: on with mixed precision")
    accelerator: str = Field("auto", description="cpu | gpu | auto")
    devices: str = Field("auto", description="device count or ids")
    strategy: str = Field("auto", description="Lightning strategy: auto | ddp | ddp_spawn | ...")
    num_nodes: int = Field(1, ge=1, description="machines for distributed training")
    limit_train_batches: float = Field(1.0, gt=0, description="fraction (<=1) or number (>1) of train batches per epoch")
    limit_val_batches: float = Field(1.0, gt=0, description="fraction (<=1) or number (>1) of val batches per epoch")
    progress: bool = Field(True, description="show the progress bar")
    recipe: str | None = Field(None, description="recipe the settings started from (name or path)")

    # Evaluation and export after training (finetune/evaluation, finetune/export).
    tta: Literal["none", "flip", "five-crop", "ten-crop", "scales"] = Field(
        "none", description="test-time augmentation of the final evaluation; the bundle's default")
    export: bool = Field(True, description="write the export bundle to RUN_DIR/model/ at the end")

    # Fine-tuning policies: freezing, gradual unfreezing, discriminative LRs, schedules, LR finder.
    freeze_policy: FreezePolicy | None = Field(None, description="linear-probe | bn-only | full; None: --freeze-until alone")
    train_bn: bool = Field(False, description="BatchNorm layers in the frozen part keep training (affine and stats)")
    freeze_epochs: int | None = Field(None, ge=1, description="epochs with the frozen policy before unfreezing")
    unfreeze_every: int | None = Field(None, ge=1, description="unfreeze one more layer group every K epochs")
    lr_decay: float | None = Field(None, gt=0, le=1, description="layer-wise LR decay per group below the head")
    backbone_lr_mult: float | None = Field(
        None, gt=0, description="LR of every backbone group relative to the head; None: 0.1 for pretrained weights, 1 for none")
    schedule: Schedule = Field("cosine", description="LR schedule, one factor for every group")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warmup length in epochs")
    step_size: int = Field(7, ge=1, description="epochs between LR drops of the step schedule")
    gamma: float = Field(0.1, gt=0, le=1, description="LR factor at each step of the step schedule")
    min_lr: float = Field(0.0, ge=0, description="floor of the head's LR for cosine/step/onecycle")
    scale_lr: bool = Field(False, description="linear scaling rule: LR x global batch / 256")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD)")
    lr_find_start_lr: float = Field(1e-7, gt=0, description="first LR of the range test")
    lr_find_end_lr: float = Field(10.0, gt=0, description="last LR of the range test")
    lr_find_steps: int = Field(100, ge=5, description="steps of the range test")

    @field_validator("lr", mode="before")
    @classmethod
    def _lr_number_or_auto(cls, v: Any) -> Any:
        if isinstance(v, str) and v != "auto":
            try:
                return float(v)
            except ValueError:
                raise ValueError("expected a positive number such as 1e-3, or auto (run the LR finder)") from None
        return v

    @field_validator("freeze_policy")
    @classmethod
    def _policy_vs_freeze_until(cls, v: str | None, info: ValidationInfo) -> str | None:
        layer = info.data.get("freeze_until")
        if v in ("linear-probe", "full") and layer:
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
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing eps of the training targets")
    mixup: float = Field(0.0, ge=0, description="mixup Beta(alpha, alpha); 0: off")
    cutmix: float = Field(0.0, ge=0, description="cutmix Beta(alpha, alpha); 0: off")
    mix_prob: float = Field(1.0, ge=0, le=1, description="probability that a training batch is mixed")
    mix_switch_prob: float = Field(0.5, ge=0, le=1, description="with mixup and cutmix on: probability of cutmix")
    mix_off_epoch: int = Field(0, ge=0, description="no mixing from this (0-based) epoch on; 0: mix in every epoch")
    teacher: str | None = Field(None, description="distillation teacher: run dir, .ckpt, bundle dir, or backbone name")
    teacher_weights: Path | None = Field(None, description="weights of a backbone-name teacher")
    kd_alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term")
    kd_temperature: float = Field(4.0, gt=0, description="distillation softmax temperature")
    ema: bool = Field(False, description="keep and validate an exponential moving average of the weights")
    ema_decay: float = Field(0.999, gt=0, lt=1, description="EMA decay per optimizer step")
    ema_warmup: bool = Field(True, description="ramp the EMA decay up over the first steps")
    head_dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the classifier head")
    drop_path: float = Field(0.0, ge=0, lt=1, description="stochastic depth rate; 0: the backbone's default")

    @field_validator("devices", mode="before")
    @classmethod
    def _devices_to_str(cls, v: Any) -> str:
        return str(v)

    def resolved_backbone_lr_mult(self) -> float:
        """0.1 protects pretrained features (the usual fine-tuning start); random init has none to protect."""
        if self.backbone_lr_mult is not None:
            return self.backbone_lr_mult
        return 1.0 if self.weights == "none" else 0.1

    def resolved_workers(self) -> int:
        """DataLoader workers: the explicit value, else min(4, cores); more only contend on small machines."""
        return self.workers if self.workers is not None else min(4, os.cpu_count() or 1)

    def lightning_devices(self) -> int | str:
        return int(self.devices) if self.devices.isdigit() else self.devices

    @staticmethod
    def lightning_limit(value: float) -> int | float:
        """Lightning reads 1.0 as 'all batches' and an int as a batch count."""
        return int(value) if value > 1 else float(value)

    def to_yaml(self, extra: dict[str, Any] | None = None, sources: dict[str, str] | None = None) -> str:
        """The run's config.yaml: every setting, then what was resolved at run time and where each came from."""
        data = self.model_dump(mode="json")
        if extra:
            data["resolved"] = extra
        if sources:
            data["sources"] = sources
        return yaml.safe_dump(data, sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        """Reads a run's config.yaml back (its resolved and sources sections are records, not settings)."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.model_validate({k: v for k, v in data.items() if k in cls.model_fields})


# ----- recipes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """A YAML file of RunConfig settings with a header comment on when to use it."""

    name: str
    path: Path
    description: str
    notes: str
    values: dict[str, Any]


def recipe_dirs() -> list[Path]:
    """Where named recipes are found: the source tree's recipes/, then the installed copy."""
    here = Path(__file__).resolve().parent.parent / "recipes"
    return [d for d in (here, Path(sys.prefix) / "share" / "finetune" / "recipes") if d.is_dir()]


def list_recipes() -> list[Recipe]:
    """Every named recipe, sorted by name (the first directory wins on duplicates)."""
    found: dict[str, Path] = {}
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return [load_recipe(str(p)) for _, p in sorted(found.items())]


def _recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    for folder in recipe_dirs():
        if (folder / f"{name_or_path}.yaml").is_file():
            return folder / f"{name_or_path}.yaml"
    names = sorted({p.stem for d in recipe_dirs() for p in d.glob("*.yaml")})
    raise FinetuneError(f"recipe '{name_or_path}' is neither a recipe name nor a .yaml file; "
                        f"recipes: {', '.join(names) or 'none found'}")


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
        FinetuneError: Unknown recipe, unknown key (naming the nearest valid key), or a bad value
            (naming the allowed range or choices).
    """
    path = _recipe_path(name_or_path)
    text = path.read_text()
    values = yaml.safe_load(text) or {}
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
        RunConfig.model_validate({"backbone": "-", "data": ".", **values})
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0])  # union members add their type names to loc; the field is enough
        raise FinetuneError(f"recipe {path}: {key}: {err['msg']} (got {err.get('input')!r})") from None


def resolve_config(cli_values: dict[str, Any], explicit: set[str], recipe: str | None) -> tuple[RunConfig, dict[str, str]]:
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
        merged["recipe"], sources["recipe"] = str(loaded.path) if recipe.endswith((".yaml", ".yml")) else loaded.name, "command line"
    return RunConfig(**merged), sources
