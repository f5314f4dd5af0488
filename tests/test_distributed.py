"""`--devices 2 --strategy ddp --accelerator cpu`: Lightning runs two processes, one run directory."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "finetune", "run", "--backbone", "test_resnet", "--data", str(tiny_data),
           "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--workers", "0",
           "--no-progress", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    # 24 train images, 4 per batch per process: 3 optimizer steps each, not 6 (one process would take 6;
    # Lightning's own "world_size: 2" banner is held back by the quiet console).
    assert ckpt["global_step"] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name != "ddp"] == []  # no second run dir made by rank 1


def test_num_nodes_reaches_the_trainer(tiny_data, tmp_path):
    from finetune.config import RunConfig
    from finetune.run.fit import build_trainer

    config = RunConfig(backbone="test_resnet", data=tiny_data, accelerator="cpu", devices="1", strategy="ddp",
                       num_nodes=2, progress=False)
    trainer = build_trainer(config, tmp_path, "32", steps_per_epoch=3)
    assert trainer.num_nodes == 2 and trainer.world_size == 2


NAN_ON_RANK1 = """
import sys
from pathlib import Path
from finetune.config import RunConfig
from finetune.training.callbacks.divergence import DivergenceError, DivergenceGuard
from finetune.run.fit import fit
from finetune.training.module import FinetuneModule

original = FinetuneModule.training_step
original_fail = DivergenceGuard._fail

def fail(self, trainer, what):  # each rank records its decision the moment it makes it: once rank 0
    try:                        # raises, Lightning kills the other ranks, maybe before they print
        original_fail(self, trainer, what)
    except DivergenceError as e:
        (Path(sys.argv[2]) / f"stop-rank{trainer.global_rank}.txt").write_text(str(e))
        raise

DivergenceGuard._fail = fail

def step(self, batch, batch_idx):  # only rank 1 sees a NaN loss, from its second epoch on
    loss = original(self, batch, batch_idx)
    return loss * float("nan") if self.global_rank == 1 and self.current_epoch == 1 else loss

FinetuneModule.training_step = step
config = RunConfig(backbone="test_resnet", data=sys.argv[1], weights="none", image_size=32, epochs=3, batch_size=4,
                   workers=0, progress=False, accelerator="cpu", devices=2, strategy="ddp", precision="32",
                   output=Path(sys.argv[2]) / "run", export=False)
try:
    fit(config)
except DivergenceError as e:
    print(f"rank stopped: {e}", flush=True)
    sys.exit(3)
"""


def _run_script(script: str, data, tmp_path, timeout: int = 240, extra: list[str] = ()) -> subprocess.CompletedProcess:
    """Runs `script DATA TMP_PATH [EXTRA...]` in a fresh interpreter (Lightning starts the second rank from it)."""
    path = tmp_path / "script.py"
    path.write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, str(path), str(data), str(tmp_path), *extra], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=tmp_path)


@pytest.mark.slow  # two processes, ~20 s on 2 cores
def test_nan_on_one_rank_stops_every_rank_with_the_message(tiny_data, tmp_path):
    # Deciding per rank left rank 0 waiting in the gradient all-reduce for a rank that had raised.
    proc = _run_script(NAN_ON_RANK1, tiny_data, tmp_path, timeout=180)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 3, output[-3000:]
    assert "rank stopped: training diverged at epoch 1" in proc.stdout, output[-3000:]
    stops = [(tmp_path / f"stop-rank{rank}.txt").read_text() for rank in (0, 1)]  # both ranks, the same decision
    assert stops[0] == stops[1] and stops[0].startswith("training diverged at epoch 1")
    assert "the training loss is nan" in stops[0] and "last good checkpoint is kept" in stops[0]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0


FREEZE_SCRIPT = """
import sys, torch, pytorch_lightning as pl
from pathlib import Path
from finetune.config import RunConfig
from finetune.run.fit import fit

class Report(pl.Callback):
    def on_train_epoch_end(self, trainer, module):
        state = {k: v.detach().clone() for k, v in module.backbone.model.state_dict().items()}
        torch.save({"state": state, "mask": module.grad_mask_mode},
                   Path(sys.argv[2]) / f"rank{trainer.global_rank}-epoch{trainer.current_epoch}.pt")

config = RunConfig(backbone="test_resnet", data=sys.argv[1], weights=sys.argv[3], image_size=32, epochs=2,
                   batch_size=4, workers=0, progress=False, accelerator="cpu", devices=2, strategy="ddp",
                   freeze_until="layer3", freeze_epochs=1, output=Path(sys.argv[2]) / "run", lr=0.05,
                   backbone_lr_mult=1.0, precision="32", export=False)
fit(config, callbacks=[Report()])
"""


@pytest.mark.slow  # two processes, ~20 s on 2 cores
def test_ddp_frozen_layers_stay_bit_identical_to_the_loaded_weights(tiny_data, test_resnet_weights, tmp_path):
    # Unfreezing ahead puts DDP in gradient-mask mode: every parameter requires grad, frozen ones
    # lose theirs before the step. Compared with the weights file, not only between ranks.
    from safetensors.torch import load_file

    proc = _run_script(FREEZE_SCRIPT, tiny_data, tmp_path, extra=[str(test_resnet_weights)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    loaded = load_file(str(test_resnet_weights))
    r = {(rank, e): torch.load(tmp_path / f"rank{rank}-epoch{e}.pt") for rank in (0, 1) for e in (0, 1)}
    assert r[0, 0]["mask"] and r[1, 0]["mask"]
    frozen = [k for k in loaded if k.startswith(("conv1.", "bn1.", "layer1.", "layer2."))]
    assert any(k.endswith("running_var") for k in frozen) and any(k.endswith("num_batches_tracked") for k in frozen)
    for rank in (0, 1):
        epoch0, epoch1 = r[rank, 0]["state"], r[rank, 1]["state"]
        for key in frozen:  # weights and BatchNorm buffers alike
            assert torch.equal(epoch0[key], loaded[key]), f"rank {rank}: frozen {key} changed in epoch 0"
        assert not torch.equal(epoch0["layer3.0.conv1.weight"], loaded["layer3.0.conv1.weight"])  # layer3 trains
        assert not torch.equal(epoch1["conv1.0.weight"], loaded["conv1.0.weight"])  # unfrozen at epoch 1
        assert not torch.equal(epoch1["bn1.running_mean"], loaded["bn1.running_mean"])
