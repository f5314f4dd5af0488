"""Properties of the frozen-feature cache key: stored features are keyed on everything they depend on,
the number of cached augmented views (--cache-views K) included, so a run never reads a store of other views."""
from __future__ import annotations

import functools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune.data.datamodule import ImageFolderDataModule
from finetune.models.backbone import create_backbone
from finetune.training.cached_features import CacheChoice, cache_key, prepare_feature_cache
from finetune.training.feature_split import split_network

views = st.one_of(st.none(), st.integers(1, 64))


@functools.cache
def _network():
    """test_resnet cut before its fifth unit (built once: the key reads its weights, never changes them)."""
    backbone, _ = create_backbone("test_resnet", 3, "none")
    units = [u.name for u in backbone.units]
    return backbone, split_network(backbone.model, units, 4), set(units[4:])


@settings(max_examples=60, deadline=None)
@given(views, views)
def test_two_view_counts_give_two_keys(tiny_data, a, b):
    backbone, split, later = _network()
    items = {"train": [(p, 0) for p in sorted((tiny_data / "train" / "circle").iterdir())]}
    key_a, key_b = (cache_key(backbone, split, later, {"size": 32, "views": k}, items, "32", False) for k in (a, b))
    assert (key_a == key_b) == (a == b)


def test_a_run_with_other_views_never_reads_the_stored_ones(tiny_data, tmp_path):
    """Filling the cache with 2 views, then asking for 3 and for the single deterministic input: each gets
    its own key and a store of its own number of views."""
    backbone, _ = create_backbone("test_resnet", 3, "none")
    backbone.model.eval()  # as the frozen layers run
    keys = {}
    for k in (2, 3, None):
        images = ImageFolderDataModule(tiny_data, backbone.data_config.with_size(32), batch_size=8,
                                       augment="standard" if k else "none")
        cached = prepare_feature_cache(backbone, 5, images, CacheChoice(True, "views", k), torch.device("cpu"), None,
                                       False, "32", {"size": 32}, root=tmp_path)
        assert not cached.reused and cached.datamodule.features["train"].views == k
        keys[k] = cached.key
    assert len(set(keys.values())) == 3
