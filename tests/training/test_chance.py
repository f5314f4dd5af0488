"""A run whose val top-1 never leaves chance in its first quarter says so, then and at the end."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from finetune.cli import app
from finetune.training.callbacks.chance import ChanceWatch


def _trainer(epoch: int, acc1: float | None):
    metrics = {} if acc1 is None else {"val/acc1": torch.tensor(acc1)}
    return SimpleNamespace(callback_metrics=metrics, current_epoch=epoch, sanity_checking=False, is_global_zero=True,
                           progress_bar_callback=None)


def _watch(counts, epochs, figures):
    said = []
    watch = ChanceWatch(counts, epochs, lambda line, **kw: said.append(line))
    for epoch, acc1 in enumerate(figures):
        watch.on_validation_epoch_end(_trainer(epoch, acc1), None)
    return watch, said


def test_chance_is_the_largest_class_share_with_a_two_standard_error_margin():
    """30 val images in 3 equal classes: chance 1/3, margin 2 * sqrt(1/3 * 2/3 / 30) = 0.1721."""
    watch, _ = _watch([10, 10, 10], 8, [])
    assert watch.chance == pytest.approx(1 / 3)
    assert watch.margin == pytest.approx(0.17213, abs=1e-5)
    assert watch.at_chance(0.505) and not watch.at_chance(0.506)
    imbalanced, _ = _watch([90, 10], 8, [])  # always answering the larger class scores 0.9
    assert imbalanced.chance == pytest.approx(0.9) and imbalanced.at_chance(0.95)


def test_it_speaks_once_at_the_end_of_the_first_quarter_only_if_every_figure_was_at_chance():
    stuck, said = _watch([10, 10, 10], 8, [0.40, 0.45, 0.90, 0.95])  # quarter: epochs 1-2
    assert stuck.stuck_through == 1 and len(said) == 1 and "through epoch 2 of 8 (the first quarter" in said[0]
    learned, said = _watch([10, 10, 10], 8, [0.40, 0.60, 0.30])
    assert learned.stuck_through is None and said == []


def test_a_validation_cadence_past_the_quarter_is_judged_at_its_first_validation():
    watch, said = _watch([10, 10, 10], 8, [None, None, None, 0.34])  # validated every 4th epoch
    assert watch.stuck_through == 3 and len(said) == 1


def test_its_state_survives_a_resume():
    watch, _ = _watch([10, 10, 10], 8, [0.40, 0.45])
    again = ChanceWatch([10, 10, 10], 8, print)
    again.load_state_dict(watch.state_dict())
    assert again.stuck_through == 1 and not math.isnan(again.chance)


def test_a_run_at_a_hopeless_lr_says_so_during_the_run_and_in_its_summary(tiny_data, tmp_path, run_args):
    result = CliRunner().invoke(app, run_args(tiny_data, tmp_path / "run", "--weights", "none", "--lr", "1e-12",
                                              "--epochs", "2"))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert text.count("Warning: val top-1 stayed at chance through epoch 1 of 2 (the first quarter of the run, "
                      "in whole epochs)") == 2
    assert text.index("Best val top-1") < text.rindex("Warning: val top-1 stayed at chance")
