"""One backbone interface over timm and torchvision: network, head, layers, groups, preprocessing."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from finetune.data.data_config import DataConfig
from finetune.errors import UnknownLayerError, WeightsError
from finetune.models import zoo
from finetune.models.layers import LayerGroup, Unit, build_units, group_by_matcher, group_per_unit
from finetune.models.weights import (
    LoadReport,
    apply_state_dict,
    load_state_dict_file,
    resolve_timm_imagenet,
    resolve_torchvision_imagenet,
)

__all__ = ["Backbone", "LayerGroup", "Unit", "create_backbone", "list_layers", "rebuild_backbone"]
LAYER_ALIASES = ("stem", "head")


class Backbone(nn.Module):
    """A classification network with its head sized to the task, split into named layers.

    Attributes:
        name: The name the user gave ("resnet50", "test_resnet", "tv:resnet18").
        zoo: "timm" or "torchvision".
        model: The network; its state dict keys are what `Unit.param_names` refer to.
        num_classes: Outputs of the head.
        data_config: Preprocessing the pretrained weights expect.
        units: Named layers in input -> output order; the last one is the head.
        groups: Layer groups for discriminative LRs and gradual unfreezing; the last is "head".
        build_options: Builder arguments that shape the computation but are not in the state dict
            (torchvision GoogLeNet/Inception `transform_input`); checkpoints and bundles record
            them so that `create_backbone(..., build_options=...)` rebuilds the same function.
    """

    def __init__(self, name: str, zoo_name: str, model: nn.Module, num_classes: int,
                 data_config: DataConfig, units: list[Unit], groups: list[LayerGroup],
                 build_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.name, self.zoo, self.model = name, zoo_name, model
        self.num_classes, self.data_config = num_classes, data_config
        self.units, self.groups = units, groups
        self.build_options = dict(build_options or {})

    def forward(self, x: Tensor) -> Tensor:
        """Classifies a batch.

        Args:
            x: Images, shape (B, 3, H, W), normalised with `data_config`.

        Returns:
            Logits, shape (B, num_classes), in train and eval mode alike.
        """
        out = self.model(x)
        # Guard for architectures whose train-mode forward returns (logits, aux...) tuples.
        return out[0] if isinstance(out, tuple) else out

    def layer_names(self) -> list[str]:
        """Unit names in order, as accepted by `--freeze-until`."""
        return [u.name for u in self.units]

    def resolve_layer(self, name: str) -> int:
        """Index into `units` of a layer name; "stem" is the first unit and "head" the last.

        Raises:
            UnknownLayerError: Listing every valid name and the aliases.
        """
        names = self.layer_names()
        if name in names:
            return names.index(name)
        if name in LAYER_ALIASES:
            return 0 if name == "stem" else len(names) - 1
        raise UnknownLayerError(
            f"'{name}' is not a layer of {self.name}. Valid layers, in order: {', '.join(names)} "
            f"(aliases: stem = {names[0]}, head = {names[-1]})"
        )

    def no_weight_decay(self) -> tuple[str, ...]:
        """fnmatch patterns of `model` parameters kept out of weight decay (position embeddings,
        class tokens, relative-position tables), on top of every 1-D tensor and bias."""
        return zoo.no_weight_decay_patterns(self.model, self.zoo)

    def head_unit(self) -> Unit:
        """The unit holding the classifier."""
        return self.units[-1]

    def input_limits(self) -> zoo.InputLimits:
        """Which input sides the network's weights take (see `zoo.input_limits`)."""
        return zoo.input_limits(self.model, self.zoo, zoo.resolve_name(self.name)[1])

    def accepts_input(self, side: int) -> bool:
        """Whether a (1, 3, side, side) batch passes through the network: a probe for architectures whose
        metadata names no smallest side (timm's Inception v3 runs out of pixels below 75). The forward
        runs in eval mode without gradients on the parameters' device; every module's mode is restored."""
        modes = [(m, m.training) for m in self.model.modules()]
        device = next(self.model.parameters()).device
        try:
            self.model.eval()
            with torch.no_grad():
                self.model(torch.zeros(1, 3, side, side, device=device))
            return True
        except (RuntimeError, ValueError, AssertionError, IndexError):  # torch's and timm's size errors
            return False
        finally:
            for module, training in modes:
                module.training = training


