"""PNG figures of a run and an evaluation: learning curves, confusion matrix, reliability diagram."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from finetune.figures import save_figure, subplots
from finetune.stats import wilson_interval
from finetune.training.callbacks.epoch_record import read_rows

MAX_ANNOTATED_CLASSES = 25  # beyond this, per-cell numbers become unreadable
# Below this many images a bin's 95% interval spans about half the axis (Wilson: 4 of 9 right, 0.19-0.73):
# its bar says little, and a plot of mostly such bins is labelled as such.
THIN_BIN = 10


def read_epoch_metrics(metrics_csv: Path) -> dict[str, dict[int, float]]:
    """metric name -> epoch (counted from 1) -> value, from a run's metrics.csv (one row per epoch; runs of
    earlier versions wrote Lightning's sparse rows and named the train loss train/loss_epoch)."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for row in read_rows(metrics_csv):
        for key in ("train/loss", "train/loss_epoch", "val/loss", "train/acc1", "val/acc1"):
            if row.get(key):
                series[key.removesuffix("_epoch")][int(row["epoch"])] = float(row[key])
    return series


def plot_curves(metrics_csv: str | Path, path: str | Path) -> Path:
    """Train vs val loss and top-1 per epoch, side by side; the gap between them shows overfitting."""
    series = read_epoch_metrics(Path(metrics_csv))
    fig, axes = subplots(1, 2, figsize=(10, 4))
    for ax, (metric, label) in zip(axes, (("loss", "loss"), ("acc1", "top-1 accuracy"))):
        for split, style in (("train", "o-"), ("val", "s--")):
            key = f"{split}/{metric}"
            points = sorted(series.get(key, {}).items())
            if points:
                ax.plot([e for e, _ in points], [v for _, v in points], style, label=split)
        ax.set(xlabel="epoch", ylabel=label, title=f"{label}: train vs val")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, Path(path))


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | Path,
                   title: str = "Confusion matrix") -> Path:
    """Row-normalised confusion matrix (colour = share of the true class), counts in the cells."""
    n = len(class_names)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.45 * n, 30)
    fig, ax = subplots(figsize=(side + 1.5, side))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(n), class_names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=f"{title} ({int(cm.sum())} images)")
    if n <= MAX_ANNOTATED_CLASSES:
        for t in range(n):
            for p in range(n):
                ax.text(p, t, str(cm[t, p]), ha="center", va="center",
                        color="white" if rates[t, p] > 0.5 else "black", fontsize=9)
    return save_figure(fig, Path(path))


def plot_reliability(bins: list[dict], ece: float, path: str | Path, title: str = "Reliability") -> Path:
    """Accuracy per confidence bin (bars, with the 95% Wilson interval of each bin's accuracy) against the bin's
    mean confidence (red marks) and the diagonal, with the share of images per bin below.

    The gap between a bar's top and its red mark is the bin's miscalibration; an interval wider than
    that gap says the bin holds too few images to tell (a few dozen images spread over 15 bins), and
    the title says so when most bins are that thin.
    """
    lower = np.array([b["lower"] for b in bins])
    width = bins[0]["upper"] - bins[0]["lower"]
    acc = np.array([b["accuracy"] for b in bins])
    conf = np.array([b["confidence"] for b in bins])
    counts = np.array([b["count"] for b in bins])
    used = counts > 0
    centre = lower + width / 2
    intervals = np.array([wilson_interval(round(a * n), int(n)) for a, n in zip(acc[used], counts[used])])
    fig, (top, bottom) = subplots(2, 1, figsize=(5, 6), height_ratios=(3, 1), sharex=True)
    top.bar(lower[used], acc[used], width=width, align="edge", color="tab:blue", alpha=0.6, edgecolor="black",
            label="accuracy")
    if used.any():
        top.errorbar(centre[used], acc[used], yerr=np.abs(intervals.T - acc[used]), fmt="none", ecolor="black",
                     capsize=2, label="95% interval")
    top.plot(centre[used], conf[used], "_", color="tab:red", markersize=12, markeredgewidth=2,
             label="mean confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    thin = used.any() and np.median(counts[used]) < THIN_BIN
    note = f" ({int(counts.sum())} images: most bins too few to tell)" if thin else ""
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"{title}: ECE {ece:.3f}{note}")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(lower, counts / max(counts.sum(), 1), width=width, align="edge", color="gray", edgecolor="black")
    bottom.set(xlabel="confidence (max probability)", ylabel="share of images")
    return save_figure(fig, Path(path))
