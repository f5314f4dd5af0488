"""Grad-CAM saliency: where a convolutional network looked for a class, as a heat map over the image.

Grad-CAM (Selvaraju et al. 2017): the weight of each channel k of the last spatial feature map A is the
spatial mean of d(logit_c)/dA_k; the map is ReLU(sum_k weight_k A_k), upsampled to the input. It is written
here rather than taken from the `grad-cam` package: that package comes as a source archive that brings
opencv, ttach and scikit-learn for these few lines, and it needs its target layer named per architecture,
which this toolkit's layer list (`Backbone.units`) already gives for every timm and torchvision network.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from finetune import atomic
from finetune.data.data_config import DataConfig
from finetune.data.images import BadImageError, load_image
from finetune.data.tta import batch_inputs, tta_views
from finetune.errors import FinetuneError
from finetune.inference import Prediction
from finetune.models.backbone import Backbone, rebuild_backbone
from finetune.models.source import BundleConfig, resolve_model_source
from finetune.pathtext import check_model_path
from finetune.training.checkpoint import load_trained

OVERLAY_SIDE = 256  # px of each panel: small inputs (32 px) are enlarged so the map can be seen
HEAT_ALPHA = 0.5  # the heat map's share of an overlay pixel: the image stays visible under it
BATCH = 16  # images through the network at once, with their gradients


class SaliencyError(FinetuneError):
    """The network has no spatial feature map to weigh (a ViT-like model), or saliency cannot be made."""


@dataclass(frozen=True)
class EagerModel:
    """A network rebuilt for gradients, with what is needed to feed and name it.

    Attributes:
        backbone: The network in eval mode, fp32, on CPU, parameters without gradients.
        data_config: Its eval preprocessing.
        class_names: Class names in output order.
    """

    backbone: Backbone
    data_config: DataConfig
    class_names: list[str]


@dataclass(frozen=True)
class SaliencyMap:
    """One written overlay.

    Attributes:
        path: The image it explains.
        overlay: The PNG written: the image as the network saw it, and the heat map over it.
        class_name: The class the map is for.
        probability: That class's softmax probability (plain forward pass, temperature 1).
        layer: The layer whose feature map was weighed, and its grid, e.g. "layer4 (7x7)".
    """

    path: str
    overlay: Path
    class_name: str
    probability: float
    layer: str


def load_eager(model: str | Path) -> EagerModel:
    """The network of a bundle (rebuilt from model.safetensors), a run directory (its bundle, else its best
    checkpoint) or a .ckpt file, ready for gradients.

    Raises:
        FinetuneError: The path holds no model, or its backbone is not installed code.
    """
    source = resolve_model_source(model)
    if source.bundle is not None:
        check_model_path(source.bundle, "model bundle")
        config = BundleConfig.load(source.bundle)
        backbone, _ = rebuild_backbone(config.backbone, config.num_classes, source.bundle / "model.safetensors",
                                       config.build_options, str(source.bundle / "config.json"))
        dc, names = config.data_config, list(config.class_names)
    else:
        trained = load_trained(source.checkpoint)
        backbone, dc, names = trained.backbone, trained.data_config, trained.class_names
    backbone = backbone.float().cpu().eval().requires_grad_(False)  # gradients flow to the input only
    return EagerModel(backbone, dc, names)


def feature_layers(backbone: Backbone) -> list[tuple[str, nn.Module]]:
    """The named layers before the head, input to output: Grad-CAM weighs the last spatial map among them."""
    return [(u.name, backbone.model.get_submodule(u.name)) for u in backbone.units[:-1]]


def grad_cam(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], x: Tensor,
             classes: Tensor | None = None) -> tuple[Tensor, Tensor, str]:
    """Grad-CAM maps of a batch.

    Args:
        model: Maps (B, 3, S, S) to logits (B, C); in eval mode.
        layers: Candidate (name, module) pairs in input -> output order. The last one whose output is a
            spatial map with more than one position is used (NCHW, or NHWC as Swin's); a 1 x 1 map cannot
            say where, so an earlier, larger map is taken then.
        x: Normalised input batch, shape (B, 3, S, S).
        classes: Class per image, shape (B,); None: each image's top class.

    Returns:
        (maps (B, S, S) in [0, 1], each divided by its maximum; the classes (B,); "name (h x w)" of the layer).

    Raises:
        SaliencyError: No layer outputs a spatial map, or tokens follow the last one (a ViT-like model).
    """
    outputs: list[tuple[str, object]] = []
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: outputs.append((name, out)))
             for name, module in layers]
    try:
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))
            name, fmap, channels_last = _spatial_map(outputs)
            classes = logits.argmax(dim=1) if classes is None else classes.to(logits.device)
            (grads,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), fmap)
    finally:
        for hook in hooks:
            hook.remove()
    if channels_last:
        fmap, grads = fmap.permute(0, 3, 1, 2), grads.permute(0, 3, 1, 2)
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (B, K, 1, 1): each channel's importance for the class
    cam = F.relu((weights * fmap).sum(dim=1, keepdim=True))  # (B, 1, h, w): evidence for the class only
    h, w = cam.shape[-2:]
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(torch.finfo(cam.dtype).tiny)
    return (cam / peak[:, None, None]).detach(), classes.detach(), f"{name} ({h}x{w})"


def _spatial_map(outputs: list[tuple[str, object]]) -> tuple[str, Tensor, bool]:
    """(layer name, its 4-D output, whether it is NHWC) of the last map with more than one position."""
    tensors = [(n, t) for n, t in outputs if isinstance(t, Tensor) and t.is_floating_point()]
    spatial = [k for k, (_, t) in enumerate(tensors) if t.dim() == 4 and _grid(t)[0] * _grid(t)[1] > 1]
    tokens = [k for k, (_, t) in enumerate(tensors) if t.dim() == 3]
    if not spatial or (tokens and tokens[-1] > spatial[-1]):
        shape = tuple(tensors[tokens[-1]][1].shape) if tokens else None
        raise SaliencyError(f"no spatial feature map before the head (the last layers output tokens"
                            f"{f', shape {shape}' if shape else ''}, as in a ViT): Grad-CAM weighs the channels "
                            f"of a convolutional feature map")
    name, fmap = tensors[spatial[-1]]
    return name, fmap, _grid(fmap) != tuple(fmap.shape[2:])


def _grid(t: Tensor) -> tuple[int, int]:
    """(h, w) of a 4-D feature map. The inputs are square, so its grid is too: a map whose dims 1 and 2
    are equal and 2 and 3 are not is NHWC (Swin); otherwise NCHW."""
    _, a, b, c = t.shape
    return (a, b) if a == b and b != c else (b, c)


def write_saliency(model: EagerModel, paths: Sequence[str | os.PathLike[str]], folder: Path,
                   classes: Sequence[int] | None = None, names: Sequence[str] | None = None) -> list[SaliencyMap]:
    """Writes one overlay PNG per readable image into `folder` (created; existing files are never replaced).

    Args:
        model: From `load_eager`.
        paths: Image files; those that do not decode are left out.
        folder: Where the PNGs go.
        classes: The class to explain per image; None: the network's top class.
        names: File stems per image (default: each image's own stem); "-2", "-3"... are added when taken.

    Raises:
        SaliencyError: A ViT-like network (no spatial feature map).
    """
    folder.mkdir(parents=True, exist_ok=True)
    written: list[SaliencyMap] = []
    layers, dc = feature_layers(model.backbone), model.data_config
    for start in range(0, len(paths), BATCH):
        part = range(start, min(start + BATCH, len(paths)))
        images = {i: _decoded(paths[i]) for i in part}
        ok = [i for i in part if images[i] is not None]
        if not ok:
            continue
        x = torch.from_numpy(batch_inputs([images[i] for i in ok], dc))
        wanted = None if classes is None else torch.tensor([classes[i] for i in ok])
        try:
            cams, chosen, layer = grad_cam(model.backbone, layers, x, wanted)
        except SaliencyError as e:
            raise SaliencyError(f"no saliency for {model.backbone.name}: {e}") from None
        with torch.no_grad():
            probs = torch.softmax(model.backbone(x), dim=1)
        for k, i in enumerate(ok):
            c = int(chosen[k])
            empty = "; empty: no channel raised the class anywhere" if float(cams[k].max()) == 0 else ""
            caption = f"{model.class_names[c]} {float(probs[k, c]):.2f}  (Grad-CAM, {layer}{empty})"
            stem = names[i] if names is not None else Path(paths[i]).stem
            out = _free_name(folder, stem)
            _save_overlay(images[i], cams[k].numpy(), dc, caption, out)
            written.append(SaliencyMap(os.fspath(paths[i]), out, model.class_names[c], float(probs[k, c]), layer))
    return written


def predicted_saliency(model: str | Path, predictions: Sequence[Prediction],
                       folder: Path) -> tuple[list[SaliencyMap], str | None]:
    """`finetune predict --saliency`: an overlay per predicted image, for the top class it was given.

    Returns:
        The overlays, and why there are none (a ViT-like network), or None.
    """
    done = [p for p in predictions if not p.error]
    try:
        eager = load_eager(model)
        return write_saliency(eager, [p.path for p in done], folder,
                              classes=[eager.class_names.index(p.classes[0]) for p in done]), None
    except SaliencyError as e:
        return [], str(e)


def _decoded(path: str | os.PathLike[str]) -> np.ndarray | None:
    try:
        return load_image(path)
    except BadImageError:
        return None


def _free_name(folder: Path, stem: str) -> Path:
    """folder/stem.png, or stem-2.png, stem-3.png... where taken: an overlay never replaces a file."""
    n, path = 1, folder / f"{stem}.png"
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.png"
    return path


def _save_overlay(image: np.ndarray, cam: np.ndarray, dc: DataConfig, caption: str, path: Path) -> Path:
    """Writes [the image as the network saw it | the heat map over it], with `caption` below.

    The view is the eval crop (shorter side to input_size / crop_pct, center crop) at OVERLAY_SIDE px, so
    that the map, computed on the input_size crop, covers exactly what the network saw.
    """
    import matplotlib

    view = tta_views(image, dc.with_size(OVERLAY_SIDE))[0].astype(np.float32)  # (D, D, 3)
    heat = np.asarray(Image.fromarray(cam.astype(np.float32)).resize(
        (OVERLAY_SIDE, OVERLAY_SIDE), Image.Resampling.BILINEAR)).clip(0, 1)
    colour = matplotlib.colormaps["jet"](heat)[..., :3] * 255
    overlay = (1 - HEAT_ALPHA) * view + HEAT_ALPHA * colour
    sheet = Image.new("RGB", (2 * OVERLAY_SIDE, OVERLAY_SIDE + 20), "white")
    sheet.paste(Image.fromarray(view.astype(np.uint8)), (0, 0))
    sheet.paste(Image.fromarray(overlay.round().clip(0, 255).astype(np.uint8)), (OVERLAY_SIDE, 0))
    ImageDraw.Draw(sheet).text((4, OVERLAY_SIDE + 3), caption, fill="black", font=ImageFont.load_default(size=12))
    with atomic.open_replacing(path, "wb") as f:
        sheet.save(f, format="PNG")
    return path


__all__ = ["EagerModel", "SaliencyError", "SaliencyMap", "feature_layers", "grad_cam", "load_eager",
           "predicted_saliency", "write_saliency"]
