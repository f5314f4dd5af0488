"""Tiny generated image folders and corrupt files for the data tests."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune.data.data_config import DataConfig


def save_rgb(path: Path, size: tuple[int, int] = (16, 16), value: int | None = None, fmt: str | None = None) -> Path:
    """Writes a small RGB image (random pixels unless `value`) and returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    arr = (np.full((*size, 3), value, np.uint8) if value is not None
           else rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    Image.fromarray(arr).save(path, format=fmt)
    return path


def truncated_jpeg(path: Path) -> Path:
    """Writes a JPEG cut in half: the header parses, the pixel data ends early."""
    save_rgb(path, size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def dc() -> DataConfig:
    return DataConfig(input_size=24, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5), interpolation="bilinear",
                      crop_pct=0.75)
