"""Classification metrics from predicted probabilities: top-k, per-class, confusion, calibration."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ECE_BINS = 15  # the usual choice since Guo et al. 2017


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, shape (C, C): row = true class, column = predicted class."""
    return np.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows of `probs` (N, C) whose true label is among the k most probable classes."""
    k = min(k, probs.shape[1])  # top-5 of 3 classes is top-3
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def per_class(cm: np.ndarray, class_names: Sequence[str]) -> list[dict]:
    """Precision, recall, one-vs-rest accuracy and support of each class from a confusion matrix.

    Accuracy of class c is (TP + TN) / N for the binary task "c or not c". A class never predicted
    has precision 0 (no true positives to credit), as scikit-learn's zero_division=0.
    """
    total, tp = cm.sum(), np.diag(cm)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    rows = []
    for c, name in enumerate(class_names):
        tn = total - predicted[c] - actual[c] + tp[c]
        rows.append({"class": name, "precision": _ratio(tp[c], predicted[c]), "recall": _ratio(tp[c], actual[c]),
                     "accuracy": _ratio(tp[c] + tn, total), "support": int(actual[c])})
    return rows


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def calibration_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per confidence bin (equal width on [0, 1]): count, mean confidence, accuracy."""
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)  # (lo, hi] bins, 0 in the first
    out = []
    for b in range(bins):
        mask = idx == b
        n = int(mask.sum())
        out.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": n,
                    "confidence": float(conf[mask].mean()) if n else 0.0,
                    "accuracy": float(correct[mask].mean()) if n else 0.0})
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: sum over bins of (bin count / N) * |accuracy - mean confidence|."""
    stats, n = calibration_bins(probs, labels, bins), len(labels)
    return float(sum(s["count"] / n * abs(s["accuracy"] - s["confidence"]) for s in stats)) if n else float("nan")


def worst_confused(cm: np.ndarray, class_names: Sequence[str], n: int = 5) -> list[dict]:
    """The `n` largest off-diagonal cells: true class, predicted class, count, share of the true class."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:n]
    pairs = []
    for flat in order:
        t, p = divmod(int(flat), cm.shape[1])
        if off[t, p] == 0:
            break
        pairs.append({"true": class_names[t], "predicted": class_names[p], "count": int(off[t, p]),
                      "share_of_true": _ratio(off[t, p], cm[t].sum())})
    return pairs


def class_balanced_scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Balanced accuracy (the mean of the class recalls) and macro-F1, as training validates them
    (the same torchmetrics functions, so `eval` and metrics.csv agree)."""
    import torch
    from torchmetrics.functional.classification import multiclass_confusion_matrix, multiclass_f1_score

    from finetune.training.monitor import class_recalls

    preds, target, classes = torch.from_numpy(probs), torch.from_numpy(labels).long(), probs.shape[1]
    balanced = torch.nanmean(class_recalls(multiclass_confusion_matrix(preds, target, classes)))  # classes with images
    return {"balanced_acc": float(balanced),
            "macro_f1": float(multiclass_f1_score(preds, target, classes, average="macro"))}


def accuracy_summary(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1, top-5 (capped at the class count), balanced accuracy, macro-F1 and ECE of (N, C) probabilities."""
    return {"top1": topk_accuracy(probs, labels, 1), "top5": topk_accuracy(probs, labels, 5),
            **class_balanced_scores(probs, labels), "ece": expected_calibration_error(probs, labels)}
