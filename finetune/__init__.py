"""finetune: transfer learning for image classifiers.

The public API is imported lazily (PEP 562 module `__getattr__`): `import finetune.inference`
must not pull in torch, Lightning or albumentations just because this package is its parent.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "RunConfig": "finetune.config.schema",
    "fit": "finetune.run.fit",
    "RunResult": "finetune.run.result",
    "FinetuneModule": "finetune.training.module",
    "ImageFolderDataModule": "finetune.data.datamodule",
    "create_backbone": "finetune.models.backbone",
    "list_layers": "finetune.models.backbone",
    "evaluate": "finetune.evaluation.evaluate",
    "export": "finetune.bundling.bundle",
    "export_bundle": "finetune.bundling.bundle",
    "Predictor": "finetune.inference",
    "Ensemble": "finetune.inference",
    "load_recipe": "finetune.config.recipes",
    "list_recipes": "finetune.config.recipes",
    "tune": "finetune.search.study",
    "TuneResult": "finetune.search.study",
    "ConsoleReporter": "finetune.reporter",
    "LogReporter": "finetune.reporter",
    "Reporter": "finetune.reporter",
    "keep_freed_memory": "finetune.heap",
}
__all__ = ["__version__", "backbones", *_LAZY]


def backbones(filter: str | None = None, weights_dir: str | None = None) -> list:
    """Backbone names matching `filter` (substring or wildcard), with parameter counts and local weights.

    Example:
        >>> [b.name for b in finetune.backbones("resnet18")][:2]  # doctest: +SKIP
        ['legacy_seresnet18', 'resnet18']
    """
    from pathlib import Path

    from finetune.models.catalog import list_backbones

    return list_backbones(filter, weights_dir=Path(weights_dir) if weights_dir else None)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # cache: later lookups skip this function
        return value
    raise AttributeError(f"module 'finetune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
