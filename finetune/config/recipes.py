"""Recipes: shipped YAML files of RunConfig settings (finetune/recipes/), each with a header comment on when
to use it, or a user's own file; loaded and checked as RunConfig checks any settings."""
from __future__ import annotations

import difflib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from finetune.config.schema import RunConfig
from finetune.errors import FinetuneError
from finetune.untrusted import parse_yaml, read_text


@dataclass(frozen=True)
class Recipe:
    """A YAML file of RunConfig settings with a header comment on when to use it."""

    name: str
    path: Path
    description: str
    notes: str
    values: dict[str, Any]


def recipes_dir() -> Path:
    """The shipped recipes' folder: package data (finetune/recipes/), so an installed wheel carries it too."""
    return Path(str(importlib.resources.files("finetune").joinpath("recipes")))


def recipe_names() -> list[str]:
    """The names of the shipped recipes, sorted."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, sorted by name."""
    return [load_recipe(name) for name in recipe_names()]


def _recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    if name_or_path in recipe_names():
        return recipes_dir() / f"{name_or_path}.yaml"
    near = difflib.get_close_matches(name_or_path, recipe_names(), n=1)
    hint = f"did you mean '{near[0]}'? " if near else ""
    raise FinetuneError(f"recipe '{name_or_path}' is neither a recipe name nor a .yaml file; {hint}"
                        f"recipes: {', '.join(recipe_names()) or 'none found'}")


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return "\n".join(lines).strip()


def load_recipe(name_or_path: str) -> Recipe:
    """Loads and validates a recipe by name (see `finetune recipes`) or path.

    Raises:
        FinetuneError: Unknown recipe, a file that is not bounded UTF-8 YAML (`finetune.untrusted`), an
            unknown key (naming the nearest valid key), or a bad value (naming the allowed range or choices).
    """
    path = _recipe_path(name_or_path)
    text = read_text(path, "recipe")
    values = parse_yaml(text, f"recipe {path}") or {}
    if not isinstance(values, dict):
        raise FinetuneError(f"recipe {path}: expected a mapping of settings, got {type(values).__name__}")
    _check_keys(path, values)
    _check_values(path, values)
    notes = _header(text)
    return Recipe(path.stem, path, notes.splitlines()[0] if notes else "", notes, values)


def _check_keys(path: Path, values: dict[str, Any]) -> None:
    valid = [k for k in RunConfig.model_fields if k != "recipe"]
    for key in values:
        if key not in valid:
            near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"did you mean '{near[0]}'?" if near else f"valid keys: {', '.join(valid)}"
            raise FinetuneError(f"recipe {path}: unknown key '{key}'; {hint}")


def _check_values(path: Path, values: dict[str, Any]) -> None:
    try:  # placeholders for the two required fields: a recipe need not name a backbone or data
        # A recipe may set values that only some flags use (kd_alpha for a --teacher given later).
        RunConfig.model_validate({"backbone": "-", "data": ".", **values}, context={"unused": "allow"})
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0])  # union members add their type names to loc; the field is enough
        raise FinetuneError(f"recipe {path}: {key}: {err['msg']} (got {err.get('input')!r})") from None

