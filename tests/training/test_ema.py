"""EMA of weights: frozen parameters untouched, decay warmup, both validated, winner checkpointed."""
from __future__ import annotations

import csv

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from finetune.cli import app
from finetune.config import RunConfig
from finetune.run.fit import guard_callbacks
from finetune.training.callbacks.ema import EmaCallback, WeightEma

runner = CliRunner()


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    net[0].requires_grad_(False)  # frozen
    return net


def test_only_trainable_parameters_are_averaged():
    net = _net()
    ema = WeightEma(net, decay=0.9, warmup=False)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # frozen ones too: a frozen layer changed behind the EMA's back
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    ema.update(net)
    after = ema.module.state_dict()
    assert torch.equal(after["0.weight"], before["0.weight"])  # frozen: not averaged
    assert torch.allclose(after["2.weight"], 0.9 * before["2.weight"] + 0.1 * net[2].weight, atol=1e-6)


def test_decay_warmup():
    ema = WeightEma(_net(), decay=0.999, warmup=True)
    assert ema.decay_at(0) == 0.0  # the first update copies the weights
    assert 0.79 < ema.decay_at(10) < 0.81 and 0.95 < ema.decay_at(100) < 0.96
    assert ema.decay_at(10**7) == 0.999
    assert WeightEma(_net(), decay=0.999, warmup=False).decay_at(0) == 0.999


def test_ema_flags_reach_the_callback():
    cfg = RunConfig(backbone="test_resnet", data=".", ema=True, ema_decay=0.95, ema_warmup=False)
    ema = [c for c in guard_callbacks(cfg, cfg.data) if isinstance(c, EmaCallback)]
    assert len(ema) == 1 and (ema[0].decay, ema[0].warmup) == (0.95, False)
    assert not any(isinstance(c, EmaCallback) for c in guard_callbacks(cfg.model_copy(update={"ema": False}), cfg.data))


@pytest.mark.parametrize("ema_won", [True, False])
def test_checkpoint_carries_the_winner_and_resume_restores_raw(ema_won):
    from finetune.training.module import FinetuneModule

    module = FinetuneModule.from_config(RunConfig(backbone="test_resnet", data=".", weights="none"), ["a", "b"])
    callback = EmaCallback(0.9)
    callback.setup(None, module, "fit")
    with torch.no_grad():
        for p in callback.ema.module.parameters():
            p.add_(1.0)  # EMA and raw weights differ
    callback.ema_won = ema_won
    raw = {k: v.clone() for k, v in module.state_dict().items()}
    ckpt = {"state_dict": module.state_dict()}
    callback.on_save_checkpoint(None, module, ckpt)
    key = "backbone.model.fc.weight"
    winner = callback.ema.module.fc.weight if ema_won else raw[key]
    assert torch.equal(ckpt["state_dict"][key], winner)
    # resuming: Lightning loads state_dict into the module, then the callback restores raw + EMA
    module.load_state_dict(ckpt["state_dict"])
    fresh = EmaCallback(0.9)
    fresh.setup(None, module, "fit")
    fresh.on_load_checkpoint(None, module, ckpt)
    assert torch.equal(module.backbone.model.fc.weight, raw[key])
    assert torch.equal(fresh.ema.module.fc.weight, callback.ema.module.fc.weight)


def test_ema_run_validates_both_and_selects_the_better(tiny_data, tmp_path, run_args):
    out = tmp_path / "run"
    result = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--epochs", "2", "--ema",
                                         "--ema-decay", "0.9"))
    assert result.exit_code == 0, result.output
    rows = [r for r in csv.DictReader(open(out / "metrics.csv")) if r.get("val_ema/acc1")]
    assert len(rows) == 2
    for r in rows:
        assert float(r["val/acc1_selected"]) == max(float(r["val/acc1"]), float(r["val_ema/acc1"]))
    best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["ema"]["steps"] == 3 * (best["epoch"] + 1)  # 24 images / batch 8 = 3 updates per epoch
    assert ("raw_state_dict" in best["ema"]) == best["ema"]["won"]
    key = "backbone.model.fc.weight"
    other = best["ema"]["raw_state_dict" if best["ema"]["won"] else "ema_state_dict"][key]
    assert not torch.equal(best["state_dict"][key], other)  # the loser is kept aside, not in state_dict


def test_batchnorm_running_statistics_are_averaged_and_counters_copied():
    net = _net()
    ema = WeightEma(net, decay=0.9, warmup=False)
    before = ema.module[1].running_mean.clone()
    net.train()(torch.randn(8, 3) * 5 + 3)  # moves the live BatchNorm's running statistics
    ema.update(net)
    expected = 0.9 * before + 0.1 * net[1].running_mean
    assert torch.allclose(ema.module[1].running_mean, expected, atol=1e-6)
    assert int(ema.module[1].num_batches_tracked) == int(net[1].num_batches_tracked) == 1


class _Module(nn.Module):
    """A LightningModule's shape as the callback sees it: `backbone.model`, plus state of its own."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.model = _net()
        self.backbone.num_classes = 2
        self.temperature = nn.Parameter(torch.tensor(1.5))  # outside the backbone: not the EMA's business


def _saved(ema_won: bool) -> tuple[_Module, EmaCallback, dict]:
    module = _Module()
    callback = EmaCallback(0.9)
    callback.setup(None, module, "fit")
    callback.ema.steps = 7
    with torch.no_grad():
        for p in callback.ema.module.parameters():
            p.add_(1.0)  # EMA and raw weights differ
    callback.ema_won = ema_won
    ckpt = {"state_dict": {k: v.clone() for k, v in module.state_dict().items()}}
    callback.on_save_checkpoint(None, module, ckpt)
    return module, callback, ckpt


@pytest.mark.parametrize("ema_won", [True, False])
def test_resume_restores_the_backbone_and_leaves_the_rest_of_the_module_as_loaded(ema_won):
    """Lightning loads the whole module first; the callback then puts back only the backbone's raw weights."""
    saved_module, saved, ckpt = _saved(ema_won)
    module = _Module()
    module.load_state_dict(ckpt["state_dict"])  # what Lightning does before the callbacks' hooks
    with torch.no_grad():
        module.temperature.fill_(2.5)  # the module's own state: not in the EMA's raw weights
    fresh = EmaCallback(0.9)
    fresh.setup(None, module, "fit")
    fresh.on_load_checkpoint(None, module, ckpt)
    for (name, raw), live in zip(saved_module.backbone.model.state_dict().items(),
                                 module.backbone.model.state_dict().values()):
        assert torch.equal(live, raw), name
    for ema, restored in zip(saved.ema.module.state_dict().values(), fresh.ema.module.state_dict().values()):
        assert torch.equal(restored, ema)
    assert module.temperature.item() == 2.5
    assert (fresh.ema.steps, fresh.ema_won) == (7, ema_won)


def test_a_checkpoint_without_an_ema_leaves_the_fresh_average():
    """Resuming with --ema from a run without it: the average starts from the loaded weights at step 0."""
    module = _Module()
    callback = EmaCallback(0.9)
    callback.setup(None, module, "fit")
    before = {k: v.clone() for k, v in callback.ema.module.state_dict().items()}
    callback.on_load_checkpoint(None, module, {"state_dict": module.state_dict()})
    assert callback.ema.steps == 0 and not callback.ema_won
    assert all(torch.equal(v, before[k]) for k, v in callback.ema.module.state_dict().items())
