"""Metrics on hand-computed examples, and temperature scaling of an over-confident model."""
from __future__ import annotations

import numpy as np
import pytest

from finetune.data.tta import softmax
from finetune.evaluation import metrics
from finetune.evaluation.calibration import fit_temperature

NAMES = ["a", "b", "c"]


def test_confusion_and_per_class_figures():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 2, 2])
    cm = metrics.confusion_matrix(labels, preds, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    rows = {r["class"]: r for r in metrics.per_class(cm, NAMES)}
    assert rows["a"] == {"class": "a", "precision": 1.0, "recall": 2 / 3, "accuracy": 5 / 6, "support": 3}
    assert rows["b"]["precision"] == 0.5 and rows["b"]["recall"] == 0.5 and rows["b"]["accuracy"] == 4 / 6
    assert rows["c"]["precision"] == 0.5 and rows["c"]["recall"] == 1.0
    worst = metrics.worst_confused(cm, NAMES)
    assert [(w["true"], w["predicted"], w["count"]) for w in worst] == [("a", "b", 1), ("b", "c", 1)]
    assert [w["share_of_true"] for w in worst] == [1 / 3, 1 / 2]  # of the 3 a's and the 2 b's


def test_worst_confused_lists_equal_counts_in_reading_order():
    """Ties (here every mistake counted once, one pair twice) come true class first, then predicted class, so
    the same confusion matrix always gives the same list, whatever the sort's algorithm does with ties."""
    cm = np.ones((12, 12), dtype=int) * 7  # 12 classes, 7 right each...
    cm[~np.eye(12, dtype=bool)] = 1  # ...and one image of each class taken for each other class
    cm[3, 5] = 2
    names = [f"c{i}" for i in range(12)]
    worst = metrics.worst_confused(cm, names, n=6)
    assert [(w["true"], w["predicted"], w["count"]) for w in worst] == [
        ("c3", "c5", 2), ("c0", "c1", 1), ("c0", "c2", 1), ("c0", "c3", 1), ("c0", "c4", 1), ("c0", "c5", 1)]


def test_worst_confused_lists_five_pairs_by_default_the_largest_first():
    """metrics.json and the console list the five most confused pairs: here 4 classes with 12 distinct
    off-diagonal counts 1..12, so the list is the cells holding 12, 11, 10, 9 and 8."""
    cm = np.diag([50, 50, 50, 50])
    cm[~np.eye(4, dtype=bool)] = np.arange(1, 13)  # row-major: (0,1)=1, (0,2)=2, ..., (3,2)=12
    worst = metrics.worst_confused(cm, ["a", "b", "c", "d"])
    assert [(w["true"], w["predicted"], w["count"]) for w in worst] == [
        ("d", "c", 12), ("d", "b", 11), ("d", "a", 10), ("c", "d", 9), ("c", "b", 8)]


def test_a_confidence_on_a_bin_edge_falls_in_the_lower_bin():
    """Bins are (lower, upper]: with 4 bins a confidence of exactly 0.5 is counted in (0.25, 0.5], 0.75 in
    (0.5, 0.75] and 1.0 in the last; 0.2 (five classes, all equal) in the first. An empty bin reports 0."""
    probs = np.array([[0.5, 0.5, 0, 0, 0], [0.75, 0.25, 0, 0, 0], [1.0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0],
                      [0.2, 0.2, 0.2, 0.2, 0.2]])
    bins = metrics.calibration_bins(probs, np.array([0, 0, 0, 1, 3]), bins=4)
    assert [(b["lower"], b["upper"]) for b in bins] == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    assert [b["count"] for b in bins] == [1, 2, 1, 1]
    assert [b["accuracy"] for b in bins] == [0.0, 0.5, 1.0, 1.0]
    assert [b["confidence"] for b in bins] == [0.2, 0.5, 0.75, 1.0]
    empty = metrics.calibration_bins(probs[1:3], np.array([0, 0]), bins=4)  # nothing at or below 0.5
    assert [(b["count"], b["accuracy"], b["confidence"]) for b in empty[:2]] == [(0, 0.0, 0.0), (0, 0.0, 0.0)]


def test_the_calibration_error_of_no_images_is_nan():
    assert np.isnan(metrics.expected_calibration_error(np.zeros((0, 3)), np.zeros(0, dtype=int)))


def test_top1_with_tied_probabilities_is_the_argmax_the_predictions_show():
    """A tie is broken as argmax breaks it, toward the first class, so top-1 agrees with the predicted labels
    eval and predict report. Here 10 of 30 classes tie for the highest probability: 5, 6, 8, 9, 14, ..."""
    row = np.array([1, 1, 1, 1, 0, 2, 2, 0, 2, 2, 0, 1, 1, 0, 2, 2, 0, 0, 0, 2, 0, 1, 2, 2, 0, 0, 1, 2, 1, 0], float)
    probs = np.stack([row / row.sum()] * 3)
    labels = np.array([5, 6, 9])
    assert metrics.topk_accuracy(probs, labels, 1) == np.mean(probs.argmax(axis=1) == labels) == 1 / 3
    assert metrics.topk_accuracy(probs, labels, 3) == 2 / 3  # 5, 6 and 8 come first; 9 is fourth


def test_topk_and_ece_by_hand():
    probs = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4]])
    labels = np.array([0, 1, 1, 2])
    assert metrics.topk_accuracy(probs, labels, 1) == 0.5
    assert metrics.topk_accuracy(probs, labels, 2) == 1.0
    assert metrics.topk_accuracy(probs, labels, 5) == 1.0  # capped at 3 classes
    # bins of width 1/15: 0.9 (right), 0.6 (wrong), 0.7 (right), 0.5 (wrong) each alone in its bin
    expected = (abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.7) + abs(0 - 0.5)) / 4
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(expected)


def _overconfident(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a 70%-accurate classifier, scaled up 8x: confident far beyond its accuracy."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), labels] += 1.5
    return logits * 8, labels


def test_temperature_scaling_lowers_ece_and_keeps_top1():
    logits, labels = _overconfident()
    t = fit_temperature(logits, labels)
    assert t > 2
    before = metrics.expected_calibration_error(softmax(logits), labels)
    after = metrics.expected_calibration_error(softmax(logits, t), labels)
    assert after < before / 2
    np.testing.assert_array_equal(softmax(logits, t).argmax(1), logits.argmax(1))


def test_balanced_accuracy_and_macro_f1_by_hand():
    # 6 of class 0 (5 right), 2 of class 1 (1 right), 2 of class 2 (0 right, both called 0).
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    preds = np.array([0, 0, 0, 0, 0, 1, 1, 0, 0, 0])
    probs = np.eye(3)[preds] * 0.8 + 0.2 / 3
    scores = metrics.accuracy_summary(probs, labels)
    assert scores["top1"] == pytest.approx(0.6)
    assert scores["balanced_acc"] == pytest.approx((5 / 6 + 1 / 2 + 0) / 3)
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in ((5 / 8, 5 / 6), (1 / 2, 1 / 2), (0, 0))]
    assert scores["macro_f1"] == pytest.approx(sum(f1) / 3)


def test_balanced_accuracy_ignores_classes_without_images_like_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score

    labels, preds = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])  # class 2 predicted once, never present
    scores = metrics.accuracy_summary(np.eye(3)[preds], labels)
    with pytest.warns(UserWarning):  # scikit-learn says it ignored the absent class
        expected = balanced_accuracy_score(labels, preds)
    assert scores["balanced_acc"] == pytest.approx(expected) == pytest.approx(0.75)
