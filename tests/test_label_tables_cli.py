"""`--labels` through the commands: a table run is the folder run bit for bit, and eval, predict and
augment-preview read the table as they read class folders."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from finetune.cli import app
from finetune.config import RunConfig
from finetune.data.scan import scan_image_folder

runner = CliRunner()


def _table(tiny_data: Path, path: Path, splits: tuple[str, ...] = ("train", "val")) -> Path:
    """The folder's images as a CSV of path, label, split, last image first: row order must not matter."""
    index = scan_image_folder(tiny_data)
    rows = [(str(p.relative_to(tiny_data)), index.classes[label], split)
            for split in splits for p, label in getattr(index, split)]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "label", "split"])
        writer.writerows(reversed(rows))
    return path


@pytest.fixture(scope="module")
def two_runs(tiny_data: Path, run_args, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the run from the folder, the run from its table, the table): test_resnet, 32 px, 1 epoch each."""
    tmp = tmp_path_factory.mktemp("tables")
    table = _table(tiny_data, tmp / "labels.csv")
    runs = []
    for name, extra in (("folder", ()), ("table", ("--labels", str(table)))):
        out = tmp / name
        result = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--seed", "5", *extra))
        assert result.exit_code == 0, result.output
        runs.append(out)
    return runs[0], runs[1], table


def test_a_table_run_is_the_folder_run_bit_for_bit(two_runs):
    folder, table_run, _ = two_runs
    a = torch.load(folder / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    b = torch.load(table_run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_yaml_records_the_table_for_resume(two_runs):
    _, table_run, table = two_runs
    assert RunConfig.from_yaml(table_run / "config.yaml").labels == table.absolute()


def test_eval_with_labels_gives_the_folder_figures(two_runs, tiny_data, tmp_path):
    folder, table_run, table = two_runs
    figures = []
    for model, extra, out in ((folder, (), "a"), (table_run, ("--labels", str(table)), "b")):
        result = runner.invoke(app, ["eval", "--model", str(model), "--data", str(tiny_data),
                                     "--output", str(tmp_path / out), *extra])
        assert result.exit_code == 0, result.output
        figures.append(json.loads((tmp_path / out / "metrics.json").read_text())["accuracy"])
    assert figures[0] == figures[1]


def test_predict_a_table_reports_the_accuracy_of_its_labelled_rows(two_runs, tiny_data, tmp_path):
    folder, _, _ = two_runs
    result = runner.invoke(app, ["eval", "--model", str(folder), "--data", str(tiny_data),
                                 "--output", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    val_top1 = json.loads((tmp_path / "e" / "metrics.json").read_text())["accuracy"]["none"]["top1"]
    table = _table(tiny_data, tmp_path / "val.csv", splits=("val",))
    result = runner.invoke(app, ["predict", "--model", str(folder), "--labels", str(table), "--data", str(tiny_data)])
    assert result.exit_code == 0, result.output
    assert f"Top-1 accuracy: {val_top1:.4f} (" in result.output and "of 12 labelled images" in result.output


@pytest.mark.parametrize("args,message", [
    (["--labels", "t.csv"], "--labels t.csv needs --data DIR"),
    (["--data", "."], "give --labels FILE with them"),
    ([], "nothing to predict"),
])
def test_predict_table_options_are_checked(two_runs, args, message):
    result = runner.invoke(app, ["predict", "--model", str(two_runs[0]), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_augment_preview_of_a_table_is_the_folder_preview(tiny_data, tmp_path):
    table = _table(tiny_data, tmp_path / "t.csv")
    for name, extra in (("a.png", ()), ("b.png", ("--labels", str(table)))):
        result = runner.invoke(app, ["augment-preview", "--data", str(tiny_data), "--backbone", "test_resnet",
                                     "--image-size", "32", "--count", "6", "--output", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


@pytest.mark.parametrize("command", ["run", "lr-find", "tune"])
def test_a_missing_table_is_one_line_before_anything_loads(tiny_data, tmp_path, command):
    args = [command, "--backbone", "test_resnet", "--data", str(tiny_data), "--labels", str(tmp_path / "no.csv")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "does not exist; give --labels a .csv" in result.output and "Traceback" not in result.output


@pytest.fixture(scope="module")
def flat_run(tiny_data: Path, run_args, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(a run from files in one flat folder whose labels are only in a table, the folder, the table)."""
    import shutil

    tmp = tmp_path_factory.mktemp("flat")
    flat = tmp / "images"
    flat.mkdir()
    index = scan_image_folder(tiny_data)
    with open(tmp / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "label", "split"])
        for split in ("train", "val"):
            for n, (path, label) in enumerate(getattr(index, split)):
                name = f"{split}-{n}{path.suffix}"
                shutil.copy(path, flat / name)
                writer.writerow([name, index.classes[label], split])
    result = runner.invoke(app, run_args(flat, tmp / "run", "--weights", "none", "--labels", str(tmp / "labels.csv")))
    assert result.exit_code == 0, result.output
    return tmp / "run", flat, tmp / "labels.csv"


def test_eval_of_a_table_run_on_its_own_folder_reads_the_recorded_table(flat_run, tmp_path):
    """`eval --data DIR` without --labels scores the run on the table it trained from (a class-folder scan of
    the flat folder would find no classes), with the figures of --labels."""
    run, flat, table = flat_run
    figures = []
    for out, extra in (("given", ("--labels", str(table))), ("recorded", ())):
        result = runner.invoke(app, ["eval", "--model", str(run), "--data", str(flat),
                                     "--output", str(tmp_path / out), *extra])
        assert result.exit_code == 0, result.output
        metrics = json.loads((tmp_path / out / "metrics.json").read_text())
        assert metrics["labels"] == str(table.absolute())
        figures.append(metrics["accuracy"])
    assert figures[0] == figures[1]


def test_export_with_the_runs_own_folder_reads_the_recorded_table(flat_run, tmp_path):
    run, flat, _ = flat_run
    result = runner.invoke(app, ["export", "--model", str(run), "--data", str(flat), "--output", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "model.onnx").is_file()
