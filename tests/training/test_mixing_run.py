"""Mixing flags in a real run: odd and short batches, --mix-off-epoch, options reaching the mixer."""
from __future__ import annotations

import yaml
from typer.testing import CliRunner

from finetune.cli import app
from finetune.data.mixing import BatchMixer

runner = CliRunner()


def test_mixing_flags_reach_the_mixer_and_stop_at_mix_off_epoch(tiny_data, tmp_path, run_args, monkeypatch):
    calls = []
    original = BatchMixer.__call__

    def spy(self, x, y):
        out = original(self, x, y)
        calls.append((x.shape[0], out.mode, (self.mixup_alpha, self.cutmix_alpha, self.prob, self.switch_prob)))
        return out

    monkeypatch.setattr(BatchMixer, "__call__", spy)
    out = tmp_path / "run"
    args = run_args(tiny_data, out, "--weights", "none", "--epochs", "2", "--batch-size", "7", "--mixup", "0.3",
                    "--cutmix", "0.5", "--mix-prob", "0.9", "--mix-switch-prob", "0.2", "--mix-off-epoch", "1",
                    "--label-smoothing", "0.1")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # 24 train images in batches of 7: 7, 7, 7 and a short odd 3; mixed in epoch 0 only
    assert [c[0] for c in calls] == [7, 7, 7, 3]
    assert {c[2] for c in calls} == {(0.3, 0.5, 0.9, 0.2)}
    assert {c[1] for c in calls} <= {"none", "mixup", "cutmix"}
    config = yaml.safe_load(open(out / "config.yaml"))
    assert config["label_smoothing"] == 0.1 and config["mix_off_epoch"] == 1
