"""The tutorial notebooks: stored without outputs, run top to bottom with `jupyter nbconvert --execute` against
the installed package, teach from real ImageNet weights on real images, and name only true defaults."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import nbformat
import pytest
import yaml

from finetune.config import RunConfig
from finetune.models.packaged_weights import PACKAGED

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
EXPECTED = ["01-quickstart.ipynb", "02-freeze-policies.ipynb", "03-distillation-and-tta.ipynb", "04-inference.ipynb",
            "05-search.ipynb"]
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300  # generous per cell; each whole notebook takes well under a minute on 2 cores


def test_exactly_the_expected_notebooks_exist() -> None:
    # Guards the parametrized tests below: an empty or renamed folder must not pass silently.
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    for i, cell in enumerate(book.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: strip them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert book.metadata.get("kernelspec", {}).get("name") == "python3"


# ----- defaults named in the prose ---------------------------------------------------------------
# A default is stated as a checked claim: `name=value` (default) or `--flag value` (default), the value
# written as in Python (`augment="auto"`) or on the command line (`--augment auto`).
CLAIM = re.compile(r"`(?P<setting>--[a-z0-9-]+ [^`]+|[a-z_][a-z0-9_]*=[^`]+)`\s*\((?:the )?default\)")
SPAN = re.compile(r"`([^`]+)`")
DEFAULT_WORD = re.compile(r"\bdefaults?\b", re.IGNORECASE)
# Statements: paragraphs, list items and table rows, then sentences (a full stop before a capital or a backtick).
ITEM_START = re.compile(r"\n(?=\s*(?:[-*|] |\d+\. ))")
SENTENCE_END = re.compile(r"(?<=\.)\s+(?=[A-Z`])")


def _statements(markdown: str) -> list[str]:
    return [s for paragraph in re.split(r"\n\s*\n", markdown) for item in ITEM_START.split(paragraph)
            for s in SENTENCE_END.split(item.strip()) if s]


def _claims(statement: str) -> list[tuple[str, str]]:
    """(field name, value as written) of each checked claim in a statement."""
    out = []
    for match in CLAIM.finditer(statement):
        setting = match["setting"]
        name, value = setting[2:].split(" ", 1) if setting.startswith("--") else setting.split("=", 1)
        out.append((name.replace("-", "_"), value.strip()))
    return out


def _choice_owners() -> dict[str, str]:
    """Choice values that belong to exactly one field's choices (`standard` -> augment)."""
    owners: dict[str, set[str]] = {}
    for name, field in RunConfig.model_fields.items():
        for choice in _literal_choices(field.annotation):
            owners.setdefault(choice, set()).add(name)
    return {choice: names.pop() for choice, names in owners.items() if len(names) == 1}


def _literal_choices(annotation: Any) -> list[str]:
    args = get_args(annotation)
    if args and all(isinstance(a, str) for a in args):
        return list(args)
    return [c for a in args for c in _literal_choices(a)]


def _named_settings(statement: str) -> set[str]:
    """Fields a statement names in code spans: `name`, `name=...`, `--flag ...`, or a choice only one field has."""
    fields, owners, named = RunConfig.model_fields, _choice_owners(), set()
    for span in SPAN.findall(statement):
        word = re.split(r"[= ]", span, maxsplit=1)[0]
        name = word[2:].replace("-", "_") if word.startswith("--") else word
        if name in fields:
            named.add(name)
        elif span.strip("\"'") in owners:
            named.add(owners[span.strip("\"'")])
    return named


def _validated(name: str, value: Any) -> Any:
    """The value as RunConfig stores it (placeholders for the required fields, as recipes are checked)."""
    values = {"backbone": "-", "data": ".", **({} if value is None else {name: value})}
    return getattr(RunConfig.model_validate(values, context={"unused": "allow"}), name)


def _parsed(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):  # a bare word: auto, imagenet
        return value


