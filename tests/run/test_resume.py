"""--resume keeps the run's record, survives an interrupted checkpoint write and works from any directory."""
from __future__ import annotations

import csv
import io
import os
import shutil
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from typer.testing import CliRunner

from finetune.cli import app

runner = CliRunner()


def _val_epochs(metrics_csv: Path) -> set[int]:
    with open(metrics_csv, newline="") as f:
        return {int(r["epoch"]) for r in csv.DictReader(f) if r.get("val/acc1")}


class _RecordAtFirstStep(pl.Callback):
    """What is on disk when the resumed run takes its first step."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.seen = run_dir, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen is None:
            self.seen = {"config": yaml.safe_load((self.run_dir / "config.yaml").read_text()),
                         "val_epochs": _val_epochs(self.run_dir / "metrics.csv")}


def test_resume_from_another_directory_keeps_the_record(tiny_data, test_resnet_weights, tmp_path, monkeypatch):
    """Relative --data/--weights/--output; then --resume and export from elsewhere."""
    import finetune.run.fit as fit_module

    shutil.copytree(tiny_data, tmp_path / "data")
    shutil.copy(test_resnet_weights, tmp_path / "w.safetensors")
    monkeypatch.chdir(tmp_path)
    args = ["run", "--backbone", "test_resnet", "--data", "data", "--weights", "w.safetensors", "--output", "run",
            "--image-size", "32", "--batch-size", "8", "--workers", "0", "--no-progress", "--no-export",
            "--epochs", "1", "--limit-train-batches", "1", "--lr", "auto", "--lr-find-steps", "5"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    run = tmp_path / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"] == str(tmp_path / "data") and saved["weights"] == str(tmp_path / "w.safetensors")
    assert saved["output"] == str(run)
    assert "Data: data (" in " ".join(first.output.split())  # the console keeps the path as typed
    lr_find, sources = saved["resolved"]["lr_find"], saved["sources"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spy = _RecordAtFirstStep(run)
    original = fit_module.guard_callbacks
    monkeypatch.setattr(fit_module, "guard_callbacks", lambda *a: [*original(*a), spy])
    resumed = runner.invoke(app, ["run", "--resume", str(run), "--epochs", "2", "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert spy.seen["val_epochs"] == {1}  # the first run's rows are on disk from the start
    assert spy.seen["config"]["resolved"]["lr_find"] == lr_find and spy.seen["config"]["sources"]["lr"] == sources["lr"]
    final = yaml.safe_load((run / "config.yaml").read_text())
    assert final["epochs"] == 2 and final["resolved"]["lr_find"] == lr_find
    assert final["sources"]["weights"] == "command line" and "--resume" in final["sources"]["epochs"]
    assert _val_epochs(run / "metrics.csv") == {1, 2}
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2

    exported = runner.invoke(app, ["export", "--model", str(run)])
    assert exported.exit_code == 0, exported.output
    assert (run / "model" / "model.onnx").is_file()


class SimulatedCrash(BaseException):
    """The process dying part-way through a write (BaseException: nothing may swallow it)."""


def _other_filesystem_tmp(near: Path) -> str | None:
    """A temp folder on another filesystem than `near`, where a rename into `near` has to copy."""
    for candidate in ("/dev/shm", "/run/user", "/var/tmp"):
        if (os.path.isdir(candidate) and os.access(candidate, os.W_OK)
                and os.stat(candidate).st_dev != os.stat(near).st_dev):
            return candidate
    return None


def _crash_half_way_through_last_ckpt(monkeypatch):
    """Any write of last.ckpt's bytes to disk stops half-way: torch.save to a file, or a copy into place."""
    real_save, real_copyfile = torch.save, shutil.copyfile

    def save(obj, f, *args, **kwargs):
        target = str(getattr(f, "name", f))
        if isinstance(f, io.BytesIO) or "last.ckpt" not in target:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        if hasattr(f, "write"):
            f.write(data[: len(data) // 2])
            f.flush()
        else:
            Path(f).write_bytes(data[: len(data) // 2])
        raise SimulatedCrash(target)

    def copyfile(src, dst, *args, **kwargs):
        if "last.ckpt" not in str(dst):
            return real_copyfile(src, dst, *args, **kwargs)
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])
        raise SimulatedCrash(str(dst))

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(shutil, "copyfile", copyfile)


def test_a_crash_while_writing_last_ckpt_leaves_the_previous_one(tiny_data, tmp_path, run_args, monkeypatch):
    """Lightning stages a checkpoint in the system temp folder and moves it into place, which is a copy
    (not atomic) when that folder is on another filesystem; the crash is simulated in both kinds of write."""
    import tempfile

    out = tmp_path / "run"
    assert runner.invoke(app, run_args(tiny_data, out, "--weights", "none",
                                       "--limit-train-batches", "1")).exit_code == 0
    other = _other_filesystem_tmp(tmp_path)
    if other is not None:
        monkeypatch.setattr(tempfile, "tempdir", other)
    _crash_half_way_through_last_ckpt(monkeypatch)
    with pytest.raises(SimulatedCrash):
        runner.invoke(app, ["run", "--resume", str(out), "--epochs", "2", "--no-progress"])
    monkeypatch.undo()
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert [p.name for p in (out / "checkpoints").iterdir() if "tmp" in p.name] == []  # no leftovers
    resumed = runner.invoke(app, ["run", "--resume", str(out), "--epochs", "2", "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def test_best_ckpt_leaves_out_the_training_state_and_last_ckpt_keeps_it(tiny_data, tmp_path, run_args):
    """--resume reads last.ckpt; best.ckpt serves eval, export and --teacher without the optimizer's moments."""
    out = tmp_path / "run"
    result = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--ema"))
    assert result.exit_code == 0, result.output
    best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert "optimizer_states" not in best and "lr_schedulers" not in best
    assert last["optimizer_states"] and last["lr_schedulers"]
    assert "ema" in best and best["callbacks"]  # the callbacks' own state and hooks still reach best.ckpt
    exported = runner.invoke(app, ["export", "--model", str(out)])
    assert exported.exit_code == 0, exported.output



def _start_under_other_rules(data, out, run_args, monkeypatch, **changes) -> None:
    """A 1-epoch run whose --augment auto policy differs by `changes` from what today's rules choose
    (as if started by another version); the rules are back when the run is resumed."""
    import dataclasses

    import finetune.run.auto_defaults as auto_defaults

    rules = auto_defaults.auto_augment_policy
    with monkeypatch.context() as patch:
        patch.setattr(auto_defaults, "auto_augment_policy", lambda *a: dataclasses.replace(rules(*a), **changes))
        started = runner.invoke(app, run_args(data, out, "--weights", "none"))
    assert started.exit_code == 0, started.output


def _resume_to_epoch_2(out: Path) -> dict:
    resumed = runner.invoke(app, ["run", "--resume", str(out), "--epochs", "2", "--no-progress"])
    assert resumed.exit_code == 0, resumed.output  # a changed pipeline would not take the saved RNG states
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    return yaml.safe_load((out / "config.yaml").read_text())


def test_a_resumed_run_keeps_the_augmentation_it_started_with(arrows_data, tmp_path, run_args, monkeypatch):
    out = tmp_path / "run"
    _start_under_other_rules(arrows_data, out, run_args, monkeypatch, flip=True)  # today: no flip for arrows
    assert yaml.safe_load((out / "config.yaml").read_text())["resolved"]["augment_policy"]["flip"] is True
    saved = _resume_to_epoch_2(out)
    assert saved["resolved"]["augment_policy"]["flip"] is True  # what the resumed run trained with
    assert saved["sources"]["augment"].startswith("auto, kept from the run's start")


def test_a_run_started_before_the_exposure_test_keeps_its_brightness_jitter(arrows_data, tmp_path, run_args,
                                                                          monkeypatch):
    out = tmp_path / "run"
    _start_under_other_rules(arrows_data, out, run_args, monkeypatch, photometric=True)  # today: off (one exposure)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["resolved"]["augment_policy"]  # what that version wrote: a data profile, no policy, no exposure test
    for key in ("tonal_spread", "exposure_varies", "flip_nn_with_mirrors", "flip_margin"):
        del saved["resolved"]["data_profile"][key]
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    policy = _resume_to_epoch_2(out)["resolved"]["augment_policy"]
    assert policy["photometric"] is True and policy["flip"] is False  # from the recorded profile, jittered as it began


def test_a_run_that_recorded_its_exposure_test_but_no_policy_resumes_from_what_it_measured(
        arrows_data, tmp_path, run_args, monkeypatch):
    import finetune.run.auto_defaults as auto_defaults

    out = tmp_path / "run"
    started = runner.invoke(app, run_args(arrows_data, out, "--weights", "none"))
    assert started.exit_code == 0, started.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["resolved"]["data_profile"]["exposure_varies"] is False  # one tonal range: no jitter
    del saved["resolved"]["augment_policy"]  # what that version wrote: the exposure test, no policy
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))

    def measure_again(index):
        raise AssertionError("the images were measured again")

    monkeypatch.setattr(auto_defaults, "profile_training_set", measure_again)
    policy = _resume_to_epoch_2(out)["resolved"]["augment_policy"]
    assert policy["photometric"] is False and policy["flip"] is False  # as recorded, as it trained


class _BatchSide(pl.Callback):
    """The side of the first batch the run trains on."""

    side = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.side = self.side or batch[0].shape[-1]


def _resume_fit(out: Path) -> tuple[int, dict]:
    """--resume OUT --epochs 2 through the library (the CLI's path), with the first batch's side seen."""
    from rich.console import Console

    from finetune.run.fit import fit
    from finetune.run.resume import resume_config

    seen = _BatchSide()
    fit(resume_config(out, {"epochs": 2}), Console(file=io.StringIO()), ckpt_path=out / "checkpoints" / "last.ckpt",
        callbacks=[seen], sources={"epochs": "command line (--resume)"})
    return seen.side, yaml.safe_load((out / "config.yaml").read_text())


def _start_without_size(data: Path, out: Path, *extra: str) -> None:
    args = ["run", "--backbone", "test_resnet", "--data", str(data), "--output", str(out), "--epochs", "1",
            "--batch-size", "8", "--workers", "0", "--no-progress", "--no-export", "--weights", "none", *extra]
    started = runner.invoke(app, args)
    assert started.exit_code == 0, started.output


def test_a_resumed_run_keeps_the_input_size_it_chose(tiny_data, tmp_path, monkeypatch):
    """A run whose size was chosen by other rules (as if by another version: 64 px) trains on at it when
    resumed, though today's rule gives test_resnet's own 160."""
    import finetune.run.plan as plan_module

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(plan_module, "resolve_image_size", lambda size, *a: (64, "auto: 64 px, another rule"))
        _start_without_size(tiny_data, out)
    assert yaml.safe_load((out / "config.yaml").read_text())["image_size"] == 64
    side, saved = _resume_fit(out)
    assert side == 64 and saved["image_size"] == 64
    assert saved["sources"]["image_size"] == "auto: 64 px, another rule"
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["parts"][
        "image_size"] == 64


def test_a_run_that_recorded_no_size_resumes_at_the_size_it_trained_at(tiny_data, tmp_path):
    """config.yaml of a version that left the size to the backbone: `image_size: null`, the size in
    resolved.data_config. The run goes on at that size, not at the one the backbone has now (timm's
    default weights for a name can change size between versions): here 64 px, not test_resnet's 160."""
    out = tmp_path / "run"
    _start_without_size(tiny_data, out, "--image-size", "64")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved["image_size"], saved["sources"]["image_size"] = None, "default"  # what that version wrote
    assert saved["resolved"]["data_config"]["input_size"] == 64
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    side, saved = _resume_fit(out)
    assert side == 64 and saved["image_size"] == 64
    assert saved["sources"]["image_size"] == "auto, kept from the run's start: 64 px"


def test_a_run_whose_metrics_csv_counted_epochs_from_0_resumes_counting_from_1(trained_run, tmp_path):
    """Version 0.1 wrote metrics.csv's epochs from 0: on --resume its rows are renumbered, so the file counts
    1, 2, 3 with no gap and no repeat."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for row in rows:
        row["epoch"] = str(int(row["epoch"]) - 1)  # as version 0.1 wrote them
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    # A resume stopped in its first epoch leaves the file as it was; the next resume still reads it right.
    interrupted = _resume_stopped_at_first_step(run)
    assert "Continue with: finetune run --resume" in " ".join(interrupted.split())
    result = runner.invoke(app, ["run", "--resume", str(run), "--epochs", "3", "--no-progress"])
    assert result.exit_code == 0, result.output
    with open(run / "metrics.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]


def _resume_stopped_at_first_step(run: Path) -> str:
    """`fit` resuming `run`, stopped by a Ctrl-C at its first training step; returns the Interrupted message."""
    from finetune.errors import Interrupted
    from finetune.run.fit import fit
    from finetune.run.resume import resume_config

    class CtrlC(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever started the tests
    with pytest.raises(Interrupted) as stopped:
        fit(resume_config(run, {"epochs": 3}), callbacks=[CtrlC()], ckpt_path=run / "checkpoints" / "last.ckpt")
    return str(stopped.value)


def test_a_resume_stopped_before_training_goes_on_says_to_resume_not_to_overwrite(trained_run, tmp_path,
                                                                                  monkeypatch):
    import finetune.run.fit as fit_module
    from finetune.errors import Interrupted
    from finetune.run.resume import resume_config

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "plan_run", ctrl_c)
    with pytest.raises(Interrupted) as stopped:
        fit_module.fit(resume_config(run, {"epochs": 3}), ckpt_path=run / "checkpoints" / "last.ckpt")
    message = str(stopped.value)
    assert "--overwrite" not in message and f"Continue with: finetune run --resume {run}" in message
    assert "keeps epoch 2" in message  # the trained run's two epochs, counted from 1
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_a_model_whose_settings_a_narrower_range_now_refuses_stays_usable(trained_run, tmp_path):
    """A run written with a --backbone-lr-mult above 1 (legal in version 0.1): export and --resume still read it."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(run / "checkpoints" / name, weights_only=True)
        ckpt["hyper_parameters"]["config"].update(backbone_lr_mult=2.0)
        torch.save(ckpt, run / "checkpoints" / name)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config.update(backbone_lr_mult=2.0)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    exported = runner.invoke(app, ["export", "--model", str(run / "checkpoints" / "best.ckpt"), "--output",
                                   str(tmp_path / "bundle")])
    assert exported.exit_code == 0, exported.output
    resumed = runner.invoke(app, ["run", "--resume", str(run), "--epochs", "3", "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert yaml.safe_load((run / "config.yaml").read_text())["backbone_lr_mult"] == 2.0
