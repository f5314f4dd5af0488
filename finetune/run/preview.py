"""`finetune augment-preview`: a PNG grid of augmented training images, as the model sees them."""
from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import torch
from PIL import Image, ImageDraw

from finetune.config import Augment
from finetune.data.data_config import DataConfig
from finetune.data.dataset import ImageListDataset
from finetune.data.policy import auto_augment_policy
from finetune.data.profile import profile_training_set
from finetune.data.scan import DatasetIndex
from finetune.data.tables import TableSpec, scan_data
from finetune.data.transforms import build_transform
from finetune.run.auto_defaults import resolve_image_size

LABEL_HEIGHT = 12  # pixels of caption under each tile (PIL's default bitmap font is ~11 px)


def backbone_data_config(name: str, image_size: int | None = None, index: DatasetIndex | None = None) -> DataConfig:
    """The preprocessing of a backbone's pretrained weights, read without allocating its weights, at
    `image_size`; None: the size `finetune run` would choose for `index` (without one, the backbone's own)."""
    from finetune.models.backbone import create_backbone

    with torch.device("meta"):  # shapes only: no weights are allocated or loaded
        backbone, _ = create_backbone(name, 2, weights="none")
    if image_size is None and index is not None:
        image_size, _ = resolve_image_size(None, index, backbone)
    return backbone.data_config.with_size(image_size)


def denormalize(x: torch.Tensor, dc: DataConfig) -> np.ndarray:
    """(3, S, S) normalised tensor -> (S, S, 3) uint8 RGB for display."""
    mean, std = torch.tensor(dc.mean).view(3, 1, 1), torch.tensor(dc.std).view(3, 1, 1)
    pixels = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(1, 2, 0).numpy()


def _tile_size(dc: DataConfig) -> int:
    return max(dc.input_size, 96)  # small inputs are enlarged (nearest) so they stay visible


def _round_robin(items: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
    """Reorders (path, label) pairs as class 0, class 1, ..., class 0, ...: every class shows up."""
    by_label: dict[int, list[tuple[Path, int]]] = {}
    for item in items:
        by_label.setdefault(item[1], []).append(item)
    queues = [by_label[k] for k in sorted(by_label)]
    return [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]


def preview_grid(data: Path, augment: str, dc: DataConfig, count: int = 16, columns: int = 4,
                 seed: int = 0, index: DatasetIndex | None = None) -> Image.Image:
    """Augments the first training images (one per class in turn) and tiles them with class captions.

    Args:
        data: Image folder (any layout `finetune run` accepts).
        augment: A preset name (key of PRESETS), or "auto" for the policy chosen from the data.
        dc: Preprocessing (size, mean, std).
        count: Tiles in the grid.
        columns: Tiles per row.
        seed: Seed of the augmentations.
        index: The scan of `data`, if made already.
    """
    if augment not in get_args(Augment):
        raise ValueError(f"unknown augmentation preset {augment!r}; valid: {', '.join(get_args(Augment))}")
    index = index or scan_data(data, progress=False)
    # auto: the policy `finetune run` would choose for this folder at this input size
    preset = auto_augment_policy(profile_training_set(index), dc.input_size) if augment == "auto" else augment
    dataset = ImageListDataset(_round_robin(index.train), build_transform(dc, train=True, preset=preset, seed=seed))
    tile, rows = _tile_size(dc), -(-count // columns)
    grid = Image.new("RGB", (columns * tile, rows * (tile + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(grid)
    for i in range(count):
        x, label = dataset[i % len(dataset)]
        img = Image.fromarray(denormalize(x, dc)).resize((tile, tile), Image.Resampling.NEAREST)
        left, top = (i % columns) * tile, (i // columns) * (tile + LABEL_HEIGHT)
        grid.paste(img, (left, top))
        draw.text((left + 2, top + tile), index.classes[label], fill="black")
    return grid


def write_preview(data: Path, augment: str, output: Path, backbone: str = "resnet18",
                  image_size: int | None = None, count: int = 16, seed: int = 0,
                  labels: str | Path | TableSpec | None = None) -> Path:
    """Writes the preview grid of `augment` on `data` to the PNG `output` and returns its path; at
    `image_size`, or (None) at the size `finetune run` would choose for these images and backbone.
    `labels`: the label table of `data` (a path or a TableSpec), as `finetune run --labels` reads it."""
    index = scan_data(data, labels, progress=False)
    grid = preview_grid(data, augment, backbone_data_config(backbone, image_size, index), count=count, seed=seed,
                        index=index)
    output.parent.mkdir(parents=True, exist_ok=True)
    grid.save(output, format="PNG")
    return output
