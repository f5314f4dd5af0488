"""The LR range test: restores the model, keeps group ratios, plots, and feeds --lr auto."""
from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from finetune.cli import app
from finetune.data.datamodule import ImageFolderDataModule
from finetune.run.lr_find import find_lr, suggest
from finetune.training.callbacks.lr_range_test import LRRangeTest
from finetune.training.module import FinetuneModule

runner = CliRunner()


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
    assert 1e-5 <= result.suggestion <= 1.0 and (tmp_path / "lr_find.png").stat().st_size > 0
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
    assert result.suggestion <= result.lrs[lowest]  # on the way down to the lowest loss, not in the blow-up


def test_suggestion_ignores_a_drop_after_the_lowest_loss():
    """Past its minimum the loss is unstable: a fall from a spike there is not a good LR."""
    lrs = [10 ** (-5 + i * 0.25) for i in range(20)]
    losses = [2.3, 2.3, 2.29, 2.25, 2.1, 1.9, 1.7, 1.55, 1.45, 1.4, 1.42, 1.6, 2.6, 1.5, 1.6, 2.0, 3.0, 5.0, 8.0, 9.0]
    assert suggest(lrs, losses) == lrs[5]  # 2.1 -> 1.7, not the 2.6 -> 1.5 recovery at lrs[12]


def test_suggestion_is_the_steepest_descent():
    lrs = [10 ** (-6 + i * 0.5) for i in range(12)]
    losses = [2.0, 2.0, 2.0, 1.99, 1.9, 1.5, 0.8, 0.6, 0.55, 0.6, 1.5, 3.0]
    assert suggest(lrs, losses) == lrs[5]


def test_lr_find_command_plots_and_prints(tiny_data, tmp_path):
    result = runner.invoke(app, ["lr-find", "--backbone", "test_resnet", "--data", str(tiny_data), "--weights", "none",
                                 "--image-size", "32", "--batch-size", "8", "--workers", "0", "--num-steps", "10",
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
                                         "--limit-train-batches", "1"))
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(open(out / "config.yaml"))
    assert isinstance(config["lr"], float) and config["lr"] == config["resolved"]["lr_find"]["suggestion"]
    assert 1e-3 <= config["lr"] <= 3e-3  # inside the range the run's --lr-find-* flags asked for
    assert f"{config['lr']:.2e}" in result.output and (out / "lr_find.png").is_file()
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["optimizer_states"][0]["param_groups"][-1]["initial_lr"] == pytest.approx(config["lr"])
