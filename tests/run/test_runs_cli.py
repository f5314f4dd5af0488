"""`finetune runs` and `finetune compare`: run directories read back."""
from __future__ import annotations

from PIL import Image
from typer.testing import CliRunner

from finetune.cli import app
from finetune.run.listing import read_run, setting_differences

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


def _two_runs(tiny_data, tmp_path, run_args):
    root = tmp_path / "runs"
    a = runner.invoke(app, run_args(tiny_data, root / "base", "--weights", "none", "--epochs", "2", "--val-every", "1"))
    b = runner.invoke(app, run_args(tiny_data, root / "fast", "--weights", "none", "--epochs", "2", "--val-every", "1",
                                    "--lr", "0.01", "--label-smoothing", "0.1"))
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    return root


def test_runs_lists_each_run_with_its_best_figure_and_given_settings(tiny_data, tmp_path, run_args):
    root = _two_runs(tiny_data, tmp_path, run_args)
    result = runner.invoke(app, ["runs", str(root)], env=WIDE)
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.split()[1:2] in (["base"], ["fast"])}
    assert set(lines) == {"base", "fast"}
    assert "lr=0.01" in lines["fast"] and "label_smoothing=0.1" in lines["fast"]
    assert "lr=" not in lines["base"]  # its lr is the default
    best = read_run(root / "fast").best
    # epochs counted from 1, as on the console; both runs trained all of their 2 epochs
    assert f"acc1 {best[1]:.4f} @{best[2]}" in lines["fast"] and " 2/2 " in lines["fast"]


def test_compare_prints_differences_side_by_side_and_plots_the_curves(tiny_data, tmp_path, run_args):
    root = _two_runs(tiny_data, tmp_path, run_args)
    png = tmp_path / "cmp.png"
    result = runner.invoke(app, ["compare", str(root / "base"), str(root / "fast"), "--output", str(png)], env=WIDE)
    assert result.exit_code == 0, result.output
    cells = [[c.strip() for c in line.strip("│ ").split("│")] for line in result.output.splitlines() if "│" in line]
    rows = {c[0]: c[1:] for c in cells}
    assert rows["lr"] == ["0.001", "0.01"] and rows["label_smoothing"] == ["0.0", "0.1"]
    assert "seed" not in rows  # equal settings are not listed
    assert Image.open(png).size[0] > 500
    diffs = setting_differences([read_run(root / "base"), read_run(root / "fast")])
    assert set(diffs) == {"lr", "label_smoothing"}


def test_compare_and_runs_refuse_bad_input(tmp_path):
    one = runner.invoke(app, ["compare", str(tmp_path)])
    assert one.exit_code == 2 and "two or more run directories" in one.output
    missing = runner.invoke(app, ["compare", str(tmp_path), str(tmp_path)])
    assert missing.exit_code == 2 and "is not a run directory" in " ".join(missing.output.split())
    absent = runner.invoke(app, ["runs", str(tmp_path / "nope")])
    assert absent.exit_code == 2 and "is not a folder" in " ".join(absent.output.split())
