"""The documentation: the generated references against the objects they describe, the README's shape, and
the relative links of every Markdown file the site is built from.

The references are rendered to HTML with Python-Markdown (as mkdocs renders them) and read as text, so an
option whose help is lost to Markdown (`<class>` read as an HTML tag, a `|` splitting a table cell) fails here.
"""
from __future__ import annotations

import html
import importlib.util
import re
from pathlib import Path
from typing import get_args

import markdown
import pytest
import typer.main
from pydantic_core import PydanticUndefined

import finetune
from finetune.cli import app
from finetune.config import Augment, Monitor, RunConfig, Tta

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_LIMIT = 12_000  # bytes: a README a reader takes in on one screen or two; the manual is the site
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def _hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", ROOT / "docs" / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOK = _hook()


def _text(md: str) -> str:
    """What a reader sees of Markdown `md`: rendered with tables, tags dropped, entities decoded, spaces collapsed."""
    rendered = markdown.markdown(md, extensions=["tables"])
    inline_dropped = re.sub(r"</?(code|em|strong|a)\b[^>]*>", "", rendered)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", inline_dropped)).split())


def _plain(text: str) -> str:
    """A help or description string as it reads once rendered: code-span backticks gone, spaces collapsed."""
    return " ".join(text.replace("`", "").split())


def _sections(page: str) -> dict[str, str]:
    """`## heading` -> the rendered text of its section."""
    parts = re.split(r"^## (.+)$", page, flags=re.MULTILINE)
    return {heading.strip("` "): _text(body) for heading, body in zip(parts[1::2], parts[2::2])}


def _commands(command=None, path=("finetune",)):
    """(path, command) for every command of the app, subcommands of groups included."""
    command = command or typer.main.get_command(app)
    found = []
    for name, sub in command.commands.items():
        found.append(((*path, name), sub))
        if hasattr(sub, "commands"):
            found += _commands(sub, (*path, name))
    return found


CLI_SECTIONS = _sections(HOOK.cli_reference())
SETTINGS_TEXT = _text(HOOK.settings_reference())
def _row_text(row: str) -> str:
    """The rendered text of one table row of the settings page."""
    return _text("| a | b | c | d | e | f |\n|---|---|---|---|---|---|\n" + row)


SETTINGS_ROWS = {line.split("|")[1].strip().strip("`"): line for line in HOOK.settings_reference().splitlines()
                 if line.startswith("| `")}


@pytest.mark.parametrize("path,command", _commands(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_cli_reference_lists_every_option_of_every_command(path, command):
    section = CLI_SECTIONS.get(" ".join(path))
    assert section is not None, f"no section for `{' '.join(path)}`"
    assert _plain(command.help or "") in section
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        names = [*param.opts, *param.secondary_opts] if param.param_type_name == "option" else [param.name]
        for name in names:
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", section), f"{name} of {' '.join(path)}"
        assert _plain(param.help or "") in section, f"the help of {names[0]} ({' '.join(path)})"


def test_cli_reference_leaves_out_hidden_parameters():
    """`export`'s hidden RUN_DIR argument (an older spelling of --model) stays out, as it does in --help."""
    export = typer.main.get_command(app).commands["export"]
    hidden = [p for p in export.params if getattr(p, "hidden", False)]
    assert hidden, "export has no hidden parameter to check"
    for param in hidden:
        assert param.help not in CLI_SECTIONS["finetune export"]


@pytest.mark.parametrize("name", list(RunConfig.model_fields))
def test_settings_reference_lists_every_field(name):
    field = RunConfig.model_fields[name]
    row = SETTINGS_ROWS.get(name)
    assert row is not None, f"RunConfig.{name} is not in the settings reference"
    assert _plain(field.description) in _row_text(row)
    assert "--" + name.replace("_", "-") in row
    assert ("required" if field.default is PydanticUndefined else repr(field.default)) in row
    assert _plain(field.description) in SETTINGS_TEXT


def test_settings_reference_states_numeric_bounds():
    """The bounds pydantic enforces, read from its JSON schema (not from the field metadata the generator reads)."""
    schema = RunConfig.model_json_schema()["properties"]
    signs = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    for name, prop in schema.items():
        options = prop.get("anyOf", [prop])
        for option in options:
            for key, sign in signs.items():
                if key in option:
                    assert f"{sign} {option[key]}" in _row_text(SETTINGS_ROWS[name]), f"{name} {sign} {option[key]}"


def test_api_reference_documents_every_public_name():
    page = HOOK.api_reference()
    for name in finetune.__all__:
        if name.startswith("__"):
            continue
        module = getattr(finetune, name).__module__
        assert f"::: {module}.{name}" in page, f"finetune.{name}"
    assert "::: finetune.inference.Predictor" in page


def test_readme_is_short_and_opens_with_make_demo_and_make_test():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) < README_LIMIT
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0].startswith("# ") and lines[1] == "```", lines[:3]
    assert lines[2].startswith("make demo") and lines[3].startswith("make test"), lines[:4]


def _markdown_files() -> list[Path]:
    return [README, ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) if "://" not in t and not t.startswith(("#", "mailto:"))]


def _exists(path: Path, target: str) -> bool:
    """A link target is a file (or folder) in the repository, or a page the docs hook makes at build time."""
    resolved = (path.parent / target.split("#")[0]).resolve()
    docs = (ROOT / "docs").resolve()
    generated = resolved.is_relative_to(docs) and resolved.relative_to(docs).as_posix() in HOOK.GENERATED
    return resolved.exists() or generated


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(path):
    assert [t for t in _relative_links(path) if not _exists(path, t)] == []


def test_link_check_sees_links():
    """The link check reads the README's links: a pattern that matched nothing would pass any file."""
    assert "docs/guides/data.md" in _relative_links(README)


# The hand-written guides that list a setting's choices: (file, the pattern of the list, its Literal).
GUIDE_LISTS = [
    ("docs/guides/search.md", r"\| `augment` \| ([^|]+) \|", Augment),
    ("docs/guides/selection.md", r"`--monitor ([a-z0-9|-]+)`", Monitor),
    ("docs/guides/evaluation.md", r"\*\*TTA\*\* \((.*?)\): all views", Tta),
]


@pytest.mark.parametrize("path,pattern,alias", GUIDE_LISTS, ids=[g[0] for g in GUIDE_LISTS])
def test_the_guides_list_the_schemas_choices(path, pattern, alias):
    """The guides are prose, not generated: a choice added to or dropped from the schema must reach them."""
    text = (ROOT / path).read_text()
    found = re.search(pattern, text, re.DOTALL)
    assert found, f"{path} no longer lists the choices this test reads"
    listed = found.group(1)
    names = re.findall(r"`([a-z0-9-]+)`", listed) or re.split(r"\s*[|,]\s*", listed.strip())
    assert names == list(get_args(alias))
