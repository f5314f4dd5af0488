"""The LR range test: restores the model, keeps group ratios, plots, and feeds --lr auto; the rule that
suggests an LR from its curve, or refuses to where the loss shows no clear descent."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from finetune.cli import app
from finetune.config import RunConfig
from finetune.data.datamodule import ImageFolderDataModule
from finetune.run.lr_find import MIN_START, START_FRACTION, LRFindResult, find_lr, plot_lr_find, suggest
from finetune.training.callbacks.lr_range_test import SMOOTHING, LRRangeTest, smooth, smoothed_variance
from finetune.training.module import FinetuneModule

runner = CliRunner()
DEFAULT_LR = RunConfig.model_fields["lr"].default


def lrs_for(n: int) -> list[float]:
    """The range test's LRs for n steps from 1e-7 to 10 (its defaults)."""
    return [1e-7 * 1e8 ** (i / max(1, n - 1)) for i in range(n)]


def test_find_lr_restores_weights_and_batchnorm_stats(make_config, tiny_data, tmp_path):
    config = make_config(freeze_until="layer3", lr_decay=0.5)
    module = FinetuneModule.from_config(config, ["a", "b", "c"])
    dm = ImageFolderDataModule(tiny_data, module.backbone.data_config.with_size(32), batch_size=8, seed=0)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    seen = []
    original = LRRangeTest.on_train_batch_start

    def spy(self, trainer, pl_module, batch, batch_idx):
        original(self, trainer, pl_module, batch, batch_idx)
        seen.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})

    LRRangeTest.on_train_batch_start = spy
    try:
        result = find_lr(module, dm, start_lr=1e-5, end_lr=1.0, num_steps=8, accelerator="cpu",
                         plot=tmp_path / "lr_find.png")
    finally:
        LRRangeTest.on_train_batch_start = original
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert seen[0]["head"] == pytest.approx(1e-5) and seen[-1]["head"] > 0.1
    assert all(s["layer4"] == pytest.approx(0.5 * s["head"]) for s in seen)  # ratios held
    assert result.suggestion is None or 1e-5 <= result.suggestion <= 1.0  # 8 steps may show no clear descent
    assert (tmp_path / "lr_find.png").stat().st_size > 0
    assert not module.backbone.model.layer1[0].conv1.weight.requires_grad  # freeze state kept


def test_range_test_records_the_real_losses_and_stops_where_the_loss_blows_up(make_config, tiny_data):
    """A finder that logs the wrong loss, skips or repeats steps, misplaces the LRs or runs on past
    divergence fails here; the suggestion must come from before the blow-up."""
    import pytorch_lightning as pl

    from finetune.training.callbacks.lr_range_test import DIVERGE, SMOOTHING

    pl.seed_everything(0)
    module = FinetuneModule.from_config(make_config(optimizer="sgd"), ["a", "b", "c"])
    dm = ImageFolderDataModule(tiny_data, module.backbone.data_config.with_size(32), batch_size=8, seed=0)
    raw, training_step = [], module.training_step

    def record(batch, batch_idx):
        out = training_step(batch, batch_idx)
        raw.append(float(out["loss"] if isinstance(out, dict) else out))
        return out

    module.training_step = record
    start, end, steps = 1e-4, 1e5, 60  # SGD at 1e5 cannot survive: the test must stop on its own
    result = find_lr(module, dm, start_lr=start, end_lr=end, num_steps=steps, accelerator="cpu")
    assert len(raw) == len(result.losses) == len(result.lrs) < steps
    assert result.raw_losses == pytest.approx(raw, rel=1e-6, nan_ok=True)
    assert result.lrs == pytest.approx([start * (end / start) ** (i / (steps - 1)) for i in range(len(raw))])
    avg, expected = 0.0, []
    for i, loss in enumerate(raw, start=1):  # the bias-corrected moving average of the real losses
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
        expected.append(avg / (1 - SMOOTHING ** i))
    assert result.losses[:-1] == pytest.approx(expected[:-1], rel=1e-5)
    best = [min(result.losses[: i + 1]) for i in range(len(result.losses))]
    assert all(loss <= DIVERGE * b for loss, b in zip(result.losses[:-1], best[:-1]))  # did not stop early
    last = result.losses[-1]
    assert not last == last or last > DIVERGE * best[-2]  # NaN, or past the divergence bound: stopped at once
    lowest = min(range(len(result.losses)), key=result.losses.__getitem__)
    assert result.suggestion is None or result.suggestion < result.lrs[lowest]  # not in the blow-up


