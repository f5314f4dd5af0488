"""A trial under DDP (two CPU processes): the other rank joins the trial, and a prune stops both."""
from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
import torch
from optuna.trial import TrialState

SCRIPT = """
import sys
from pathlib import Path
from optuna.pruners import ThresholdPruner
import finetune
from finetune.config import RunConfig
from finetune.search.space import Param

config = RunConfig(backbone="test_resnet", data=sys.argv[1], weights="none", image_size=32, epochs=3, batch_size=4,
                   workers=0, progress=False, precision="32", accelerator="cpu", devices=2, strategy="ddp")
finetune.tune(config, {"lr": Param("lr", "log-uniform", 1e-3, 1e-2)}, trials=1, stages=1, output=Path(sys.argv[2]),
              pruner=ThresholdPruner(lower=2.0))  # prunes at the first report
"""


@pytest.mark.slow
def test_a_pruned_trial_under_ddp_stops_both_ranks(tiny_data, tmp_path):
    script = tmp_path / "study.py"
    script.write_text(SCRIPT)
    out = tmp_path / "s"
    proc = subprocess.run([sys.executable, str(script), str(tiny_data), str(out)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = optuna.load_study(study_name="s-stage1", storage=f"sqlite:///{out / 'study.db'}")
    [trial] = study.trials  # the second rank made no trial of its own
    ckpt = torch.load(out / "trials" / "stage1-000" / "checkpoints" / "last.ckpt", weights_only=True)
    assert trial.state == TrialState.PRUNED and trial.user_attrs["epochs_run"] == 1
    assert ckpt["global_step"] == 3  # 24 images, 4 per batch per process: 3 steps of 9, then both ranks stopped
