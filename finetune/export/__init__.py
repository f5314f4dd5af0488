"""Export bundles: safetensors + ONNX (+ TorchScript, + int8) + config.json, checked for parity.

`finetune.export` is both this package and the public export function. Python binds a loaded
subpackage as an attribute of its parent, which would replace the lazily exported function with
this module as soon as anything imports `finetune.export.bundle`; so the package itself is made
callable and forwards to `finetune.export.bundle.export`.
"""
from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from finetune.export.bundle import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
