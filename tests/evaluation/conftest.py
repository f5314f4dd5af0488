"""A trained run with its exported bundle, shared by the evaluation, export and inference tests."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune.cli import app


@pytest.fixture(scope="session")
def trained_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`finetune run` with --tta flip: 2 epochs of test_resnet at 32 px; writes RUN/model/."""
    out = tmp_path_factory.mktemp("evalrun") / "run"
    args = ["run", "--backbone", "test_resnet", "--data", str(tiny_data), "--output", str(out),
            "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--workers", "0", "--no-progress",
            "--weights", "none", "--lr", "0.01", "--tta", "flip"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out
