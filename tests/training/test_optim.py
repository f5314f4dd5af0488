"""The optimizer takes torch's fused step where the parameters allow, with the plain update's result."""
from __future__ import annotations

import copy

import pytest
import torch

from finetune.models.backbone import create_backbone
from finetune.training.optim import build_optimizer, param_groups


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_cpu_optimizers_are_fused_and_match_the_per_tensor_update(name):
    torch.manual_seed(0)
    backbone, _ = create_backbone("test_resnet", 3, weights="none")
    reference = copy.deepcopy(backbone)
    frozen = next(backbone.model.parameters())  # no gradient: must stay bit-identical
    before = frozen.detach().clone()
    optimizers = []
    for model in (backbone, reference):
        groups = param_groups(model, 0.01, 0.05, [0.5] * (len(model.groups) - 1) + [1.0])
        optimizers.append(build_optimizer(name, groups, 0.01, momentum=0.9))
    fused, plain = optimizers
    assert fused.defaults["fused"] is True
    plain.defaults["fused"] = None  # the per-tensor loop torch uses on CPU unless told otherwise
    for group in plain.param_groups:
        group["fused"], group["foreach"] = None, False
    for _ in range(3):
        for model, opt in ((backbone, fused), (reference, plain)):
            x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
            opt.zero_grad()
            model(x).square().mean().backward()
            next(model.model.parameters()).grad = None
            opt.step()
    # Adam divides by sqrt(v) + eps: rounding differs in the last bits; 1e-4 is 1% of one step at lr 0.01.
    for (n, a), b in zip(backbone.model.named_parameters(), reference.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=lambda m: f"{n}: {m}")
    assert torch.equal(frozen, before)


def test_rmsprop_takes_the_multi_tensor_step():
    backbone, _ = create_backbone("test_resnet", 3, weights="none")
    opt = build_optimizer("rmsprop", param_groups(backbone, 0.01, 0.0, [1.0] * len(backbone.groups)), 0.01,
                          momentum=0.9)
    assert opt.defaults["foreach"] is True
