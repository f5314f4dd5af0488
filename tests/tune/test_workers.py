"""Two worker processes on one journal-file study run N trials between them, none twice."""
from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from finetune.search.storage import counts


@pytest.mark.slow
def test_two_workers_share_one_journal_study(tiny_data, tmp_path):
    out, journal = tmp_path / "s", tmp_path / "shared" / "study.log"
    space = tmp_path / "space.yaml"
    space.write_text("lr: {log-uniform: [1.0e-3, 1.0e-2]}\n")
    command = [sys.executable, "-m", "finetune", "tune", "--backbone", "test_resnet", "--data", str(tiny_data),
               "--weights", "none", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--epochs", "1",
               "--precision", "32", "--trials", "4", "--stages", "1", "--pruner", "none", "--space", str(space),
               "--output", str(out), "--storage", str(journal)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
               for _ in range(2)]
    logs = [w.communicate(timeout=300)[0] for w in workers]
    # The tails, so a failure shows each worker's own error rather than a message cut to its start.
    assert [w.returncode for w in workers] == [0, 0], "\n\n".join(f"worker {i}:\n{log[-4000:]}"
                                                                  for i, log in enumerate(logs))
    study = optuna.load_study(study_name="s-stage1", storage=JournalStorage(JournalFileBackend(str(journal))))
    ran = [t for t in study.trials if counts(t)]
    assert len(ran) == 4 and all(t.state == TrialState.COMPLETE for t in ran)
    assert len({t.number for t in ran}) == 4 and len({t.user_attrs["run_dir"] for t in ran}) == 4
    assert len({t.params["lr"] for t in ran}) == 4  # the workers drew different settings
    assert all("run_dir" not in t.user_attrs for t in study.trials if not counts(t))  # a surplus trial never ran
