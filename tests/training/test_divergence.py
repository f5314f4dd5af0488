"""The divergence guard: a huge LR stops the run with a clear message, the good checkpoint stays."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from typer.testing import CliRunner

from finetune.cli import app
from finetune.config import RunConfig
from finetune.training.callbacks.divergence import DivergenceError
from finetune.training.module import FinetuneModule

runner = CliRunner()


class _HugeLrFromEpoch1(pl.Callback):
    """Multiplies every LR by 1e6 from the second epoch on (the scheduler recomputes LRs from base_lrs)."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            scheduler = trainer.lr_scheduler_configs[0].scheduler
            scheduler.base_lrs = [lr * 1e6 for lr in scheduler.base_lrs]


def test_huge_lr_from_the_start_is_reported(tiny_data, tmp_path, run_args):
    out = tmp_path / "run"
    result = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--optimizer", "sgd", "--lr", "1e6",
                                         "--epochs", "2"))
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "training diverged at epoch 0" in text and "learning rate too high" in text and "--lr" in text
    assert "No checkpoint was written" in text and not (out / "checkpoints" / "last.ckpt").exists()


def test_divergence_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    import finetune.run.fit as fit_module

    original = fit_module.guard_callbacks
    monkeypatch.setattr("finetune.training.callbacks.divergence.WINDOW", 3)  # blocks of one epoch
    monkeypatch.setattr(fit_module, "guard_callbacks", lambda *a: [*original(*a), _HugeLrFromEpoch1()])
    out = tmp_path / "run"
    cfg = RunConfig(backbone="test_resnet", data=tiny_data, weights="none", output=out, image_size=32, epochs=3,
                    batch_size=8, workers=0, progress=False, optimizer="sgd", lr=0.01)
    with pytest.raises(DivergenceError, match="training diverged at epoch 1.*learning rate too high") as e:
        fit_module.fit(cfg)
    assert str(out / "checkpoints" / "last.ckpt") in str(e.value)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def _loss_times(factor: float, from_epoch: int = 1):
    """A training_step whose loss is multiplied by `factor` from `from_epoch` on: finite, just larger."""
    original = FinetuneModule.training_step

    def step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * factor if self.current_epoch >= from_epoch else loss

    return step


@pytest.mark.parametrize(("factor", "stops"), [(4.0, True), (2.0, False)])
def test_a_finite_loss_at_4x_the_start_stops_the_run(factor, stops, tiny_data, tmp_path, monkeypatch):
    # The guard fit() installs, not a hand-built one: its threshold is 3x the first block's mean.
    # Blocks of 3 steps: one epoch of tiny_data each.
    from finetune.run.fit import fit

    monkeypatch.setattr("finetune.training.callbacks.divergence.WINDOW", 3)
    monkeypatch.setattr(FinetuneModule, "training_step", _loss_times(factor))
    cfg = RunConfig(backbone="test_resnet", data=tiny_data, weights="none", output=tmp_path / "run", image_size=32,
                    epochs=2, batch_size=8, workers=0, progress=False, optimizer="sgd", lr=1e-6, export=False)
    if not stops:
        fit(cfg)  # 2x is a bad epoch, not a divergence
        return
    with pytest.raises(DivergenceError, match=r"epoch 1.*mean training loss of the last 3 steps.*exceeds 3x"):
        fit(cfg)
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0


def test_a_resumed_guard_keeps_the_start():
    """--resume restores the guard from the checkpoint: without the first epoch's mean it could only catch NaN."""
    from finetune.training.callbacks.divergence import DivergenceGuard

    first = DivergenceGuard(3.0)
    first.start_mean = 0.5
    resumed = DivergenceGuard(3.0)
    resumed.load_state_dict(first.state_dict())
    assert resumed.start_mean == 0.5
    assert resumed._problem(1.6, 25) is not None and resumed._problem(1.4, 25) is None  # 3 x 0.5 = 1.5
    older = DivergenceGuard(3.0)
    older.load_state_dict({"first_epoch_mean": 0.5})  # a checkpoint written before blocks had a name
    assert older.start_mean == 0.5


