"""`--freeze-until auto` (the default): how much of the backbone to train, from how much data there is.

The rule follows the transfer-learning folklore (Yosinski et al. 2014; the CS231n notes): later
(more task-specific) groups are unfrozen first, and with thousands per class everything trains. The
folklore's "only the head with very few images" did not hold: at 5 train images per class the head
alone at the default LR scored far below the last group + head on every task measured, and varied
wildly from seed to seed (benchmarks/results/freeze-default.md, "5 train images per class"), so the
last group trains however few the images.

Measured (benchmarks/results/freeze-default.md, tf_efficientnet_lite0 with real ImageNet weights,
32 px, 10 train images per class, test top-1 over 3 seeds): training the last group + head instead
of every layer took faces 0.817 -> 0.961, textures 0.716 -> 0.902, silhouettes 0.448 -> 0.657; at
400 per class, half of the groups scored level with all of them (0.969 vs 0.971).

The size rule assumes the frozen features suit the data. Before freezing anything, the run checks
that (finetune.training.feature_fit): when the last group's features fit the train images no better
than the first group's, the pretraining is from another domain and every layer trains.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable

from finetune.config import RunConfig
from finetune.models.backbone import Backbone
from finetune.training.feature_fit import FeatureFit

# (fewer than this many train images per class, backbone groups that train, plain-words label)
THRESHOLDS = ((100, 1, "the last group and the head"), (1000, None, "the last half of the groups"))
RULE = "< 100 images/class: last group + head; < 1000: last half of the groups; else everything"


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


def auto_without_data(config: RunConfig) -> str | None:
    """Why `auto` means "nothing frozen" whatever the data, or None when the data decides: nothing
    pretrained to keep (--weights none), or another setting that defines the frozen part
    (--freeze-policy, --freeze-epochs, --unfreeze-every: as without --freeze-until)."""
    if config.weights == "none":
        return "--weights none (random init): every layer trains"
    shaping = [f"--{k.replace('_', '-')}" for k in ("freeze_policy", "freeze_epochs", "unfreeze_every")
               if getattr(config, k) is not None]
    return f"{' and '.join(shaping)} set the frozen part" if shaping else None


def resolve_freeze_until(config: RunConfig, backbone: Backbone, train_counts: dict[str, int],
                         feature_fit: Callable[[], FeatureFit | None] | None = None) -> tuple[str | None, str | None]:
    """--freeze-until as the run uses it: a layer name, or None (nothing frozen); `auto` follows
    the data (auto_freeze_until) unless auto_without_data says otherwise.

    Args:
        feature_fit: Measures the pretrained features on the train images; called only when the
            size rule would freeze something. When the last group fits no better than the first,
            nothing is frozen. None: the size rule alone.

    Returns:
        (the value, "auto: why" for config.yaml's sources; None when the value was given).
    """
    if config.freeze_until != "auto":
        return config.freeze_until, None
    fixed = auto_without_data(config)
    if fixed is not None:
        return None, f"auto: {fixed}"
    layer, why = auto_freeze_until(backbone, images_per_class(train_counts))
    if layer == backbone.units[0].name or feature_fit is None:  # nothing frozen: no features to check
        return layer, f"auto: {why}"
    try:
        fit = feature_fit()
    except Exception as e:  # noqa: BLE001 - an advisory check: a network it cannot read must not stop the run
        return layer, f"auto: {why}; the features were not checked ({type(e).__name__}: {e})"
    if fit is not None and fit.deep_features_no_better:
        return None, (f"auto: the pretrained {fit.last} fits this data no better than its {fit.first} "
                      f"({fit.describe()}): the weights come from another domain, so every layer trains "
                      f"(the size rule would have frozen up to {layer})")
    checked = f"; the features fit the data ({fit.describe()})" if fit is not None else ""
    return layer, f"auto: {why}{checked}"
