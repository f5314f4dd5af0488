"""Batch mixing: odd and size-1 batches, cutmix lambda equal to the kept area, mode choice."""
from __future__ import annotations

import pytest
import torch

from finetune.data.mixing import BatchMixer, cutmix_box


def _constant_batch(b: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    # Sample i is the constant image i + 1: every pixel tells which sample it came from.
    x = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, size, size).clone()
    return x, torch.arange(b) % 3


@pytest.mark.parametrize("b", [1, 5, 7])
def test_odd_and_single_batches_mix(b):
    x, y = _constant_batch(b)
    for mixer in (BatchMixer(mixup_alpha=0.4, generator=torch.Generator().manual_seed(0)),
                  BatchMixer(cutmix_alpha=1.0, generator=torch.Generator().manual_seed(0))):
        out = mixer(x, y)
        assert out.x.shape == x.shape and out.y_partner.shape == (b,) and 0.0 <= out.lam <= 1.0


def test_mixup_is_a_convex_combination_with_the_partner():
    x, y = _constant_batch(6)
    out = BatchMixer(mixup_alpha=0.4, generator=torch.Generator().manual_seed(1))(x, y)
    partner = (out.x[:, 0, 0, 0] - out.lam * x[:, 0, 0, 0]) / (1 - out.lam)
    assert out.mode == "mixup" and 0 < out.lam < 1
    assert torch.allclose(partner, partner.round(), atol=1e-4)  # another sample's constant
    assert torch.equal(y[(partner.round() - 1).long()], out.y_partner)


def test_cutmix_lambda_is_the_share_of_kept_pixels():
    x, y = _constant_batch(5, size=20)
    for seed in range(10):
        out = BatchMixer(cutmix_alpha=1.0, generator=torch.Generator().manual_seed(seed))(x, y)
        own = out.x == x
        moved = y != out.y_partner
        if moved.any():  # samples paired with themselves look unchanged
            kept = own[moved].float().mean().item()
            assert kept == pytest.approx(out.lam, abs=1e-6)


def test_cutmix_box_is_clipped_at_the_border():
    top, bottom, left, right = cutmix_box(10, 10, 0.0, torch.Generator().manual_seed(0))
    assert 0 <= top <= bottom <= 10 and 0 <= left <= right <= 10


def test_mix_prob_and_switch_prob_choose_the_mode():
    x, y = _constant_batch(4)
    gen = torch.Generator().manual_seed(0)
    assert {BatchMixer(0.2, 1.0, prob=0.0, generator=gen)(x, y).mode for _ in range(20)} == {"none"}
    assert {BatchMixer(0.2, 1.0, switch_prob=1.0, generator=gen)(x, y).mode for _ in range(20)} == {"cutmix"}
    assert {BatchMixer(0.2, 1.0, switch_prob=0.0, generator=gen)(x, y).mode for _ in range(20)} == {"mixup"}
    modes = [BatchMixer(0.2, 1.0, prob=0.5, generator=gen)(x, y).mode for _ in range(200)]
    assert 60 < modes.count("none") < 140


def test_alpha_shapes_lambda():
    x, y = _constant_batch(4)
    gen = torch.Generator().manual_seed(0)
    small = [BatchMixer(mixup_alpha=0.05, generator=gen)(x, y).lam for _ in range(100)]
    large = [BatchMixer(mixup_alpha=20.0, generator=gen)(x, y).lam for _ in range(100)]
    extreme = lambda lams: sum(min(v, 1 - v) < 0.1 for v in lams)  # noqa: E731
    assert extreme(small) > 70 and extreme(large) < 5


def test_cutmix_box_covers_one_minus_lambda_of_the_area():
    # lam 0.75 on 40x40: a box of side sqrt(1 - 0.75) x 40 = 20 px, smaller only where a border clips it.
    boxes = [cutmix_box(40, 40, 0.75, torch.Generator().manual_seed(seed)) for seed in range(30)]
    heights = [bottom - top for top, bottom, _, _ in boxes]
    widths = [right - left for _, _, left, right in boxes]
    assert max(heights) == max(widths) == 20 and min(heights) >= 10 and min(widths) >= 10


