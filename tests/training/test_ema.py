"""EMA of weights: frozen parameters untouched, decay warmup, both validated, winner checkpointed."""
from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss
from torch import nn
from typer.testing import CliRunner

from finetune.cli import app
from finetune.config import RunConfig
from finetune.run.fit import guard_callbacks
from finetune.training.callbacks.ema import EmaCallback, WeightEma
from finetune.training.monitor import monitor_metric, monitor_spec, update_monitor_metric

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


# ----- the callback's hooks, driven by hand: a 2-class linear classifier whose predictions are worked out below
X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [1.0, 3.0]])
Y = torch.tensor([1, 1, 1, 0])
# Raw weights: identity, predicting argmax(x) = 0, 1, 0, 1: right on image 1 only, top-1 1/4.
# EMA weights: the rows swapped, predicting 1, 0, 1, 0: right on images 0, 2, 3, top-1 3/4.
RAW_W, EMA_W = torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]])


class _Validated(_Module):
    """The module's side of validation: its own figure for --monitor, and a log that records."""

    device = torch.device("cpu")

    def __init__(self, monitor: str):
        super().__init__()
        self.backbone.model = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.backbone.model.weight.copy_(RAW_W)
        self.monitor, self.logged = monitor, {}
        self.raw_metric, self.val_acc1 = monitor_metric(monitor, 2), monitor_metric("acc1", 2)

    def monitor_value(self, monitor: str) -> torch.Tensor:
        assert monitor == self.monitor
        return self.raw_metric.compute()

    def log(self, name: str, value: torch.Tensor) -> None:
        self.logged[name] = float(value)

    def validate(self, callback: EmaCallback, x: torch.Tensor, y: torch.Tensor, sanity: bool = False) -> None:
        """One validation epoch in two batches, as Lightning runs it: the module's step, then the callback's."""
        trainer = SimpleNamespace(sanity_checking=sanity)
        for i, batch in enumerate(((x[:2], y[:2]), (x[2:], y[2:]))):
            with torch.no_grad():
                logits = self.backbone.model(batch[0])
            update_monitor_metric(self.raw_metric, logits, batch[1])
            self.val_acc1.update(logits, batch[1])
            callback.on_validation_batch_end(trainer, self, None, batch, i)
        callback.on_validation_epoch_end(trainer, self)
        self.raw_metric.reset()
        self.val_acc1.reset()


def _fitted(monitor: str) -> tuple[_Validated, EmaCallback]:
    module = _Validated(monitor)
    callback = EmaCallback(0.9, monitor=monitor)
    callback.setup(None, module, "fit")
    callback.on_fit_start(None, module)
    with torch.no_grad():
        callback.ema.module.weight.copy_(EMA_W)
    return module, callback


def _sklearn_figure(monitor: str, logits: torch.Tensor, y: torch.Tensor) -> float:
    """The --monitor figure by scikit-learn, from logits."""
    pred, probs = logits.argmax(1).numpy(), logits.double().softmax(1).numpy()
    return {"acc1": lambda: accuracy_score(y, pred), "balanced-acc": lambda: balanced_accuracy_score(y, pred),
            "macro-f1": lambda: f1_score(y, pred, average="macro"), "loss": lambda: log_loss(y, probs)}[monitor]()


@pytest.mark.parametrize("monitor", ["acc1", "balanced-acc", "macro-f1", "loss"])
@pytest.mark.parametrize("labels", ["ema-better", "raw-better"])
def test_both_weight_sets_are_validated_and_the_better_is_selected(monitor, labels):
    """val_ema/KEY is the EMA weights' figure, val/KEY_selected the better one's, val/acc1_selected its top-1."""
    y = Y if labels == "ema-better" else 1 - Y  # flipped labels: the raw weights get 3/4 right, the EMA 1/4
    module, callback = _fitted(monitor)
    module.validate(callback, X, 1 - y, sanity=True)  # other labels: a leak would show in the figures
    assert module.logged == {}  # the sanity check is not a result ...
    module.validate(callback, X, y)  # ... nor does it leak into the first validation
    spec = monitor_spec(monitor)
    ema, raw = _sklearn_figure(monitor, X @ EMA_W.T, y), _sklearn_figure(monitor, X @ RAW_W.T, y)
    ema_top1, raw_top1 = (0.75, 0.25) if labels == "ema-better" else (0.25, 0.75)
    expected = {spec.ema_metric: ema, spec.selected_metric: ema if labels == "ema-better" else raw,
                "val_ema/acc1": ema_top1, "val/acc1_selected": max(ema_top1, raw_top1)}
    assert module.logged == pytest.approx(expected, rel=1e-5)
    assert callback.ema_won == (labels == "ema-better")