def default_problems(markdown: str) -> list[str]:
    """Every claimed default that is not RunConfig's, and every default named without a checked claim.

    Fields whose default is None (derived from the data: epochs, batch size, image size) have no value to
    claim, and are described in words.
    """
    fields, problems = RunConfig.model_fields, []
    for statement in _statements(markdown):
        claims = _claims(statement)
        for name, value in claims:
            if name not in fields:
                problems.append(f"`{name}` is not a RunConfig field: {statement!r}")
            elif _validated(name, _parsed(value)) != _validated(name, None):
                problems.append(f"the default of {name} is {fields[name].default!r}, not {value}: {statement!r}")
        if DEFAULT_WORD.search(statement):
            claimed = {n for n, _ in claims}
            unchecked = {n for n in _named_settings(statement) - claimed if fields[n].default is not None}
            problems += [f"names the default of {name} without a checked claim (`{name}=VALUE` (default)): "
                         f"{statement!r}" for name in sorted(unchecked)]
    return problems


@pytest.mark.parametrize("text, expected", [
    ("Every group at the head's LR: `backbone_lr_mult=1.0` (default).", []),
    ("`--augment auto` (the default) looks at the data.", []),
    ("The backbone trains at 0.1x, `backbone_lr_mult=0.1` (default).", ["the default of backbone_lr_mult is 1.0"]),
    ("It trains at 0.1x the head's LR by default (`backbone_lr_mult`).", ["names the default of backbone_lr_mult"]),
    ("The default, `standard`, crops hard.", ["names the default of augment"]),
    ("`no_such_setting=3` (default) does nothing.", ["`no_such_setting` is not a RunConfig field"]),
    ("Left out, the epochs follow the data (`epochs`, default: about 400 steps).", []),  # None: described
    ("- `lr=3e-3`: a larger step.\n- `augment=\"auto\"` (default): chosen from the data.", []),
])
def test_the_defaults_check_flags_stale_and_unchecked_claims(text: str, expected: list[str]) -> None:
    problems = default_problems(text)
    assert len(problems) == len(expected) and all(p.startswith(e) for p, e in zip(problems, expected)), problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_defaults_named_in_the_prose_are_the_defaults(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    problems = [f"cell {i}: {problem}" for i, cell in enumerate(book.cells) if cell.cell_type == "markdown"
                for problem in default_problems(cell.source)]
    assert problems == []


def test_the_quickstart_states_the_defaults_it_keeps() -> None:
    book = nbformat.read(NOTEBOOK_DIR / "01-quickstart.ipynb", as_version=4)
    claimed = {name for cell in book.cells if cell.cell_type == "markdown"
               for statement in _statements(cell.source) for name, _ in _claims(statement)}
    assert {"weights", "freeze_until", "backbone_lr_mult", "augment"} <= claimed


# ----- real images, real weights, run as a user runs them --------------------------------------------
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_teaches_on_real_images(path: Path) -> None:
    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert "make_real_task(" in code and "finetune.data.synthetic" not in code


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_nbconvert_from_imagenet_weights(path: Path, tmp_path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    assert book.cells[0].cell_type == "markdown", "a notebook starts by saying what it teaches"
    assert any("import finetune" in c.source for c in book.cells if c.cell_type == "code")
    where, runs = tmp_path / "notebook", tmp_path / "tmp"  # the kernel's folder, and its tempfile folder
    where.mkdir()
    runs.mkdir()
    shutil.copy(path, where / path.name)
    command = [sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute", "--inplace",
               f"--ExecutePreprocessor.timeout={CELL_TIMEOUT_S}", "--ExecutePreprocessor.kernel_name=python3",
               str(where / path.name)]  # `jupyter nbconvert ...` as docs/install.md says, by its module
    done = subprocess.run(command, env={**os.environ, "TMPDIR": str(runs)}, capture_output=True, text=True,
                          timeout=CELL_TIMEOUT_S * 4)
    assert done.returncode == 0, done.stderr[-4000:]  # CellExecutionError names the failing cell and its traceback
    executed = nbformat.read(where / path.name, as_version=4)
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    configs = [yaml.safe_load(p.read_text()) for p in runs.rglob("config.yaml")]
    imagenet = [c for c in configs if c["weights"] == "imagenet" and c["backbone"] in PACKAGED]
    assert imagenet, f"{path.name} trained {len(configs)} runs, none from packaged ImageNet weights"
