"""The frozen-feature cache: same weights as training on images, keyed on everything it depends on."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from rich.console import Console

from finetune.data.datamodule import ImageFolderDataModule
from finetune.data.feature_cache import FeatureDataModule, FeatureStore
from finetune.models.backbone import create_backbone
from finetune.run.fit import fit
from finetune.training.cached_features import CacheChoice, cache_choice, cache_key, prepare_feature_cache
from finetune.training.feature_split import NotSplittable, split_network
from finetune.training.freeze import FreezeSchedule


def _run(config) -> tuple[dict[str, torch.Tensor], str]:
    out = io.StringIO()
    result = fit(config, console=Console(file=out, width=200))
    return torch.load(result.last_checkpoint, weights_only=True)["state_dict"], out.getvalue()


@pytest.mark.parametrize("precision, freeze_until, workers", [("32", "layer3", 0), ("bf16-mixed", "fc", 2)])
def test_cached_and_uncached_training_give_the_same_weights(make_config, tmp_path, precision, freeze_until, workers):
    """Bit for bit, over epochs: the same batches (persistent workers draw the shuffle differently), the same
    autocast, the same graph."""
    common = dict(augment="none", freeze_until=freeze_until, epochs=3, precision=precision, export=False,
                  workers=workers)
    plain, said = _run(make_config(feature_cache="off", output=tmp_path / "images", **common))
    assert "Feature cache: off (--feature-cache off)" in said
    cached, said = _run(make_config(output=tmp_path / "cached", **common))
    assert f"Feature cache: features of {freeze_until}'s input computed" in said
    record = yaml.safe_load((tmp_path / "cached" / "config.yaml").read_text())["resolved"]["feature_cache"]
    assert record["use"] is True and record["why"].startswith("exact")
    assert plain.keys() == cached.keys()
    for name in plain:
        assert torch.equal(plain[name], cached[name]), name
    initial = create_backbone("test_resnet", 3, "none")[0].model.state_dict()  # a trained layer moved: they trained
    trained = [n for n in initial if n.startswith(freeze_until) and n.endswith("weight")]
    assert trained and not torch.equal(plain[f"backbone.model.{trained[0]}"], initial[trained[0]])


def test_a_dropout_outside_the_frozen_layers_keeps_the_run_on_images(make_config, tmp_path):
    """A ViT's head dropout is a module outside every layer: it stays random in training, before the head."""
    config = make_config(backbone="test_vit", augment="none", freeze_until="head", head_dropout=0.5, export=False)
    _, said = _run(config)
    assert "Feature cache: off (the frozen part's output changes in training" in said


def test_a_second_run_reuses_the_features(make_config, tmp_path):
    common = dict(augment="none", freeze_until="layer4", export=False)
    _, first = _run(make_config(output=tmp_path / "a", **common))
    _, second = _run(make_config(output=tmp_path / "b", **common))
    assert "input computed" in first and "input reused" in second


