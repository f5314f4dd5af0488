"""Stratified samples for int8 calibration and the parity check."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from finetune.bundling.sampling import stratified_sample


def _items(sizes):
    return [(Path(f"c{label}/{i:03d}.png"), label) for label, n in enumerate(sizes) for i in range(n)]


def test_sample_spreads_over_classes_and_small_classes_give_all_they_have():
    items = _items([50, 3, 20])
    sample = stratified_sample(items, 12, seed=42)
    assert Counter(label for _, label in sample) == {0: 5, 1: 3, 2: 4}
    assert len(set(sample)) == 12 and set(sample) <= set(items)
    assert {label for _, label in sample[:3]} == {0, 1, 2}  # any prefix of C items covers every class


def test_sample_is_seeded_and_independent_of_the_input_order():
    items = _items([30, 30])
    assert stratified_sample(items, 10, seed=1) == stratified_sample(items[::-1], 10, seed=1)
    assert stratified_sample(items, 10, seed=1) != stratified_sample(items, 10, seed=2)
    assert stratified_sample(items, 10, seed=1) != items[:5] + items[30:35]  # random, not the first of each class
    assert sorted(stratified_sample(items, 100, seed=1)) == sorted(items)
