"""Properties of the class-weight vectors (finetune.data.balance) for any class names and counts.

The rule's promises: `--class-weights auto` gives effective-number weights (Cui et al. 2019) in class order,
scaled so their mean over the training images is 1, 0 for a class with no image; for classes much smaller
than the whole set they are about inverse frequency, which scikit-learn's 'balanced' weights are (also
with mean 1 over the images). A weights file gives its numbers in class order whatever its key order.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.utils.class_weight import compute_class_weight

from finetune.data.balance import balanced_sample_weights, class_weights, effective_number_weights

SETTINGS = settings(max_examples=80, deadline=None)
names = st.lists(st.text(st.characters(categories=("L", "N", "P", "Zs")), min_size=1, max_size=10),
                 min_size=2, max_size=10, unique=True)


@st.composite
def class_counts(draw, least: int = 0):
    """{class name: train images}, in a drawn class order."""
    classes = draw(names)
    return {c: draw(st.integers(least, 500)) for c in classes}


@SETTINGS
@given(class_counts(), st.randoms(use_true_random=False))
def test_auto_weights_follow_the_class_order(counts, rnd):
    weights = class_weights("auto", counts)
    order = list(counts)
    rnd.shuffle(order)
    shuffled = class_weights("auto", {c: counts[c] for c in order})
    by_class = dict(zip(counts, weights.tolist()))
    assert shuffled.tolist() == pytest.approx([by_class[c] for c in order], rel=1e-6)


@SETTINGS
@given(class_counts().filter(lambda counts: sum(counts.values()) >= 2))  # a scan has 2+ train images
def test_auto_weights_average_one_over_the_images_and_shrink_as_a_class_grows(counts):
    n = np.array(list(counts.values()), dtype=np.float64)
    w = class_weights("auto", counts).double().numpy()
    assert (w >= 0).all() and (w[n == 0] == 0).all()
    assert (w * n).sum() / n.sum() == pytest.approx(1.0, rel=1e-5)
    present = n > 0
    order = np.argsort(n[present], kind="stable")
    assert np.all(np.diff(w[present][order]) <= 1e-6 * w[present].max())  # more images, no larger weight


@SETTINGS
@given(st.lists(st.integers(1, 60), min_size=20, max_size=80))
def test_classes_much_smaller_than_the_set_get_about_sklearns_balanced_weights(counts):
    """E_c = N(1 - (1 - 1/N)^n_c) lies within n_c (1 - n_c / 2N) and n_c, so once normalised the weights
    are within a factor 1 / (1 - eps) of inverse frequency, eps = max n_c / 2N."""
    labels = np.repeat(np.arange(len(counts)), counts)
    balanced = compute_class_weight("balanced", classes=np.arange(len(counts)), y=labels)
    eps = max(counts) / (2 * sum(counts))
    ratio = effective_number_weights(counts).double().numpy() / balanced
    assert ratio.min() >= (1 - eps) - 1e-5 and ratio.max() <= 1 / (1 - eps) + 1e-5


@SETTINGS
@given(class_counts(), st.randoms(use_true_random=False))
def test_a_weights_file_is_read_in_class_order_whatever_its_key_order(counts, rnd):
    classes = list(counts)
    values = {c: rnd.uniform(0, 10) for c in classes}
    keys = list(classes)
    rnd.shuffle(keys)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.json"
        path.write_text(json.dumps({k: values[k] for k in keys}, ensure_ascii=False), encoding="utf-8")
        got = class_weights(str(path), counts)
    assert got.tolist() == pytest.approx([values[c] for c in classes], rel=1e-6)


@SETTINGS
@given(st.lists(st.integers(0, 9), min_size=1, max_size=200))
def test_the_balanced_sampler_draws_every_present_class_equally_often(labels):
    weights = balanced_sample_weights(labels, 10)
    per_class = torch.zeros(10, dtype=torch.float64).index_add_(0, torch.tensor(labels), weights)
    present = torch.bincount(torch.tensor(labels), minlength=10) > 0
    assert torch.allclose(per_class[present], torch.ones(int(present.sum()), dtype=torch.float64))
    assert (per_class[~present] == 0).all()


def test_a_json_weights_file_with_json_dumps_exponents_is_read_as_numbers(tmp_path):
    """json.dump writes 0.00001 as 1e-05, which YAML 1.1 would read as a string."""
    path = tmp_path / "weights.json"
    path.write_text(json.dumps({"rare": 0.00001, "common": 2.0}))
    assert class_weights(str(path), {"common": 5, "rare": 1}).tolist() == pytest.approx([2.0, 0.00001])
