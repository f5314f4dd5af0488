"""A network cut in two at the frozen boundary: the frozen prefix and the part that trains.

The frozen-feature cache runs the prefix once per image and trains the rest on its output. The
cut is made on the network's traced graph (torch.fx, with timm's list of modules and functions
that must not be traced through), not on the module list: between two named layers a forward may
do anything (pooling, flattening, a residual add, a positional embedding), and only the graph says
what actually crosses the boundary. Why by hand: timm and torchvision extract a prefix
(`create_feature_extractor`) but neither builds the graph that continues from it.

A cut is refused, with the reason, when the boundary is not a single tensor (a skip connection
crosses it) or the network does not trace.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn


class NotSplittable(Exception):
    """The network cannot be cut exactly at this layer; the message says why."""


@dataclass
class FeatureSplit:
    """The prefix (image -> boundary tensor) and the rest (boundary tensor -> logits).

    The graphs share the network's modules and parameters: training `rest` trains the network.
    `self.training` is fixed when a graph is traced, so each part is traced in both states.

    Attributes:
        boundary: The first layer that trains (a unit name of the backbone).
        prefix: Image -> boundary tensor, traced with the network in eval mode.
        rest_train: Boundary tensor -> logits, traced in the training state.
        rest_eval: The same, traced in eval mode (validation).
    """

    boundary: str
    prefix: fx.GraphModule
    rest_train: fx.GraphModule
    rest_eval: fx.GraphModule

    def rest(self, features: torch.Tensor, training: bool) -> torch.Tensor:
        return (self.rest_train if training else self.rest_eval)(features)


class _Tracer(fx.Tracer):
    """torch.fx's tracer with timm's leaf modules and wrapped functions (those with data-dependent Python)."""

    def __init__(self) -> None:
        from timm.models._features_fx import get_notrace_functions, get_notrace_modules

        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self._leaves = tuple(get_notrace_modules())

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self._leaves) or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module) -> fx.Graph:
    try:
        return _Tracer().trace(model)
    except Exception as e:  # fx raises many kinds (TraceError, TypeError, NotImplementedError...)
        raise NotSplittable(f"the network does not trace ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from e


def _owner(node: fx.Node) -> str | None:
    """The module path a node runs or reads (None for plain functions and methods)."""
    return str(node.target) if node.op in ("call_module", "get_attr") else None


def inside(path: str, units: set[str]) -> bool:
    """Whether a module or tensor path ("layer3.0.conv1.weight") lies in one of the named modules."""
    parts = path.split(".")
    return any(".".join(parts[:i]) in units for i in range(1, len(parts) + 1))


def _cut(model: nn.Module, later_units: set[str], boundary: str) -> tuple[fx.GraphModule, fx.GraphModule]:
    graph = _trace(model)
    nodes = list(graph.nodes)
    first = next((i for i, n in enumerate(nodes) if _owner(n) is not None and inside(_owner(n), later_units)), None)
    if first is None:
        raise NotSplittable(f"no operation of {boundary} or a later layer was found in the traced graph")
    before = set(nodes[:first])
    inputs = [n for n in nodes if n.op == "placeholder"]  # the image, then optional arguments (default None)
    # Values made before the cut and used after it. Parameters and buffers read there (get_attr) and the
    # optional arguments are read again on the other side; anything else must be the one tensor cached.
    crossing = [n for n in nodes[:first] if n.op != "get_attr" and n not in inputs[1:]
                and any(u not in before for u in n.users)]
    if len(crossing) != 1 or crossing[0] is inputs[0]:
        names = ", ".join(n.name for n in crossing) or "nothing"
        raise NotSplittable(f"{len(crossing)} values cross the boundary at {boundary} ({names}), not one tensor")
    cross = crossing[0]

    prefix = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes[:first]:
        env[node] = prefix.node_copy(node, lambda n: env[n])
        if node is cross:
            break
    prefix.output(env[cross])

    rest = fx.Graph()
    env = {cross: rest.placeholder("features")}
    for node in nodes:
        if node in env or node is inputs[0] or (node in before and node.op not in ("get_attr", "placeholder")):
            continue
        env[node] = rest.node_copy(node, lambda n: env[n])
    return _module(model, prefix), _module(model, rest)


def _module(model: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    module = fx.GraphModule(model, graph)
    module.graph.eliminate_dead_code()
    module.recompile()
    return module


def split_network(model: nn.Module, unit_names: list[str], first_trained: int) -> FeatureSplit:
    """Cuts `model` before unit `first_trained` (of `unit_names`, the backbone's units in order).

    The model's own train/eval flags are restored afterwards. Raises NotSplittable with the reason.
    """
    if not 0 < first_trained < len(unit_names):
        raise NotSplittable("nothing is frozen" if first_trained <= 0 else "everything is frozen")
    later, boundary = set(unit_names[first_trained:]), unit_names[first_trained]
    flags = {m: m.training for m in model.modules()}
    try:
        prefix, rest_train = _cut(model, later, boundary)  # in the caller's state: the training one
        model.eval()
        prefix_eval, rest_eval = _cut(model, later, boundary)
    finally:
        for m, flag in flags.items():
            m.training = flag
    if prefix.code != prefix_eval.code:
        # E.g. a top-level dropout outside every layer: training would see other features than validation.
        raise NotSplittable("the frozen part computes differently in training and in evaluation")
    return FeatureSplit(boundary, prefix_eval, rest_train, rest_eval)
