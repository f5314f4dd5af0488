"""JSON and YAML files that may come from someone else (bundles, run folders, recipes): read within bounds.

Each reader returns plain data (yaml.safe_load: no Python objects are ever built) or raises one line
naming the file and what is wrong with it, never a traceback: a file too large, not UTF-8 text, not
valid JSON/YAML (a `!!python/...` tag included), or nested deeper than any file this toolkit writes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from finetune.errors import FinetuneError

# The largest legitimate files belong to a model of ImageNet-21k's 21,843 classes: its config.json with a
# per-class threshold and offset is 3.6 MiB (indented, 42-character names), its config.yaml (class list,
# counts and weights) about 3 MB. 8 MiB leaves room for longer names; libyaml reads 8 MiB in under 10 s
# (PyYAML's pure-Python parser, the fallback where libyaml is missing, in about 40 s).
MAX_BYTES = 8 * 2**20
# The toolkit writes at most 4 levels (config.json: parity -> max_abs_diff -> onnx). 32 leaves room for
# hand-written recipes while staying far below the recursion limit of every reader and writer after this one.
MAX_DEPTH = 32
# YAML aliases let a few bytes stand for a tree of billions of values ("billion laughs"), which every later
# walk of the data would expand. The 21,843-class files above hold about 70,000 values (three per class);
# 2**20 is 15 times that, and walking it takes about a second.
MAX_VALUES = 2**20
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when PyYAML was built with it


def read_json(path: str | Path, what: str, error: type[FinetuneError] = FinetuneError) -> Any:
    """Parses a JSON file of at most MAX_BYTES, nested at most MAX_DEPTH deep.

    Args:
        path: The file.
        what: What the file is, for messages ("bundle config").
        error: The FinetuneError subclass raised.

    Raises:
        error: Too large, not UTF-8, not JSON, or too deeply nested; one line naming the file.
    """
    return parse_json(read_text(path, what, error), f"{what} {path}", error)


def read_yaml(path: str | Path, what: str, error: type[FinetuneError] = FinetuneError) -> Any:
    """Parses a YAML file with yaml.safe_load, bounded as `read_json`.

    Raises:
        error: Too large, not UTF-8, not YAML (a `!!python/...` tag included), or too deeply nested.
    """
    return parse_yaml(read_text(path, what, error), f"{what} {path}", error)


def read_text(path: str | Path, what: str, error: type[FinetuneError] = FinetuneError) -> str:
    """The UTF-8 text of a file of at most MAX_BYTES (never more is read).

    Raises:
        error: Unreadable, too large, or not UTF-8.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise error(f"cannot read {what} {path} ({e.strerror or e})") from None
    if len(data) > MAX_BYTES:
        raise error(f"{what} {path} is larger than {MAX_BYTES // 2**20} MiB; files of this toolkit are far smaller")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def parse_json(text: str, where: str, error: type[FinetuneError] = FinetuneError) -> Any:
    """JSON text as plain data, nested at most MAX_DEPTH deep; `where` names it in errors."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(_too_deep(where)) from None
    except ValueError as e:  # JSONDecodeError, and integers of more digits than Python converts
        raise error(f"{where} is not valid JSON ({e})") from None
    check_nesting(value, where, error)
    return value


def parse_yaml(text: str, where: str, error: type[FinetuneError] = FinetuneError) -> Any:
    """YAML text as plain data (yaml.safe_load's constructor), bounded as `parse_json`; `where` names it in errors."""
    try:
        _check_yaml_events(text, where, error)
        value = yaml.load(text, Loader=SAFE_LOADER)  # noqa: S506 - a safe loader: plain data only
    except RecursionError:
        raise error(_too_deep(where)) from None
    except yaml.YAMLError as e:
        raise error(f"{where} is not valid YAML ({_yaml_problem(e)})") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise error(f"{where} is not valid YAML ({e})") from None
    check_nesting(value, where, error)
    return value


def check_nesting(value: Any, where: str, error: type[FinetuneError] = FinetuneError) -> None:
    """Raises `error` when `value` nests deeper than MAX_DEPTH or holds more than MAX_VALUES values.

    Walks without recursion, and counts a value shared through YAML aliases once per place it appears.
    """
    stack, seen = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if depth > MAX_DEPTH:
            raise error(f"{where} is nested more than {MAX_DEPTH} deep; files of this toolkit nest a few levels")
        if seen > MAX_VALUES:
            raise error(f"{where} expands to more than {MAX_VALUES:,} values (YAML aliases repeated); "
                        f"files of this toolkit are far smaller")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, (list, tuple)) else ()
        stack.extend((child, depth + 1) for child in children)


def _check_yaml_events(text: str, where: str, error: type[FinetuneError]) -> None:
    """Refuses YAML nested deeper than MAX_DEPTH from its event stream, before anything is composed.

    The event parser is a state machine (libyaml's, or PyYAML's own) and stops at the first
    MAX_DEPTH + 1 openings; composing recurses once per level, so the depth is checked on the events first.
    """
    depth = 0
    for event in yaml.parse(text, Loader=SAFE_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise error(_too_deep(where))
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _too_deep(where: str) -> str:
    return f"{where} is nested too deep to read (this toolkit never writes more than {MAX_DEPTH} levels)"


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line: the parser's problem and where it is (PyYAML's own message spans several lines)."""
    problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    hint = "; tags that build Python objects are never read" if "python/" in problem else ""
    return f"{problem}{where}{hint}"
