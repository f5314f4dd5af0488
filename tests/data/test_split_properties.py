"""Properties of the stratified train/val split and of the scan's verdict cache, on generated inputs.

The split's promises (finetune.data.scan.stratified_split): each class with n >= 2 images gives
round(n x val_split) of them to val, at least one and at most n - 1; a single-image class stays in train;
the lists keep the input order; a class's shuffle depends on the seed and its own name only.
"""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune.data.scan import DataWarning, scan_image_folder, stratified_split

from .conftest import save_rgb

SETTINGS = settings(max_examples=80, deadline=None)

names = st.lists(st.text(min_size=1, max_size=8).filter(lambda s: "\x00" not in s and "/" not in s),
                 min_size=1, max_size=6, unique=True)
fractions = st.floats(min_value=0.01, max_value=0.99)


@st.composite
def datasets(draw):
    """(items in a drawn order, sorted class names, images per class)."""
    classes = sorted(draw(names))
    counts = draw(st.lists(st.integers(min_value=0, max_value=40), min_size=len(classes), max_size=len(classes)))
    items = [(Path(f"/data/{label}/{i}.png"), label) for label, n in enumerate(counts) for i in range(n)]
    return draw(st.permutations(items)), classes, counts


@SETTINGS
@given(datasets(), fractions, st.integers(min_value=0, max_value=2**32 - 1))
def test_every_image_lands_in_exactly_one_split_in_input_order(data, fraction, seed):
    items, classes, _ = data
    train, val = stratified_split(items, classes, fraction, seed)
    assert Counter(train) + Counter(val) == Counter(items) and not set(train) & set(val)
    order = {item: i for i, item in enumerate(items)}
    assert [order[it] for it in train] == sorted(order[it] for it in train)
    assert [order[it] for it in val] == sorted(order[it] for it in val)


@SETTINGS
@given(datasets(), fractions, st.integers(min_value=0, max_value=2**32 - 1))
def test_each_class_gives_its_share_to_val_and_keeps_a_train_image(data, fraction, seed):
    items, classes, counts = data
    train, val = stratified_split(items, classes, fraction, seed)
    held, kept = Counter(label for _, label in val), Counter(label for _, label in train)
    for label, n in enumerate(counts):
        if n < 2:
            assert held[label] == 0 and kept[label] == n  # a single image stays in train
            continue
        assert 1 <= held[label] <= n - 1 and kept[label] >= 1
        clamped = held[label] == 1 or held[label] == n - 1
        assert clamped or abs(held[label] - n * fraction) <= 0.5  # the fraction, within rounding


@SETTINGS
@given(datasets(), fractions, st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=2, max_value=30))
def test_a_seed_gives_one_split_and_a_new_class_reshuffles_no_other(data, fraction, seed, extra):
    items, classes, counts = data
    train, val = stratified_split(items, classes, fraction, seed)
    assert stratified_split(list(reversed(items)), classes, fraction, seed)[1] == list(reversed(val))
    new = "~" * 9  # sorts after every drawn name of up to 8 characters: the others keep their labels
    more = items + [(Path(f"/data/new/{i}.png"), len(classes)) for i in range(extra)]
    _, val_more = stratified_split(more, [*classes, new], fraction, seed)
    assert [it for it in val_more if it[1] < len(classes)] == val


@settings(max_examples=15, deadline=None)
@given(st.integers(min_value=1, max_value=10**12), st.booleans())
def test_a_file_rewritten_to_the_same_size_is_decoded_again_when_its_mtime_moves(delta_ns, later):
    """The scan cache keeps a verdict while size and modification time are those recorded: a file
    rewritten with other bytes of the same length and any other mtime gets a fresh verdict."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("a", "b"):
            save_rgb(root / name / "keep.png")
        victim = save_rgb(root / "a" / "victim.png")
        assert scan_image_folder(root, progress=False).bad_files == []  # the readable verdict is cached
        before = victim.stat()
        victim.write_bytes(b"\xff" * before.st_size)  # same size, no longer an image
        os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns + (delta_ns if later else -delta_ns)))
        assert victim.stat().st_size == before.st_size
        with pytest.warns(DataWarning, match="skipped 1 bad file"):
            index = scan_image_folder(root, progress=False)
        assert [p for p, _ in index.bad_files] == [victim]
        assert victim not in [p for p, _ in index.train + index.val]