def test_lr_find_command_plots_and_prints(tiny_data, tmp_path):
    """A batch of the whole train set (24 images): no batch-to-batch noise hides the loss's fall."""
    result = runner.invoke(app, ["lr-find", "--backbone", "test_resnet", "--data", str(tiny_data), "--weights", "none",
                                 "--image-size", "32", "--batch-size", "24", "--workers", "0", "--num-steps", "10",
                                 "--start-lr", "1e-4", "--end-lr", "1e-1",
                                 "--accelerator", "cpu", "--output", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Suggested --lr" in result.output and (tmp_path / "lr_find.png").is_file()
    suggestion = float(result.output.split("Suggested --lr")[1].split()[0])
    assert 1e-4 <= suggestion <= 1e-1


def test_run_lr_auto_uses_the_suggestion(tiny_data, tmp_path, run_args):
    out = tmp_path / "run"
    result = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--lr", "auto", "--lr-find-steps", "10",
                                         "--lr-find-start-lr", "1e-3", "--lr-find-end-lr", "3e-3",
                                         "--batch-size", "24", "--limit-train-batches", "1"))  # see above
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(open(out / "config.yaml"))
    assert config["batch_size"] == 24
    assert isinstance(config["lr"], float) and config["lr"] == config["resolved"]["lr_find"]["suggestion"]
    assert config["resolved"]["lr_find"]["lr"] == config["lr"] and "suggestion" in config["sources"]["lr"]
    assert 1e-3 <= config["lr"] <= 3e-3  # inside the range the run's --lr-find-* flags asked for
    assert f"{config['lr']:.2e}" in result.output and (out / "lr_find.png").is_file()
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["optimizer_states"][0]["param_groups"][-1]["initial_lr"] == pytest.approx(config["lr"])


# ----- the suggestion rule, on hand-made curves of raw losses ------------------------------------
def rising(start: float, n: int) -> list[float]:
    """A loss that grows 25% a step: the blow-up at the end of a range test."""
    return [start * 1.25 ** (j + 1) for j in range(n)]


def ramp(high: float, low: float, n: int) -> list[float]:
    """n steps falling evenly from `high` to `low` (its last step)."""
    return [high + (low - high) * (j + 1) / n for j in range(n)]


def test_smoothing_is_the_bias_corrected_average_and_its_variance_the_sum_of_squared_weights():
    """Against the explicit weights: step n's value is sum_i w_i x_i with w_i ~ 0.98^(n - i), summing to 1."""
    x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    for n in range(1, len(x) + 1):
        w = np.array([SMOOTHING ** (n - i) for i in range(1, n + 1)])
        w /= w.sum()
        assert smooth(x)[n - 1] == pytest.approx(float(w @ np.array(x[:n])))
        assert smoothed_variance(n) == pytest.approx(float((w ** 2).sum()))
    assert smoothed_variance(1) == pytest.approx(1.0) and smoothed_variance(10_000) == pytest.approx(0.02 / 1.98)


def test_a_noisy_start_does_not_pull_the_suggestion_out_of_the_descent():
    """The user's case in miniature: batches swinging between 9 and 1 in the first steps, a level 5
    with small noise, then a real fall to 1 between steps 45 and 59, then the blow-up. The smoothed
    loss falls faster and faster while the raw loss ramps down (the gap between them grows), and
    slower once the raw loss stays at 1, so its steepest point is the ramp's last step or the one
    before: 58 or 59. A rule that reads slopes right after the first tenth takes the swing there."""
    raw = [9.0, 1.0] * 6 + [5.5, 4.5] * 16 + [5.0] + ramp(5.0, 1.0, 15) + [1.0] * 20 + rising(1.0, 20)
    lrs = lrs_for(len(raw))
    found = suggest(lrs, raw)
    assert found.index in (58, 59) and found.lr == lrs[found.index], found


def test_a_fall_after_the_lowest_loss_is_not_the_suggestion():
    """Past the smoothed minimum (step 64, the end of the plateau at 1.0) a spike to 9 and the recovery
    from it make a steep fall; the suggestion stays on the descent before it, at the ramp's end (53, 54)."""
    raw = [2.3] * 40 + ramp(2.3, 1.0, 15) + [1.0] * 10 + [9.0] + [1.5] * 4 + rising(1.5, 20)
    found = suggest(lrs_for(len(raw)), raw)
    assert found.index in (53, 54), found


