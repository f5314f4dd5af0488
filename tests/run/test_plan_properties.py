"""Properties of the plan's class weights for any class names and counts: config.yaml records each class's
weight under its own name, and `--class-weights auto` promises weights that shrink as a class grows and
average 1 over the training images (finetune.data.balance), which holds only with each weight beside
its own class's count."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune.config import RunConfig
from finetune.data.scan import DatasetIndex
from finetune.models.backbone import create_backbone
from finetune.run.plan import resolve_run

names = st.lists(st.text(st.characters(categories=("L", "N")), min_size=1, max_size=8), min_size=2, max_size=8,
                 unique=True)


@functools.cache
def _backbone():
    return create_backbone("test_resnet", 3, "none")[0]


@settings(max_examples=50, deadline=None)
@given(names, st.data())
def test_recorded_class_weights_sit_beside_their_own_classes(classes, data):
    classes = sorted(classes)  # as the scan lists them
    counts = data.draw(st.lists(st.integers(1, 300), min_size=len(classes), max_size=len(classes)))
    train = [(Path(f"/data/{label}/{i}.png"), label) for label, n in enumerate(counts) for i in range(n)]
    index = DatasetIndex(Path("/data"), "flat", classes, train, [])
    config = RunConfig(backbone="test_resnet", data="/data", weights="none", augment="none", image_size=32,
                       freeze_until="stem", class_weights="auto", workers=0)
    recorded = resolve_run(config, index, _backbone()).record()["resolved"]["class_weights"]
    count = dict(zip(classes, counts))
    assert sorted(recorded) == classes
    assert sum(recorded[c] * count[c] for c in classes) / sum(counts) == pytest.approx(1.0, rel=1e-4)
    for a in classes:
        for b in classes:
            if count[a] < count[b]:
                assert recorded[a] >= recorded[b]
            elif count[a] == count[b]:
                assert recorded[a] == pytest.approx(recorded[b])
