"""`finetune demo`: source pretraining, fine-tuning from its checkpoint, scratch baseline."""
from __future__ import annotations

import yaml
from typer.testing import CliRunner

from finetune.cli import app


def test_demo_runs_the_three_jobs_and_compares_them(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--output", str(out), "--backbone", "test_resnet", "--epochs", "1"],
                                env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "Fine-tuning minus scratch" in result.output and "source pretraining" in result.output
    tuned = yaml.safe_load((out / "finetuned" / "config.yaml").read_text())
    assert tuned["weights"] == str(out / "source" / "checkpoints" / "best.ckpt")
    assert tuned["freeze_until"] == "layer3"
    assert (out / "finetuned" / "model" / "model.onnx").is_file()  # the model a user would keep
    assert not (out / "scratch" / "model").exists()
