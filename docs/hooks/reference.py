"""MkDocs hook: the pages made at build time from the code and from files outside docs/.

- `reference/cli.md`: every command, argument and option of the Typer app, with its help as `--help` gives it.
- `reference/settings.md`: every `RunConfig` field: option, type, default, range and description.
- `reference/api.md`: an mkdocstrings block for each name `finetune/__init__.py` exports.
- The benchmark results (`benchmarks/results/*.md`), CHANGELOG.md, CONTRIBUTING.md and the notebooks, copied
  into the site as they are, so each result a guide cites is a page of the site and the files stay where the
  benchmarks write them (a copy at build time, not a symlink: the site builds the same on any file system).

A page links to such a file by its path in the repository (`../../benchmarks/results/quality.md` from
`docs/guides/`), which also works when the Markdown is read on disk; `on_page_markdown` turns that path into
the page's place in the site.

A hook, not mkdocs-gen-files or mkdocs-click: MkDocs runs hooks itself, so no further plugin is needed, and
Typer builds its commands on its own copy of click's classes rather than on click's, which click-based
generators look for.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
RESULTS = "benchmarks/results"
BENCHMARKS_SECTION = "Benchmarks"  # the nav section the results pages are appended to
# Repository files copied into the site: repository path -> path in the site.
COPIED_FILES = {"CHANGELOG.md": "changelog.md", "CONTRIBUTING.md": "contributing.md"}
LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?(\))")
MARKDOWN_SPECIALS = re.compile(r"([\\*_\[\]|])")  # backslash-escaped; <, > and & become entities
ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
CODE_SPAN = re.compile(r"(`[^`]*`)")


def md_text(text: str) -> str:
    """`text` as literal Markdown inline text: specials escaped outside `code spans`, newlines as spaces."""
    parts = CODE_SPAN.split(" ".join(text.split()))
    return "".join(p if p.startswith("`") else _escaped(p) for p in parts)


def _escaped(text: str) -> str:
    text = re.sub(r"[&<>]", lambda m: ENTITIES[m.group()], text)  # Markdown has no backslash escape for <
    return MARKDOWN_SPECIALS.sub(r"\\\1", text)


# ---------------------------------------------------------------- CLI reference
# Typer builds its commands on its own copy of click's classes, so they are read by their attributes
# (`commands`, `params`, `get_help_record`), as click defines them, not by isinstance.


def _param_rows(params: list[Any], ctx: Any, header: str = "option") -> list[str]:
    """A table row for each parameter: its names and value as `--help` shows them, and its help with the
    default or `[required]` that `--help` adds."""
    rows = [f"| {header} | help |", "|---|---|"]
    for param in params:
        names, help_text = param.get_help_record(ctx) or (param.human_readable_name, "")
        rows.append(f"| `{names}` | {md_text(help_text)} |")
    return rows


def _command_section(command: Any, path: list[str], ctx: Any) -> list[str]:
    """The Markdown of one command: usage, help, then its parameters panel by panel (hidden ones left out)."""
    paragraphs = [md_text(p) for p in re.split(r"\n\s*\n", command.help or "") if p.strip()]
    lines = [f"## `{' '.join(path)}`", "", "```", ctx.get_usage(), "```", ""]
    lines += [line for paragraph in paragraphs for line in (paragraph, "")]
    shown = [p for p in command.params if not getattr(p, "hidden", False)]
    arguments = [p for p in shown if p.param_type_name == "argument"]
    if arguments:
        lines += ["**Arguments**", "", *_param_rows(arguments, ctx, "argument"), ""]
    panels: dict[str, list[Any]] = {}
    for param in shown:
        if param.param_type_name == "option":
            panels.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(param)
    for panel, params in panels.items():
        lines += [f"**{panel}**", "", *_param_rows(params, ctx), ""]
    return lines


def _walk(command: Any, path: list[str], parent: Any) -> list[str]:
    import typer

    ctx = typer.Context(command, info_name=path[-1], parent=parent)
    lines = _command_section(command, path, ctx) if parent is not None else []
    for name, sub in getattr(command, "commands", {}).items():
        if not sub.hidden:
            lines += _walk(sub, [*path, name], ctx)
    return lines


def cli_reference() -> str:
    """The CLI reference page: every command of `finetune.cli.app`, subcommands included."""
    import typer.main

    from finetune.cli import app

    root = typer.main.get_command(app)
    head = ["# Command line", "", md_text(root.help or ""), "",
            "Made from the Typer app when the site is built: what `finetune COMMAND --help` prints. The "
            "options of `run`, `lr-find` and `tune` are `RunConfig` fields: see the [settings](settings.md).", ""]
    return "\n".join(head + _walk(root, ["finetune"], None))


# ---------------------------------------------------------------- settings reference


def _annotation_text(annotation: Any) -> str:
    """A field's type as a reader writes it: `int | None`, `shuffle | balanced`, `list[csv | tensorboard]`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(map(str, args))
    if origin is Annotated:
        return _annotation_text(args[0])
    if origin in (Union, UnionType):
        return " | ".join(_annotation_text(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_annotation_text(a) for a in args)}]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def _constraints(annotation: Any, metadata: list[Any]) -> list[Any]:
    """The field's own constraints, and those inside an `Annotated[...]` member of its union (`lr`)."""
    found = list(metadata)
    for arg in get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ():
        if get_origin(arg) is Annotated:
            found += [m for extra in get_args(arg)[1:] for m in getattr(extra, "metadata", [extra])]
    return found


