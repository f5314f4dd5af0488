"""metrics.csv one row per epoch, --monitor, --early-stop (patience restarting at an unfreeze)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from rich.console import Console

from finetune.models.backbone import create_backbone
from finetune.run.fit import fit
from finetune.run.resume import resume_config


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _quiet_fit(config, **kw):
    out = io.StringIO()
    result = fit(config, Console(file=out, width=200), **kw)
    return result, out.getvalue()


def test_metrics_csv_has_one_full_row_per_epoch(make_config):
    result, _ = _quiet_fit(make_config(epochs=4, val_every=2, export=False))
    rows = _rows(result.run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]  # counted from 1, as on the console
    header = list(rows[0])
    assert header[0] == "epoch" and header[-2:] == ["img/s", "epoch_seconds"]
    assert header.index("train/loss") < header.index("val/loss") < header.index("lr/head")
    groups = [f"lr/{g.name}" for g in create_backbone("test_resnet", 3, "none")[0].groups]
    for row in rows:
        assert float(row["train/loss"]) > 0 and 0 <= float(row["train/acc1"]) <= 1
        assert all(float(row[g]) > 0 for g in groups)  # every layer group's LR, every epoch
        assert float(row["img/s"]) > 0 and float(row["epoch_seconds"]) > 0
        assert float(row["freeze/trainable_groups"]) == len(groups)
    validated = [int(r["epoch"]) for r in rows if r["val/acc1"]]
    assert validated == [2, 4]  # --val-every 2: figures only where a validation ran, never stale copies
    last = rows[-1]
    for key in ("val/loss", "val/acc5", "val/balanced_acc", "val/macro_f1"):
        assert 0 <= float(last[key]) < 100
    recalls = [float(last[f"val/recall/{c}"]) for c in ("circle", "square", "triangle")]
    assert abs(sum(recalls) / 3 - float(last["val/balanced_acc"])) < 1e-5  # the mean of the class recalls


def test_resumed_run_appends_rows_once_per_epoch(make_config, tmp_path):
    first, _ = _quiet_fit(make_config(epochs=2, val_every=1, export=False))
    config = resume_config(first.run_dir, {"epochs": 4})
    _quiet_fit(config, ckpt_path=first.run_dir / "checkpoints" / "last.ckpt")
    assert [int(r["epoch"]) for r in _rows(first.run_dir)] == [1, 2, 3, 4]


def _best_ckpt_epoch(result) -> int:
    return int(torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)["epoch"])


def test_monitor_loss_keeps_the_epoch_of_lowest_val_loss(make_config):
    result, out = _quiet_fit(make_config(epochs=4, val_every=1, lr=0.05, monitor="loss", export=False))
    rows = _rows(result.run_dir)
    losses = [float(r["val/loss"]) for r in rows]
    assert _best_ckpt_epoch(result) == losses.index(min(losses))
    assert result.best_epoch == losses.index(min(losses)) + 1  # counted from 1
    assert "chosen by val/loss" in out
    # Whichever way the losses moved, a "max" mode would have kept another score (unless all were equal).
    state = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)["callbacks"]
    best_score = next(v["best_model_score"] for k, v in state.items() if "ModelCheckpoint" in k and "best" in str(v))
    assert len(set(losses)) > 1 and float(best_score) == pytest.approx(min(losses), rel=1e-5)


def test_monitor_with_ema_compares_raw_and_ema_on_the_monitored_figure(make_config):
    result, _ = _quiet_fit(make_config(epochs=4, val_every=1, lr=0.05, monitor="loss", ema=True, ema_decay=0.9,
                                       export=False))
    rows = _rows(result.run_dir)
    for row in rows:  # the selected figure is the lower of the raw and EMA val losses
        assert float(row["val/loss_selected"]) == min(float(row["val/loss"]), float(row["val_ema/loss"]))
    selected = [float(r["val/loss_selected"]) for r in rows]
    assert _best_ckpt_epoch(result) == selected.index(min(selected))


def test_early_stop_ends_the_run_after_patience_epochs_without_improvement(make_config):
    # An LR too small to change anything: val top-1 never improves after its first value.
    result, out = _quiet_fit(make_config(epochs=10, val_every=1, lr=1e-12, early_stop=2, export=False))
    assert [int(r["epoch"]) for r in _rows(result.run_dir)] == [1, 2, 3]
    assert "Early stop after epoch 3 of 10" in out
    assert result.best_checkpoint.is_file() and result.best_epoch == 1


def test_early_stop_patience_restarts_when_layers_unfreeze(make_config):
    # Frozen for 3 epochs, then everything trains: without the restart the run would stop after
    # epoch 2, before the unfrozen phase had trained at all.
    result, out = _quiet_fit(make_config(epochs=10, val_every=1, lr=1e-12, early_stop=2, freeze_epochs=3, export=False))
    epochs = [int(r["epoch"]) for r in _rows(result.run_dir)]
    assert epochs == [1, 2, 3, 4, 5]
    assert "Early stop after epoch 5 of 10" in out


def test_early_stop_patience_is_in_epochs_whatever_the_validation_cadence(make_config):
    result, _ = _quiet_fit(make_config(epochs=12, val_every=2, lr=1e-12, early_stop=4, export=False))
    # Validations at epochs 2, 4, 6: the first sets the best, two more (4 epochs) without improvement stop it.
    assert int(_rows(result.run_dir)[-1]["epoch"]) == 6


def test_early_stop_still_works_when_the_schedule_lists_unfreezes_past_the_last_epoch(make_config):
    # --freeze-epochs 8 in a 6-epoch run: that unfreeze never comes, so it must not hold the stop back.
    result, _ = _quiet_fit(make_config(epochs=6, val_every=1, lr=1e-12, early_stop=2, freeze_epochs=8, export=False))
    assert [int(r["epoch"]) for r in _rows(result.run_dir)] == [1, 2, 3]


def test_balanced_accuracy_skips_classes_without_images():
    from finetune.training.monitor import BalancedAccuracy

    metric = BalancedAccuracy(3)
    metric.update(torch.eye(3)[torch.tensor([0, 2, 1, 1])], torch.tensor([0, 0, 1, 1]))
    assert float(metric.compute()) == pytest.approx(0.75)  # (1/2 + 2/2) / 2: class 2 has no image


def test_training_step_weights_each_class_term(make_config):
    import torch.nn.functional as F

    from finetune.training.module import FinetuneModule

    weights = torch.tensor([0.2, 1.0, 3.0])
    module = FinetuneModule.from_config(make_config(), ["a", "b", "c"], class_weights=weights)
    module.log = lambda *a, **k: None  # no Trainer here
    module.train()
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = module.training_step((x, y), 0).detach()
    with torch.no_grad():
        logits = module(x)  # train mode again: the same batch statistics
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, y, weight=weights, reduction="sum") / 6),
                                        rel=1e-4)


class _Seen(pl.Callback):
    def on_fit_start(self, trainer, pl_module):
        self.weights = pl_module.class_weights
        self.sampler = type(trainer.train_dataloader.sampler).__name__ if trainer.train_dataloader else None

    def on_train_epoch_start(self, trainer, pl_module):
        self.sampler = type(trainer.train_dataloader.sampler).__name__


def test_lr_auto_keeps_the_class_weights_and_the_sampler_reaches_the_loader(make_config, tmp_path):
    seen = _Seen()
    result, _ = _quiet_fit(make_config(epochs=1, lr="auto", lr_find_steps=5, class_weights="auto", export=False),
                           callbacks=[seen])
    assert seen.weights is not None and torch.allclose(seen.weights, torch.ones(3))  # 8 images a class: all 1
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    # The range test's result is recorded; lr keeps its source (`finetune runs` lists it as given).
    assert saved["lr"] == saved["resolved"]["lr_find"]["lr"]
    assert str(saved["sources"].get("lr", "")).startswith(("default", "command line"))
    sampled = _Seen()
    _quiet_fit(make_config(epochs=1, sampler="balanced", export=False, output=tmp_path / "run2"), callbacks=[sampled])
    assert sampled.sampler == "WeightedRandomSampler"


def test_early_stop_min_delta_counts_only_improvements_that_large(make_config):
    # The val loss falls a little every epoch; no fall counts as the 10.0 asked for, so the run stops at
    # the patience while a min delta of 0 would let it go on.
    result, _ = _quiet_fit(make_config(epochs=8, val_every=1, lr=0.01, monitor="loss", early_stop=2,
                                       early_stop_min_delta=10.0, export=False))
    rows = _rows(result.run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    losses = [float(r["val/loss"]) for r in rows]
    assert losses[2] < losses[0]  # it was improving: only the min delta stopped it
