"""The rules of RunConfig's settings: how a value is read, and the rules between settings.

Each is a pydantic validator of `SettingRules`, which RunConfig (finetune/config/schema.py) takes them
from: a rule between settings is a field validator of the later field, reading the earlier ones from
`info.data` (fields validate in their declared order), so its error names that field; settings that
would change nothing are refused by one `model_validator(mode="after")` (`unused_settings`).
"""
from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationInfo, field_validator, model_validator

from finetune.config.choices import ACCELERATORS, CLASS_WEIGHTS, NO_MOMENTUM, WHOLE_MODEL_POLICIES
from finetune.config.limits import BATCHES_HELP, DEVICES_HELP
from finetune.config.policies import PolicySettings
from finetune.errors import FinetuneError
from finetune.pathtext import check_model_path

# What the same settings are called in timm's train.py, Hugging Face's Trainer and fastai, where string
# similarity would not find ours (learning_rate is nearer lr_find_steps than lr).
OTHER_NAMES = {"learning_rate": "lr", "num_epochs": "epochs", "num_train_epochs": "epochs", "bs": "batch_size",
               "per_device_train_batch_size": "batch_size", "img_size": "image_size", "input_size": "image_size",
               "model": "backbone", "model_name": "backbone", "arch": "backbone", "data_dir": "data",
               "dataset": "data", "num_workers": "workers", "pretrained": "weights", "opt": "optimizer",
               "wd": "weight_decay", "output_dir": "output", "smoothing": "label_smoothing", "amp": "precision"}


def divisors(n: int) -> list[int]:
    """The divisors of `n`, ascending: pairs (d, n // d) up to sqrt(n), so a huge count costs no more than
    a thousand steps."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


class SettingRules:
    """RunConfig's validators (RunConfig takes them from this base class); pydantic applies those of one field
    in the order written here."""

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
        if v in WHOLE_MODEL_POLICIES and layer and layer != "auto":  # auto defers to the policy
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
        if v in CLASS_WEIGHTS or Path(v).expanduser().is_file():
            return v
        raise ValueError(f"expected {', '.join(CLASS_WEIGHTS)}, or the path of a YAML/JSON file mapping each class to "
                         f"its weight; {v!r} is neither a choice nor an existing file")

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
    def _no_ignored_settings(self, info: ValidationInfo) -> SettingRules:
        """A setting that would change nothing is a mistake: say what it needs (recipes: see resolve_config)."""
        if (info.context or {}).get("unused") == "allow":
            return self
        unused = unused_settings(self.model_dump())
        if unused:
            raise FinetuneError("; ".join(f"--{k.replace('_', '-')} {_flag_value(self, k)} {why}"
                                          for k, why in unused.items()))
        return self


def _is_default(values: Mapping[str, Any], key: str) -> bool:
    return key not in values or values[key] == PolicySettings.model_fields[key].default


def _flag_value(config: BaseModel, key: str) -> str:
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
    optimizer = values.get("optimizer", PolicySettings.model_fields["optimizer"].default)
    if optimizer in NO_MOMENTUM and not _is_default(values, "momentum"):
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
    schedule = values.get("schedule", PolicySettings.model_fields["schedule"].default)
    if schedule != "step":
        unused.update({k: f"has no effect with --schedule {schedule}; it needs --schedule step"
                       for k in ("step_size", "gamma") if not _is_default(values, k)})
    return unused

