"""`finetune tune`: hyperparameter search on Optuna, coarse to fine, from one process to many machines.

`finetune.tune(config, space, trials=..., storage=...)` runs a study (`finetune.tune.study.tune`).
The package object is callable too: once the package is imported (the CLI does), Python binds it,
not the function, to the name `finetune.tune`, and `finetune.tune(...)` must work either way.
The study code is imported lazily (PEP 562), so that `finetune --help` does not load Optuna and torch.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = ["TuneResult", "tune"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("finetune.tune.study"), name)
    raise AttributeError(f"module 'finetune.tune' has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return importlib.import_module("finetune.tune.study").tune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
