"""One command at a time in a run, eval or bundle folder; what a killed writer left is cleaned up."""
from __future__ import annotations

import csv
import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import finetune.run.fit as fit_module
from finetune.cli import app
from finetune.locks import LOCK_NAME, FolderInUseError, claim
from finetune.run.run_dir import default_run_dir

from bad_inputs import KILLED_WRITER_LEFTOVERS, HeldClaim, plant_killed_writer_leftovers

runner = CliRunner()


def _epochs(metrics_csv: Path) -> list[int]:
    with open(metrics_csv, newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_a_run_started_into_a_folder_another_run_is_planning_in_is_refused(tiny_data, tmp_path, run_args,
                                                                           monkeypatch):
    """The second run starts while the first plans (its folder still empty): the second must fail, not
    share the folder; the first finishes with its own config and every epoch recorded."""
    out, second = tmp_path / "run", {}
    real_plan_run = fit_module.plan_run

    def plan_run_and_start_another(config, *args, **kwargs):
        if not second:
            second["result"] = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--seed", "7"))
        return real_plan_run(config, *args, **kwargs)

    monkeypatch.setattr(fit_module, "plan_run", plan_run_and_start_another)
    first = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--epochs", "2"))
    assert first.exit_code == 0, first.output
    refused = second["result"]
    assert refused.exit_code == 2, refused.output
    assert f"--output {out} is in use by another finetune command" in " ".join(refused.output.split())
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 42  # the first run's
    assert _epochs(out / "metrics.csv") == [1, 2]
    assert not (out / LOCK_NAME).exists()  # released at the end


def test_a_folder_a_run_holds_refuses_a_resume_and_a_new_run(trained_run, tmp_path, run_args, tiny_data):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    with HeldClaim(copy / LOCK_NAME):
        resumed = runner.invoke(app, ["run", "--resume", str(copy), "--epochs", "3", "--no-progress"])
        fresh = runner.invoke(app, run_args(tiny_data, copy, "--weights", "none", "--overwrite"))
    for result, flag in ((resumed, "--resume"), (fresh, "--output")):
        assert result.exit_code == 2, result.output
        assert f"{flag} {copy} is in use by another finetune command (process" in " ".join(result.output.split())
    assert (copy / "config.yaml").read_bytes() == (trained_run / "config.yaml").read_bytes()  # nothing touched


def test_a_lock_left_by_a_killed_process_is_not_held(tmp_path):
    lock = tmp_path / "run" / LOCK_NAME
    holder = HeldClaim(lock)
    with pytest.raises(FolderInUseError, match=f"process {holder.process.pid}"):
        with claim(lock, "--output run"):
            pass
    holder.kill()
    assert lock.exists()  # kill -9: nothing removed it, but the kernel released the lock
    with claim(lock, "--output run"):
        assert lock.read_text().split() == [str(os.getpid())]
    assert not lock.exists()


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    import finetune.run.run_dir as run_dir_module

    class FixedClock:
        @staticmethod
        def now() -> datetime:
            return datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(run_dir_module, "datetime", FixedClock)
    made = [default_run_dir("resnet18", tmp_path) for _ in range(3)]
    assert [p.name for p in made] == ["2026-01-02_030405-resnet18", "2026-01-02_030405-resnet18-2",
                                      "2026-01-02_030405-resnet18-3"]
    assert all(p.is_dir() for p in made)


def test_a_failed_run_leaves_no_empty_folder_it_made(tmp_path, run_args, tiny_data):
    out = tmp_path / "new"
    result = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--backbone", "no_such_model"))
    assert result.exit_code == 2, result.output
    assert not out.exists()


@pytest.mark.parametrize("how", ["resume", "overwrite"])
def test_what_a_killed_writer_left_is_removed_when_the_folder_is_taken(trained_run, tmp_path, how, run_args,
                                                                       tiny_data):
    """Half-written checkpoints, configs, metrics and staged bundles of a killed run (any version's names)."""
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    planted = plant_killed_writer_leftovers(copy)
    if how == "resume":
        result = runner.invoke(app, ["run", "--resume", str(copy), "--epochs", "3", "--no-progress"])
    else:
        result = runner.invoke(app, run_args(tiny_data, copy, "--weights", "none", "--overwrite"))
    assert result.exit_code == 0, result.output
    assert [p.name for p in planted if p.exists()] == []
    leftovers = {f for names in KILLED_WRITER_LEFTOVERS.values() for f in names}
    assert not [p for p in copy.rglob(".*") if p.name in leftovers or ".tmp" in p.name]


def test_a_second_export_to_the_same_folder_is_refused_while_the_first_writes(trained_run, tmp_path):
    out = tmp_path / "bundle"
    with HeldClaim(tmp_path / ".bundle.lock"):
        result = runner.invoke(app, ["export", "--model", str(trained_run), "--output", str(out)])
    assert result.exit_code == 2, result.output
    assert f"--output {out} is in use by another finetune command" in " ".join(result.output.split())
    assert not out.exists()
    again = runner.invoke(app, ["export", "--model", str(trained_run), "--output", str(out)])
    assert again.exit_code == 0  # once it is free


def test_a_second_eval_into_the_same_output_is_refused_while_the_first_writes(trained_run, tiny_data, tmp_path):
    out = tmp_path / "eval"
    with HeldClaim(out / LOCK_NAME):
        result = runner.invoke(app, ["eval", "--model", str(trained_run), "--data", str(tiny_data),
                                     "--output", str(out)])
    assert result.exit_code == 2, result.output
    assert f"--output {out} is in use by another finetune command" in " ".join(result.output.split())
    again = runner.invoke(app, ["eval", "--model", str(trained_run), "--data", str(tiny_data), "--output", str(out)])
    assert again.exit_code == 0, again.output
    sheet = ["misclassified.png"] if json.loads((out / "metrics.json").read_text())["misclassified"]["count"] else []
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["confusion_matrix.png", "metrics.json", "misclassified.csv", "reliability.png", *sheet])


