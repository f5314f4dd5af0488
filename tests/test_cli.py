"""`finetune run` end to end, and its user-facing errors."""
from __future__ import annotations

import csv
import shutil

import pytest
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
    assert {"train/loss", "val/loss", "val/acc1", "val/acc5", "train/acc1"} <= columns
    assert sorted({int(r["epoch"]) for r in rows if r.get("val/acc1")}) == [1, 2]  # counted from 1
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
    text = " ".join(result.output.split())
    assert "Skipped 2 unreadable files:" in text and "empty.jpg (empty file (0 bytes))" in text
    assert text.count("empty.jpg") == 1  # said once: the scan's own warning is not repeated


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


def test_channels_last_flag_sets_the_memory_format(tiny_data, tmp_path, run_args):
    import torch

    layouts = {}
    for flag in ("--channels-last", "--no-channels-last"):
        out = tmp_path / flag
        assert runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--precision", "32",
                                           flag)).exit_code == 0
        state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        layouts[flag] = state["backbone.model.layer1.0.conv1.weight"].is_contiguous(memory_format=torch.channels_last)
    assert layouts == {"--channels-last": True, "--no-channels-last": False}


def test_augment_flag_reaches_the_train_pipeline(tiny_data, tmp_path, run_args, monkeypatch):
    import finetune.run.plan as plan_module

    seen = {}
    original = plan_module.ImageFolderDataModule

    def spy(*args, **kwargs):
        dm = original(*args, **kwargs)
        seen["steps"] = [type(t).__name__ for t in dm.train_transform.pipeline.transforms]
        return dm

    monkeypatch.setattr(plan_module, "ImageFolderDataModule", spy)
    assert runner.invoke(app, run_args(tiny_data, tmp_path / "a", "--weights", "none",
                                       "--augment", "light")).exit_code == 0
    assert "RandomResizedCrop" not in seen["steps"] and "CenterCrop" in seen["steps"]
    assert runner.invoke(app, run_args(tiny_data, tmp_path / "b", "--weights", "none",
                                       "--augment", "standard")).exit_code == 0
    assert "RandomResizedCrop" in seen["steps"]
    # the default, auto, at 32 px: translation only (no scale-changing crop)
    assert runner.invoke(app, run_args(tiny_data, tmp_path / "c", "--weights", "none")).exit_code == 0
    assert "RandomCrop" in seen["steps"] and "RandomResizedCrop" not in seen["steps"]


def _option_help(command: str = "run") -> dict:
    """The click options of a command, by parameter name."""
    import typer.main

    return {p.name: p for p in typer.main.get_command(app).commands[command].params}


def test_every_run_option_states_its_real_default_in_help():
    """Per RunConfig field: a --option exists, and what its help says is the default is the field's default."""
    from finetune.config import RunConfig

    options = _option_help()
    for name, field in RunConfig.model_fields.items():
        assert name in options, f"RunConfig.{name} has no --{name.replace('_', '-')} option"
        option, default = options[name], field.default
        if field.is_required():
            assert "Required" in option.help, name
        elif default is None:  # nothing for Typer to show: the help text must say what happens
            assert "Default:" in option.help, f"--{name.replace('_', '-')} does not say what its default is"
        else:
            parsed = RunConfig.model_validate({"backbone": "x", "data": ".", name: option.default})
            assert getattr(parsed, name) == default, (f"--{name.replace('_', '-')} shows {option.default!r}, "
                                                      f"RunConfig has {default!r}")
            assert option.show_default is not False, f"--{name.replace('_', '-')} hides its default"


def _first_run(tiny_data, out, run_args, *extra):
    result = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--limit-train-batches", "1", *extra))
    assert result.exit_code == 0, result.output
    return result


def test_existing_run_dir_is_refused_and_overwrite_starts_fresh(tiny_data, tmp_path, run_args):
    out = tmp_path / "run"
    _first_run(tiny_data, out, run_args)
    before = (out / "metrics.csv").read_bytes()
    again = runner.invoke(app, run_args(tiny_data, out, "--weights", "none"))
    text = " ".join(again.output.split())
    assert again.exit_code == 2, again.output
    assert str(out) in text and f"--resume {out}" in text and "--overwrite" in text
    assert (out / "metrics.csv").read_bytes() == before  # nothing of the first run was touched
    (out / "lr_find.png").write_bytes(b"stale plot of the first run")
    (out / "notes.txt").write_text("the user's own file")
    fresh = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--limit-train-batches", "1",
                                        "--overwrite"))
    assert fresh.exit_code == 0, fresh.output
    assert not (out / "lr_find.png").exists()  # the first run's files are gone...
    assert (out / "notes.txt").read_text() == "the user's own file"  # ...files a run never writes are kept
    assert yaml.safe_load(open(out / "config.yaml"))["overwrite"] is True


