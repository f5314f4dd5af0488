"""`fit` from Python is quiet and changes nothing process-wide; a ConsoleReporter gives the narration."""
from __future__ import annotations

import io
import logging
import os

import pytorch_lightning as pl
from rich.console import Console

from finetune import heap
from finetune.reporter import ConsoleReporter
from finetune.run.fit import LIGHTNING_SEED_ENV, fit


class _FakeLibc:
    """Stands in for glibc: records every heap setting made."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, *args) -> int:
        self.calls.append(("mallopt", *args))
        return 1

    def malloc_trim(self, *args) -> int:
        self.calls.append(("malloc_trim", *args))
        return 1


class _ProcessStateInTraining(pl.Callback):
    """What the process looks like while an epoch trains: its environment and whether the heap is kept."""

    def on_train_epoch_start(self, trainer, pl_module):
        self.environ, self.keeping = dict(os.environ), heap.keeping()


def test_fit_from_python_prints_nothing_and_leaves_the_process_alone(make_config, capfd, monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(heap, "_glibc", lambda: libc)
    for name in heap.USER_SETTINGS:  # so that a machine's own malloc settings cannot hide a call
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    for name in LIGHTNING_SEED_ENV:  # as in a fresh process, whatever earlier tests left
        monkeypatch.delenv(name, raising=False)
    environ, state = dict(os.environ), _ProcessStateInTraining()
    capfd.readouterr()
    result = fit(make_config(epochs=1, export=False), callbacks=[state])
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert result.best_epoch == 1 and result.run_dir.is_dir()
    # During training only Lightning's own seed variables are added (its Trainer reads them); after, none.
    assert {k: v for k, v in state.environ.items() if k not in LIGHTNING_SEED_ENV} == environ
    assert dict(os.environ) == environ
    assert libc.calls == [] and not state.keeping and not heap.keeping()


def test_a_console_reporter_gives_the_narration_the_result_holds(make_config, capfd):
    out = io.StringIO()
    result = fit(make_config(epochs=1, export=False), ConsoleReporter(Console(file=out, width=300)))
    said = out.getvalue()
    assert capfd.readouterr() == ("", "")  # into the console given, nowhere else
    assert f"Weights: {result.weights}\n" in said and result.weights == "random init"
    assert f"Precision: {result.precision} ({result.precision_why})\n" in said
    assert "Plan: test_resnet -> " in said and "epoch 1/1  loss" in said
    measured = "" if result.precision.startswith("32") else f"; measured in {result.precision}, as trained"
    assert f"Best val top-1: {result.best_val_acc1:.4f} (epoch 1 of 1{measured})" in said
    assert "Best checkpoint on val (12 images, fp32 as exported): TTA none: top-1" in said
    assert f"Run directory: {result.run_dir}  " in said
    assert result.decided  # val-every and augment at least: the data decides them by default
    for key, why in result.decided.items():
        if key == "freeze_until":  # --weights none: every layer trains, which the plan table shows
            continue
        assert f"{key.replace('_', '-')} {why}\n" in said


def test_the_quiet_default_logs_the_narration_and_keeps_the_warnings(make_config, caplog):
    # --weights none with a frozen part: the plan's caution, a warning every such run gives.
    with caplog.at_level(logging.INFO, logger="finetune"):
        result = fit(make_config(epochs=1, export=False, freeze_until="layer2"))
    warned = [r.getMessage() for r in caplog.records if r.name == "finetune" and r.levelno == logging.WARNING]
    told = [r.getMessage() for r in caplog.records if r.name == "finetune" and r.levelno == logging.INFO]
    caution = next(w for w in result.warnings if w.startswith("--weights none with --freeze-until layer2"))
    assert caution in warned and list(result.warnings) == warned
    measured = "" if result.precision.startswith("32") else f"; measured in {result.precision}, as trained"
    assert f"Best val top-1: {result.best_val_acc1:.4f} (epoch 1 of 1{measured})" in told  # plain text: no [bold]
    assert any(line.startswith("Plan: test_resnet -> ") for line in told)
