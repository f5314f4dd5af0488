"""A run stopped by Ctrl-C after any epoch and resumed ends bit-identical to the run that was never stopped.

The run exercises everything that carries state across epochs: the shuffle and augmentation RNGs, mixup,
a warm-up into a cosine schedule, a frozen phase that unfreezes, the EMA copy, and the chosen best epoch.
The oracle is the uninterrupted run itself: same weights (every tensor equal), same metrics.csv figures.
"""
from __future__ import annotations

import csv
import io
import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from rich.console import Console

from finetune.config import RunConfig
from finetune.errors import Interrupted
from finetune.run.fit import fit
from finetune.run.resume import resume_config

EPOCHS = 4
# Figures that depend on the clock, not on the training.
TIMINGS = {"img/s", "epoch_seconds"}


class _CtrlCAtEpoch(pl.Callback):
    """Sends the process a SIGINT at the first batch of `epoch` (counted from 0), as a user's Ctrl-C would."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGINT)


def _config(data: Path, out: Path) -> RunConfig:
    return RunConfig(backbone="test_resnet", weights="none", data=data, output=out, image_size=32, epochs=EPOCHS,
                     batch_size=8, workers=0, progress=False, export=False, precision="32", lr=0.01, val_every=1,
                     mixup=0.2, ema=True, ema_decay=0.9, freeze_until="layer1", freeze_epochs=1, warmup_epochs=1,
                     schedule="cosine", seed=7)


def _fit(config: RunConfig, **kw):
    return fit(config, Console(file=io.StringIO(), width=200), **kw)


def _figures(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMINGS} for row in csv.DictReader(f)]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory) -> Path:
    return _fit(_config(tiny_data, tmp_path_factory.mktemp("whole") / "run")).run_dir


@pytest.mark.slow
@pytest.mark.parametrize("stop_in_epoch", range(1, EPOCHS))
def test_a_run_resumed_after_any_epoch_equals_the_run_never_stopped(uninterrupted, tiny_data, tmp_path,
                                                                    stop_in_epoch):
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever started the tests
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        _fit(_config(tiny_data, out), callbacks=[_CtrlCAtEpoch(stop_in_epoch)])
    assert [int(r["epoch"]) for r in _figures(out)] == list(range(1, stop_in_epoch + 1))

    _fit(resume_config(out, {}), ckpt_path=out / "checkpoints" / "last.ckpt")

    assert _figures(out) == _figures(uninterrupted)
    for name in ("last.ckpt", "best.ckpt"):
        resumed, whole = _weights(out / "checkpoints" / name), _weights(uninterrupted / "checkpoints" / name)
        assert resumed.keys() == whole.keys()
        different = [k for k in whole if not torch.equal(resumed[k], whole[k])]
        assert not different, f"{name}: {len(different)} tensors differ after stopping in epoch {stop_in_epoch + 1}"
