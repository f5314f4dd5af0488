"""The one training loss: soft-target cross-entropy, label smoothing, and distillation on top.

Targets are always probability vectors (B, C). Label smoothing is applied here and only here,
when the hard labels become soft targets: mixing hands over its two label sets and lambda, never
smoothed targets, so smoothing cannot be counted twice (timm's `Mixup` smooths by default and a
`LabelSmoothingCrossEntropy` on top would smooth again).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def smooth_one_hot(y: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """Hard labels to smoothed one-hot targets.

    Args:
        y: Class indices, shape (B,).
        num_classes: C.
        smoothing: Probability mass spread uniformly over all C classes.

    Returns:
        Targets, shape (B, C), rows summing to 1: 1 - eps + eps/C on the label, eps/C elsewhere.
    """
    off = smoothing / num_classes
    target = torch.full((y.shape[0], num_classes), off, device=y.device, dtype=torch.float32)
    return target.scatter_(1, y.long().view(-1, 1), 1.0 - smoothing + off)


def mixed_soft_targets(y: Tensor, y_partner: Tensor, lam: float, num_classes: int,
                       smoothing: float = 0.0) -> Tensor:
    """Soft targets of a mixed batch: lam x smooth(y) + (1 - lam) x smooth(y_partner).

    Smoothing is linear, so this equals smoothing the mixture once: eps is never applied twice.

    Args:
        y: Labels of the images as loaded, shape (B,).
        y_partner: Labels of the images mixed into them, shape (B,).
        lam: Share of the original image (area share for cutmix).
        num_classes: C.
        smoothing: Label smoothing eps.

    Returns:
        Targets, shape (B, C).
    """
    target = smooth_one_hot(y, num_classes, smoothing)
    if lam >= 1.0:
        return target
    return lam * target + (1.0 - lam) * smooth_one_hot(y_partner, num_classes, smoothing)


def soft_target_cross_entropy(logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Mean over the batch of -sum_c w_c target_c log softmax(logits)_c (w_c = 1 without weights).

    With class weights each class's share of a (smoothed, mixed) target is weighted, as torch's
    cross_entropy does for probability targets, and the mean is over images, not over weights: the
    weights (mean 1 over the training images, see `finetune.data.balance`) keep the loss scale.

    Args:
        logits: Shape (B, C).
        target: Probabilities, shape (B, C).
        class_weights: Shape (C,), or None.
    """
    weighted = target if class_weights is None else target * class_weights.to(target)
    return torch.sum(-weighted * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton's KD term: T^2 x KL(softmax(teacher/T) || softmax(student/T)), mean over the batch.

    The T^2 factor keeps the gradient scale of the soft term independent of T.

    Args:
        student_logits: Shape (B, C).
        teacher_logits: Shape (B, C); no gradient flows into them.
        temperature: T > 0.
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float().detach() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@dataclass(frozen=True)
class LossSpec:
    """The training loss's settings, as plain values (stored in checkpoints).

    Attributes:
        label_smoothing: Eps of the soft targets, applied once (also to mixed targets).
        kd_alpha: Weight of the distillation term (with a teacher).
        kd_temperature: Softmax temperature of distillation.
    """

    label_smoothing: float = 0.0
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0


@dataclass
class LossParts:
    """The training loss and its terms (for logging); `kd` is None without a teacher."""

    total: Tensor
    task: Tensor
    kd: Tensor | None = None


def training_loss(logits: Tensor, target: Tensor, teacher_logits: Tensor | None = None,
                  kd_alpha: float = 0.5, kd_temperature: float = 4.0, class_weights: Tensor | None = None) -> LossParts:
    """(1 - A) x soft-target CE + A x KD with a teacher; the soft-target CE alone without one.

    Args:
        logits: Student logits, shape (B, C).
        target: Soft targets (already smoothed and mixed), shape (B, C).
        teacher_logits: Teacher logits on the same (mixed) images, shape (B, C), or None.
        kd_alpha: A, the weight of the distillation term.
        kd_temperature: T.
        class_weights: Per-class weights of the task term (--class-weights), shape (C,), or None.
    """
    task = soft_target_cross_entropy(logits, target, class_weights)
    if teacher_logits is None:
        return LossParts(task, task)
    kd = distillation_kl(logits, teacher_logits, kd_temperature)
    return LossParts((1.0 - kd_alpha) * task + kd_alpha * kd, task, kd)
