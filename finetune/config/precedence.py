"""The precedence of a run's settings: defaults < recipe < flags given on the command line, and the record
of where each value came from (config.yaml's `sources`)."""
from __future__ import annotations

import warnings
from typing import Any

from finetune.config.recipes import load_recipe
from finetune.config.rules import unused_settings
from finetune.config.schema import RunConfig


def resolve_config(cli_values: dict[str, Any], explicit: set[str],
                   recipe: str | None) -> tuple[RunConfig, dict[str, str]]:
    """Merges settings with the precedence defaults < recipe < flags given on the command line.

    Args:
        cli_values: Every CLI option's value, given or defaulted.
        explicit: Names of the options the user actually gave.
        recipe: Recipe name or path, or None.

    Returns:
        The validated config and, for every field, where its value came from
        ("default", "recipe <name>", or "command line").
    """
    loaded = load_recipe(recipe) if recipe else None
    fields = RunConfig.model_fields
    # An unset required option (None) must not hide the recipe's value or the "required" message.
    merged = {k: v for k, v in cli_values.items() if k in fields and not (v is None and fields[k].is_required())}
    sources = {k: "default" for k in RunConfig.model_fields}
    for key, value in (loaded.values if loaded else {}).items():
        if key not in explicit:
            merged[key], sources[key] = value, f"recipe {loaded.name}"
    for key in explicit & set(RunConfig.model_fields):
        sources[key] = "command line"
    if loaded:
        by_path = recipe.endswith((".yaml", ".yml"))
        merged["recipe"], sources["recipe"] = str(loaded.path) if by_path else loaded.name, "command line"
        _drop_unused_recipe_values(merged, sources, loaded.name)
    return RunConfig(**merged), sources


def _drop_unused_recipe_values(merged: dict[str, Any], sources: dict[str, str], recipe: str) -> None:
    """A recipe value that the flags switch off (its ema_decay with --no-ema) is a warning, not an error.

    The value goes back to its default and `sources` records why; unused values given on the
    command line are left for RunConfig to reject.
    """
    for key, why in unused_settings(merged).items():
        if sources[key].startswith("recipe"):
            value = merged.pop(key)
            warnings.warn(f"recipe {recipe} sets {key} {value} but it {why}; not used", UserWarning, stacklevel=3)
            sources[key] = f"default (recipe {recipe}'s {value} not used: {why.removeprefix('has ')})"
