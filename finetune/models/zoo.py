"""The two model zoos behind backbone names: timm ("resnet50") and torchvision ("tv:resnet18").

Everything architecture-specific lives here: building a network with a head sized to the class
count, locating its classifier, and reading the preprocessing its pretrained weights expect.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import timm
import torchvision
from torch import nn

from finetune.data.data_config import DataConfig
from finetune.errors import FinetuneError, UnknownBackboneError, WeightsError
from finetune.models.heads import has_stochastic_depth, no_drop_path_error, set_head_dropout

TV_PREFIX = "tv:"
# torchvision's GoogLeNet/Inception auxiliary classifiers: never built, their weights skipped.
AUX_MODULES = {"inception_v3": ("AuxLogits",), "googlenet": ("aux1", "aux2")}
# Embeddings of torchvision's transformers that its reference recipes keep out of weight decay
# (references/classification/train.py, --transformer-embedding-decay); timm models name their own.
TV_NO_WEIGHT_DECAY = ("*class_token", "*pos_embedding", "*relative_position_bias_table")
IMAGENET_DEFAULT = DataConfig(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 0.875)


@lru_cache(maxsize=1)
def torchvision_names() -> tuple[str, ...]:
    """Classification architectures of torchvision, without the "tv:" prefix."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


def resolve_name(name: str) -> tuple[str, str]:
    """Splits a backbone name into its zoo and architecture.

    Args:
        name: "resnet50", "resnet50.a1_in1k", "hf-hub:org/model" (timm) or "tv:resnet18".

    Returns:
        ("timm" | "torchvision", architecture name inside that zoo).

    Raises:
        UnknownBackboneError: Naming the bad name and suggesting close matches.
    """
    if name.startswith(TV_PREFIX):
        arch = name[len(TV_PREFIX):]
        if arch in torchvision_names():
            return "torchvision", arch
        candidates = [TV_PREFIX + n for n in torchvision_names()]
    else:
        if name.startswith(("hf-hub:", "hf_hub:")) or timm.is_model(name):
            return "timm", name
        # A torchvision-only name typed without its prefix deserves a "tv:" suggestion.
        candidates = timm.list_models() + [TV_PREFIX + n for n in torchvision_names()]
    raise UnknownBackboneError(_unknown_message(name, candidates))


class RemoteBackboneError(UnknownBackboneError):
    """A checkpoint or bundle names an architecture that only a download (or a folder elsewhere) would provide."""


def resolve_saved_name(name: object, where: str) -> tuple[str, str]:
    """The zoo and architecture of a backbone name read from a checkpoint or bundle.

    The file holds the weights, so the architecture must come from installed code: a timm registry
    name or a tv: torchvision name. timm's source prefixes (`hf-hub:`, `local-dir:`) would fetch the
    architecture's config from the hub or read it from another folder, so they are refused before
    anything is fetched or read. A pretrained tag ("resnet50.a1_in1k") is fine: the network is built
    without pretrained weights (`create_backbone` with a weights file or "none").

    Args:
        name: The recorded name (any JSON or checkpoint value).
        where: The file it comes from, for messages.

    Raises:
        RemoteBackboneError: A name with a source prefix other than tv:.
        UnknownBackboneError: Not a string, or in neither zoo, or a pretrained tag timm does not know.
    """
    if not isinstance(name, str) or not name:
        raise UnknownBackboneError(f"{where} records backbone {name!r}, which is not a backbone name")
    source, colon, _ = name.partition(":")
    if colon and source != TV_PREFIX[:-1]:
        raise RemoteBackboneError(
            f"{where} names backbone '{name}': timm would load that architecture from its '{source}:' source "
            f"(the hub or another folder); a checkpoint or bundle must name a timm model (timm.list_models()) "
            f"or a tv: torchvision model, built here from installed code with the file's own weights")
    try:
        zoo_name, arch = resolve_name(name)
    except UnknownBackboneError as e:
        raise UnknownBackboneError(f"{where}: {e}") from None
    if zoo_name == "timm":
        try:
            timm.models.get_pretrained_cfg(arch)  # a registry lookup; raises for a tag timm does not know
        except RuntimeError as e:
            raise UnknownBackboneError(f"{where}: backbone '{name}': {e}") from None
    return zoo_name, arch


