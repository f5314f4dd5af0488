"""Every option that lists choices shows exactly the schema's choices (finetune/config/choices.py).

The walk goes over the app as click sees it (`typer.main.get_command`), every command and subcommand, and
reads each option's listed choices from its metavar (`<a|b|c>`, what the help shows) and, where its own
type is a choice (a Literal or an Enum annotation, or a click `Choice`), from that type. The expected list
is read here from the annotations: the Literal of the RunConfig field the option sets, or the option's own
Literal alias (eval --split, export --format...), not through finetune/options.py, whose code makes the
metavars. The help must also name each choice.
"""
from __future__ import annotations

import enum
import re
from types import NoneType, UnionType
from typing import Annotated, Literal, Union, get_args, get_origin

import pytest
import typer.main

from finetune.cli import app
from finetune.config import (
    Accelerator,
    Augment,
    DemoTask,
    ExportFormat,
    Pruner,
    QuantizeMode,
    RunConfig,
    Split,
    Tta,
)

# Options of their own (not the RunConfig field of the same name, where there is one), by command.
OWN_CHOICES = {
    ("eval", "split"): Split, ("eval", "tta"): Tta, ("predict", "tta"): Tta, ("export", "tta"): Tta,
    ("export", "format"): ExportFormat, ("export", "quantize"): QuantizeMode, ("demo", "task"): DemoTask,
    ("tune", "pruner"): Pruner, ("augment-preview", "augment"): Augment,
}
# A str field whose value is one of a fixed list that its type cannot carry (Lightning takes any string).
STR_FIELD_CHOICES = {"accelerator": Accelerator}
TYPE_NAMES = {"int", "float", "str", "bool", "path"}  # what `allowed` lists for a field that takes a type
LISTED = re.compile(r"^<([^<>]+)>$")  # <a|b|c>, or <int8> for a single choice


def allowed(annotation) -> list[str]:
    """What a field's annotation allows, in order: a Literal's values, else a type's name (float, int...)."""
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        return [v for member in get_args(annotation) if member is not NoneType for v in allowed(member)]
    if origin in (Annotated, list):
        return allowed(get_args(annotation)[0])
    if origin is Literal:
        return [str(v) for v in get_args(annotation)]
    return [annotation.__name__.lower()]


def expected(command: str, name: str) -> list[str] | None:
    """The values the option of `command` named `name` must list, or None where it lists none."""
    if (command, name) in OWN_CHOICES:
        return list(get_args(OWN_CHOICES[command, name]))
    if name in STR_FIELD_CHOICES:
        return list(get_args(STR_FIELD_CHOICES[name]))
    field = RunConfig.model_fields.get(name)
    values = allowed(field.annotation) if field is not None else []
    return values if len(values) > 1 else None  # one type alone: Typer's own metavar (<int>, <path>)


def type_choices(param) -> list[str] | None:
    """The choices an option's own type carries, or None: its annotation's Literal or Enum values as Typer
    records them, or a click `Choice` (Typer carries its own copy of click: recognised by shape)."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if get_origin(annotation) is Literal:
        return [str(v) for v in get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(m.value) for m in annotation]
    choices = getattr(getattr(param, "type", None), "choices", None)
    return [str(c) for c in choices] if choices is not None else None


def commands(group, prefix: str = "") -> dict:
    """Every command of the app by its name on the command line (`recipes show`), subcommands included."""
    found = {}
    for name, command in group.commands.items():
        found[prefix + name] = command
        if hasattr(command, "commands"):  # a group: `recipes`
            found.update(commands(command, f"{prefix}{name} "))
    return found


def mismatches(root) -> tuple[list[str], set[tuple[str, str]]]:
    """Each option whose listed choices differ from the schema's, and the (command, option) pairs that list any."""
    bad, listing = [], set()
    for command_name, command in commands(root).items():
        for param in command.params:
            if param.param_type_name != "option":
                continue
            match = LISTED.match(param.metavar or "")
            shown = match.group(1).split("|") if match else None
            want = expected(command_name, param.name)
            if shown is not None:
                listing.add((command_name, param.name))
            if shown != want:
                bad.append(f"{command_name} --{param.name}: lists {shown}, the schema allows {want}")
            choice = type_choices(param)
            if choice is not None and choice != (want or []):
                bad.append(f"{command_name} --{param.name}: a Choice of {list(choice)}, the schema allows {want}")
            named = [c for c in want or [] if c not in TYPE_NAMES]  # float in <float|auto> is a type
            bad += [f"{command_name} --{param.name}: its help does not name {c}" for c in named
                    if c not in (param.help or "")]
    return bad, listing


def test_every_listed_choice_is_the_schemas():
    bad, _ = mismatches(typer.main.get_command(app))
    assert bad == []


def test_the_walk_sees_every_choice_option():
    """Not vacuous: the options of their own and every Literal setting of `run` are among those that list choices."""
    _, listing = mismatches(typer.main.get_command(app))
    literal_fields = {name for name, f in RunConfig.model_fields.items() if "Literal" in repr(f.annotation)}
    assert {"optimizer", "augment", "precision", "schedule", "monitor", "tta", "freeze_policy", "sampler",
            "logger", "feature_cache"} <= literal_fields
    assert set(OWN_CHOICES) <= listing
    assert {("run", name) for name in literal_fields | set(STR_FIELD_CHOICES)} <= listing
    assert {("tune", name) for name in literal_fields} <= listing


@pytest.mark.parametrize("metavar", ["<val|test|train>", "<test|val>", None])
def test_a_changed_list_is_caught(metavar):
    """A metavar that adds, reorders or drops the choices of eval --split is reported."""
    root = typer.main.get_command(app)
    split = next(p for p in root.commands["eval"].params if p.name == "split")
    split.metavar = metavar
    bad, _ = mismatches(root)
    assert [b for b in bad if b.startswith("eval --split: lists")], bad
