"""Seeded, class-stratified samples of a split: the images an export calibrates and checks on.

A scan lists images class by class, so "the first N" of a split is one or two classes. int8
activation ranges fitted on one class clip every other class's activations, and a parity check on
one class never sees the others' logit ranges; a stratified random sample sees them all.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

Item = tuple[Path, int]


def stratified_sample(items: list[Item], n: int, seed: int) -> list[Item]:
    """Up to `n` (path, label) pairs with the classes as even as their sizes allow.

    Each class is shuffled with its own seeded generator, then the classes are taken round-robin:
    64 of three large classes gives 22/21/21; a class with fewer images gives all it has and the
    others fill the rest.

    Args:
        items: (path, label) pairs of one split, in any order.
        n: Sample size; all items when it is at least len(items).
        seed: The same seed and items give the same sample.

    Returns:
        The sample, round-robin over the classes (every class appears among the first C items).
    """
    by_class: dict[int, list[Item]] = {}
    for item in sorted(items, key=lambda it: (it[1], str(it[0]))):  # independent of the input order
        by_class.setdefault(item[1], []).append(item)
    queues = []
    for label, members in sorted(by_class.items()):
        rng = np.random.default_rng([seed, zlib.crc32(str(label).encode())])
        queues.append([members[i] for i in rng.permutation(len(members))])
    sample: list[Item] = []
    for depth in range(max((len(q) for q in queues), default=0)):
        sample.extend(q[depth] for q in queues if depth < len(q))
    return sample[:n]
