"""`--help` that reads well, and user errors that come before the heavy imports.

The help is read as a user sees it: rendered by Typer on a terminal wide enough that each option is
one row, colours stripped.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from types import UnionType
from typing import Literal, Union, get_args, get_origin

import pytest
import typer.main
from typer.testing import CliRunner

from finetune import options as o
from finetune.cli import app
from finetune.config import ACCELERATORS, RunConfig, Tta

WIDE = {"COLUMNS": "4000"}  # one row per option, however long its help
ANSI = re.compile(r"\x1b\[[0-9;]*m")
DEFAULT_STATEMENT = re.compile(r"\[default: |\bDefault: |\(default\)")


def _commands(group=None, path=()) -> list[tuple[str, ...]]:
    """The path of every command of the app, subcommands of groups included: ("run",), ("recipes", "show")."""
    group = group or typer.main.get_command(app)
    found = []
    for name, command in group.commands.items():
        found.append((*path, name))
        if hasattr(command, "commands"):
            found += _commands(command, (*path, name))
    return found


def _help(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.output)


def _rows(help_text: str) -> dict[str, str]:
    """Option flag -> its row of the rendered help (arguments have no flag and are left out)."""
    rows = {}
    for line in help_text.splitlines():
        match = re.match(r"│\s*\*?\s*(--[a-z0-9-]+)", line)
        if match:
            rows[match.group(1)] = line
    return rows


def _panels(help_text: str) -> list[str]:
    return re.findall(r"╭─ (.+?) ─", help_text)


def _literal_choices(annotation) -> tuple | None:
    """The values of a Literal annotation, also inside Optional[...] or list[...]; None for any other type."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if get_origin(annotation) in (Union, UnionType, list):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return _literal_choices(members[0]) if len(members) == 1 else None
    return None


COMMANDS = _commands()


def test_every_run_setting_is_in_exactly_one_panel():
    """A new RunConfig field that no panel lists fails here (its option would land in the bare Options panel)."""
    command = typer.main.get_command(app).commands["run"]
    panel_of = {p.name: p.rich_help_panel for p in command.params}
    for name in RunConfig.model_fields:
        assert panel_of[name] is not None, f"RunConfig.{name} is in no panel of `run --help`"
    listed = Counter(name for names in o.PANELS.values() for name in names)
    assert {name: n for name, n in listed.items() if n != 1} == {}, "a setting listed in two panels"
    assert set(listed) == set(RunConfig.model_fields)  # no panel names a setting that does not exist
    assert panel_of["resume"] == o.RUN_DIR_PANEL


def test_run_help_shows_the_panels_in_order_with_their_options():
    text = _help("run")
    assert _panels(text) == ["Options", *o.PANELS]  # Options: --help alone
    rows = _rows(text)
    for panel, names in o.PANELS.items():
        section = text.split(f"╭─ {panel} ─", 1)[1].split("╰", 1)[0]
        for name in names:
            assert "--" + name.replace("_", "-") + " " in section, (panel, name)
    assert set(rows) == {"--help", "--resume", *("--" + n.replace("_", "-") for n in RunConfig.model_fields)}


def test_tune_lists_its_own_options_first_in_their_own_panel():
    text = _help("tune")
    panels = _panels(text)
    assert panels[:2] == ["Options", "Study"], panels
    study = text.split("╭─ Study ─", 1)[1].split("╰", 1)[0]
    own = ("--trials", "--stages", "--space", "--pruner", "--storage", "--timeout", "--output", "--final-run")
    assert all(flag + " " in study for flag in own), study
    assert "Model and weights" in panels and "Schedule and optimisation" in panels  # run's, after the study's


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_option_states_its_default_at_most_once(command):
    for flag, row in _rows(_help(*command)).items():
        stated = DEFAULT_STATEMENT.findall(row)
        assert len(stated) <= 1, f"finetune {' '.join(command)} {flag} states its default {len(stated)} times: {row}"


def test_a_literal_setting_shows_its_choices_instead_of_a_type():
    rows = _rows(_help("run"))
    literal = {name: _literal_choices(f.annotation) for name, f in RunConfig.model_fields.items()}
    literal = {name: choices for name, choices in literal.items() if choices}
    assert {"optimizer", "augment", "freeze_policy", "logger", "monitor", "tta"} <= set(literal)  # the walk sees them
    for name, choices in literal.items():
        row = rows["--" + name.replace("_", "-")]
        assert "<" + "|".join(choices) + ">" in row, row
    assert "<" + "|".join(ACCELERATORS) + ">" in rows["--accelerator"]  # a str setting with a fixed list
    assert "<float|auto>" in rows["--lr"]


@pytest.mark.parametrize("command,flag,choices", [
    ("eval", "--split", ("val", "test")),
    ("eval", "--tta", get_args(Tta)),
    ("predict", "--tta", get_args(Tta)),
    ("export", "--tta", get_args(Tta)),
    ("export", "--quantize", ("int8",)),
    ("tune", "--pruner", ("median", "asha", "none")),
    ("augment-preview", "--augment", ("auto", "none", "light", "standard", "strong")),
])
def test_the_other_commands_show_their_choices(command, flag, choices):
    assert "<" + "|".join(choices) + ">" in _rows(_help(command))[flag]