def check_build_options(zoo_name: str, arch: str, options: object, where: str) -> dict[str, Any]:
    """The build options a checkpoint or bundle records, checked against those this toolkit writes.

    Only `default_build_options`' keys, with boolean values, are builder arguments a file may set: any
    other key would reach the architecture's constructor unchecked.

    Raises:
        FinetuneError: Not a mapping, an unknown key, or a value that is not true/false.
    """
    allowed = sorted(default_build_options(zoo_name, arch, "none"))
    if not isinstance(options, Mapping) or set(options) - set(allowed) or \
            not all(isinstance(v, bool) for v in options.values()):
        valid = ", ".join(f"{k} (true/false)" for k in allowed) or "none for this architecture"
        shown = repr(options) if len(repr(options)) <= 80 else repr(options)[:77] + "..."
        raise FinetuneError(f"{where} records build_options {shown} for {arch}; valid options: {valid}")
    return dict(options)


def _unknown_message(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    close += [c for c in candidates if c == TV_PREFIX + name and c not in close]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (f"unknown backbone '{name}': not a timm model (timm.list_models()) nor a torchvision "
            f"model with the 'tv:' prefix (e.g. tv:resnet18).{hint}")


def build_timm(arch: str, num_classes: int, *, file: Path | None, drop_rate: float,
               drop_path_rate: float | None) -> nn.Module:
    """Builds a timm network, optionally filled from a local weights file through timm's loader.

    timm drops the pretrained classifier itself when `num_classes` differs from the file's.
    """
    # timm ignores None-valued kwargs, so architectures without dropout options still build.
    kwargs = dict(num_classes=num_classes, drop_rate=drop_rate or None, drop_path_rate=drop_path_rate)
    if file is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(file)))
    try:
        model = timm.create_model(arch, **kwargs)
    except TypeError as e:  # the model class takes no drop_path_rate
        if drop_path_rate:
            raise no_drop_path_error(arch) from e
        raise
    except Exception as e:  # timm raises anything from shape mismatches to unpickling errors
        if file is None:
            raise
        raise WeightsError(f"cannot load {file} into {arch}: {e}") from e
    if drop_path_rate and not has_stochastic_depth(model):  # accepted through **kwargs, then unused
        raise no_drop_path_error(arch)
    return model


def default_build_options(zoo_name: str, arch: str, weights: str) -> dict[str, Any]:
    """Builder arguments that change what a network computes but live in no state dict.

    torchvision's pretrained GoogLeNet and Inception v3 expect `transform_input=True` (they were
    trained on [-1, 1] inputs and the builder switches it on when it loads them), so a network
    built for `weights="imagenet"` gets it too. Anything rebuilt later (checkpoint, bundle,
    teacher) must be built with the options recorded at training time, not these defaults.
    """
    if zoo_name == "torchvision" and arch in AUX_MODULES:
        return {"transform_input": weights == "imagenet"}
    return {}


def build_torchvision(arch: str, num_classes: int, *, options: Mapping[str, Any] | None = None,
                      drop_rate: float = 0.0, drop_path_rate: float | None = None) -> nn.Module:
    """Builds a randomly initialised torchvision network with a `num_classes` head.

    Args:
        arch: torchvision architecture name, without "tv:".
        num_classes: Outputs of the head.
        options: Builder arguments from `default_build_options` or a saved checkpoint/bundle.
        drop_rate: Dropout before the classifier; 0 keeps the architecture's default.
        drop_path_rate: Stochastic depth rate; None keeps the architecture's default.
    """
    extra: dict[str, object] = dict(options or {})
    if arch in AUX_MODULES:
        # Without aux heads the forward returns a plain tensor in train mode too.
        extra.update(aux_logits=False, init_weights=True)
    if drop_path_rate:
        extra["stochastic_depth_prob"] = drop_path_rate
    try:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **extra)
    except TypeError as e:  # the architecture has no stochastic depth argument
        if drop_path_rate:
            raise no_drop_path_error(f"tv:{arch}") from e
        raise FinetuneError(f"tv:{arch} cannot be built: {e}") from e
    if drop_rate:
        # torchvision's `dropout` arguments are not always head dropout (ViT: in the encoder; ResNet:
        # none), so the dropout is placed before the classifier directly.
        set_head_dropout(model, num_classes, drop_rate)
    return model


