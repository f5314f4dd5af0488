"""The catalogue of backbones: names of both zoos, their sizes, and whether weights are local."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from rich.progress import track

from finetune.models import zoo
from finetune.models.packaged_weights import packaged_entry, packaged_source_file
from finetune.models.weights import hf_cached_file, torch_hub_cached_file, weights_dir_file


@dataclass(frozen=True)
class BackboneInfo:
    """One row of `finetune backbones`.

    Attributes:
        name: Name accepted by `--backbone`.
        zoo: "timm" or "torchvision".
        params: Parameter count with the zoo's default head, None if it cannot be counted cheaply.
        local_weights: Where pretrained weights were found on this machine, or None.
    """

    name: str
    zoo: str
    params: int | None
    local_weights: str | None


def _pattern(filter: str | None) -> str:
    if not filter:
        return "*"
    return filter if any(c in filter for c in "*?[") else f"*{filter}*"


def matching_names(filter: str | None = None) -> list[str]:
    """Backbone names (timm, then tv:-prefixed torchvision) matching a substring or wildcard."""
    pattern = _pattern(filter)
    tv = [zoo.TV_PREFIX + n for n in zoo.torchvision_names()]
    return timm.list_models(pattern) + [n for n in tv if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n[3:], pattern)]


def _count_params(name: str) -> int | None:
    zoo_name, arch = zoo.resolve_name(name)
    try:
        # Meta tensors carry shapes only: counting needs no memory and no weights.
        with torch.device("meta"):
            model = timm.create_model(arch) if zoo_name == "timm" else zoo.build_torchvision(arch, 1000)
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is listed without a count
        return None
    return sum(p.numel() for p in model.parameters())


def _local_weights(name: str, weights_dir: Path | None) -> str | None:
    local = weights_dir_file(weights_dir, name)
    if local is not None:
        return str(local)
    zoo_name, arch = zoo.resolve_name(name)
    packaged = packaged_source_file(arch) if zoo_name == "timm" else None
    if packaged is not None:
        return f"package {packaged_entry(arch).distribution} ({packaged})"
    if zoo_name == "timm":
        cfg = timm.models.get_pretrained_cfg(arch)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg else None
        hit = hf_cached_file(hub_id) if hub_id else None
        return f"hub cache ({hit})" if hit else None
    weights = zoo.default_weights(arch)
    hit = torch_hub_cached_file(weights.url) if weights is not None else None
    return f"torch hub cache ({hit})" if hit else None


def list_backbones(filter: str | None = None, weights_dir: Path | None = None,
                   progress: bool = False) -> list[BackboneInfo]:
    """Backbones matching `filter`, with parameter counts and local pretrained weights.

    Example:
        >>> [b.name for b in list_backbones("resnet18")][:2]  # doctest: +SKIP
        ['resnet18', 'resnet18d']
    """
    names = matching_names(filter)
    rows = track(names, description="Counting parameters", transient=True) if progress and len(names) > 20 else names
    return [BackboneInfo(n, zoo.resolve_name(n)[0], _count_params(n), _local_weights(n, weights_dir)) for n in rows]
