"""RunConfig: every setting of `finetune run`, validated, saved with the run.

Each setting is declared once, as a field: its type, default, range and help (finetune/config/core.py and
policies.py, in the order config.yaml lists them); the `run`, `lr-find` and `tune` options are made from the
fields (finetune/options.py). The rules between settings are in finetune/config/rules.py, the choice lists in
finetune/config/choices.py.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from finetune.config.choices import NAMED_VALUES
from finetune.config.policies import PolicySettings
from finetune.config.record import PATH_SETTINGS, RANGE_ERRORS, RECORDED_PATHS, convert_paths, read_run_yaml
from finetune.config.rules import SettingRules
from finetune.pathtext import escaped, unescaped


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask: a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class RunConfig(SettingRules, PolicySettings):
    """Settings of one fine-tuning run. Each field's description is its option's help on the command line."""

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
            if value and value not in NAMED_VALUES and Path(value).expanduser().exists():
                update[key] = os.path.abspath(Path(value).expanduser())
        return self.model_copy(update=update)

    def to_yaml(self, extra: dict[str, Any] | None = None, sources: dict[str, str] | None = None) -> str:
        """The run's config.yaml: every setting, then what was resolved at run time and where each came from."""
        data = convert_paths(self.model_dump(mode="json"), PATH_SETTINGS, escaped)
        if extra:
            data["resolved"] = convert_paths(extra, RECORDED_PATHS, escaped)
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
        return cls.from_record(convert_paths(settings, PATH_SETTINGS, unescaped), allow_unused=False)

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
            ranged = {err["loc"][0] for err in e.errors() if err["type"] in RANGE_ERRORS and err["loc"]}
            if not ranged or any(err["type"] not in RANGE_ERRORS for err in e.errors()):
                raise
        config = cls.model_validate({k: v for k, v in saved.items() if k not in ranged}, context=context)
        return config.model_copy(update={k: saved[k] for k in ranged})  # as written; not validated again
