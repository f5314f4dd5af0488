"""Named layers (units) of a network and their coarser layer groups.

A unit is what `--freeze-until` names; a group is what discriminative learning rates and
gradual unfreezing act on. Both cover every parameter exactly once, in input -> output order,
and the classifier head is always last.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Unit:
    """One named layer of the backbone.

    Attributes:
        name: Module path relative to the network, e.g. "layer3", "stages.2", "features.10".
        param_names: Parameter names relative to the network.
        num_params: Number of scalar parameters.
    """

    name: str
    param_names: tuple[str, ...]
    num_params: int


@dataclass(frozen=True)
class LayerGroup:
    """Consecutive units trained with one learning rate and unfrozen together.

    Attributes:
        name: "stem", "layer1", "stages.0", "blocks.3", ... and "head" for the last group.
        unit_names: The units of the group, in order.
        param_names: Parameter names relative to the network.
        num_params: Number of scalar parameters.
    """

    name: str
    unit_names: tuple[str, ...]
    param_names: tuple[str, ...]
    num_params: int


def _expandable(name: str, module: nn.Module) -> bool:
    # A container named with a trailing index (resnet "layer3", shufflenet "stage2") is already one
    # stage of a numbered sequence, and a "stem" is one layer by convention (timm convnext):
    # splitting those into their blocks would make names nobody expects.
    is_container = isinstance(module, (nn.Sequential, nn.ModuleList))
    return is_container and len(module) > 1 and name != "stem" and not name[-1].isdigit()


def _candidate_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level children, with plain containers expanded one level ("features.3")."""
    out = []
    for name, child in model.named_children():
        if _expandable(name, child):
            out.extend((f"{name}.{sub}", grandchild) for sub, grandchild in child.named_children())
        else:
            out.append((name, child))
    return out


def _make_unit(name: str, module: nn.Module, prefix: str, extra: list[str]) -> Unit:
    names = [*extra, *(f"{prefix}.{n}" for n, _ in module.named_parameters())]
    return Unit(name, tuple(names), 0)


def build_units(model: nn.Module, is_head: Callable[[str, nn.Module], bool]) -> list[Unit]:
    """Splits a network into named units; the unit holding the classifier (and any after it) is last.

    Args:
        model: The network.
        is_head: Tells whether a candidate (name, module) contains the final classifier.

    Returns:
        Units in order; parameters on the root module (ViT `cls_token`) join the first unit.
    """
    params = dict(model.named_parameters())
    root = [n for n in params if "." not in n]
    mods = [(n, m) for n, m in _candidate_modules(model) if any(True for _ in m.parameters())]
    head_idx = next((i for i in range(len(mods) - 1, -1, -1) if is_head(*mods[i])), len(mods) - 1)
    units = [_make_unit(n, m, n, root if i == 0 else []) for i, (n, m) in enumerate(mods[:head_idx])]
    # Units after the head (rare) train and freeze with it, so they are folded into it.
    tail = [p for n, m in mods[head_idx:] for p in _make_unit(n, m, n, []).param_names]
    units.append(Unit(mods[head_idx][0], tuple((root if head_idx == 0 else []) + tail), 0))
    return _deduplicated(units, params)


def _deduplicated(units: list[Unit], params: dict[str, nn.Parameter]) -> list[Unit]:
    # A shared (tied) parameter has one canonical name in `params`; it counts in the first unit only.
    taken: set[str] = set()
    out = []
    for unit in units:
        names = tuple(p for p in unit.param_names if p in params and p not in taken)
        taken.update(names)
        out.append(Unit(unit.name, names, sum(params[p].numel() for p in names)))
    return out


def group_per_unit(units: list[Unit]) -> list[LayerGroup]:
    """One group per unit, the head unit forming the "head" group."""
    groups = [LayerGroup(u.name, (u.name,), u.param_names, u.num_params) for u in units[:-1]]
    head = units[-1]
    return groups + [LayerGroup("head", (head.name,), head.param_names, head.num_params)]


def group_by_matcher(units: list[Unit], group_of: dict[str, int]) -> list[LayerGroup]:
    """Merges consecutive body units that a timm group matcher puts in the same group.

    Args:
        units: Units in order, head last.
        group_of: Parameter name -> coarse group index from `timm.models.group_parameters`.

    Returns:
        Groups named "stem" (first), then after their first unit ("layer1", "stages.0"), then "head".
    """
    # timm puts unmatched parameters (the classifier among them) into its last group.
    head_ids = {group_of.get(p) for p in units[-1].param_names}
    buckets: list[list[Unit]] = []
    last_id = -1
    for unit in units[:-1]:
        gid = min((group_of.get(p, -1) for p in unit.param_names), default=-1)
        gid = -1 if gid in head_ids else gid
        # Unmatched units or out-of-order ids (norm layers mapped to the end) join the previous group.
        if buckets and (gid <= last_id or gid < 0):
            buckets[-1].append(unit)
            continue
        buckets.append([unit])
        last_id = max(gid, last_id)
    groups = [_merge("stem" if i == 0 else b[0].name, b) for i, b in enumerate(buckets)]
    return groups + [_merge("head", [units[-1]])]


def _merge(name: str, units: list[Unit]) -> LayerGroup:
    params = tuple(p for u in units for p in u.param_names)
    return LayerGroup(name, tuple(u.name for u in units), params, sum(u.num_params for u in units))
