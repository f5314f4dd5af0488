"""The checkpoint format: its layout, its version, the one migration, and checkpoints written before versions."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import finetune.training.checkpoint_format as fmt
from finetune.cli import app
from finetune.errors import FinetuneError
from finetune.training.checkpoint import load_trained
from finetune.training.checkpoint_format import read_checkpoint
from finetune.training.module import FinetuneModule

runner = CliRunner()

# The keys of the checkpoints `finetune run` wrote before the record carried a format version (listed from
# a best.ckpt and last.ckpt of that code): every later layout must keep them, or those files stop loading.
UNVERSIONED_LAYOUT = {
    "": {"callbacks", "epoch", "finetune", "global_step", "hparams_name", "hyper_parameters", "loops",
         "pytorch-lightning_version", "state_dict"},
    "hyper_parameters": {"class_names", "config", "parts"},
    "hyper_parameters.parts": {"channels_last", "image_size", "loss", "optimizer", "schedule"},
    "finetune": {"backbone", "build_options", "class_names", "data_config", "frozen_units", "plan"},
}


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _block(ckpt: dict, dotted: str) -> dict:
    for key in filter(None, dotted.split(".")):
        ckpt = ckpt[key]
    return ckpt


def _unversioned(source: Path, dest: Path) -> Path:
    """`source` as the code before format versions wrote it: the same dict without finetune.format_version."""
    ckpt = _load(source)
    del ckpt["finetune"]["format_version"]
    torch.save(ckpt, dest)
    return dest


def test_a_checkpoint_keeps_the_unversioned_layout_and_adds_only_its_version(trained_run):
    best = _load(trained_run / "checkpoints" / "best.ckpt")
    last = _load(trained_run / "checkpoints" / "last.ckpt")
    for dotted, keys in UNVERSIONED_LAYOUT.items():
        extra = {"format_version"} if dotted == "finetune" else set()
        assert set(_block(best, dotted)) == keys | extra, dotted
    assert set(last) == UNVERSIONED_LAYOUT[""] | {"optimizer_states", "lr_schedulers"}
    assert best["finetune"]["format_version"] == last["finetune"]["format_version"] == 1


def test_an_unversioned_checkpoint_loads_as_the_same_model(trained_run, tmp_path):
    best = trained_run / "checkpoints" / "best.ckpt"
    old = _unversioned(best, tmp_path / "old.ckpt")
    new_model, old_model = load_trained(best), load_trained(old)
    for (name, a), (_, b) in zip(new_model.backbone.state_dict().items(), old_model.backbone.state_dict().items()):
        assert torch.equal(a, b), name
    assert old_model.class_names == new_model.class_names and old_model.data_config == new_model.data_config
    assert read_checkpoint(old).epoch == read_checkpoint(best).epoch


def test_eval_and_resume_read_a_run_written_before_versions(trained_run, tiny_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for name in ("best.ckpt", "last.ckpt"):
        _unversioned(run / "checkpoints" / name, run / "checkpoints" / name)
    evaluated = runner.invoke(app, ["eval", "--model", str(run / "checkpoints" / "best.ckpt"), "--data",
                                    str(tiny_data), "--output", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    resumed = runner.invoke(app, ["run", "--resume", str(run), "--epochs", "3", "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    last = _load(run / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 2 and last["finetune"]["format_version"] == 1  # the third epoch, counted from 0


def test_a_newer_format_is_refused_in_one_line(trained_run, tmp_path):
    ckpt = _load(trained_run / "checkpoints" / "best.ckpt")
    ckpt["finetune"]["format_version"] = 2
    torch.save(ckpt, tmp_path / "future.ckpt")
    with pytest.raises(FinetuneError, match=r"future\.ckpt has checkpoint format 2, newer .*formats 1 to 1"):
        FinetuneModule.from_checkpoint(tmp_path / "future.ckpt")
    ckpt["finetune"]["format_version"] = "1"
    torch.save(ckpt, tmp_path / "text.ckpt")
    with pytest.raises(FinetuneError, match=r"finetune\.format_version '1', not a format version"):
        load_trained(tmp_path / "text.ckpt")


def test_migrate_applies_each_step_from_the_checkpoints_version_in_order(monkeypatch):
    steps = []
    monkeypatch.setattr(fmt, "FORMAT_VERSION", 4)
    monkeypatch.setattr(fmt, "MIGRATIONS", {v: lambda ckpt, v=v: steps.append(v) for v in (1, 2, 3)})
    migrated = fmt.migrate({"finetune": {"format_version": 2}})
    assert steps == [2, 3] and migrated["finetune"]["format_version"] == 4
    steps.clear()
    fmt.migrate({"finetune": {}})  # unversioned: the layout of version 1
    assert steps == [1, 2, 3]
    steps.clear()
    fmt.migrate({"finetune": {"format_version": 4}})
    assert steps == []


def test_a_layout_of_unreleased_development_is_refused_naming_what_it_lacks(trained_run, tmp_path):
    """Checkpoints whose hyperparameters held no parts, or whose record held no plan, were never released."""
    ckpt = _load(trained_run / "checkpoints" / "best.ckpt")
    del ckpt["hyper_parameters"]["parts"], ckpt["finetune"]["plan"], ckpt["finetune"]["build_options"]
    torch.save(ckpt, tmp_path / "dev.ckpt")
    with pytest.raises(FinetuneError, match=r"dev\.ckpt is not a checkpoint of this toolkit: it has no "
                                            r"hyper_parameters\.parts, finetune\.plan, finetune\.build_options"):
        FinetuneModule.from_checkpoint(tmp_path / "dev.ckpt")


def test_parts_of_another_shape_are_refused_in_one_line(trained_run, tmp_path):
    ckpt = _load(trained_run / "checkpoints" / "best.ckpt")
    ckpt["hyper_parameters"]["parts"]["loss"]["focal_gamma"] = 2.0
    torch.save(ckpt, tmp_path / "odd.ckpt")
    with pytest.raises(FinetuneError, match=r"hyper_parameters\.parts does not describe .*focal_gamma"):
        load_trained(tmp_path / "odd.ckpt")