def test_the_same_fall_is_clear_under_small_noise_and_refused_under_large():
    """A fall of 0.5 (5 -> 4.5) with the same noise draws at two scales. The start level, a mean of 10
    batches, carries noise/sqrt(10) = 0.32 x noise; the lowest smoothed value sits about 0.25 below it
    (it still averages some of the earlier level). Noise 0.02: ~40 standard errors, a suggestion, in the
    fall (steps 45-54) or within a few steps after it, where the smoothed loss still catches up. Noise 1:
    under one standard error: no suggestion, and the reason says so."""
    noise = np.random.default_rng(0).standard_normal(100)
    base = np.array([5.0] * 45 + ramp(5.0, 4.5, 10) + [4.5] * 25 + rising(4.5, 20))
    lrs = lrs_for(100)
    quiet = suggest(lrs, list(base + 0.02 * noise))
    assert quiet.lr is not None and 45 <= quiet.index <= 60, quiet
    loud = suggest(lrs, list(base + 1.0 * noise))
    assert loud.lr is None and loud.reason.startswith("no clear descent"), loud


def test_a_flat_curve_is_refused():
    """No trend at all: exactly flat, or batch noise around a level, up to the blow-up."""
    lrs = lrs_for(100)
    flat = suggest(lrs, [2.0] * 80 + rising(2.0, 20))
    assert flat.lr is None and flat.reason.startswith("no clear descent")
    noisy = suggest(lrs, list(2.0 + 0.3 * np.random.default_rng(1).standard_normal(80)) + rising(2.0, 20))
    assert noisy.lr is None and noisy.reason.startswith("no clear descent")


def test_flat_noise_is_almost_always_refused():
    """The lowest of many smoothed points of pure noise passes the 3-standard-error test now and then:
    about 1% of flat curves of 30 to 300 steps or fewer (benchmarks/results/lr-find-rule.md)."""
    rng = np.random.default_rng(2)
    passed = 0
    for _ in range(400):
        n = int(rng.integers(30, 301))
        passed += suggest(lrs_for(n), list(3.0 + rng.uniform(0.01, 2) * rng.standard_normal(n))).lr is not None
    assert passed <= 8, passed  # at 1% (4 expected), 9 or more has probability 2%; at 0.6%, 0.1%


def test_a_curve_that_only_rises_is_refused():
    lrs = lrs_for(50)
    steady = suggest(lrs, [2.0 * 1.05 ** i for i in range(50)])
    assert steady.lr is None and "lowest right after the first tenth" in steady.reason
    noisy = suggest(lrs, list(2.0 + 0.02 * np.arange(50) + 0.1 * np.random.default_rng(3).standard_normal(50)))
    assert noisy.lr is None


@pytest.mark.parametrize("losses", [[], [2.0], [2.0, 1.0, 0.5, 0.2, 0.1], [2.0, 1.5, 1.0, 0.5, math.nan, 0.1, 0.1]])
def test_short_curves_are_refused_with_the_count(losses):
    """Fewer than 6 finite losses (a start of 3 and as many after it), counted up to the first NaN."""
    found = suggest(lrs_for(len(losses)), losses)
    finite = next((i for i, v in enumerate(losses) if not math.isfinite(v)), len(losses))
    assert found.lr is None and found.reason.startswith(f"the range test has {finite} finite losses"), found


def test_a_nan_after_the_descent_leaves_the_suggestion_on_the_finite_part():
    raw = [2.0] * 20 + ramp(2.0, 0.5, 10) + [0.5] * 10 + [math.nan, 0.1, 0.1]
    found = suggest(lrs_for(len(raw)), raw)
    assert found.index in (28, 29), found  # the ramp's last steps, as in the noisy-start curve


def random_curve(rng: np.random.Generator) -> list[float]:
    """A range-test-like curve: a level, maybe a fall somewhere, maybe a blow-up, noise of any size,
    maybe a NaN where the test stopped."""
    n = int(rng.integers(1, 301))
    level, curve = rng.uniform(0.5, 8), []
    fall_at, fall_len = int(rng.integers(0, n + 1)), int(rng.integers(1, 40))
    depth, blow_at = rng.uniform(0, 1) * level, int(rng.integers(0, n + 1))
    for i in range(n):
        v = level - depth * min(1.0, max(0.0, (i - fall_at) / fall_len))
        curve.append(v * (1.3 ** max(0, i - blow_at)))
    out = np.array(curve) + rng.uniform(0, 1) ** 3 * level * rng.standard_normal(n)
    if n and rng.random() < 0.2:
        out[int(rng.integers(0, n))] = math.nan
    return list(out)