def create_backbone(
    name: str,
    num_classes: int,
    weights: str = "imagenet",
    *,
    weights_dir: Path | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float | None = None,
    build_options: Mapping[str, Any] | None = None,
    weights_partial: bool = False,
) -> tuple[Backbone, LoadReport]:
    """Builds a backbone with a fresh `num_classes` head and loads its weights.

    Args:
        name: timm model name, or torchvision model name with the "tv:" prefix.
        num_classes: Outputs of the new head.
        weights: "imagenet" (local folder, hub cache or download), "none" (random init), or a path
            to a .safetensors/.pth/.bin/.ckpt state dict or checkpoint.
        weights_dir: Folder searched first for imagenet weights (`<name>.safetensors`, "tv:" -> "tv_").
        drop_rate: Dropout before the classifier; 0 keeps the architecture's default.
        drop_path_rate: Stochastic depth rate; None keeps the architecture's default.
        build_options: Builder arguments recorded with a trained network (`Backbone.build_options`,
            saved in checkpoints and bundles); None: the defaults for `weights`.
        weights_partial: Accept a weights file that leaves more than 10% of the non-head tensors
            unfilled (`weights.MAX_UNFILLED_SHARE`); otherwise that is a WeightsError.

    Returns:
        The backbone and a report of loaded, dropped, missing and unexpected weights.

    Raises:
        UnknownBackboneError: The name is in neither zoo.
        WeightsError: The weights cannot be found, downloaded or read.
    """
    zoo_name, arch = zoo.resolve_name(name)
    if build_options is None:
        build_options = zoo.default_build_options(zoo_name, arch, weights)
    path = None if weights in ("imagenet", "none") else _weights_path(weights)
    drops = dict(drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    if zoo_name == "timm":
        file, source = resolve_timm_imagenet(arch, weights_dir) if weights == "imagenet" else (None, "")
        model = zoo.build_timm(arch, num_classes, file=file, **drops)
        backbone = _wrap(name, zoo_name, model, num_classes, zoo.timm_data_config(model))
        if file is not None:
            return backbone, _timm_file_report(backbone, source)
    else:
        model = zoo.build_torchvision(arch, num_classes, options=build_options, **drops)
        backbone = _wrap(name, zoo_name, model, num_classes, zoo.torchvision_data_config(arch), build_options)
        if weights == "imagenet":
            state_dict, source = resolve_torchvision_imagenet(name, _tv_url(name, arch), weights_dir)
            return backbone, _apply(backbone, state_dict, source, arch)
    if path is None:
        return backbone, LoadReport(source="random init")
    return backbone, _apply(backbone, load_state_dict_file(path), str(path), arch, partial=weights_partial)


def rebuild_backbone(name: object, num_classes: int, weights: str | Path, build_options: object, where: str,
                     *, weights_partial: bool = False) -> tuple[Backbone, LoadReport]:
    """Builds the network a checkpoint or bundle describes, from installed code and the file's own weights.

    Every name, option and count comes from a file that may have been crafted: the name must build
    without a download (`zoo.resolve_saved_name`) and the options must be ones this toolkit records
    (`zoo.check_build_options`), both checked before anything is built. A timm name with a pretrained
    tag is built with pretrained=False: the weights are `weights`, never the hub's.

    Args:
        name: The recorded backbone name.
        num_classes: Outputs of the head (the recorded class count).
        weights: The file holding the weights (a .ckpt, .safetensors...), or "none" when the caller loads them.
        build_options: The recorded build options (`Backbone.build_options`); None: the defaults for a file.
        where: The file the record comes from, for messages.
        weights_partial: Passed to `create_backbone`.

    Raises:
        UnknownBackboneError: A name that is not a local architecture (RemoteBackboneError for hub names).
        FinetuneError: Build options this toolkit never records.
        WeightsError: The weights file cannot be read.
    """
    zoo_name, arch = zoo.resolve_saved_name(name, where)
    options = None if build_options is None else zoo.check_build_options(zoo_name, arch, build_options, where)
    if str(weights) == "imagenet":  # a download: the weights of a saved model come from its file
        raise ValueError("rebuild_backbone takes a weights file or 'none', not 'imagenet'")
    return create_backbone(str(name), num_classes, str(weights), build_options=options, weights_partial=weights_partial)


def _weights_path(weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"--weights '{weights}' is neither 'imagenet', 'none', nor an existing "
                           f"weights file (.safetensors, .pth, .pt, .bin, .ckpt)")
    return path


def _tv_url(name: str, arch: str) -> str:
    weights = zoo.default_weights(arch)
    if weights is None:
        raise WeightsError(f"torchvision has no pretrained weights for {name}; use --weights none "
                           f"or --weights PATH")
    return weights.url


def _apply(backbone: Backbone, state_dict: dict[str, Tensor], source: str, arch: str,
           partial: bool = False) -> LoadReport:
    ignore = zoo.AUX_MODULES.get(arch, ()) if backbone.zoo == "torchvision" else ()
    return apply_state_dict(backbone.model, state_dict, backbone.head_unit().param_names,
                            source=source, ignore=ignore, partial=partial)


def _timm_file_report(backbone: Backbone, source: str) -> LoadReport:
    # timm loads strictly when the class count matches and drops exactly its classifier otherwise.
    pretrained_classes = backbone.model.pretrained_cfg.get("num_classes", backbone.num_classes)
    same = pretrained_classes == backbone.num_classes
    dropped = [] if same else list(backbone.head_unit().param_names)
    return LoadReport(source=source, dropped_head=dropped)


def _wrap(name: str, zoo_name: str, model: nn.Module, num_classes: int,
          data_config: DataConfig, build_options: Mapping[str, Any] | None = None) -> Backbone:
    units = build_units(model, zoo.head_finder(model, zoo_name, num_classes))
    groups = _timm_groups(model, units) if zoo_name == "timm" else None
    return Backbone(name, zoo_name, model, num_classes, data_config, units,
                    groups or group_per_unit(units), dict(build_options or {}))


def _timm_groups(model: nn.Module, units: list[Unit]) -> list[LayerGroup] | None:
    from timm.models import group_parameters

    try:
        matcher = model.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError):
        return None
    by_group = group_parameters(model, matcher)
    group_of = {p: gid for gid, names in by_group.items() for p in names}
    return group_by_matcher(units, group_of)


def list_layers(name: str, num_classes: int = 1000) -> list[tuple[str, int]]:
    """Layer names of a backbone in order with their parameter counts (built without weights)."""
    try:
        # Meta tensors carry shapes only: listing vgg16 allocates no 500 MB of random weights.
        with torch.device("meta"):
            backbone, _ = create_backbone(name, num_classes, weights="none")
    except (RuntimeError, NotImplementedError):  # an init routine that needs real data
        backbone, _ = create_backbone(name, num_classes, weights="none")
    return [(u.name, u.num_params) for u in backbone.units]

