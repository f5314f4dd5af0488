"""The typed run configuration: every setting of `finetune run`, validated, saved with the run.

Each setting is declared once, as a RunConfig field: its type, default, range and help; the `run`,
`lr-find` and `tune` options are made from the fields (finetune/options.py). Each choice list is
spelled once, as a Literal alias of choices.py. The package, by concern:

    choices.py     every list of choices (Literal aliases) and `one_of`, their help text
    limits.py      bounds of the numeric settings and shared help text
    core.py        the core fields (backbone, data, optimisation, run directory, hardware, export)
    policies.py    the policy fields (freezing, LR policy, regularization, distillation, selection)
    rules.py       how values are read and the rules between settings (pydantic validators)
    schema.py      RunConfig: the fields with their rules, and its methods
    record.py      config.yaml's paths and sections, and reading it back
    recipes.py     recipes: loading and checking them
    precedence.py  defaults < recipe < command line, and where each value came from

Every public name is importable from `finetune.config`.
"""
from __future__ import annotations

from finetune.config.choices import (
    ACCELERATORS,
    CLASS_WEIGHTS,
    NAMED_VALUES,
    NO_MOMENTUM,
    WHOLE_MODEL_POLICIES,
    Accelerator,
    Augment,
    ClassWeights,
    DemoTask,
    ExportFormat,
    FeatureCache,
    FreezePolicy,
    Logger,
    Monitor,
    Optimizer,
    Precision,
    Pruner,
    QuantizeMode,
    Sampler,
    Schedule,
    Split,
    Tta,
    WeightsName,
    one_of,
)
from finetune.config.limits import (
    BATCHES_HELP,
    DEVICES_HELP,
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_IMAGE_SIZE,
    MAX_NODES,
    MAX_SEED,
    MAX_STEPS,
    MAX_VIEWS,
    REQUIRED_ELSEWHERE,
)
from finetune.config.precedence import resolve_config
from finetune.config.recipes import Recipe, list_recipes, load_recipe, recipe_names, recipes_dir
from finetune.config.record import PATH_SETTINGS, RECORDED_PATHS, read_run_yaml
from finetune.config.rules import OTHER_NAMES, divisors, unused_settings
from finetune.config.schema import RunConfig, usable_cpus

__all__ = [
    "ACCELERATORS", "BATCHES_HELP", "CLASS_WEIGHTS", "DEVICES_HELP", "MAX_BATCH", "MAX_EPOCHS", "MAX_IMAGE_SIZE",
    "MAX_NODES", "MAX_SEED", "MAX_STEPS", "MAX_VIEWS", "NAMED_VALUES", "NO_MOMENTUM", "OTHER_NAMES", "PATH_SETTINGS",
    "RECORDED_PATHS", "REQUIRED_ELSEWHERE", "WHOLE_MODEL_POLICIES",
    "Accelerator", "Augment", "ClassWeights", "DemoTask", "ExportFormat", "FeatureCache", "FreezePolicy", "Logger",
    "Monitor", "Optimizer", "Precision", "Pruner", "QuantizeMode", "Recipe", "RunConfig", "Sampler", "Schedule",
    "Split", "Tta", "WeightsName",
    "divisors", "list_recipes", "load_recipe", "one_of", "read_run_yaml", "recipe_names", "recipes_dir",
    "resolve_config", "unused_settings", "usable_cpus",
]
