"""`--devices 2 --strategy ddp --accelerator cpu`: Lightning runs two processes, one run directory."""
from __future__ import annotations

import os
import subprocess
import sys

import torch


def test_ddp_on_two_cpu_processes(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "finetune", "run", "--backbone", "test_resnet", "--data", str(tiny_data),
           "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--workers", "0",
           "--no-progress", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world_size: 2" in proc.stderr or "distributed_backend=gloo" in proc.stderr + proc.stdout
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    # 24 train images, 4 per batch per process: 3 optimizer steps each, not 6.
    assert ckpt["global_step"] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name != "ddp"] == []  # no second run dir made by rank 1


def test_num_nodes_reaches_the_trainer(tiny_data, tmp_path):
    from finetune.config import RunConfig
    from finetune.training.fit import build_trainer

    config = RunConfig(backbone="test_resnet", data=tiny_data, accelerator="cpu", devices="1", strategy="ddp",
                       num_nodes=2, progress=False)
    trainer = build_trainer(config, tmp_path, "32", steps_per_epoch=3)
    assert trainer.num_nodes == 2 and trainer.world_size == 2
