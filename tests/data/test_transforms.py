"""Transforms: sizes, mean/std and filters come from the DataConfig; eval resize matches PIL."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.data.data_config import DataConfig
from finetune.data.resize import center_crop
from finetune.data.transforms import (
    PILResizeShorter,
    RandomResizedCrop,
    build_eval_transform,
    build_train_transform,
    build_transform,
    pil_resize_shorter,
)


def _expected_constant(dc: DataConfig, value: int) -> torch.Tensor:
    return (value / 255 - torch.tensor(dc.mean)) / torch.tensor(dc.std)


@pytest.mark.parametrize("size", [16, 40])
@pytest.mark.parametrize("train", [True, False])
def test_output_shape_follows_data_config(dc, size, train):
    dc = dc.with_size(size)
    img = np.random.default_rng(0).integers(0, 256, (37, 61, 3), dtype=np.uint8)
    out = build_transform(dc, train=train)(img)
    assert out.shape == (3, size, size) and out.dtype == torch.float32


def _light_train(dc):  # geometry only: standard/strong also change colours, by design
    return build_train_transform(dc, preset="light")


@pytest.mark.parametrize("builder", [_light_train, build_eval_transform])
def test_normalization_uses_data_config_stats(dc, builder):
    out = builder(dc)(np.full((50, 40, 3), 200, np.uint8))
    expected = _expected_constant(dc, 200)
    assert torch.allclose(out, expected[:, None, None].expand_as(out), atol=1e-5)


def _full_image_train_crop(dc: DataConfig):
    """The train preset's random resized crop, pinned to the whole (square) image."""
    crop = build_train_transform(dc).pipeline.transforms[0]
    crop.scale, crop.ratio = (1.0, 1.0), (1.0, 1.0)
    return crop


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos", "nearest"])
def test_train_crop_resizes_like_eval(dc, interpolation):
    # Fine detail (random pixels) shrunk 8x: the train crop must antialias as the eval resize does,
    # or the network trains on aliased pixels and is evaluated on smooth ones.
    dc = DataConfig(32, dc.mean, dc.std, interpolation, crop_pct=1.0)
    img = np.random.default_rng(4).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    train = _full_image_train_crop(dc)(image=img)["image"]
    evaluated = pil_resize_shorter(img, 32, interpolation)
    assert train.shape == evaluated.shape == (32, 32, 3)
    worst = int(np.abs(train.astype(int) - evaluated.astype(int)).max())
    assert worst <= 1, f"train crop differs from the eval resize by up to {worst}/255"


def test_train_crop_upscales_like_eval(dc):
    dc = DataConfig(48, dc.mean, dc.std, "bilinear", crop_pct=1.0)
    img = np.random.default_rng(5).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    train = _full_image_train_crop(dc)(image=img)["image"]
    worst = int(np.abs(train.astype(int) - pil_resize_shorter(img, 48, "bilinear").astype(int)).max())
    assert worst <= 1, f"train crop differs from the eval resize by up to {worst}/255"


@pytest.mark.parametrize(("shape", "expected"), [((30, 60), (20, 40)), ((60, 30), (40, 20)), ((20, 33), (20, 33))])
def test_pil_resize_shorter(shape, expected):
    img = np.zeros((*shape, 3), np.uint8)
    assert pil_resize_shorter(img, 20, "bilinear").shape == (*expected, 3)


def test_eval_is_shorter_side_resize_then_center_crop(dc):
    # input 24, crop_pct 0.75 -> shorter side 32, then the central 24x24
    assert dc.resize_size == 32
    img = np.random.default_rng(1).integers(0, 256, (45, 90, 3), dtype=np.uint8)
    manual = center_crop(pil_resize_shorter(img, 32, dc.interpolation), 24)
    assert manual.shape == (24, 24, 3)
    expected = ((torch.from_numpy(manual).permute(2, 0, 1) / 255 - torch.tensor(dc.mean)[:, None, None])
                / torch.tensor(dc.std)[:, None, None])
    assert torch.allclose(build_eval_transform(dc)(img), expected, atol=1e-5)


def test_eval_resize_antialiases_like_pil():
    # A 1-pixel checkerboard shrunk 4x must average to grey (PIL); cv2's bilinear would alias.
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    img = np.stack([board] * 3, axis=-1)
    ours = pil_resize_shorter(img, 16, "bilinear")
    pil = np.asarray(Image.fromarray(img).resize((16, 16), Image.Resampling.BILINEAR))
    assert np.array_equal(ours, pil)
    assert np.abs(ours.astype(int) - 127).max() <= 2


def test_unknown_names_are_errors(dc):
    with pytest.raises(ValueError, match="valid: nearest, bilinear, bicubic, lanczos"):
        build_eval_transform(DataConfig(8, dc.mean, dc.std, "cubic-ish"))
    with pytest.raises(ValueError, match="valid: none, light, standard, strong"):
        build_transform(dc, train=True, preset="fancy")


def test_train_transform_is_random_but_seedable(dc):
    img = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    a, b = build_train_transform(dc, seed=3), build_train_transform(dc, seed=3)
    first = a(img)
    assert torch.equal(first, b(img))
    assert not all(torch.equal(first, a(img)) for _ in range(3))


def test_a_worker_reseed_gives_the_same_draws_whatever_the_build_seed(dc):
    """Dataloader workers reseed the transform (worker_init_fn): after set_random_seed(s) the draws depend
    on s alone, so two pipelines built with different seeds then agree, and another s disagrees."""
    img = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    a, b, c = (build_train_transform(dc, seed=seed) for seed in (1, 2, 1))
    a.set_random_seed(11), b.set_random_seed(11), c.set_random_seed(12)
    draws_a, draws_b, draws_c = ([t(img) for _ in range(4)] for t in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(draws_a, draws_b))
    assert not all(torch.equal(x, y) for x, y in zip(draws_a, draws_c))


def test_resize_steps_print_their_settings():
    """A pipeline's repr (printed with the transform) names each step's own settings."""
    resize = repr(PILResizeShorter(40, "bicubic"))
    assert resize.startswith("PILResizeShorter(") and "size=40" in resize and "interpolation='bicubic'" in resize
    crop = repr(RandomResizedCrop(size=(24, 24), scale=(0.5, 1.0), ratio=(0.9, 1.1), interpolation="bicubic"))
    assert crop.startswith("RandomResizedCrop(")
    for setting in ("size=(24, 24)", "scale=(0.5, 1.0)", "ratio=(0.9, 1.1)", "pil_interpolation='bicubic'"):
        assert setting in crop, crop


def test_light_preset_keeps_the_eval_geometry_and_only_flips():
    import numpy as np

    from finetune.data.data_config import DataConfig
    from finetune.data.transforms import build_transform

    dc = DataConfig(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875)
    img = np.random.default_rng(0).integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
    eval_out = build_transform(dc, train=False)(img)
    light = build_transform(dc, train=True, preset="light", seed=0)
    outs = [light(img) for _ in range(8)]
    assert all(o.shape == eval_out.shape for o in outs)
    assert all(o.equal(eval_out) or o.equal(eval_out.flip(-1)) for o in outs)
    assert any(o.equal(eval_out.flip(-1)) for o in outs) and any(o.equal(eval_out) for o in outs)
