"""`finetune run` end to end, and its user-facing errors."""
from __future__ import annotations

import csv
import shutil

import yaml
from typer.testing import CliRunner

from finetune.cli import app

runner = CliRunner()


def test_run_writes_the_run_directory(tiny_data, tmp_path, run_args):
    out = tmp_path / "run"
    result = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--epochs", "2"))
    assert result.exit_code == 0, result.output
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    columns = set(rows[0])
    assert {"train/loss_epoch", "val/loss", "val/acc1", "val/acc5", "train/acc1"} <= columns
    assert sorted({int(r["epoch"]) for r in rows if r.get("val/acc1")}) == [0, 1]
    config = yaml.safe_load(open(out / "config.yaml"))
    assert config["backbone"] == "test_resnet" and config["epochs"] == 2 and config["image_size"] == 32
    assert config["resolved"]["classes"] == ["circle", "square", "triangle"]
    assert config["resolved"]["data_config"]["input_size"] == 32
    assert config["resolved"]["precision"] in ("32", "bf16-mixed")
    assert "Best val top-1" in result.output and str(out) in result.output.replace("\n", "")
    assert "Precision:" in result.output


def test_top5_is_capped_at_class_count(tiny_data, tmp_path, run_args):
    out = tmp_path / "run"
    assert runner.invoke(app, run_args(tiny_data, out, "--weights", "none")).exit_code == 0
    rows = [r for r in csv.DictReader(open(out / "metrics.csv")) if r.get("val/acc5")]
    assert float(rows[-1]["val/acc5"]) == 1.0  # top-3 of 3 classes always hits


def test_flat_layout_is_split_by_val_split(tmp_path, run_args):
    from finetune.data.synthetic import make_image_folder

    data = make_image_folder(tmp_path / "flat", "shapes", train_per_class=10, val_per_class=0, size=32,
                             classes=("circle", "cross"), split=False)
    out = tmp_path / "run"
    result = runner.invoke(app, run_args(data, out, "--weights", "none", "--val-split", "0.3"))
    assert result.exit_code == 0, result.output
    counts = yaml.safe_load(open(out / "config.yaml"))["resolved"]["counts"]
    assert counts == {"train": 14, "val": 6, "test": 0}


def test_bad_files_are_listed_and_the_run_goes_on(tiny_data, tmp_path, run_args):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "train" / "circle" / "empty.jpg").write_bytes(b"")
    (data / "train" / "square" / "notes.txt").write_text("not an image")
    out = tmp_path / "run"
    result = runner.invoke(app, run_args(data, out, "--weights", "none"))
    assert result.exit_code == 0, result.output
    listed = (out / "bad_files.txt").read_text()
    assert "empty.jpg" in listed and "notes.txt" in listed
    assert "Skipped 2" in result.output


def test_missing_data_folder_is_a_clear_error(tmp_path, run_args):
    result = runner.invoke(app, run_args(tmp_path / "nope", tmp_path / "run", "--weights", "none"))
    assert result.exit_code == 2
    assert "nope" in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_option_value_names_the_choices(tiny_data, tmp_path, run_args):
    result = runner.invoke(app, run_args(tiny_data, tmp_path / "run", "--optimizer", "lamb"))
    assert result.exit_code == 2
    assert "--optimizer" in result.output and "sgd" in result.output and "lamb" in result.output


def test_layers_lists_names_in_order_with_counts():
    result = runner.invoke(app, ["layers", "--backbone", "test_resnet"])
    assert result.exit_code == 0, result.output
    names = [line.split()[1] for line in result.output.splitlines() if line.startswith("│")]
    assert names[:6] == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"] and names[-1] == "fc"
    assert "42,432" in result.output  # layer3 of test_resnet


def test_layers_unknown_backbone_suggests_names():
    result = runner.invoke(app, ["layers", "--backbone", "resnet5O"])
    assert result.exit_code == 2
    assert "resnet5O" in result.output and "resnet50" in result.output


def test_every_run_option_states_its_default_in_help():
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--weights", "--epochs", "--batch-size", "--lr", "--optimizer", "--seed", "--precision", "--devices"):
        assert option in result.output
    assert result.output.lower().count("default") >= 22  # one per option that has one


def test_channels_last_flag_sets_the_memory_format(tiny_data, tmp_path, run_args):
    import torch

    layouts = {}
    for flag in ("--channels-last", "--no-channels-last"):
        out = tmp_path / flag
        assert runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--precision", "32", flag)).exit_code == 0
        state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        layouts[flag] = state["backbone.model.layer1.0.conv1.weight"].is_contiguous(memory_format=torch.channels_last)
    assert layouts == {"--channels-last": True, "--no-channels-last": False}


def test_augment_flag_reaches_the_train_pipeline(tiny_data, tmp_path, run_args, monkeypatch):
    import finetune.training.fit as fit_module

    seen = {}
    original = fit_module.ImageFolderDataModule

    def spy(*args, **kwargs):
        dm = original(*args, **kwargs)
        seen["steps"] = [type(t).__name__ for t in dm.train_transform.pipeline.transforms]
        return dm

    monkeypatch.setattr(fit_module, "ImageFolderDataModule", spy)
    assert runner.invoke(app, run_args(tiny_data, tmp_path / "a", "--weights", "none", "--augment", "light")).exit_code == 0
    assert "RandomResizedCrop" not in seen["steps"] and "CenterCrop" in seen["steps"]
    assert runner.invoke(app, run_args(tiny_data, tmp_path / "b", "--weights", "none")).exit_code == 0
    assert "RandomResizedCrop" in seen["steps"]