def _loss_scaled(first: float, later: float):
    """A training_step whose loss is multiplied by `first` in epoch 0 and by `later` after it."""
    original = FinetuneModule.training_step

    def step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * (first if self.current_epoch == 0 else later)

    return step


@pytest.mark.parametrize(("later", "stops"), [(0.1, False), (1.5, True)])
def test_a_start_near_zero_stops_only_past_a_uniform_guess(later, stops, tiny_data, tmp_path, monkeypatch):
    """Epoch 0's loss at 1% of chance (a network that fits from the start), then 10x that (still far
    below ln(C): not an explosion) or 150x (past a uniform guess: one)."""
    from finetune.run.fit import fit

    monkeypatch.setattr("finetune.training.callbacks.divergence.WINDOW", 3)
    monkeypatch.setattr(FinetuneModule, "training_step", _loss_scaled(0.01, later))
    cfg = RunConfig(backbone="test_resnet", data=tiny_data, weights="none", output=tmp_path / "run", image_size=32,
                    epochs=2, batch_size=8, workers=0, progress=False, optimizer="sgd", lr=1e-6, export=False)
    if not stops:
        fit(cfg)
        return
    with pytest.raises(DivergenceError, match=r"exceeds 3x the mean of the first 3\+ steps .* and a uniform guess"):
        fit(cfg)


def test_one_wild_batch_in_a_short_epoch_does_not_stop_the_run(tiny_data, tmp_path, monkeypatch):
    """tiny_data has 3 steps an epoch. Step 30's loss x20 lifts its epoch's mean to about 7x the start,
    but the guard compares means over 25+ steps (here 27), where it is under 2x: the run goes on."""
    from finetune.run.fit import fit

    original = FinetuneModule.training_step

    def step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * 20 if self.global_step == 30 else loss

    monkeypatch.setattr(FinetuneModule, "training_step", step)
    cfg = RunConfig(backbone="test_resnet", data=tiny_data, weights="none", output=tmp_path / "run", image_size=32,
                    epochs=18, batch_size=8, workers=0, progress=False, optimizer="sgd", lr=1e-6, export=False,
                    val_every=18)
    assert fit(cfg).run_dir.is_dir()


def _fake_trainer(scale=None, batches=100):
    from types import SimpleNamespace

    scaler = SimpleNamespace(_scale=torch.tensor(scale)) if scale is not None else None
    strategy = SimpleNamespace(reduce=lambda t, reduce_op: t, reduce_boolean_decision=lambda d, all: d)
    return SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler), num_training_batches=batches,
                           strategy=strategy, optimizers=[], current_epoch=0, global_step=0)


def test_the_guard_reads_the_loss_before_16_bit_loss_scaling():
    """16-mixed hands the hook the loss times the GradScaler's scale (65536 at first)."""
    from types import SimpleNamespace

    from finetune.training.callbacks.divergence import DivergenceGuard

    guard = DivergenceGuard(3.0, window=2)
    trainer = _fake_trainer(scale=65536.0)
    guard.on_fit_start(trainer, SimpleNamespace(class_names=["a", "b"]))
    for step in range(2):
        guard.on_train_batch_start(trainer, None, None, step)
        guard.on_before_backward(trainer, None, torch.tensor(0.5 * 65536.0))
    assert float(guard._sum) == pytest.approx(1.0)  # two steps of 0.5, not of 32768


def test_a_run_resumed_mid_block_keeps_the_open_block():
    """Short epochs: the first block spans several. A resume inside it goes on with its sum and count."""
    from finetune.training.callbacks.divergence import DivergenceGuard

    guard = DivergenceGuard(3.0, window=25)
    trainer = _fake_trainer(batches=3)
    guard.on_train_epoch_start(trainer, None)
    for step in range(3):
        guard.on_train_batch_start(trainer, None, None, step)
        guard.on_before_backward(trainer, None, torch.tensor(2.0))
    guard.on_train_epoch_end(trainer, None)
    resumed = DivergenceGuard(3.0, window=25)
    resumed.load_state_dict(guard.state_dict())
    resumed.on_train_epoch_start(trainer, None)  # 3 of 25 steps: the block goes on
    assert resumed._count == 3 and float(resumed._sum) == pytest.approx(6.0) and resumed.start_mean is None
