"""Gradual unfreezing: --freeze-epochs (one frozen phase, then every group), --unfreeze-every, logging, resume, DDP."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap

import pytest
import pytorch_lightning as pl
import torch
from typer.testing import CliRunner

from finetune.cli import app
from finetune.config import RunConfig
from finetune.models.backbone import create_backbone
from finetune.run.fit import fit
from finetune.training.callbacks.unfreeze import GradualUnfreezing, trainable_groups
from finetune.training.freeze import build_schedule
from finetune.training.module import FinetuneModule

runner = CliRunner()


def _schedule(**kw):
    config = RunConfig(backbone="test_resnet", data=".", weights="none", **kw)
    return build_schedule(config, create_backbone("test_resnet", 3, "none")[0])


def test_freeze_epochs_alone_starts_from_the_linear_probe_and_unfreezes_all():
    s = _schedule(freeze_epochs=2)  # units: conv1 bn1 layer1 layer2 layer3 layer4 fc
    assert [s.frozen_units_at(e) for e in range(4)] == [6, 6, 0, 0]


def test_unfreeze_every_adds_one_group_from_the_top():
    s = _schedule(unfreeze_every=2)  # groups start at units stem 0, layer1 2, layer2 3, layer3 4, layer4 5
    assert [s.frozen_units_at(e) for e in range(0, 12, 2)] == [6, 5, 4, 3, 2, 0]
    s = _schedule(unfreeze_every=1, freeze_epochs=3, freeze_until="layer3")
    assert [s.frozen_units_at(e) for e in range(6)] == [4, 4, 4, 3, 2, 0]


def test_recipe_freeze_epochs_1_of_3_freezes_then_unfreezes_with_group_lrs(make_config, group_lrs, tmp_path,
                                                                           test_resnet_weights):
    recorder = group_lrs
    # "Pretrained" weights with a backbone LR of 0.1 x the head's, set explicitly rather than relying
    # on the default multiplier.
    config = make_config(epochs=3, freeze_epochs=1, lr=0.01, schedule="constant", weights=str(test_resnet_weights),
                         backbone_lr_mult=0.1)
    fit(config, callbacks=[recorder])
    per_epoch = [recorder.trains[i] for i in (0, 3, 6)]  # 3 steps per epoch
    assert [name for name, t in per_epoch[0].items() if t] == ["head", "head/no_decay"]
    assert all(per_epoch[1].values()) and all(per_epoch[2].values())
    for lrs in recorder.steps:
        assert lrs["head"] == pytest.approx(0.01) and lrs["layer3"] == pytest.approx(0.001)
    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv")) if r.get("freeze/trainable_groups")]
    assert [(int(r["epoch"]), float(r["freeze/trainable_groups"])) for r in rows] == [(1, 1.0), (2, 6.0), (3, 6.0)]


def test_unfreezing_is_announced_and_shown_in_the_plan(tiny_data, tmp_path, run_args):
    result = runner.invoke(app, run_args(tiny_data, tmp_path / "run", "--weights", "none", "--epochs", "2",
                                         "--unfreeze-every", "1", "--limit-train-batches", "1"))
    assert result.exit_code == 0, result.output
    assert "epoch 2: unfroze layer4 (2 of 6 groups train)" in result.output
    assert "trains from epoch" in result.output


class StopAfterEpoch(pl.Callback):
    """Ends fit after `epoch` as if the process had been killed right after writing last.ckpt."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_resume_restores_freeze_state_optimizer_and_schedule(make_config, tmp_path):
    """Epoch 1 unfreezes layer4, epoch 2 layer3; the first run stops after epoch 1 and is resumed.

    Tolerance: exact equality is expected on CPU with --workers 0 (the checkpoint carries the
    shuffle and augmentation RNG streams); 1e-6 absolute allows for reduction-order differences.
    """
    kw = dict(epochs=3, unfreeze_every=1, lr=0.02, optimizer="sgd", warmup_epochs=1)
    whole = fit(make_config(**kw, output=tmp_path / "whole"))
    cut = tmp_path / "cut"
    fit(make_config(**kw, output=cut), callbacks=[StopAfterEpoch(1)])
    assert torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    result = runner.invoke(app, ["run", "--resume", str(cut), "--no-progress"])
    assert result.exit_code == 0, result.output
    # The exact line: a callback that forgot the restored state would unfreeze "layer3, layer4" here.
    announced = [line.strip() for line in result.output.splitlines() if "unfroze" in line]
    assert announced == ["epoch 3: unfroze layer3 (3 of 6 groups train)"]
    expected, got = _weights(whole.run_dir), _weights(cut)
    for key, value in expected.items():
        assert torch.allclose(got[key].float(), value.float(), rtol=0, atol=1e-6), key
    ckpt = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)
    history = next(v for k, v in ckpt["callbacks"].items() if "GradualUnfreezing" in k)["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    epochs = {int(r["epoch"]) for r in csv.DictReader(open(cut / "metrics.csv")) if r.get("val/acc1")}
    assert epochs == {1, 2, 3}  # metrics.csv continued, not restarted


def test_restored_callback_puts_the_module_back_in_its_frozen_state():
    """Right after a resume starts, the module is frozen as the checkpoint says, not as at epoch 0."""
    config = RunConfig(backbone="test_resnet", data=".", weights="none", unfreeze_every=1)
    saved = GradualUnfreezing()
    saved.frozen_units, saved.history = 4, [{"epoch": 1, "unfrozen": ["layer4"]}, {"epoch": 2, "unfrozen": ["layer3"]}]
    module = FinetuneModule.from_config(config, ["a", "b", "c"])
    assert module.frozen_units == 6  # the linear probe of epoch 0
    expected = FinetuneModule.from_config(config, ["a", "b", "c"], backbone=module.backbone)
    expected.set_frozen_units(4)
    restored = GradualUnfreezing()
    restored.load_state_dict(saved.state_dict())
    restored.on_fit_start(None, module)
    assert module.frozen_units == 4 and module.frozen_param_names == expected.frozen_param_names
    assert trainable_groups(module) == ["layer3", "layer4", "head"]
    assert restored.history == saved.history


def test_resume_refuses_options_that_change_the_run(tiny_data, tmp_path, run_args):
    out = tmp_path / "run"
    assert runner.invoke(app, run_args(tiny_data, out, "--weights", "none",
                                       "--limit-train-batches", "1")).exit_code == 0
    result = runner.invoke(app, ["run", "--resume", str(out), "--lr", "0.5"])
    assert result.exit_code == 2 and "--lr" in result.output and "--epochs" in result.output
    result = runner.invoke(app, ["run", "--resume", str(out), "--epochs", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist, pytorch_lightning as pl
from pathlib import Path
from finetune.config import RunConfig
from finetune.run.fit import fit

class Report(pl.Callback):
    def on_train_epoch_end(self, trainer, module):
        stem = torch.cat([p.detach().flatten() for n, p in module.backbone.model.named_parameters()
                          if n.startswith("conv1")])
        out = Path(sys.argv[2]) / f"rank{trainer.global_rank}-epoch{trainer.current_epoch}.pt"
        torch.save({"stem": stem, "mask": module.grad_mask_mode}, out)

config = RunConfig(backbone="test_resnet", data=sys.argv[1], weights="none", image_size=32, epochs=2, batch_size=4,
                   workers=0, progress=False, accelerator="cpu", devices=2, strategy="ddp", freeze_epochs=1,
                   output=Path(sys.argv[2]) / "run", lr=0.05, backbone_lr_mult=1.0, precision="32")
fit(config, callbacks=[Report()])
"""


@pytest.mark.slow
def test_gradual_unfreezing_under_ddp_keeps_ranks_in_sync(tiny_data, tmp_path):
    script = tmp_path / "ddp_unfreeze.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(script), str(tiny_data), str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = {(rank, e): torch.load(tmp_path / f"rank{rank}-epoch{e}.pt") for rank in (0, 1) for e in (0, 1)}
    initial = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)  # the run finished
    assert initial["epoch"] == 1
    assert torch.equal(r[0, 0]["stem"], r[1, 0]["stem"])  # frozen in epoch 0 on both ranks
    assert not torch.equal(r[0, 0]["stem"], r[0, 1]["stem"])  # unfrozen stem trained in epoch 1 ...
    assert torch.equal(r[0, 1]["stem"], r[1, 1]["stem"])  # ... with gradients synced across ranks
    assert r[0, 0]["mask"] and r[1, 0]["mask"]