def test_limit_train_batches_1_is_one_batch_per_epoch(tiny_data, tmp_path, run_args):
    import torch

    from finetune.config import RunConfig

    assert RunConfig(backbone="x", data=".", limit_train_batches="1").limit_train_batches == 1
    assert RunConfig(backbone="x", data=".", limit_train_batches="0.5").limit_train_batches == 0.5
    full = RunConfig(backbone="x", data=".", limit_train_batches="1.0").limit_train_batches
    assert full == 1.0 and isinstance(full, float)  # 1.0: every batch
    out = tmp_path / "run"
    _first_run(tiny_data, out, run_args, "--epochs", "2")
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2  # not 2 x 3 batches


def test_limit_train_batches_rejects_a_fractional_count(tiny_data, tmp_path, run_args):
    result = runner.invoke(app, run_args(tiny_data, tmp_path / "run", "--weights", "none",
                                         "--limit-train-batches", "2.5"))
    assert result.exit_code == 2 and "--limit-train-batches" in result.output and "2.5" in result.output


@pytest.mark.parametrize("flags,named", [
    (["--accelerator", "tpux"], ["tpux", "cpu", "gpu"]),
    (["--accelerator", "mps"], ["mps", "available here: cpu"]),
    (["--accelerator", "cpu", "--devices", "0"], ["--devices 0", "a count"]),
    (["--devices", "many"], ["many", "auto"]),
])
def test_bad_accelerator_or_devices_is_a_one_line_error(tiny_data, tmp_path, run_args, flags, named):
    result = runner.invoke(app, run_args(tiny_data, tmp_path / "run", "--weights", "none", *flags))
    text = " ".join(result.output.split())
    assert result.exit_code == 2, (result.exception, result.output)
    assert "Traceback" not in result.output and text.startswith("Error:") and text.count("Error:") == 1
    for word in named:
        assert word in text, word


IGNORED = [
    ({"teacher_weights": "t.safetensors"}, "--teacher-weights", "--teacher"),
    ({"optimizer": "adam", "momentum": 0.8}, "--momentum", "sgd"),
    ({"momentum": 0.8}, "--momentum", "adamw"),
    ({"kd_alpha": 0.9}, "--kd-alpha", "--teacher"),
    ({"kd_temperature": 2.0}, "--kd-temperature", "--teacher"),
    ({"ema_decay": 0.99}, "--ema-decay", "--ema"),
    ({"step_size": 3}, "--step-size", "--schedule step"),
    ({"gamma": 0.5, "schedule": "cosine"}, "--gamma", "--schedule step"),
]


@pytest.mark.parametrize("values,flag,needs", IGNORED)
def test_an_option_that_would_be_ignored_is_an_error(tmp_path, values, flag, needs):
    from finetune.config import resolve_config
    from finetune.errors import FinetuneError

    cli = {"backbone": "test_resnet", "data": tmp_path, **values}
    with pytest.raises(FinetuneError, match=f"{flag} .*{needs}"):
        resolve_config(cli, explicit=set(cli), recipe=None)


def test_ignored_option_on_the_command_line_stops_the_run_before_training(tiny_data, tmp_path, run_args):
    result = runner.invoke(app, run_args(tiny_data, tmp_path / "run", "--weights", "none", "--ema-decay", "0.99"))
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "--ema-decay 0.99" in text and "without --ema" in text, result.output
    assert not (tmp_path / "run").exists()


def test_options_that_take_effect_or_keep_their_default_are_accepted(tmp_path):
    from finetune.config import resolve_config

    for values in ({"optimizer": "sgd", "momentum": 0.8}, {"schedule": "step", "step_size": 3, "gamma": 0.5},
                   {"ema": True, "ema_decay": 0.99}, {"momentum": 0.9, "kd_alpha": 0.5}):
        cli = {"backbone": "test_resnet", "data": tmp_path, **values}
        config, _ = resolve_config(cli, explicit=set(cli), recipe=None)
        assert all(getattr(config, k) == v for k, v in values.items())


def test_a_recipe_value_that_the_flags_switch_off_is_a_warning(tmp_path):
    from finetune.config import RunConfig, resolve_config

    recipe = tmp_path / "mine.yaml"
    recipe.write_text("# Mine: for tests.\nema: true\nema_decay: 0.99\n")
    cli = {"backbone": "test_resnet", "data": tmp_path, "ema": False}
    with pytest.warns(UserWarning, match="recipe mine sets ema_decay 0.99 .*--ema"):
        config, sources = resolve_config(cli, explicit={"backbone", "data", "ema"}, recipe=str(recipe))
    assert config.ema_decay == RunConfig.model_fields["ema_decay"].default
    assert "not used" in sources["ema_decay"]
