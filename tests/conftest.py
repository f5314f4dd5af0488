"""Shared fixtures: tiny generated image folders and locally saved weights."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the hub: an empty weights folder and caches under the test's own tmp dir.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 shape classes, 8 train + 4 val images each, 32 px, split layout."""
    from finetune.data.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("tiny")
    return make_image_folder(root, "shapes", train_per_class=8, val_per_class=4, size=32,
                             classes=("circle", "square", "triangle"), seed=0)


@pytest.fixture(scope="session")
def test_resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init test_resnet (1000 classes) saved as safetensors: stands in for pretrained weights."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(123)
    model = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _fast_run_args(data: Path, output: Path, *extra: str) -> list[str]:
    return ["run", "--backbone", "test_resnet", "--data", str(data), "--output", str(output),
            "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0",
            "--no-progress", "--no-export", *extra]  # export has its own tests; skipping it saves seconds a run


@pytest.fixture
def run_args():
    """Builds CLI arguments for a run that takes seconds: test_resnet, 32 px, 1 epoch, no workers, no export."""
    return _fast_run_args
