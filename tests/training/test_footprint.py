"""The memory a training step needs, measured on the network: checked against hand-counted tensors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from finetune.training.footprint import saved_bytes, training_footprint


def _conv_relu() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())


@pytest.mark.parametrize("side, images", [(8, 1), (16, 1), (16, 3)])
def test_what_the_backward_pass_keeps_is_counted_by_hand(side, images):
    """conv keeps its input (3 channels) for the weight gradient, ReLU its output (4 channels): 7 float32
    planes per image; the conv's own weight is a parameter, not an activation."""
    assert saved_bytes(_conv_relu(), side, images) == images * 7 * side * side * 4


def test_a_frozen_layer_keeps_nothing_and_a_shared_tensor_counts_once():
    """Unfrozen: conv1 keeps the input (3 planes), ReLU its output (4), conv2 the same output again (counted
    once). conv1 frozen: no graph until conv2, which keeps its input for its weight gradient (4 planes)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    assert saved_bytes(model, 8) == 7 * 8 * 8 * 4
    model[0].requires_grad_(False)
    assert saved_bytes(model, 8) == 4 * 8 * 8 * 4


def test_the_footprint_scales_activations_with_area_and_batch_and_counts_the_optimizer_state():
    model = _conv_relu()
    params = sum(p.numel() for p in model.parameters())  # 3*4*9 + 4 = 112
    got = training_footprint(model, side=512, batch=8)
    assert got.activations == 8 * 7 * 512 * 512 * 4
    assert got.weights == params * 4 * (1 + 1 + 2)  # weights, gradients, AdamW's two moments
    assert got.inputs == 8 * 3 * 512 * 512 * 4


def test_probing_leaves_the_network_as_it_was():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)).train()
    model[1].eval()  # a frozen BatchNorm, kept in eval mode inside a training network
    before = {k: v.clone() for k, v in model.state_dict().items()}
    training_footprint(model, side=64, batch=4)
    assert [m.training for m in model] == [True, False, True] and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