def default_weights(arch: str) -> torchvision.models.WeightsEnum | None:
    """torchvision's default pretrained weights of an architecture, if it has any."""
    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None


def torchvision_data_config(arch: str) -> DataConfig:
    """Preprocessing of the default weights: crop 224 of a 256 resize -> crop_pct 0.875."""
    weights = default_weights(arch)
    if weights is None:
        return IMAGENET_DEFAULT
    t = weights.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    interpolation = getattr(t.interpolation, "value", str(t.interpolation))
    return DataConfig(crop, tuple(t.mean), tuple(t.std), interpolation, crop / resize)


def timm_data_config(model: nn.Module) -> DataConfig:
    """Preprocessing from the model's pretrained_cfg (mean, std, size, crop, interpolation)."""
    return DataConfig.from_timm(timm.data.resolve_model_data_config(model))


# The total downsampling of a network whose zoo does not state it: every torchvision classification CNN
# (ResNet, VGG, DenseNet, MobileNet, EfficientNet, RegNet, ConvNeXt) reduces its input 32x, SqueezeNet 16x.
DEFAULT_STRIDE = 32


@dataclass(frozen=True)
class InputLimits:
    """Which input sides a network's weights take, read from its zoo's metadata.

    Attributes:
        fixed: Only the pretrained side works (vision transformers with a position table for one grid).
        min_side: The smallest side the weights' metadata allows (1 where it names none).
        stride: The network's total downsampling: inputs that are multiples of it tile its last feature map.
    """

    fixed: bool
    min_side: int
    stride: int


def input_limits(model: nn.Module, zoo_name: str, arch: str) -> InputLimits:
    """timm: `pretrained_cfg` (fixed_input_size, min_input_size) and `feature_info` (the last reduction);
    torchvision: the default weights' `meta["min_size"]`, fixed where it is the pretrained crop itself."""
    if zoo_name == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or {}
        info = getattr(model, "feature_info", None)  # a list of {"module", "num_chs", "reduction"} per stage
        last = info[-1] if isinstance(info, list) and info and isinstance(info[-1], dict) else {}
        return InputLimits(bool(cfg.get("fixed_input_size", False)), int((cfg.get("min_input_size") or (1,))[-1]),
                           int(last.get("reduction") or DEFAULT_STRIDE))
    weights = default_weights(arch)
    if weights is None:
        return InputLimits(False, 1, DEFAULT_STRIDE)
    low = int(weights.meta.get("min_size", (1, 1))[0])
    return InputLimits(low >= int(weights.transforms().crop_size[0]), low, DEFAULT_STRIDE)


def _contains_classifier(module: nn.Module, num_classes: int) -> bool:
    for m in module.modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            return True
        # SqueezeNet classifies with a 1x1 convolution followed by global pooling.
        if isinstance(m, nn.Conv2d) and m.out_channels == num_classes and m.kernel_size == (1, 1):
            return True
    return False


def head_finder(model: nn.Module, zoo: str, num_classes: int) -> Callable[[str, nn.Module], bool]:
    """Returns a test telling whether a top-level unit (name, module) holds the final classifier.

    timm names its classifier in `pretrained_cfg["classifier"]` ("fc", "head.fc"); torchvision
    models are searched for the last Linear / 1x1 Conv2d with `num_classes` outputs.
    """
    declared = getattr(model, "pretrained_cfg", {}).get("classifier") if zoo == "timm" else None
    paths = (declared,) if isinstance(declared, str) else tuple(declared or ())
    paths = tuple(p for p in paths if _has_module(model, p))  # stale cfg entries fall back below

    def is_head(name: str, module: nn.Module) -> bool:
        if paths:
            return any(p == name or p.startswith(name + ".") or name.startswith(p + ".") for p in paths)
        return _contains_classifier(module, num_classes)

    return is_head


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def no_weight_decay_patterns(model: nn.Module, zoo_name: str) -> tuple[str, ...]:
    """fnmatch patterns of parameters that get no weight decay besides 1-D tensors and biases.

    timm models list them in `model.no_weight_decay()` (ViT `pos_embed`, `cls_token`; Swin
    relative-position tables); torchvision models have no such method.
    """
    if zoo_name == "timm":
        declared = getattr(model, "no_weight_decay", None)
        return tuple(declared()) if callable(declared) else ()
    return TV_NO_WEIGHT_DECAY