def test_a_network_that_cannot_be_cut_trains_on_images_and_says_why(make_config, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise NotSplittable("2 values cross the boundary at layer4")

    monkeypatch.setattr("finetune.training.cached_features.split_network", refuse)
    weights, said = _run(make_config(augment="none", freeze_until="layer4", export=False))
    assert "Feature cache: off (2 values cross the boundary at layer4)" in said
    assert weights


@pytest.mark.parametrize("settings, schedule, random_augment, world, why", [
    ({}, FreezeSchedule(0), False, 1, "nothing is frozen"),
    ({}, FreezeSchedule(5, ((2, 0),)), False, 1, "shrinks during the run"),
    ({}, FreezeSchedule(5, (), train_bn=True), False, 1, "BatchNorm"),
    ({"mixup": 0.2}, FreezeSchedule(5), False, 1, "mixup/cutmix"),
    ({"ema": True}, FreezeSchedule(5), False, 1, "--ema"),
    ({}, FreezeSchedule(5), False, 2, "one process"),
    ({}, FreezeSchedule(5), True, 1, "random augmentation"),
    ({"feature_cache": "off"}, FreezeSchedule(5), False, 1, "--feature-cache off"),
    ({"limit_train_batches": 2}, FreezeSchedule(5), False, 1, "--limit-train-batches"),
])
def test_the_cache_is_off_wherever_it_would_not_be_exact(make_config, settings, schedule, random_augment, world, why):
    choice = cache_choice(make_config(**settings), schedule, random_augment, world)
    assert not choice.use and why in choice.why


def test_the_cache_is_on_where_exact_and_with_views_when_asked(make_config):
    assert cache_choice(make_config(), FreezeSchedule(5), False, 1) == CacheChoice(
        True, "exact: the frozen part sees no random augmentation")
    views = cache_choice(make_config(cache_views=3), FreezeSchedule(5), True, 1)
    assert views.use and views.views == 3


def _key(backbone, data, items=None, **preprocessing) -> str:
    units = [u.name for u in backbone.units]
    split = split_network(backbone.model, units, 4)
    items = items or {"train": [(p, 0) for p in sorted((data / "train" / "circle").iterdir())]}
    return cache_key(backbone, split, set(units[4:]), {"size": 32, **preprocessing}, items, "32", False)


def test_the_key_follows_frozen_weights_preprocessing_and_image_files(tiny_data, tmp_path):
    backbone, _ = create_backbone("test_resnet", 3, "none")
    units = [u.name for u in backbone.units]
    key = _key(backbone, tiny_data)
    assert _key(backbone, tiny_data) == key
    with torch.no_grad():
        backbone.model.get_submodule(units[-1]).weight.add_(1.0)  # a layer that trains: not in the features
    assert _key(backbone, tiny_data) == key
    assert _key(backbone, tiny_data, size=64) != key
    with torch.no_grad():
        backbone.model.get_submodule(units[1]).running_mean.add_(1.0)  # a frozen buffer
    assert _key(backbone, tiny_data) != key


def test_stored_features_read_back_in_memory_or_mapped_exactly(tmp_path):
    rows = torch.randn(10, 4, 3, 3).to(torch.bfloat16)
    store = FeatureStore("k", tmp_path)
    store.write("train", zip(rows.split(4), torch.arange(10).split(4)), 10, None)
    assert store.has("train")
    in_memory, mapped = store.read("train"), store.read("train", budget=0)
    assert in_memory.in_memory and not mapped.in_memory and isinstance(mapped.array, np.memmap)
    from finetune.data.feature_cache import FeatureDataset

    for stored in (in_memory, mapped):
        dataset = FeatureDataset(stored)
        got = torch.stack([x for x, _ in dataset.__getitems__(list(range(10)))])
        assert got.dtype == torch.bfloat16 and torch.equal(got, rows)
        assert [y for _, y in dataset.__getitems__([3, 7])] == [3, 7]
        for i in (0, 3, 9):  # one image at a time (the DataLoader's path without batched reads)
            x, y = dataset[i]
            assert x.dtype == torch.bfloat16 and torch.equal(x, rows[i]) and y == i


def test_removing_a_store_deletes_its_folder_and_is_quiet_when_it_is_gone(tmp_path):
    store = FeatureStore("k", tmp_path)
    store.write("train", [(torch.zeros(2, 3), torch.zeros(2))], 2, None)
    store.remove()
    assert not store.dir.exists() and not store.has("train") and tmp_path.is_dir()
    store.remove()  # already gone
    FeatureStore("never-written", tmp_path).remove()


def test_a_split_stopped_midway_is_not_kept(tmp_path):
    def broken():
        yield torch.zeros(4, 2), torch.zeros(4)
        raise KeyboardInterrupt

    store = FeatureStore("k", tmp_path)
    with pytest.raises(KeyboardInterrupt):
        store.write("train", broken(), 8, None)
    assert not store.has("train") and not list(store.dir.iterdir())


def test_cache_views_store_k_augmented_views_and_serve_one_per_epoch(tiny_data, tmp_path):
    backbone, _ = create_backbone("test_resnet", 3, "none")
    backbone.model.eval()  # as the frozen layers run (the rest's mode does not matter here)
    images = ImageFolderDataModule(tiny_data, backbone.data_config.with_size(32), batch_size=8, augment="standard")
    cached = prepare_feature_cache(backbone, 5, images, CacheChoice(True, "views", 2), torch.device("cpu"), None,
                                   False, "32", {"size": 32}, root=tmp_path)
    dm = cached.datamodule
    assert isinstance(dm, FeatureDataModule)
    train = dm.features["train"]
    assert train.views == 2 and train.array.shape[:2] == (2, len(images.index.train))
    assert not np.array_equal(train.array[0], train.array[1])  # two different draws of the augmentation
    assert dm.features["val"].views is None
    dm.show_view(3)
    x, _ = dm.datasets["train"][0]
    assert torch.equal(x, torch.from_numpy(np.array(train.array[1][0])))


def test_an_image_file_rewritten_gives_a_new_key(tiny_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    backbone, _ = create_backbone("test_resnet", 3, "none")
    key = _key(backbone, data)
    image = sorted((data / "train" / "circle").iterdir())[0]
    Image.new("RGB", (32, 32), (255, 0, 0)).save(image)
    assert _key(backbone, data) != key


def test_an_image_that_stopped_decoding_is_stored_with_its_substitutes_label(tiny_data, tmp_path):
    """The image loader replaces an undecodable file by the next image, with that image's label."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    backbone, _ = create_backbone("test_resnet", 3, "none")
    backbone.model.eval()
    images = ImageFolderDataModule(data, backbone.data_config.with_size(32), batch_size=8, augment="none")
    items = images.index.train
    last_circle = max(i for i, (_, label) in enumerate(items) if label == 0)
    items[last_circle][0].write_bytes(b"broken since the scan")
    with pytest.warns(UserWarning, match="could not be decoded"):
        cached = prepare_feature_cache(backbone, 5, images, CacheChoice(True, "exact"), torch.device("cpu"), None,
                                       False, "32", {"size": 32}, root=tmp_path / "cache")
    stored = cached.datamodule.features["train"]
    assert int(stored.labels[last_circle]) == items[last_circle + 1][1] != 0
    assert np.array_equal(stored.array[last_circle], stored.array[last_circle + 1])


def test_a_run_with_cache_views_trains_epoch_e_on_view_e_mod_k(make_config, tmp_path):
    import pytorch_lightning as pl

    class Views(pl.Callback):
        seen: list[tuple[int, int]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                self.seen.append((trainer.current_epoch, trainer.datamodule.datasets["train"].view))

    out, views = io.StringIO(), Views()
    fit(make_config(augment="light", cache_views=2, freeze_until="layer4", epochs=3, export=False),
        console=Console(file=out, width=200), callbacks=[views])
    assert "--cache-views 2: 2 augmented views" in out.getvalue()
    assert views.seen == [(0, 0), (1, 1), (2, 0)]
