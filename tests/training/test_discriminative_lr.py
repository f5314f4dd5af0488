"""--lr-decay, --backbone-lr-mult, --scale-lr, schedules and optimizers: the LRs each group gets."""
from __future__ import annotations

import math

import pytest
import torch

from finetune.run.fit import fit
from finetune.training.module import FinetuneModule
from finetune.training.optim import discriminative_mults
from finetune.training.plan_table import plan_rows
from finetune.training.schedules import ScheduleFactor

CLASSES = ["a", "b", "c"]


def test_lr_decay_multiplies_per_group_and_replaces_backbone_mult():
    assert discriminative_mults(4, 0.5, 0.1) == [0.125, 0.25, 0.5, 1.0]
    assert discriminative_mults(4, None, 0.1) == [0.1, 0.1, 0.1, 1.0]


def test_plan_shows_each_groups_lr(make_config):
    module = FinetuneModule.from_config(make_config(lr=0.01, lr_decay=0.5), CLASSES)
    lrs = {r.group: r.lr for r in plan_rows(module)}
    assert lrs["head"] == pytest.approx(0.01) and lrs["layer4"] == pytest.approx(0.005)
    assert lrs["stem"] == pytest.approx(0.01 * 0.5 ** 5)
    module = FinetuneModule.from_config(make_config(lr=0.01, backbone_lr_mult=0.2), CLASSES)
    assert {r.group: r.lr for r in plan_rows(module)}["layer1"] == pytest.approx(0.002)


def test_default_backbone_mult_is_one_and_older_runs_keep_theirs(make_config, test_resnet_weights):
    tuned = FinetuneModule.from_config(make_config(lr=0.01, weights=str(test_resnet_weights), freeze_until=None),
                                       CLASSES)
    assert {r.group: r.lr for r in plan_rows(tuned)}["layer1"] == pytest.approx(0.01)  # one LR, as measured best
    # a checkpoint of an earlier version saved None for "default": 0.1 with pretrained weights, 1 without
    older = FinetuneModule.from_config(make_config(lr=0.01, weights=str(test_resnet_weights), backbone_lr_mult=None,
                                       freeze_until=None), CLASSES)
    assert {r.group: r.lr for r in plan_rows(older)}["layer1"] == pytest.approx(0.001)
    # make_config: weights none
    scratch = FinetuneModule.from_config(make_config(lr=0.01, backbone_lr_mult=None), CLASSES)
    assert {r.group: r.lr for r in plan_rows(scratch)}["layer1"] == pytest.approx(0.01)


def test_scale_lr_applies_the_linear_scaling_rule(make_config):
    module = FinetuneModule.from_config(make_config(lr=0.1, scale_lr=True, batch_size=64), CLASSES)
    assert plan_rows(module)[-1].lr == pytest.approx(0.1 * 64 / 256)
    assert plan_rows(module, world_size=2)[-1].lr == pytest.approx(0.1 * 128 / 256)


def test_weight_decay_spares_biases_and_norms(make_config):
    from finetune.training.optim import param_groups

    module = FinetuneModule.from_config(make_config(), CLASSES)
    groups = param_groups(module.backbone, 0.1, 0.05, module.lr_mults())
    decay = {g["name"]: g["weight_decay"] for g in groups}
    assert decay["stem"] == 0.05 and decay["stem/no_decay"] == 0.0 and decay["head/no_decay"] == 0.0
    no_decay_ids = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    bn = module.backbone.model.bn1
    assert id(bn.weight) in no_decay_ids and id(module.backbone.model.fc.bias) in no_decay_ids


@pytest.mark.parametrize("name,expect", [
    ("cosine", lambda f: f(0) == 1.0 and f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)),
    ("constant", lambda f: f(0) == f(99) == 1.0),
    ("step", lambda f: f(6 * 10) == 1.0 and f(7 * 10) == pytest.approx(0.1) and f(14 * 10) == pytest.approx(0.01)),
    ("onecycle", lambda f: f(0) == pytest.approx(1 / 25) and f(30) == pytest.approx(1.0) and f(100) < 1e-5),
])
def test_schedule_shapes(name, expect):
    assert expect(ScheduleFactor(name, total_steps=100, steps_per_epoch=10, step_size=7, gamma=0.1))


def test_warmup_and_min_lr():
    f = ScheduleFactor("cosine", total_steps=100, steps_per_epoch=10, warmup_steps=10, min_factor=0.1)
    rising = [f(s) for s in range(11)]
    assert rising == sorted(rising) and rising[0] == pytest.approx(1 / 11) and rising[10] == 1.0
    assert f(100) == pytest.approx(0.1) and f(55) == pytest.approx(0.1 + 0.9 * 0.5)


def test_group_ratios_hold_at_every_step(make_config, group_lrs):
    recorder = group_lrs
    config = make_config(epochs=2, lr=0.01, lr_decay=0.5, warmup_epochs=1, schedule="step",
                     step_size=1, gamma=0.25, min_lr=0.004)
    fit(config, callbacks=[recorder])
    steps = recorder.steps  # 24 images / 8 = 3 steps per epoch
    assert len(steps) == 6
    for lrs in steps:
        head = lrs["head"]
        assert lrs["layer4"] == pytest.approx(0.5 * head) and lrs["stem/no_decay"] == pytest.approx(0.5 ** 5 * head)
    heads = [s["head"] for s in steps]
    # warmup over the first epoch (3 steps): 1/4, 2/4, 3/4 of 0.01; then the step schedule's x0.25 at
    # epoch 1 would give 0.0025, held at the --min-lr floor of 0.004
    assert heads[:3] == pytest.approx([0.0025, 0.005, 0.0075]) and heads[3:] == pytest.approx([0.004] * 3)


@pytest.mark.parametrize("optimizer,extra,state_key", [("sgd", {"nesterov": True}, "momentum_buffer"),
                                                        ("adamw", {}, "exp_avg")])
def test_optimizer_choice_reaches_the_checkpoint(make_config, optimizer, extra, state_key):
    result = fit(make_config(optimizer=optimizer, epochs=1, limit_train_batches=1, **extra))
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    opt = ckpt["optimizer_states"][0]
    assert any(state_key in s for s in opt["state"].values())
    assert opt["param_groups"][0].get("nesterov", False) is bool(extra.get("nesterov"))
    assert math.isfinite(result.best_val_acc1)
