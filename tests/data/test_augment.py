"""Augmentation presets none/standard/strong, PCA lighting, and the augment-preview grid."""
from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from finetune.cli import app
from finetune.data.augment import IMAGENET_EIGVAL, IMAGENET_EIGVEC, PCALighting
from finetune.data.data_config import DataConfig
from finetune.data.transforms import build_eval_transform, build_transform

runner = CliRunner()
DC = DataConfig(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _steps(preset: str) -> list[str]:
    return [type(t).__name__ for t in build_transform(DC, train=True, preset=preset).pipeline.transforms]


def test_none_trains_on_the_eval_pipeline():
    img = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    none = build_transform(DC, train=True, preset="none", seed=0)
    assert all(torch.equal(none(img), build_eval_transform(DC)(img)) for _ in range(3))


def test_standard_and_strong_steps():
    jitter = build_transform(DC, train=True, preset="standard").pipeline.transforms[2]
    assert isinstance(jitter, A.ColorJitter)
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.6, 1.4)
    assert _steps("standard") == ["RandomResizedCrop", "HorizontalFlip", "ColorJitter", "PCALighting",
                                  "Normalize", "ToTensorV2"]
    strong = _steps("strong")
    assert {"OneOf", "Erasing", "ColorJitter", "PCALighting", "RandomResizedCrop"} <= set(strong)
    assert strong.index("Erasing") > strong.index("Normalize")  # erases to the mean colour


def test_strong_keeps_every_standard_step_with_its_settings():
    """strong is standard plus TrivialAugment and erasing: crop, flip, jitter, lighting and normalisation
    are the same steps with the same settings (a step's repr lists its settings)."""
    standard = [repr(t) for t in build_transform(DC, train=True, preset="standard").pipeline.transforms]
    strong = [repr(t) for t in build_transform(DC, train=True, preset="strong").pipeline.transforms]
    assert [r for r in strong if r in standard] == standard


def test_standard_changes_colours_of_a_flat_image():
    flat = np.full((40, 40, 3), 128, np.uint8)
    t = build_transform(DC, train=True, preset="standard", seed=0)
    means = {round(t(flat).mean().item(), 3) for _ in range(5)}
    assert len(means) > 1


def test_pca_lighting_adds_the_imagenet_eigen_offset():
    op = PCALighting(std=0.1, p=1.0)
    alpha = np.array([1.0, -2.0, 0.5], np.float32)
    img = np.full((4, 4, 3), 100, np.uint8)
    shift = IMAGENET_EIGVEC @ (alpha * IMAGENET_EIGVAL) * 255
    out = op.apply(img, alpha=alpha)
    assert np.array_equal(out[0, 0], np.clip(100 + shift, 0, 255).astype(np.uint8))


def test_augment_preview_writes_an_unnormalised_grid(tmp_path):
    data = tmp_path / "data"
    for cls, colour in (("red", (200, 30, 30)), ("blue", (20, 40, 220))):
        for i in range(2):
            (data / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (48, 48), colour).save(data / cls / f"{i}.png")
    out = tmp_path / "grid.png"
    result = runner.invoke(app, ["augment-preview", "--data", str(data), "--augment", "none", "--output", str(out),
                                 "--backbone", "test_resnet", "--image-size", "32", "--count", "4"])
    assert result.exit_code == 0, result.output
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape == (96 + 12, 4 * 96, 3)  # 4 tiles of 96 px (32 px enlarged) in a row, plus captions
    tiles = {tuple(grid[40, 48 + 96 * i]) for i in range(4)}
    assert tiles == {(200, 30, 30), (20, 40, 220)}  # the original colours: un-normalised, both classes shown
    strong = runner.invoke(app, ["augment-preview", "--data", str(data), "--augment", "strong",
                                 "--output", str(tmp_path / "s.png"), "--backbone", "test_resnet",
                                 "--image-size", "32"])
    assert strong.exit_code == 0 and (tmp_path / "s.png").is_file()
    bad = runner.invoke(app, ["augment-preview", "--data", str(data), "--augment", "wild"])
    assert bad.exit_code == 2 and "wild" in bad.output and "strong" in bad.output
