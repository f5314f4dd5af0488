"""The reliability diagram: bars not hidden, each bin's interval drawn, a thin diagram labelled as such."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.container import BarContainer

from finetune.evaluation import metrics, plots


def _diagram(n: int, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3) * 0.5, size=n)
    labels = rng.integers(0, 3, size=n)
    bins = metrics.calibration_bins(probs, labels)
    drawn = {}
    real_save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.setdefault("fig", fig) and real_save(fig, path))
    plots.plot_reliability(bins, metrics.expected_calibration_error(probs, labels), tmp_path / "r.png")
    return bins, drawn["fig"].axes[0]


def test_the_accuracy_bars_are_the_only_bars_and_carry_their_wilson_intervals(tmp_path, monkeypatch):
    from scipy.stats import binomtest

    bins, top = _diagram(600, tmp_path, monkeypatch)
    containers = [c for c in top.containers if isinstance(c, BarContainer)]
    assert len(containers) == 1  # no second layer over the accuracy bars
    used = [b for b in bins if b["count"]]
    segments = next(c for c in top.collections if c.get_segments())  # the error bars' vertical lines
    for b, seg in zip(used, segments.get_segments()):
        ci = binomtest(round(b["accuracy"] * b["count"]), b["count"]).proportion_ci(0.95, method="wilson")
        assert [seg[0][1], seg[1][1]] == pytest.approx([ci.low, ci.high], abs=1e-9)


@pytest.mark.parametrize("images, thin", [(30, True), (3000, False)])
def test_a_diagram_of_mostly_thin_bins_says_so(images, thin, tmp_path, monkeypatch):
    _, top = _diagram(images, tmp_path, monkeypatch)
    assert ("most bins too few to tell" in top.get_title()) == thin
