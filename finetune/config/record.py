"""What a run's config.yaml holds beyond the settings' values: how paths are written (YAML has no escape for
a byte), the run-time sections it adds, and how it is read back."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError
from finetune.untrusted import read_yaml

# Settings that may name a file or folder, and the paths config.yaml's `resolved` section records. YAML text is
# Unicode and has no escape for a byte, so config.yaml holds them `escaped` (finetune/pathtext.py): a name that
# is not UTF-8 stays exact, and `RunConfig.from_yaml` reads it back. A plain name is written unchanged.
PATH_SETTINGS = ("data", "labels", "weights_dir", "output", "teacher_weights", "weights", "teacher", "recipe",
                 "class_weights")
RECORDED_PATHS = ("run_dir",)
# The errors of a number outside a field's range (ge/gt/le/lt) or not finite: what RunConfig.from_record forgives.
RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"})


def convert_paths(values: Mapping[str, Any], keys: tuple[str, ...], convert: Callable[[str], str]) -> dict[str, Any]:
    """`values` with `convert` applied to the strings under `keys` (escaped or unescaped paths)."""
    return {k: convert(v) if k in keys and isinstance(v, str) else v for k, v in values.items()}


def read_run_yaml(path: str | Path) -> dict[str, Any]:
    """A run's config.yaml as a mapping whose `resolved` and `sources` sections, when present, are mappings.

    Raises:
        FinetuneError: Not bounded UTF-8 YAML (`untrusted.read_yaml`), or not of that shape.
    """
    data = read_yaml(path, "run config") or {}
    if not isinstance(data, dict):
        raise FinetuneError(f"run config {path} holds a {type(data).__name__}, not the mapping of settings "
                            f"that `finetune run` writes")
    for section in ("resolved", "sources"):
        if not isinstance(data.get(section) or {}, dict):
            raise FinetuneError(f"run config {path}: its {section} section is a {type(data[section]).__name__}, "
                                f"not a mapping")
    return data

