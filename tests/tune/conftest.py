"""A fast base config for studies: test_resnet at 32 px, random init, fp32, no workers."""
from __future__ import annotations

import pytest

from finetune.config import RunConfig


@pytest.fixture
def base_config(tiny_data):
    """RunConfig of a trial that trains in about a second; keyword arguments override."""

    def make(**kw) -> RunConfig:
        values = dict(backbone="test_resnet", data=tiny_data, weights="none", image_size=32, batch_size=8, workers=0,
                      epochs=2, precision="32", progress=False)
        return RunConfig(**{**values, **kw})

    return make