def _bounds(constraints: list[Any]) -> str:
    """`>= 1, <= 100000` from annotated_types constraints."""
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return ", ".join(f"{sign} {getattr(c, key)}" for c in constraints for key, sign in signs.items()
                     if hasattr(c, key))


def _run_flags() -> dict[str, str]:
    """Field name -> its flags on `finetune run` (`--ema / --no-ema`)."""
    import typer.main

    from finetune.cli import app

    params = typer.main.get_command(app).commands["run"].params
    return {p.name: " / ".join(", ".join(o) for o in (p.opts, p.secondary_opts) if o) for p in params}


def settings_reference() -> str:
    """The settings page: every `RunConfig` field, grouped as `finetune run --help` groups them."""
    from pydantic_core import PydanticUndefined

    from finetune import options
    from finetune.config import RunConfig

    fields, flags = RunConfig.model_fields, _run_flags()
    lines = ["# Settings", "", md_text(RunConfig.__doc__ or ""), "",
             "Each setting is a field of `finetune.RunConfig`, a key of a recipe or of `config.yaml`, and an "
             "option of `finetune run` (and `tune`); see the [command line](cli.md). Made from the fields "
             "when the site is built.", ""]
    groups = {panel: [n for n in names if n in fields] for panel, names in options.PANELS.items()}
    groups["Other"] = [n for n in options.run_fields() if n not in options.PANEL_OF]
    for panel, names in groups.items():
        if not names:
            continue
        lines += [f"## {panel}", "", "| setting | option | type | default | range | description |",
                  "|---|---|---|---|---|---|"]
        for name in names:
            field = fields[name]
            default = "required" if field.default is PydanticUndefined else f"`{field.default!r}`"
            bounds = _bounds(_constraints(field.annotation, field.metadata))
            lines.append(f"| `{name}` | `{flags.get(name, '')}` | {md_text(_annotation_text(field.annotation))} | "
                         f"{default} | {md_text(bounds)} | {md_text(field.description or '')} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- API reference


def _own_methods(model: type) -> list[str]:
    """The public methods and properties a pydantic model defines itself (not its fields, not BaseModel's)."""
    from pydantic import BaseModel

    return [n for n, v in vars(model).items() if not n.startswith("_") and n not in model.model_fields
            and not hasattr(BaseModel, n) and (callable(v) or isinstance(v, (property, classmethod, staticmethod)))]


def api_reference() -> str:
    """The API page: one mkdocstrings block for each public name of `finetune` (its `__all__`)."""
    import finetune

    lines = ["# Python API", "",
             "What `import finetune` gives: each name is imported when first used, so `finetune.inference` "
             "loads without torch. Made from the docstrings when the site is built. The settings of `RunConfig` "
             "are listed in [Settings](settings.md); `finetune.__version__` is the package version.", ""]
    for name in finetune.__all__:
        if name.startswith("__"):
            continue
        module = finetune._LAZY.get(name, "finetune")
        lines += [f"## `finetune.{name}`", "", f"::: {module}.{name}", "    options:", "      show_root_heading: false"]
        if name == "RunConfig":  # its fields are the settings page; here only its own methods
            lines += [f"      members: {_own_methods(finetune.RunConfig)}"]
        lines.append("")
    lines += ["## `finetune.inference.Prediction`", "", "::: finetune.inference.Prediction",
              "    options:", "      show_root_heading: false", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- MkDocs events


def copied_files() -> dict[str, Path]:
    """Path in the site -> repository file, for every file copied into the site."""
    copied = {f"{RESULTS}/{p.name}": p for p in sorted((REPO / RESULTS).glob("*.md"))}
    copied.update({f"notebooks/{p.name}": p for p in sorted((REPO / "notebooks").glob("*.ipynb"))})
    copied.update({site: REPO / repo for repo, site in COPIED_FILES.items()})
    return copied


GENERATED = {"reference/cli.md": cli_reference, "reference/settings.md": settings_reference,
             "reference/api.md": api_reference}


def on_config(config: Any) -> Any:
    """Appends every benchmark results page to the Benchmarks section of the nav, titled by its file name
    (several pages share a heading; the guides cite them by file name)."""
    results = [{p.stem: f"{RESULTS}/{p.name}"} for p in sorted((REPO / RESULTS).glob("*.md"))]
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and BENCHMARKS_SECTION in entry:
            entry[BENCHMARKS_SECTION] = [*entry[BENCHMARKS_SECTION], *results]
    return config


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for uri, make in GENERATED.items():
        files.append(File.generated(config, uri, content=make()))
    for uri, source in copied_files().items():
        files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files


def site_link(target: str, page_source: Path, page_uri: str) -> str:
    """The link `target` of a page whose file is `page_source` and whose site path is `page_uri`: a relative path
    to a repository file that the site copies becomes the path of its copy; any other target is left alone."""
    if "://" in target or target.startswith(("/", "mailto:")):
        return target
    resolved = (page_source.parent / target).resolve()
    uri = next((uri for uri, source in copied_files().items() if source.resolve() == resolved), None)
    if uri is None and resolved.is_relative_to(DOCS) and resolved.is_file():
        uri = resolved.relative_to(DOCS).as_posix()  # a docs page linked from a copied file
    return posixpath.relpath(uri, posixpath.dirname(page_uri) or ".") if uri else target


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    source = Path(page.file.abs_src_path) if page.file.abs_src_path else DOCS / page.file.src_uri
    return LINK.sub(lambda m: m.group(1) + site_link(m.group(2), source, page.file.src_uri)
                    + (m.group(3) or "") + m.group(4), markdown)
