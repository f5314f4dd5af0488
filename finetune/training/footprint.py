"""The memory a training step needs, measured on the network itself before a run starts.

What autograd keeps for the backward pass dominates a step's memory and grows with the input's area:
a side of 2048 px keeps 83 times what 224 px keeps. It is measured, not looked up, by running one
small image through the network under `saved_tensors_hooks`, which see every tensor the backward
pass will need; the figure is then scaled to the run's input side and batch. The estimate lies within
0.80-1.01 of a real step's peak memory growth (benchmarks/results/footprint.md): the backward pass's
own short-lived buffers are left out, so a run is refused only when it clearly cannot fit.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

PROBE_SIDE = 64  # the probe image's side at most: small enough to cost little, large enough that every stage
# of a 32x-downsampling network keeps 2 x 2 pixels; the estimate at 224 px is within 2.3% of a 128 px probe's
# (resnet18/50, convnext_tiny, tf_efficientnet_lite0, mobilenet_v3_small)
ADAMW_STATE = 2  # tensors the optimizer keeps per trainable parameter (AdamW's two moments; SGD keeps <= 1)


@dataclass(frozen=True)
class Footprint:
    """Bytes a training process holds at its peak, by what holds them.

    Attributes:
        activations: What the forward pass of one batch keeps for the backward pass.
        weights: Parameters and buffers, their gradients and the optimizer's state.
        inputs: One batch of input images, float32.
    """

    activations: int
    weights: int
    inputs: int

    @property
    def total(self) -> int:
        return self.activations + self.weights + self.inputs


def saved_bytes(model: nn.Module, side: int, images: int = 1, dtype: torch.dtype | None = None,
                device: torch.device | str = "cpu") -> int:
    """Bytes autograd keeps for the backward pass of `images` images of `side` x `side` px through `model`.

    Only tensors of trainable paths are kept, so frozen parameters (requires_grad False) are
    accounted for as training sees them. The model runs in eval mode (BatchNorm statistics and
    dropout are left untouched); its parameters are not counted, their mixed-precision copies are.

    Args:
        model: The network; not changed.
        side: The probe images' side.
        images: The probe batch.
        dtype: The autocast dtype of mixed precision (None: float32).
        device: Where the model is.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    modes, device = {m: m.training for m in model.modules()}, torch.device(device)  # frozen parts stay in eval
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    x = torch.zeros(images, 3, side, side, device=device)
    try:
        model.eval()
        with torch.enable_grad(), autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)  # the graph, and what it keeps, is freed as the output is dropped
    finally:
        for module, training in modes.items():
            module.training = training
    return sum(kept.values())


def training_footprint(model: nn.Module, side: int, batch: int, dtype: torch.dtype | None = None,
                       device: torch.device | str = "cpu") -> Footprint:
    """The memory one training step of `batch` images of `side` px takes (see Footprint).

    Probes of one and two images at min(side, PROBE_SIDE) px tell what grows with the batch and the
    area (activations) from what does not (mixed-precision copies of the weights); a network that
    accepts only its own input size is probed at `side` itself.
    """
    probe = min(side, PROBE_SIDE)
    try:
        one, two = (saved_bytes(model, probe, n, dtype, device) for n in (1, 2))
    except (RuntimeError, AssertionError, ValueError):  # a fixed input size (ViT position embeddings)
        probe = side
        one, two = (saved_bytes(model, probe, n, dtype, device) for n in (1, 2))
    per_image = max(0, two - one)
    activations = max(0, one - per_image) + per_image * batch * (side / probe) ** 2
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return Footprint(activations=int(activations), weights=weights + trainable * (1 + ADAMW_STATE),
                     inputs=batch * 3 * side * side * 4)
