"""The selection metric (--monitor): what best.ckpt, early stopping and EMA selection compare."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from finetune.config import Monitor

MONITORS: tuple[str, ...] = get_args(Monitor)


@dataclass(frozen=True)
class MonitorSpec:
    """One selectable validation figure.

    Attributes:
        key: Its name after "val/" in metrics.csv and the loggers (val/acc1, val/macro_f1...).
        mode: "max" or "min": which way is better.
    """

    key: str
    mode: Literal["max", "min"]

    @property
    def metric(self) -> str:
        """The raw weights' figure: val/KEY."""
        return f"val/{self.key}"

    @property
    def ema_metric(self) -> str:
        """The EMA weights' figure: val_ema/KEY."""
        return f"val_ema/{self.key}"

    @property
    def selected_metric(self) -> str:
        """With --ema: the better of raw and EMA, what best.ckpt is chosen by."""
        return f"val/{self.key}_selected"

    def better(self, a: float, b: float) -> bool:
        """Whether `a` is strictly better than `b`."""
        return a < b if self.mode == "min" else a > b


_SPECS = {"acc1": MonitorSpec("acc1", "max"), "balanced-acc": MonitorSpec("balanced_acc", "max"),
          "macro-f1": MonitorSpec("macro_f1", "max"), "loss": MonitorSpec("loss", "min")}


def best_row(rows: "Iterable[Mapping[str, str]]", monitor: str) -> tuple[str, float, int, float] | None:
    """The epoch best.ckpt keeps, read back from metrics.csv rows: (metric, its value, epoch, val top-1).

    The figure is --monitor's of the better weights with --ema (val/KEY_selected), else of the raw
    weights; ties keep the first epoch, as the checkpoint callback does. None before any validation.
    """
    spec = monitor_spec(monitor)
    best = None
    for row in rows:
        key = spec.selected_metric if row.get(spec.selected_metric) else spec.metric
        value = row.get(key) or ""
        if value and (best is None or spec.better(float(value), best[1])):
            top1 = float(row.get("val/acc1_selected") or row.get("val/acc1") or "nan")
            best = (key, float(value), int(row["epoch"]), top1)
    return best


def selection_metric(monitor: str, ema: bool = False) -> str:
    """The metric best.ckpt is chosen by: val/KEY for --monitor KEY, or with --ema the better of the
    raw and EMA weights' (val/KEY_selected)."""
    spec = monitor_spec(monitor)
    return spec.selected_metric if ema else spec.metric


def monitor_spec(monitor: str) -> MonitorSpec:
    """The spec of a --monitor value.

    Raises:
        ValueError: An unknown name, with the valid ones.
    """
    if monitor not in _SPECS:
        raise ValueError(f"unknown --monitor {monitor!r}; valid: {', '.join(MONITORS)}")
    return _SPECS[monitor]


def class_recalls(confusion: torch.Tensor) -> torch.Tensor:
    """Recall of each class from a confusion matrix (rows: true class); NaN for a class with no images."""
    support = confusion.sum(dim=1).float()
    return torch.where(support > 0, confusion.diagonal().float() / support.clamp(min=1), torch.nan)


class BalancedAccuracy(MulticlassConfusionMatrix):
    """The mean recall over the classes that have images, as scikit-learn's balanced_accuracy_score.

    torchmetrics' macro recall also averages in a class with no images that was predicted (as 0),
    which would make the figure of a small val split depend on which rare classes it happens to
    lack; the confusion matrix is torchmetrics', only the average skips those classes.
    """

    def compute(self) -> torch.Tensor:
        return torch.nanmean(class_recalls(super().compute()))


def monitor_metric(monitor: str, num_classes: int) -> Metric:
    """A torchmetrics object computing the figure from (logits, labels) updates; for "loss" it is
    fed per-batch mean cross-entropy weighted by the batch size (see `update_monitor_metric`)."""
    if monitor == "acc1":
        return MulticlassAccuracy(num_classes, top_k=1, average="micro")
    if monitor == "balanced-acc":  # the mean of the per-class recalls
        return BalancedAccuracy(num_classes)
    if monitor == "macro-f1":
        return MulticlassF1Score(num_classes, average="macro")
    if monitor == "loss":
        return MeanMetric()
    raise ValueError(f"unknown --monitor {monitor!r}; valid: {', '.join(MONITORS)}")


def update_monitor_metric(metric: Metric, logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Feeds one validation batch to a metric made by `monitor_metric`."""
    if isinstance(metric, MeanMetric):
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        metric.update(loss, weight=len(labels))
    else:
        metric.update(logits, labels)