def test_an_unmixed_batch_is_the_batch_as_loaded():
    x, y = _constant_batch(4)
    for mixer in (BatchMixer(), BatchMixer(0.2, 1.0, prob=0.0)):  # disabled; enabled but never drawn
        out = mixer(x, y)
        assert out.x is x and out.y is y and out.y_partner is y and out.lam == 1.0 and out.mode == "none"


def test_cutmix_draws_only_from_its_generator():
    """The run's seed fixes the mixing: the boxes and lambdas repeat whatever torch's global RNG did meanwhile."""
    def draws(global_seed: int) -> list:
        torch.manual_seed(global_seed)
        boxes = [cutmix_box(40, 40, 0.75, torch.Generator().manual_seed(seed)) for seed in range(10)]
        x, y = _constant_batch(6)
        mixer = BatchMixer(0.4, 1.0, prob=0.5, generator=torch.Generator().manual_seed(0))
        cutmix = BatchMixer(cutmix_alpha=1.0, generator=torch.Generator().manual_seed(0))
        batches = [mixer(x, y) for _ in range(10)] + [cutmix(x, y) for _ in range(5)]
        return boxes + [(b.mode, b.lam, b.y_partner.tolist(), b.x.flatten().tolist()) for b in batches]

    assert draws(global_seed=1) == draws(global_seed=2)


def test_cutmix_boxes_reach_every_pixel_of_the_image():
    """Centres are uniform over the image and boxes are clipped, not shifted: row 0 and column 0 are cut too."""
    covered = torch.zeros(40, 40, dtype=torch.bool)
    for seed in range(60):
        top, bottom, left, right = cutmix_box(40, 40, 0.75, torch.Generator().manual_seed(seed))
        covered[top:bottom, left:right] = True
    assert covered.all()


def test_with_both_enabled_the_default_picks_cutmix_or_mixup_evenly():
    """switch_prob's default is timm Mixup's: half the mixed batches cutmix, half mixup."""
    x, y = _constant_batch(4)
    mixer = BatchMixer(mixup_alpha=0.2, cutmix_alpha=1.0, generator=torch.Generator().manual_seed(0))
    modes = [mixer(x, y).mode for _ in range(200)]
    assert 60 < modes.count("cutmix") < 140 and modes.count("cutmix") + modes.count("mixup") == 200


@pytest.mark.parametrize(("mixup", "cutmix"), [(-0.5, 0.0), (0.0, -0.5), (-0.5, 1.0)])
def test_a_negative_alpha_is_refused_with_its_value(mixup, cutmix):
    with pytest.raises(ValueError, match=r"alpha must be >= 0, got .*-0\.5"):
        BatchMixer(mixup_alpha=mixup, cutmix_alpha=cutmix)


@pytest.mark.parametrize("alpha", [0.4, 2.0])
def test_mixup_lambda_follows_beta_alpha_alpha(alpha):
    """Kolmogorov-Smirnov against scipy's Beta(alpha, alpha), over 400 batches of one seeded mixer."""
    from scipy import stats

    x, y = _constant_batch(4)
    mixer = BatchMixer(mixup_alpha=alpha, generator=torch.Generator().manual_seed(0))
    lams = [mixer(x, y).lam for _ in range(400)]
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 0.01


def test_a_mixed_batch_keeps_the_loaded_labels_as_its_own():
    x, y = _constant_batch(6)
    for mixer in (BatchMixer(mixup_alpha=0.4, generator=torch.Generator().manual_seed(0)),
                  BatchMixer(cutmix_alpha=1.0, generator=torch.Generator().manual_seed(0))):
        out = mixer(x, y)
        assert out.mode != "none" and torch.equal(out.y, y)
