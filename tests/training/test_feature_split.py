"""Cutting a network at its frozen boundary: the two parts compute what the whole does, and share its weights."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from finetune.models.backbone import create_backbone
from finetune.training.feature_split import NotSplittable, split_network


@pytest.mark.parametrize("name, size", [("test_resnet", 32), ("tv:resnet18", 32), ("mobilenetv3_small_050", 32),
                                        ("test_vit", 32)])
def test_prefix_then_rest_is_the_whole_network_at_every_boundary(name, size):
    backbone, _ = create_backbone(name, 3, "none")
    model, units = backbone.model.eval(), [u.name for u in backbone.units]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        whole = model(x)
        for k in range(1, len(units)):
            split = split_network(model, units, k)
            assert split.boundary == units[k]
            torch.testing.assert_close(split.rest(split.prefix(x), training=False), whole, rtol=0, atol=0)


def test_the_rest_trains_the_networks_own_parameters():
    backbone, _ = create_backbone("test_resnet", 3, "none")
    units = [u.name for u in backbone.units]
    split = split_network(backbone.model, units, len(units) - 2)
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    features = split.prefix(torch.randn(4, 3, 32, 32)).detach()
    split.rest(features, training=True).sum().backward()
    changed = {n for n, p in backbone.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert changed and all(n.startswith((units[-2], units[-1])) for n in changed)
    torch.optim.SGD(backbone.model.parameters(), lr=0.1).step()
    assert any(not torch.equal(p, before[n]) for n, p in backbone.model.named_parameters())


def test_training_and_evaluation_graphs_follow_dropout():
    """`self.training` is fixed at trace time: the rest is traced once in each state. (timm's head dropout
    runs between the pooling and the classifier: cut at the last stage, it is in the rest.)"""
    backbone, _ = create_backbone("test_resnet", 3, "none", drop_rate=0.5)
    units = [u.name for u in backbone.units]
    split = split_network(backbone.model.train(), units, len(units) - 2)
    features = split.prefix(torch.randn(4, 3, 32, 32)).detach()
    assert torch.equal(split.rest(features, training=False), split.rest(features, training=False))
    assert not torch.equal(split.rest(features, training=True), split.rest(features, training=True))


class SkipAcross(nn.Module):
    """A skip connection around b from before an activation: two tensors cross into b."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        return self.head(self.b(torch.relu(h)) + h)


def test_a_skip_connection_across_the_boundary_is_refused_with_the_reason():
    with pytest.raises(NotSplittable, match="2 values cross the boundary at b"):
        split_network(SkipAcross(), ["a", "b", "head"], 1)
    x = torch.randn(3, 4)  # after the add, one tensor crosses again
    model = SkipAcross()
    split = split_network(model, ["a", "b", "head"], 2)
    torch.testing.assert_close(split.rest(split.prefix(x), False), model(x), rtol=0, atol=0)


def test_random_operations_before_the_boundary_are_refused():
    """Head dropout sits before the classifier: a linear probe's input is random in training, not cacheable."""
    backbone, _ = create_backbone("test_resnet", 3, "none", drop_rate=0.5)
    units = [u.name for u in backbone.units]
    with pytest.raises(NotSplittable, match="differently in training and in evaluation"):
        split_network(backbone.model.train(), units, len(units) - 1)


def test_untraceable_networks_and_empty_cuts_are_refused():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            return self.head(h if h.sum() > 0 else -h)  # data-dependent control flow

    with pytest.raises(NotSplittable, match="does not trace"):
        split_network(Branchy(), ["a", "head"], 1)
    with pytest.raises(NotSplittable, match="nothing is frozen"):
        split_network(SkipAcross(), ["a", "b", "head"], 0)