def test_a_live_writer_s_temporary_files_are_kept(trained_run, tmp_path):
    """An export writing into the run directory (its own lock) while a --resume takes the folder: the
    export's staged bundle belongs to a live process and stays, as does an unrelated hidden file."""
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    live = copy / f".model.tmp-{os.getpid()}-12345678"
    live.mkdir()
    mine = copy / ".notes.abcdefgh.tmp"  # the user's, in a name like version 0.1's checkpoint temporaries
    mine.write_text("keep")
    result = runner.invoke(app, ["run", "--resume", str(copy), "--epochs", "3", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert live.is_dir() and mine.read_text() == "keep"


def test_a_tune_trial_whose_folder_another_process_holds_fails_alone(tiny_data, tmp_path):
    """Trials are runs: each holds its folder. One held by another process is recorded as failed with the
    reason, and the study goes on to the next trial."""
    import optuna

    space = tmp_path / "space.yaml"
    space.write_text("lr: {log-uniform: [1.0e-3, 1.0e-2]}\n")
    study_dir = tmp_path / "study"
    with HeldClaim(study_dir / "trials" / "stage1-000" / LOCK_NAME):
        result = runner.invoke(app, ["tune", "--backbone", "test_resnet", "--data", str(tiny_data), "--weights",
                                     "none", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--epochs",
                                     "1", "--precision", "32", "--trials", "2", "--stages", "1", "--pruner", "none",
                                     "--space", str(space), "--output", str(study_dir), "--no-final-run"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="study-stage1", storage=f"sqlite:///{study_dir / 'study.db'}")
    outcomes = {t.number: (t.user_attrs.get("outcome"), t.user_attrs.get("reason", "")) for t in study.trials}
    assert outcomes[0][0] == "failed" and "is in use by another finetune command" in outcomes[0][1]
    assert outcomes[1][0] == "complete"