def test_each_validation_is_computed_afresh():
    """A second validation on other images reports those images only."""
    module, callback = _fitted("loss")
    module.validate(callback, X, Y)
    module.validate(callback, X, 1 - Y)  # now the raw weights are the better ones
    assert module.logged["val_ema/acc1"] == 0.25 and module.logged["val/acc1_selected"] == 0.75
    assert module.logged["val_ema/loss"] == pytest.approx(log_loss(1 - Y, (X @ EMA_W.T).double().softmax(1)), rel=1e-5)
    assert not callback.ema_won


def test_the_average_and_its_metrics_follow_the_module_to_its_device():
    module, callback = _validated_on("meta")
    assert all(t.device.type == "meta" for t in callback.ema.module.state_dict().values())
    assert callback._acc.device.type == "meta" and callback._top1.device.type == "meta"


def _validated_on(device: str) -> tuple[_Validated, EmaCallback]:
    module = _Validated("macro-f1")
    module.device = torch.device(device)
    callback = EmaCallback(0.9, monitor="macro-f1")
    callback.setup(None, module, "fit")
    callback.on_fit_start(None, module)
    return module, callback


@pytest.mark.parametrize(("warmup", "expected"), [(False, 0.5), (True, 1.0)])
def test_each_training_step_moves_the_average_toward_the_module(warmup, expected):
    """Decay 0.5 without warm-up: halfway to the new weights; with warm-up the first step copies them."""
    module = _Validated("acc1")
    callback = EmaCallback(0.5, warmup=warmup)
    callback.setup(None, module, "fit")
    with torch.no_grad():
        module.backbone.model.weight.add_(1.0)
    callback.on_train_batch_end(None, module, None, None, 0)
    assert torch.equal(callback.ema.module.weight, RAW_W + expected)
    assert callback.ema.steps == 1


def test_only_fitting_makes_an_average_and_a_second_fit_keeps_it():
    """validate / test / predict run the raw weights; a fit that finds an average (restored, or from an
    earlier fit) goes on with it."""
    module = _Validated("acc1")
    callback = EmaCallback(0.9)
    callback.setup(None, module, "validate")
    assert callback.ema is None
    callback.setup(None, module, "fit")
    average = callback.ema
    callback.ema.steps = 5
    callback.setup(None, module, "fit")
    assert callback.ema is average and callback.ema.steps == 5


def test_a_checkpoint_before_any_validation_holds_the_raw_weights():
    """Nothing has been compared yet: the raw weights are in state_dict, the average beside them."""
    module = _Validated("acc1")
    callback = EmaCallback(0.9)
    callback.setup(None, module, "fit")
    with torch.no_grad():
        callback.ema.module.weight.copy_(EMA_W)
    ckpt = {"state_dict": {k: v.clone() for k, v in module.state_dict().items()}}
    callback.on_save_checkpoint(None, module, ckpt)
    assert torch.equal(ckpt["state_dict"]["backbone.model.weight"], RAW_W)
    assert torch.equal(ckpt["ema"]["ema_state_dict"]["backbone.model.weight"], EMA_W)
    assert ckpt["ema"]["won"] is False and ckpt["ema"]["decay"] == 0.9  # the record says which and how


def test_the_average_never_trains():
    """The copy is only ever moved by `update`: no gradient reaches it, whatever the module's requires_grad."""
    ema = WeightEma(_net())
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training


def test_defaults_are_the_run_configs():
    """Used as a library, the callback and the average behave as `finetune run --ema` does by default."""
    cfg = RunConfig(backbone="test_resnet", data=".")
    callback, ema = EmaCallback(), WeightEma(_net())
    assert (callback.decay, callback.warmup, callback.monitor) == (cfg.ema_decay, cfg.ema_warmup, cfg.monitor)
    assert (ema.decay, ema.warmup) == (cfg.ema_decay, cfg.ema_warmup)