def test_the_choices_the_commands_show_are_the_ones_their_modules_accept():
    """The commands check these before importing the modules that own them: the same names, in the same order."""
    from finetune.bundling.bundle import FORMATS
    from finetune.bundling.quantize import QUANTIZE_MODES
    from finetune.data.real import TASKS
    from finetune.evaluation.evaluate import SPLITS
    from finetune.search.command import PRUNERS
    from finetune.search.study import PRUNERS as STUDY_PRUNERS

    assert o.SPLITS == SPLITS and o.EXPORT_FORMATS == FORMATS and o.QUANTIZE_MODES == QUANTIZE_MODES
    assert PRUNERS == STUDY_PRUNERS and o.DEMO_TASKS == tuple(TASKS)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_no_help_names_the_internal_test_model(command):
    assert "test_resnet" not in _help(*command)


def test_every_command_that_reads_a_trained_model_takes_it_as_model():
    commands = typer.main.get_command(app).commands
    for name in ("export", "eval", "predict"):
        visible = [p for p in commands[name].params if not getattr(p, "hidden", False)]
        assert [p.opts for p in visible if p.name == "model"] == [["--model"]], name
        assert not [p for p in visible if p.param_type_name == "argument" and p.name != "images"], name


def test_export_keeps_the_run_directory_argument_as_a_deprecated_spelling(tmp_path):
    missing = tmp_path / "no-run"
    runner = CliRunner()
    for args in (["--model", str(missing)], [str(missing)]):
        result = runner.invoke(app, ["export", *args])
        assert result.exit_code == 2 and f"{missing} does not exist" in result.output, result.output
    assert "deprecated" in result.output and f"--model {missing}" in result.output  # the argument's warning
    assert re.search(r"Usage: \S+ export \[OPTIONS\] *$", _help("export"), re.M)  # the argument is not shown
    result = runner.invoke(app, ["export"])
    assert result.exit_code == 2 and "export needs --model" in result.output, result.output
    result = runner.invoke(app, ["export", "--model", str(missing), str(missing)])
    assert result.exit_code == 2 and "not both" in result.output, result.output


# ----- errors before the heavy imports ---------------------------------------------------------------
# Runs `python -m finetune ARGS` and reports, after it exits, which heavy libraries it had imported.
PROBE = (
    "import atexit, runpy, sys\n"
    "heavy = ('torch', 'pytorch_lightning', 'timm', 'optuna')\n"
    "atexit.register(lambda: print('HEAVY', [m for m in heavy if m in sys.modules], file=sys.stderr))\n"
    "sys.argv = ['finetune', *sys.argv[1:]]\n"
    "runpy.run_module('finetune', run_name='__main__')\n"
)
# Bound on the wall time of one such error in a fresh process, interpreter start included. About 0.5 s on
# a 2-core machine; the torch + Lightning + timm imports alone take 6-10 s there.
FAST_ERROR_S = 5.0


def _fast_error_cases(tmp_path) -> list[tuple[list[str], str]]:
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    missing, imgs = str(tmp_path / "missing"), str(tmp_path / "imgs")
    return [
        (["run", "--backbone", "resnet18", "--data", missing], f"data folder {missing} does not exist"),
        (["run", "--backbone", "resnet18", "--data", imgs, "--augment", "heavy"], "--augment"),
        (["run", "--backbone", "resnet18", "--data", imgs, "--recipe", "no-such-recipe"], "no-such-recipe"),
        (["run", "--resume", missing], f"--resume {missing}"),
        (["lr-find", "--backbone", "resnet18", "--data", missing], f"data folder {missing} does not exist"),
        (["tune", "--backbone", "resnet18", "--data", missing], f"data folder {missing} does not exist"),
        (["tune", "--backbone", "resnet18", "--data", imgs, "--pruner", "fifo"], "unknown --pruner 'fifo'"),
        (["eval", "--model", missing, "--data", imgs], f"{missing} does not exist"),
        (["eval", "--model", missing, "--data", imgs, "--split", "train"], "unknown --split 'train'"),
        (["export", "--model", missing], f"{missing} does not exist"),
        (["export", "--model", missing, "--format", "tflite"], "unknown --format 'tflite'"),
        (["augment-preview", "--data", missing], f"data folder {missing} does not exist"),
    ]


def test_user_errors_come_within_seconds_and_before_torch_is_imported(tmp_path):
    for args, named in _fast_error_cases(tmp_path):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
        elapsed = time.perf_counter() - start
        flat = " ".join(done.stderr.split())
        assert done.returncode == 2 and named in flat and flat.count("Error:") == 1, (args, flat)
        assert "HEAVY []" in flat, (args, flat)
        assert elapsed < FAST_ERROR_S, f"finetune {' '.join(args)}: {elapsed:.1f} s"
