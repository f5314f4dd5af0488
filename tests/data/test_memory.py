"""Images decoded once into shared memory: the transforms see exactly what they would read from the files."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from rich.console import Console
from torch.utils.data import DataLoader

from finetune.data.data_config import DataConfig
from finetune.data.datamodule import ImageFolderDataModule
from finetune.data.dataset import ImageListDataset
from finetune.data.policy import AugmentPolicy
from finetune.data.transforms import build_transform
from finetune.run.fit import fit

DC = DataConfig(input_size=16, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=0.8)
TRANSLATE = AugmentPolicy(None, True, True, ("test",))
CROP = AugmentPolicy((0.5, 1.0), True, True, ("test",))


def _items(tiny_data):
    return [(p, i) for i, c in enumerate(("circle", "square", "triangle"))
            for p in sorted((tiny_data / "train" / c).iterdir())]


@pytest.mark.parametrize("train, preset, presized", [
    (False, "standard", True),  # the eval transform
    (True, "none", True), (True, "light", True), (True, TRANSLATE, True),
    (True, "standard", False), (True, CROP, False),  # random resized crops: the full image is kept
])
def test_every_pipeline_sees_the_same_inputs_from_memory(tiny_data, train, preset, presized):
    items = _items(tiny_data)
    from_files = ImageListDataset(items, build_transform(DC, train, preset, seed=3))
    from_memory = ImageListDataset(items, build_transform(DC, train, preset, seed=3))
    kept = from_memory.keep_in_memory(threads=2)
    assert (kept.presize is not None) == presized
    if presized:
        assert kept.presize.side == DC.resize_size == 20 and min(kept.shapes[0][:2]) == 20  # from 32 px files
    for i in range(len(items)):
        assert torch.equal(from_files[i][0], from_memory[i][0]), i


def test_the_pixels_are_shared_with_workers_not_copied(tiny_data):
    items = _items(tiny_data)
    dataset = ImageListDataset(items, build_transform(DC, False))
    dataset.keep_in_memory(threads=2)
    assert dataset.decoded.pixels.is_shared()
    expected = torch.cat([x for x, _ in DataLoader(ImageListDataset(items, build_transform(DC, False)), 8)])
    got = torch.cat([x for x, _ in DataLoader(dataset, 8, num_workers=2)])
    assert torch.equal(got, expected)


def test_a_file_that_does_not_decode_is_read_from_disk_with_its_warning(tmp_path):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    dataset = ImageListDataset([(bad, 0), (good, 1)], build_transform(DC, False))
    dataset.keep_in_memory(threads=1)
    assert tuple(dataset.decoded.shapes[0]) == (0, 0, 0)
    with pytest.warns(UserWarning, match="could not be decoded"):
        _, label = dataset[0]
    assert label == 1 and dataset.failed == [bad]


def test_images_over_the_budget_stay_on_disk(tiny_data, monkeypatch):
    monkeypatch.setattr("finetune.data.datamodule.memory_budget", lambda: 100)
    dm = ImageFolderDataModule(tiny_data, DC, batch_size=8, keep_images=True, augment="none")
    dm.setup()
    assert dm.memory_note.startswith("off: the decoded images would take")
    assert all(d.decoded is None for d in dm.datasets.values())


def test_a_run_says_it_keeps_the_images_and_trains_the_same(make_config, tmp_path):
    said = {}
    weights = {}
    for cache in ("auto", "off"):
        out = io.StringIO()
        result = fit(make_config(image_cache=cache, output=tmp_path / cache, export=False, epochs=2, augment="light"),
                     console=Console(file=out, width=200))
        said[cache] = out.getvalue()
        weights[cache] = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    assert "Image cache: 36 train + val images decoded once into memory" in said["auto"]
    assert "Image cache" not in said["off"]
    assert all(torch.equal(weights["auto"][k], weights["off"][k]) for k in weights["off"])
    assert np.isfinite(float(next(iter(weights["auto"].values())).float().sum()))


def test_small_images_are_kept_at_their_own_size_not_enlarged(tmp_path):
    """An input far above the files' size (32 px files, 512 px input): the cache holds the decoded pixels
    and the transform enlarges them at each use, with the same inputs as from the files."""
    from finetune.data.synthetic import make_image_folder

    root = make_image_folder(tmp_path, "shapes", train_per_class=2, val_per_class=1, size=32,
                             classes=("circle", "ring"))
    items = [(p, i) for i, c in enumerate(("circle", "ring")) for p in sorted((root / "train" / c).iterdir())]
    big = DataConfig(input_size=512, interpolation="bicubic", mean=(0.5,) * 3, std=(0.25,) * 3, crop_pct=1.0)
    from_files = ImageListDataset(items, build_transform(big, False))
    from_memory = ImageListDataset(items, build_transform(big, False))
    kept = from_memory.keep_in_memory(threads=2)
    assert kept.presize is not None and kept.presize.side == 512
    assert [tuple(s) for s in kept.shapes] == [(32, 32, 3)] * len(items)
    assert kept.nbytes == len(items) * 32 * 32 * 3
    for i in range(len(items)):
        assert torch.equal(from_files[i][0], from_memory[i][0]), i
    from finetune.data.memory import estimated_bytes, transform_presize

    assert estimated_bytes([p for p, _ in items], transform_presize(from_files.transform)) == kept.nbytes
