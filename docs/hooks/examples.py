"""Griffe extension for the API reference: a docstring's `Example:` section is read as `Examples:`.

The package's Google-style docstrings head their doctests `Example:`; griffe parses only `Examples:` as
code (the singular becomes an admonition whose `>>>` lines Markdown reads as block quotes).
"""
from __future__ import annotations

import re
from typing import Any

import griffe

EXAMPLE = re.compile(r"^(\s*)Example:\s*$", flags=re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Renames each `Example:` section heading to `Examples:` before the docstring is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
