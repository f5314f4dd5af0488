"""The training loss against torch's and timm's own implementations, and scipy's KL divergence.

The toolkit's loss is a mean over images of a (weighted) soft-target cross-entropy. torch's
`cross_entropy` with probability targets is that mean; with hard labels and class weights torch
divides by the summed weights instead, so its `reduction="sum"` over N is the oracle there.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.special import softmax
from scipy.stats import entropy
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy

from finetune.config import RunConfig
from finetune.data.scan import scan_image_folder
from finetune.models.backbone import create_backbone
from finetune.run.plan import resolve_run
from finetune.training.losses import (
    distillation_kl,
    mixed_soft_targets,
    smooth_one_hot,
    soft_target_cross_entropy,
    training_loss,
)

CLASS_COUNTS = [2, 3, 7, 20]


def _batch(num_classes: int, seed: int, n: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (N, C), labels (N,) and positive class weights (C,) of mean about 1."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, num_classes, (n,), generator=g)
    weights = torch.rand(num_classes, generator=g, dtype=torch.float64) * 2 + 0.1
    return logits, labels, weights


def _torch_ce(logits, labels, weights=None, smoothing=0.0) -> torch.Tensor:
    """torch's cross-entropy of hard labels, summed and divided by the images (not by their weights)."""
    return F.cross_entropy(logits, labels, weight=weights, label_smoothing=smoothing, reduction="sum") / len(labels)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("num_classes", CLASS_COUNTS)
def test_smoothed_cross_entropy_matches_torch(num_classes, smoothing):
    logits, labels, _ = _batch(num_classes, seed=num_classes)
    target = smooth_one_hot(labels, num_classes, smoothing)
    expected = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    torch.testing.assert_close(training_loss(logits, target).total.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("num_classes", CLASS_COUNTS)
def test_class_weighted_cross_entropy_matches_torch(num_classes, smoothing):
    logits, labels, weights = _batch(num_classes, seed=10 + num_classes)
    target = smooth_one_hot(labels, num_classes, smoothing)
    got = training_loss(logits, target, class_weights=weights).total.double()
    torch.testing.assert_close(got, _torch_ce(logits, labels, weights, smoothing), rtol=1e-6, atol=1e-6)
    # torch's probability-target form of the same loss: the mean over images
    one_hot = F.one_hot(labels, num_classes).double()
    expected = F.cross_entropy(logits, one_hot, weight=weights, label_smoothing=smoothing)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lam", [1.0, 0.7, 0.5, 0.13])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("num_classes", CLASS_COUNTS)
def test_mixed_target_loss_matches_torch_and_timm(num_classes, smoothing, lam):
    logits, labels, weights = _batch(num_classes, seed=20 + num_classes)
    partner = labels.flip(0)  # timm's Mixup pairs each image with the batch reversed
    target = mixed_soft_targets(labels, partner, lam, num_classes, smoothing)
    # timm's targets for the same pairs, and its soft-target loss
    timm_target = mixup_target(labels, num_classes, lam, smoothing)
    torch.testing.assert_close(target.double(), timm_target.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(training_loss(logits, target).total.double(),
                               SoftTargetCrossEntropy()(logits, timm_target.double()), rtol=1e-6, atol=1e-6)
    # cross-entropy is linear in the target: lam x loss(y) + (1 - lam) x loss(partner), smoothed once each
    expected = lam * _torch_ce(logits, labels, weights, smoothing) + (1 - lam) * _torch_ce(logits, partner, weights,
                                                                                           smoothing)
    got = soft_target_cross_entropy(logits, target, weights).double()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def _reference_kd(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """Hinton et al. 2015: T^2 x mean over images of KL(softmax(teacher / T) || softmax(student / T))."""
    p_teacher, p_student = softmax(teacher / temperature, axis=1), softmax(student / temperature, axis=1)
    return temperature**2 * float(np.mean([entropy(p, q) for p, q in zip(p_teacher, p_student)]))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 7.5])
@pytest.mark.parametrize("num_classes", CLASS_COUNTS)
def test_distillation_kl_matches_scipy(num_classes, temperature):
    student, labels, _ = _batch(num_classes, seed=30 + num_classes)
    teacher = torch.randn_like(student) * 4
    expected = _reference_kd(student.numpy(), teacher.numpy(), temperature)
    assert float(distillation_kl(student, teacher, temperature)) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    torch_kl = F.kl_div(F.log_softmax(student / temperature, 1), F.softmax(teacher / temperature, 1),
                        reduction="batchmean") * temperature**2
    assert float(distillation_kl(student, teacher, temperature)) == pytest.approx(float(torch_kl), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_total_loss_weighs_task_and_distillation(alpha):
    logits, labels, weights = _batch(5, seed=40)
    teacher = torch.randn_like(logits)
    student = logits.clone().requires_grad_(True)
    teacher_in = teacher.clone().requires_grad_(True)
    parts = training_loss(student, smooth_one_hot(labels, 5, 0.1), teacher_in, alpha, 3.0, weights)
    expected = (1 - alpha) * _torch_ce(logits, labels, weights, 0.1) + alpha * _reference_kd(
        logits.numpy(), teacher.numpy(), 3.0)
    assert float(parts.total.detach()) == pytest.approx(float(expected), rel=1e-5)
    parts.total.backward()
    assert teacher_in.grad is None  # the teacher is a fixed target


# ----- class weights reach the loss in class order ---------------------------------------------------
def _folder(root: Path, counts: dict[str, int]) -> Path:
    """A split image folder of tiny grey PNGs, class folders created in the given (unsorted) order."""
    for split in ("train", "val"):
        for name, n in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n if split == "train" else 1):
                Image.new("RGB", (16, 16), (40 * i % 256,) * 3).save(folder / f"{i}.png")
    return root


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_class_weights_file_reaches_the_loss_in_class_order(tmp_path):
    """Names whose sorted (label) order differs from the file's order: each weight goes to its own class."""
    data = _folder(tmp_path / "data", {"zebra": 2, "apple": 3, "mango": 4})
    weights_file = tmp_path / "weights.yaml"
    weights_file.write_text("zebra: 4.0\napple: 1.0\nmango: 2.5\n")
    config = RunConfig(backbone="test_resnet", data=str(data), weights="none", class_weights=str(weights_file),
                       freeze_until=None, label_smoothing=0.1, image_size=32, epochs=1, batch_size=4)
    index = scan_image_folder(data)
    assert index.classes == ["apple", "mango", "zebra"]
    backbone, _ = create_backbone("test_resnet", 3, weights="none")
    module = resolve_run(config, index, backbone).build_module()
    module.forward = lambda x: x  # the network's output replaced by given logits
    logits, labels, _ = _batch(3, seed=50, n=16)
    loss = module.training_step((logits.float(), labels), 0)
    expected = _torch_ce(logits, labels, torch.tensor([1.0, 2.5, 4.0], dtype=torch.float64), 0.1)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
