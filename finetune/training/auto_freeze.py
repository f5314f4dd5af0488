"""`--freeze-until auto`: how much of the backbone to train, from how much data there is.

The rule follows the transfer-learning folklore (Yosinski et al. 2014; the CS231n notes): with
few images per class, new weights overfit, so only the head trains; with more, later (more
task-specific) groups are unfrozen first, and with thousands per class everything trains.
"""
from __future__ import annotations

import statistics

from finetune.models.backbone import Backbone

# (fewer than this many train images per class, backbone groups that train, plain-words label)
THRESHOLDS = ((10, 0, "only the head"), (100, 1, "the last group and the head"), (1000, None, "the last half of the groups"))
RULE = "< 10 images/class: head only; < 100: last group + head; < 1000: last half of the groups; else everything"


def images_per_class(counts: dict[str, int]) -> float:
    """The median train images per class: one huge class should not unfreeze the network."""
    return float(statistics.median(counts.values()))


def auto_freeze_until(backbone: Backbone, per_class: float) -> tuple[str, str]:
    """Picks the --freeze-until layer for a dataset size.

    Args:
        backbone: Its groups (head last) define the unfreezing steps.
        per_class: Median train images per class.

    Returns:
        (layer name for --freeze-until, a sentence saying why).
    """
    body = backbone.groups[:-1]
    trainable, label = len(body), "everything"
    for limit, groups, words in THRESHOLDS:
        if per_class < limit:
            trainable, label = max(1, len(body) // 2) if groups is None else groups, words
            break
    first = backbone.groups[len(body) - trainable]
    layer = first.unit_names[0]
    why = f"{per_class:g} train images per class (median) -> train {label}: --freeze-until {layer} ({RULE})"
    return layer, why
