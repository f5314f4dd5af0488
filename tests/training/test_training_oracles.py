"""The optimizer, the weight EMA and the layer groups against torch's and timm's own implementations."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import group_parameters
from timm.utils import ModelEmaV3
from torch import nn

from finetune.config import RunConfig
from finetune.models.backbone import create_backbone
from finetune.training.callbacks.ema import EmaCallback, WeightEma
from finetune.training.module import FinetuneModule


# ----- the optimizer: AdamW's decoupled decay, not Adam's L2 term ---------------------------------------
def _module_optimizer(weight_decay: float) -> tuple[FinetuneModule, torch.optim.Optimizer]:
    """The optimizer a run with the default --optimizer trains with, its LR schedule held at 1."""
    config = RunConfig(backbone="test_resnet", data=".", weights="none", lr=0.01, weight_decay=weight_decay)
    module = FinetuneModule.from_config(config, ["a", "b", "c"])
    module._schedule_factor = lambda lr: (lambda step: 1.0)  # no trainer to size the schedule; the peak LR
    return module, module.configure_optimizers()["optimizer"]


def _step_with(opt_class, params: list[torch.Tensor], grads: list[torch.Tensor], groups: list[dict]) -> list:
    """One step of a torch optimizer over copies of `params`, grouped and configured as `groups`."""
    copies = [p.detach().clone().requires_grad_(True) for p in params]
    by_id = {id(p): c for p, c in zip(params, copies)}
    for c, g in zip(copies, grads):
        c.grad = g.clone()
    opt = opt_class([{"params": [by_id[id(p)] for p in group["params"]], "lr": group["lr"],
                      "weight_decay": group["weight_decay"]} for group in groups])
    opt.step()
    return copies


def test_default_optimizer_takes_adamws_decoupled_step():
    torch.manual_seed(0)
    module, optimizer = _module_optimizer(weight_decay=0.5)
    assert any(g["weight_decay"] > 0 for g in optimizer.param_groups)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    x = torch.randn(4, 3, 32, 32)
    module.backbone(x).square().mean().backward()
    grads = [p.grad.clone() for p in params]
    adamw = _step_with(torch.optim.AdamW, params, grads, optimizer.param_groups)
    adam = _step_with(torch.optim.Adam, params, grads, optimizer.param_groups)
    optimizer.step()
    for p, expected in zip(params, adamw):
        torch.testing.assert_close(p.detach(), expected.detach(), rtol=1e-5, atol=1e-6)
    # the check can tell the two apart: Adam's L2 term moves the decayed weights elsewhere
    assert max(float((a - w).detach().abs().max()) for a, w in zip(adam, adamw)) > 1e-4


# ----- the weight EMA --------------------------------------------------------------------------------
def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    net[0].requires_grad_(False)  # a frozen layer: unchanged by training, so both averages keep it
    return net.train()


def _train_steps(net: nn.Module, steps: int, on_step) -> None:
    """A few SGD steps in training mode (BatchNorm statistics move), calling on_step(k) after each."""
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    for k in range(steps):
        g = torch.Generator().manual_seed(k)
        x, y = torch.randn(8, 3, 8, 8, generator=g) + k * 0.1, torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        on_step(k)


@pytest.mark.parametrize(("decay", "warmup"), [(0.9, False), (0.99, True), (0.5, True)])
def test_ema_matches_timm_model_ema_v3(decay, warmup):
    net = _bn_net()
    ours = WeightEma(net, decay=decay, warmup=warmup)
    theirs = ModelEmaV3(net, decay=decay, use_warmup=warmup)

    def update(k: int) -> None:
        ours.update(net)
        # timm counts from 1 and its first counted update copies, as ours does with warmup; without a step
        # it uses the decay itself, as ours does without warmup
        theirs.update(net, step=k + 1 if warmup else None)

    _train_steps(net, 6, update)
    expected = theirs.module.state_dict()
    for name, value in ours.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():  # validation runs the copy in eval mode: BatchNorm on its running statistics
        expected_out = theirs.module(x)
        assert expected_out.std(dim=0).min() > 1e-3  # the outputs depend on the input: a live network
        for _ in range(2):  # the second pass: the first must not have moved the running statistics
            torch.testing.assert_close(ours.module(x), expected_out, rtol=1e-5, atol=1e-6)


def test_ema_callback_validates_an_eval_mode_copy():
    """The callback's copy is made while the module trains; its outputs must still be eval-mode outputs."""
    module = FinetuneModule.from_config(RunConfig(backbone="test_resnet", data=".", weights="none"), ["a", "b"])
    module.train()
    callback = EmaCallback(decay=0.9, warmup=False)
    callback.setup(None, module, "fit")
    reference = copy.deepcopy(module.backbone.model).eval()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(callback.ema.module(x), reference(x))
        torch.testing.assert_close(callback.ema.module(x), reference(x))  # and running statistics untouched


# ----- layer groups follow timm's coarse group matcher --------------------------------------------------
@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"])
def test_layer_groups_follow_timms_group_matcher(name):
    """Each of timm's coarse groups lies in one of ours (the classifier in "head"), in timm's order."""
    backbone, _ = create_backbone(name, 3, weights="none")
    model = timm.create_model(name, num_classes=3)
    timm_groups = group_parameters(model, model.group_matcher(coarse=True))
    ours = {p: i for i, g in enumerate(backbone.groups) for p in g.param_names}
    head = set(backbone.groups[-1].param_names)
    assert set(ours) == {n for n, _ in model.named_parameters()}
    last = -1
    for gid in sorted(timm_groups):
        body = [p for p in timm_groups[gid] if p not in head]
        if not body:
            continue
        where = {ours[p] for p in body}
        assert len(where) == 1, f"timm group {gid} ({body[:3]}...) split across our groups {where}"
        (index,) = where
        if gid < max(timm_groups):  # timm's last group gathers what its matcher leaves over (final norms)
            assert index >= last, f"timm group {gid} lands in our group {index}, before group {last}"
            last = index
