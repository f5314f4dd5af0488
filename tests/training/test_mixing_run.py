"""Mixing flags in a real run: odd and short batches, --mix-off-epoch, and what reaches the loss.

The run is spied on at two points: the mixer (what it was asked and what it returned) and the
loss (the soft targets and the images the network saw). The test fails when mixing or smoothing
is parsed but has no effect on training.
"""
from __future__ import annotations

import torch
import yaml
from typer.testing import CliRunner

import finetune.training.module as module_file
from finetune.cli import app
from finetune.data.mixing import BatchMixer
from finetune.training.module import FinetuneModule

runner = CliRunner()
EPS, C = 0.1, 3
ON, OFF = 1 - EPS + EPS / C, EPS / C  # smoothed one-hot: the label and every other class


def _smoothed(y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, C).float() * (ON - OFF) + OFF


def _spy_run(monkeypatch, tiny_data, out, run_args):
    mixes, losses, inputs = [], [], []
    mix, loss, forward = BatchMixer.__call__, module_file.training_loss, FinetuneModule.forward

    def spy_mix(self, x, y):
        mixed = mix(self, x, y)
        mixes.append((x.clone(), mixed, (self.mixup_alpha, self.cutmix_alpha, self.prob, self.switch_prob)))
        return mixed

    def spy_forward(self, x):
        if self.training:
            inputs.append(x.clone())
        return forward(self, x)

    def spy_loss(logits, target, *args, **kwargs):
        losses.append(target.detach().clone())
        return loss(logits, target, *args, **kwargs)

    monkeypatch.setattr(BatchMixer, "__call__", spy_mix)
    monkeypatch.setattr(FinetuneModule, "forward", spy_forward)
    monkeypatch.setattr(module_file, "training_loss", spy_loss)
    args = run_args(tiny_data, out, "--weights", "none", "--epochs", "2", "--batch-size", "7", "--mixup", "0.3",
                    "--cutmix", "0.5", "--mix-prob", "0.9", "--mix-switch-prob", "0.2", "--mix-off-epoch", "1",
                    "--label-smoothing", str(EPS))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return mixes, losses, inputs


def test_mixing_and_smoothing_reach_the_loss_and_stop_at_mix_off_epoch(tiny_data, tmp_path, run_args, monkeypatch):
    mixes, targets, inputs = _spy_run(monkeypatch, tiny_data, tmp_path / "run", run_args)
    # 24 train images in batches of 7: 7, 7, 7 and a short odd 3; the mixer runs in epoch 0 only
    assert [x.shape[0] for x, _, _ in mixes] == [7, 7, 7, 3]
    assert {flags for _, _, flags in mixes} == {(0.3, 0.5, 0.9, 0.2)}
    assert len(targets) == len(inputs) == 8  # 4 steps per epoch, 2 epochs
    mixed = [m for _, m, _ in mixes if m.mode != "none"]
    assert mixed and {m.mode for m in mixed} <= {"mixup", "cutmix"}  # --mix-prob 0.9: most batches mixed
    for step, (x, m, _) in enumerate(mixes):
        assert torch.equal(inputs[step], m.x)  # the network trains on the mixed images ...
        if m.mode != "none":
            assert not torch.equal(m.x, x) and m.lam < 1
        expected = m.lam * _smoothed(m.y) + (1 - m.lam) * _smoothed(m.y_partner)  # ... against mixed, smoothed targets
        assert torch.allclose(targets[step], expected, atol=1e-6), step
    for target in targets[4:]:  # epoch 1: unmixed, smoothed once
        assert (torch.allclose(target.max(dim=1).values, torch.tensor(ON))
                and torch.allclose(target.min(), torch.tensor(OFF)))
        assert torch.allclose(target.sum(dim=1), torch.ones(len(target)))
    config = yaml.safe_load(open(tmp_path / "run" / "config.yaml"))
    assert config["label_smoothing"] == EPS and config["mix_off_epoch"] == 1
