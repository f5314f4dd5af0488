"""finetune: transfer learning for image classifiers.

The public API is imported lazily (PEP 562 module `__getattr__`): `import finetune.inference`
must not pull in torch, Lightning or albumentations just because this package is its parent.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "RunConfig": "finetune.config",
    "fit": "finetune.training.fit",
    "RunResult": "finetune.training.fit",
    "FinetuneModule": "finetune.training.module",
    "ImageFolderDataModule": "finetune.data.datamodule",
    "create_backbone": "finetune.models.backbone",
    "list_layers": "finetune.models.backbone",
    "evaluate": "finetune.evaluation.evaluate",
    "export": "finetune.export.bundle",
    "export_bundle": "finetune.export.bundle",
    "Predictor": "finetune.inference",
    "Ensemble": "finetune.inference",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # cache: later lookups skip this function
        return value
    raise AttributeError(f"module 'finetune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