def test_properties_of_the_suggestion_on_random_curves():
    """For any curve (a seeded generator draws 300): the suggestion is
    one of the curve's LRs, after the first tenth and before the lowest smoothed point; scaling the
    losses by a positive constant or adding one changes nothing; scaling every LR by c scales it by c."""
    rng = np.random.default_rng(4)
    suggested = 0
    for _ in range(300):
        raw = random_curve(rng)
        lrs = lrs_for(len(raw))
        found = suggest(lrs, raw)
        a, b, c = rng.uniform(0.01, 100), rng.uniform(-10, 10), 10 ** rng.uniform(-3, 3)
        moved = suggest(lrs, [a * v + b for v in raw])
        assert (moved.lr, moved.index) == (found.lr, found.index), (raw, a, b)
        rescaled = suggest([c * lr for lr in lrs], raw)
        if found.lr is None:
            assert rescaled.lr is None
            continue
        suggested += 1
        finite = next((i for i, v in enumerate(raw) if not math.isfinite(v)), len(raw))
        start = max(MIN_START, finite // START_FRACTION)
        smoothed = smooth(raw[:finite])
        lowest = start + int(np.argmin(smoothed[start:]))
        assert found.lr == lrs[found.index] and start <= found.index < lowest
        assert smoothed[found.index] > smoothed[lowest]
        assert rescaled.lr == pytest.approx(c * found.lr, rel=1e-9)
    assert suggested >= 50  # the draw has curves of both kinds


def test_plot_marks_the_suggestion_or_says_there_is_none(tmp_path, monkeypatch):
    import finetune.figures

    axes = []
    original = finetune.figures.subplots

    def keep(*args, **kwargs):
        fig, ax = original(*args, **kwargs)
        axes.append(ax)
        return fig, ax

    monkeypatch.setattr(finetune.figures, "subplots", keep)
    lrs, raw = lrs_for(20), [1.0] * 20
    refused = LRFindResult(lrs, smooth(raw), None, reason="no clear descent: flat", raw_losses=raw)
    plot_lr_find(refused, tmp_path / "a.png")
    plot_lr_find(LRFindResult(lrs, smooth(raw), lrs[5], raw_losses=raw), tmp_path / "b.png")
    assert "no suggestion: no clear descent: flat" in axes[0].get_title()
    assert axes[0].get_legend_handles_labels()[1] == ["training loss", "smoothed"]
    assert axes[1].get_title() == "" and f"suggestion {lrs[5]:.2e}" in axes[1].get_legend_handles_labels()[1]
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.png").stat().st_size > 0


# ----- the refusal through the commands ---------------------------------------------------------
# LRs of 1e-9 to 1e-8 move no weight measurably: the loss changes only from batch to batch.
FLAT = ["--num-steps", "12", "--start-lr", "1e-9", "--end-lr", "1e-8"]


def test_lr_find_command_says_why_there_is_no_suggestion_and_which_lr_to_keep(tiny_data, tmp_path):
    result = runner.invoke(app, ["lr-find", "--backbone", "test_resnet", "--data", str(tiny_data), "--weights", "none",
                                 "--image-size", "32", "--batch-size", "8", "--workers", "0", *FLAT,
                                 "--accelerator", "cpu", "--output", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "No suggested --lr: no clear descent" in said and f"Keep --lr {DEFAULT_LR:.2e} (the default)" in said
    assert "Suggested --lr" not in said and (tmp_path / "lr_find.png").is_file()


def test_run_lr_auto_keeps_the_default_lr_where_the_test_makes_no_suggestion(tiny_data, tmp_path, run_args):
    out = tmp_path / "run"
    result = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--lr", "auto", "--lr-find-steps", "12",
                                         "--lr-find-start-lr", "1e-9", "--lr-find-end-lr", "1e-8",  # as FLAT
                                         "--limit-train-batches", "1"))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "LR finder: no suggestion, no clear descent" in said and f"keeping the default lr {DEFAULT_LR:.2e}" in said
    config = yaml.safe_load(open(out / "config.yaml"))
    found = config["resolved"]["lr_find"]
    assert config["lr"] == DEFAULT_LR and found["suggestion"] is None and found["lr"] == DEFAULT_LR
    assert found["reason"].startswith("no clear descent") and found["plot"] == "lr_find.png"
    assert "no suggestion" in config["sources"]["lr"] and found["reason"] in config["sources"]["lr"]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["optimizer_states"][0]["param_groups"][-1]["initial_lr"] == pytest.approx(DEFAULT_LR)
