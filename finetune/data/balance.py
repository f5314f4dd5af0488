"""Class imbalance: its measure, per-class loss weights (--class-weights) and sampling weights (--sampler).

Two different remedies. Loss weights keep every image once per epoch and make a rare class's
mistakes cost more; a balanced sampler draws rare-class images (with repetition) as often as
common ones, so every batch sees every class but the common classes' images are seen less often.
Use weights when the rare classes have enough distinct images for a stable gradient; use the
sampler when they have only a handful and whole batches would otherwise miss them. Not both: that
corrects the imbalance twice and over-predicts the rare classes.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from finetune.errors import FinetuneError
from finetune.untrusted import read_json, read_yaml

IMBALANCE_WARN_RATIO = 10.0  # the ratio above which the class counts get a warning (--class-weights, --sampler)


def imbalance_ratio(counts: Mapping[str, int]) -> float:
    """Largest over smallest class count, among classes that have images (inf if one has none)."""
    values = list(counts.values())
    if not values or max(values) == 0:
        return 1.0
    return max(values) / min(values) if min(values) > 0 else float("inf")


def imbalance_warning(counts: Mapping[str, int]) -> str | None:
    """A one-line warning when the train split's imbalance is above 10:1, naming the extremes."""
    ratio = imbalance_ratio(counts)
    if ratio <= IMBALANCE_WARN_RATIO:
        return None
    big, small = max(counts, key=counts.get), min(counts, key=counts.get)
    return (f"class imbalance {ratio:.0f}:1 in train ({big}: {counts[big]} images, {small}: {counts[small]}); "
            f"consider --class-weights auto or --sampler balanced, and --monitor balanced-acc")


def effective_number_weights(counts: Sequence[int]) -> torch.Tensor:
    """Per-class loss weights from the effective number of samples (Cui et al., CVPR 2019).

    E_c = (1 - beta^n_c) / (1 - beta), w_c proportional to 1 / E_c. beta = 1 - 1/N with N the train
    images, the paper's own heuristic, so the rule follows the data instead of a tuned constant:
    for a class much smaller than N, E_c is about n_c (inverse frequency); a class that is a large
    share of N counts for less than its size, because its images overlap more. Plain inverse
    frequency would let one rare class of two images get a weight hundreds of times the others'.
    The weights are scaled so their mean over the training images is 1, which keeps the loss (and
    so the learning rate) on the scale of the unweighted run. A class with no image gets 0.

    Args:
        counts: Train images per class, in label order.
    """
    n = torch.tensor([float(c) for c in counts], dtype=torch.float64)
    total = float(n.sum())
    if total < 1:  # no image at all: beta = 1 - 1/N is undefined, so the loss stays unweighted
        return torch.ones(len(n), dtype=torch.float32)
    beta = 1.0 - 1.0 / total
    effective = (1.0 - beta**n) / (1.0 - beta)
    weights = torch.where(n > 0, 1.0 / effective.clamp(min=1e-12), torch.zeros_like(n))
    weights = weights * total / float((weights * n).sum())
    return weights.float()


def read_class_weights(path: Path, classes: Sequence[str]) -> torch.Tensor:
    """Per-class weights from a YAML or JSON mapping {class: weight} naming every class once.

    Raises:
        FinetuneError: Unreadable file, a class missing or unknown (named, with the valid ones), or a
            weight that is not a number >= 0.
    """
    # A .json file is read as JSON: YAML 1.1 reads an exponent without a dot (json.dump's 1e-05) as a string.
    read = read_json if Path(path).suffix.lower() == ".json" else read_yaml
    values = read(Path(path), "--class-weights")  # an unreadable file raises one FinetuneError line there
    if not isinstance(values, dict):
        raise FinetuneError(f"--class-weights {path}: expected a mapping of class name to weight, "
                            f"got {type(values).__name__}")
    values = {str(k): v for k, v in values.items()}
    unknown, missing = sorted(set(values) - set(classes)), [c for c in classes if c not in values]
    if unknown or missing:
        problems = ([f"unknown classes {', '.join(unknown)}"] if unknown else []) + \
                   ([f"missing classes {', '.join(missing)}"] if missing else [])
        raise FinetuneError(f"--class-weights {path}: {'; '.join(problems)}; the classes are {', '.join(classes)}")
    bad = {k: v for k, v in values.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0}
    if bad:
        raise FinetuneError(f"--class-weights {path}: weights must be numbers >= 0, got {bad}")
    return torch.tensor([float(values[c]) for c in classes], dtype=torch.float32)


def class_weights(setting: str, counts: Mapping[str, int]) -> torch.Tensor | None:
    """The loss weights --class-weights asks for: None (none), effective-number weights (auto), or a file's."""
    if setting == "none":
        return None
    if setting == "auto":
        return effective_number_weights(list(counts.values()))
    return read_class_weights(Path(setting), list(counts))


def balanced_sample_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Per-image sampling weights 1 / (its class's count): every class drawn equally often."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes).double()
    return (1.0 / counts.clamp(min=1))[torch.as_tensor(list(labels), dtype=torch.long)]
