"""Each setting is declared once, on RunConfig: `run` and `lr-find` take their options from its fields,
and each choice list is spelled once, in finetune/config/choices.py."""
from __future__ import annotations

from collections import Counter
from typing import get_args

import pytest
import typer.main

from finetune.cli import app
from finetune.config import (
    ACCELERATORS,
    REQUIRED_ELSEWHERE,
    Augment,
    Logger,
    Monitor,
    Optimizer,
    Precision,
    RunConfig,
    Sampler,
    Schedule,
    Tta,
)
from finetune.options import LR_FIND_ALIASES

# Options a command declares itself, as they are no RunConfig field (or not that field's meaning).
RUN_OWN = {"resume"}  # a run directory to continue
LR_FIND_OWN = {"output"}  # the folder of lr_find.png, not a run directory


def _params(command: str) -> list:
    return typer.main.get_command(app).commands[command].params


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_every_field_has_exactly_one_run_option_with_its_default_and_help():
    params = _params("run")
    counts = Counter(p.name for p in params)
    assert set(counts) - set(RunConfig.model_fields) == RUN_OWN  # no setting declared outside RunConfig
    for name, field in RunConfig.model_fields.items():
        assert counts[name] == 1, f"RunConfig.{name} has {counts[name]} run options"
        option = next(p for p in params if p.name == name)
        # A required field may come from a recipe or a resumed run instead: run's help says so.
        expected = f"{field.description} {REQUIRED_ELSEWHERE}" if field.is_required() else field.description
        assert option.help == expected, f"{_flag(name)}: the help is not RunConfig.{name}'s description"
        assert option.default == (None if field.is_required() else field.default), _flag(name)
        assert option.opts == [_flag(name)], option.opts
        if field.annotation in (bool, bool | None):
            assert option.secondary_opts == ["--no-" + _flag(name)[2:]], option.secondary_opts
    flags = [flag for p in params for flag in (*p.opts, *p.secondary_opts)]
    assert len(flags) == len(set(flags))


def test_lr_find_options_are_fields_of_run_config_with_the_same_help():
    seen = set()
    for option in _params("lr-find"):
        if option.name in LR_FIND_OWN:
            continue
        name = LR_FIND_ALIASES.get(option.name, option.name)
        field = RunConfig.model_fields[name]
        seen.add(name)
        assert option.help == field.description, f"lr-find {option.opts}: not RunConfig.{name}'s description"
        assert option.required == field.is_required(), name
        if not field.is_required():
            assert option.default == field.default, name
    assert {"lr_find_start_lr", "lr_find_end_lr", "lr_find_steps", "backbone", "data", "freeze_until"} <= seen
    flags = {p.name: p.opts for p in _params("lr-find")}
    assert flags["start_lr"] == ["--start-lr"] and flags["num_steps"] == ["--num-steps"]


def test_run_options_still_parse_as_before(monkeypatch):
    """Flags whose type differs from their field's reach RunConfig as strings, for its validators to parse."""
    from typer.testing import CliRunner

    from finetune.errors import FinetuneError

    seen = {}

    def spy(settings, explicit, recipe):
        seen.update(settings=settings, explicit=explicit)
        raise FinetuneError("stop before training")

    monkeypatch.setattr("finetune.cli.resolve_config", spy)
    result = CliRunner().invoke(app, ["run", "--backbone", "x", "--lr", "auto", "--limit-train-batches", "2",
                                      "--logger", "csv", "--logger", "tensorboard", "--no-channels-last"])
    assert result.exit_code == 2 and "stop before training" in result.output
    settings = seen["settings"]
    assert settings["lr"] == "auto" and settings["limit_train_batches"] == "2"
    assert settings["logger"] == ["csv", "tensorboard"] and settings["channels_last"] is False
    assert settings["data"] is None and settings["ema"] is False and "resume" not in settings
    assert seen["explicit"] == {"backbone", "lr", "limit_train_batches", "logger", "channels_last"}


CHOICES = {"optimizer": Optimizer, "augment": Augment, "precision": Precision, "schedule": Schedule,
           "monitor": Monitor, "sampler": Sampler, "logger": Logger, "tta": Tta}


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_a_choice_field_takes_its_choices_from_its_alias_and_lists_them_in_its_help(name):
    choices = get_args(CHOICES[name])
    annotation = RunConfig.model_fields[name].annotation
    assert choices in (get_args(annotation), get_args(get_args(annotation)[0]))  # Literal, or list[Literal]
    help_text = RunConfig.model_fields[name].description
    assert all(choice in help_text for choice in choices), help_text


def test_accelerators_are_listed_in_the_help():
    assert all(name in RunConfig.model_fields["accelerator"].description for name in ACCELERATORS)


def test_lower_modules_check_the_same_choices():
    """Their own lists of the choices RunConfig accepts: the same names, in the same order."""
    from finetune.data.transforms import PRESETS
    from finetune.data.tta import TTA_MODES
    from finetune.training.monitor import MONITORS

    assert TTA_MODES == get_args(Tta)
    assert tuple(PRESETS) == tuple(c for c in get_args(Augment) if c != "auto")  # auto: chosen from the data
    assert MONITORS == get_args(Monitor)


def test_build_optimizer_knows_every_optimizer_choice():
    import torch

    from finetune.training.optim import build_optimizer

    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "weight_decay": 0.0}]
    for name in get_args(Optimizer):
        assert isinstance(build_optimizer(name, groups, lr=0.1, momentum=0.9), torch.optim.Optimizer)
    with pytest.raises(ValueError, match="valid: " + ", ".join(get_args(Optimizer))):
        build_optimizer("lamb", groups, lr=0.1, momentum=0.9)


def test_the_datamodule_knows_every_sampler_choice(tiny_data):
    from finetune.data.data_config import DataConfig
    from finetune.data.datamodule import ImageFolderDataModule

    dc = DataConfig(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    for sampler in get_args(Sampler):
        assert ImageFolderDataModule(tiny_data, dc, sampler=sampler).sampler == sampler
    with pytest.raises(ValueError, match="valid: " + ", ".join(get_args(Sampler))):
        ImageFolderDataModule(tiny_data, dc, sampler="weighted")
