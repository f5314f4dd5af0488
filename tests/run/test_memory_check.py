"""A run whose training step cannot fit in memory is refused before it starts, naming what to change."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

import finetune.run.memory_check as memory_check
from finetune.cli import app

runner = CliRunner()


def test_a_step_that_does_not_fit_is_refused_in_one_line_and_one_that_fits_trains(tiny_data, tmp_path, run_args,
                                                                                   monkeypatch):
    needed = {}
    real_check = memory_check.check_memory

    def measured(*args, **kwargs):
        monkeypatch.setattr(memory_check, "device_memory", lambda device: 10**15)
        needed["bytes"] = real_check(*args, **kwargs).total
        return real_check(*args, **kwargs)

    monkeypatch.setattr("finetune.run.fit.check_memory", measured)
    fits = runner.invoke(app, run_args(tiny_data, tmp_path / "fits", "--weights", "none", "--image-size", "96"))
    assert fits.exit_code == 0, fits.output
    monkeypatch.setattr("finetune.run.fit.check_memory", real_check)
    monkeypatch.setattr(memory_check, "device_memory", lambda device: needed["bytes"] - 1)
    out = tmp_path / "refused"
    refused = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--image-size", "96"))
    assert refused.exit_code == 2, refused.output
    line = " ".join(refused.output.split())
    assert line.startswith("Error: a training step needs about")
    assert "lower --image-size (96) or --batch-size (8)" in line
    assert len(refused.output.strip().splitlines()) <= 3  # one line (rich may wrap it)
    assert not out.exists()  # nothing written
    monkeypatch.setattr(memory_check, "device_memory", lambda device: needed["bytes"])
    assert runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--image-size", "96")).exit_code == 0


def test_the_estimate_grows_with_the_area_and_the_batch(tiny_data):
    from finetune.models.backbone import create_backbone
    from finetune.training.freeze import FreezeSchedule

    backbone, _ = create_backbone("test_resnet", 3, "none")
    small = memory_check.step_footprint(backbone, FreezeSchedule(0), 128, 4, "32")
    large = memory_check.step_footprint(backbone, FreezeSchedule(0), 1024, 8, "32")
    # 8x the side -> 64x the area, twice the batch; a few per-channel statistics do not grow
    assert large.activations == pytest.approx(2 * 64 * small.activations, rel=0.01)
    assert large.weights == small.weights
