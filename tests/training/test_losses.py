"""The soft-target loss: smoothing applied once (also with mixing), and Hinton distillation."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from finetune.config import RunConfig
from finetune.data.mixing import MixedBatch
from finetune.training.losses import (
    distillation_kl,
    mixed_soft_targets,
    smooth_one_hot,
    soft_target_cross_entropy,
    training_loss,
)


def test_mixed_smoothed_targets_match_a_hand_computation():
    # C = 4, eps = 0.2: label 0.2/4 + 0.8 = 0.85, others 0.05; lam = 0.7 mixes two such rows.
    target = mixed_soft_targets(torch.tensor([0, 3]), torch.tensor([2, 3]), 0.7, 4, smoothing=0.2)
    expected = torch.tensor([
        [0.7 * 0.85 + 0.3 * 0.05, 0.05, 0.7 * 0.05 + 0.3 * 0.85, 0.05],
        [0.05, 0.05, 0.05, 0.85],
    ])
    assert torch.allclose(target, expected, atol=1e-6)
    assert torch.allclose(target.sum(1), torch.ones(2))


def test_unmixed_smoothing_equals_torch_label_smoothing():
    logits, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    ours = soft_target_cross_entropy(logits, smooth_one_hot(y, 5, 0.1))
    assert torch.allclose(ours, F.cross_entropy(logits, y, label_smoothing=0.1), atol=1e-6)


def _kl_by_hand(s: torch.Tensor, t: torch.Tensor, temp: float) -> torch.Tensor:
    p_t, log_p_s = torch.softmax(t / temp, 1), torch.log_softmax(s / temp, 1)
    return (p_t * (torch.log(p_t) - log_p_s)).sum(1).mean() * temp**2


def test_kd_term_is_zero_when_student_equals_teacher():
    logits = torch.randn(4, 3)
    parts = training_loss(logits, smooth_one_hot(torch.tensor([0, 1, 2, 0]), 3), logits.clone(), kd_alpha=1.0)
    assert parts.total.abs().item() < 1e-6 and parts.kd.abs().item() < 1e-6


def test_kd_loss_matches_hand_computation():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    target = smooth_one_hot(y, 3, 0.1)
    parts = training_loss(s, target, t, kd_alpha=0.3, kd_temperature=2.0)
    ce = -(target * torch.log_softmax(s, 1)).sum(1).mean()
    assert torch.allclose(parts.total, 0.7 * ce + 0.3 * _kl_by_hand(s, t, 2.0), atol=1e-5)
    assert torch.allclose(distillation_kl(s, t, 2.0), _kl_by_hand(s, t, 2.0), atol=1e-5)


def test_kd_term_names_its_class_dimension_so_torch_warns_nothing():
    """An implicit softmax dimension makes torch warn on every training step; the term states its own."""
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distillation_kl(s, t, 2.0)


class _FixedMixer:
    """Mixes sample i with sample B-1-i at lambda 0.7, like a mixup draw that came out 0.7."""

    def __call__(self, x, y):
        return MixedBatch(0.7 * x + 0.3 * x.flip(0), y, y.flip(0), 0.7, "mixup")


def test_module_loss_smooths_once_with_mixing_and_distills(monkeypatch):
    from finetune.training.module import FinetuneModule
    from finetune.training.teacher import Teacher

    # The teacher object is handed to the module directly, so --kd-* without --teacher is allowed here.
    cfg = RunConfig.model_validate(dict(backbone="test_resnet", data=".", weights="none", image_size=32,
                                        label_smoothing=0.2, mixup=1.0, kd_alpha=0.4, kd_temperature=3.0),
                                   context={"unused": "allow"})
    torch.manual_seed(0)
    student = FinetuneModule.from_config(cfg, ["a", "b", "c"])
    teacher_module = FinetuneModule.from_config(cfg.model_copy(update={"mixup": 0.0}), ["a", "b", "c"])
    teacher = Teacher(teacher_module.backbone, student.input_config, ["a", "b", "c"], "test")
    module = FinetuneModule.from_config(cfg, ["a", "b", "c"], backbone=student.backbone, teacher=teacher)
    module.mixer = _FixedMixer()
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    monkeypatch.setattr(module, "log_dict", lambda *a, **k: None)
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    module.train()
    torch.manual_seed(1)
    loss = module.training_step((x, y), 0)
    # by hand: row 0 mixes label 0 (0.7) with label 2 (0.3), each smoothed by 0.2 over 3 classes
    on, off = 0.8 + 0.2 / 3, 0.2 / 3
    target = torch.tensor([[0.7 * on + 0.3 * off, off, 0.7 * off + 0.3 * on],
                           [off, on, off],
                           [0.7 * off + 0.3 * on, off, 0.7 * on + 0.3 * off]])
    xm = 0.7 * x + 0.3 * x.flip(0)
    s, t = module(xm), teacher.backbone(xm)  # student in train mode (batch-stat BN), as in the step
    ce = -(target * torch.log_softmax(s, 1)).sum(1).mean()
    assert math.isclose(loss.item(), (0.6 * ce + 0.4 * _kl_by_hand(s, t, 3.0)).item(), rel_tol=1e-4)
    loss.backward()
    assert all(p.grad is None for p in teacher.backbone.parameters())
    assert any(p.grad is not None for p in module.backbone.parameters())


@pytest.mark.parametrize("off_epoch,expected", [(0, [True, True, True]), (2, [True, True, False])])
def test_mix_off_epoch(off_epoch, expected):
    from finetune.training.module import FinetuneModule

    cfg = RunConfig(backbone="test_resnet", data=".", weights="none", mixup=0.2, mix_off_epoch=off_epoch)
    module = FinetuneModule.from_config(cfg, ["a", "b"])
    assert [module.mixes_in(e) for e in range(3)] == expected
