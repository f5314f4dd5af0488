"""The model card (the bundle's README.md and config.json's `card`) against the run's own files, read here
with yaml/json/PIL/torch, and what it says when there is no run to read."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from scipy.stats import binomtest

from finetune.bundling.bundle import export, export_bundle
from finetune.bundling.card import RESOLVED_SETTINGS, TRAINING_SETTINGS
from finetune.data.images import load_image
from finetune.models.backbone import create_backbone
from finetune.stats import wilson_interval


def _bundle(folder: Path) -> tuple[dict, str]:
    return json.loads((folder / "config.json").read_text()), (folder / "README.md").read_text(encoding="utf-8")


def test_card_states_the_runs_settings_sources_and_data(trained_run, tiny_data):
    config, readme = _bundle(trained_run / "model")
    card = config["card"]
    run = yaml.safe_load((trained_run / "config.yaml").read_text())
    resolved, sources = run["resolved"], run["sources"]
    rows = {r["name"]: r for r in card["training"]["settings"]}
    assert list(rows) == [n for n in TRAINING_SETTINGS if n in run]
    for name, row in rows.items():
        expected = resolved[name] if name in RESOLVED_SETTINGS else run[name]
        assert (row["value"], row["source"]) == (expected, sources[name]), name
    assert "| lr | 0.01 | command line |" in readme and f"| precision | {resolved['precision']} |" in readme
    data = card["data"]
    assert data["splits"]["train"] == resolved["class_counts"]
    assert {s: sum(c.values()) for s, c in data["splits"].items()} == {
        s: n for s, n in resolved["counts"].items() if n}
    assert data["bad_files"] == resolved["bad_files"] and data["matches_record"] is True
    sides = [min(Image.open(p).size) for p in (tiny_data / "train").rglob("*.png")]
    assert min(sides) <= data["image_sides"]["min"] <= data["image_sides"]["max"] <= max(sides)
    for cls in ("circle", "square", "triangle"):
        assert f"| {cls} | 8 | 4 |" in readme
    assert "Classes, in output order: circle, square, triangle" in readme
    assert "random initialisation (`--weights none`, command line)" in readme


def test_card_states_the_runs_evaluation(trained_run):
    config, readme = _bundle(trained_run / "model")
    metrics = json.loads((trained_run / "eval-val" / "metrics.json").read_text())
    (row,) = config["card"]["evaluation"]
    assert (row["split"], row["folder"], row["images"], row["tta"]) == ("val", "eval-val", 12, "flip")
    assert row["temperature"] == metrics["temperature"]
    assert row["top1"] == metrics["top1"] == metrics["accuracy"]["flip"]["top1"]
    assert row["top1_no_tta"] == metrics["accuracy"]["none"]["top1"]
    assert (row["balanced_acc"], row["ece"]) == (metrics["balanced_acc"], metrics["ece"])
    assert row["recall"] == {r["class"]: r["recall"] for r in metrics["per_class"]}
    k = round(metrics["top1"] * metrics["images"])
    ci = binomtest(k, metrics["images"]).proportion_ci(0.95, method="wilson")
    assert row["top1_interval"] == pytest.approx([ci.low, ci.high], abs=1e-9)
    assert (f"| val | 12 | flip | {metrics['temperature']:g} | {metrics['top1']:.3f} ({ci.low:.3f}-{ci.high:.3f}) |"
            in readme)
    worst = min(metrics["per_class"], key=lambda r: r["recall"])
    assert f"lowest recall {worst['class']} {worst['recall']:.3f}" in readme
    assert "no test-split figures" in readme  # the tiny run has no test split; val chose best.ckpt
    best = torch.load(trained_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["epoch"]
    assert f"from epoch {best + 1} of 2, chosen on val acc1" in readme


def test_a_bare_checkpoint_gets_a_card_that_says_what_is_unknown(trained_run, tiny_data, tmp_path):
    ckpt = tmp_path / "model.ckpt"  # outside any run directory: no config.yaml, no eval-*
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", ckpt)
    config, readme = _bundle(export(ckpt, tmp_path / "bundle", data=tiny_data))
    card = config["card"]
    assert card["evaluation"] == [] and "not inside a run directory" in card["unknown"]["evaluation"]
    assert "## Evaluation\nUnknown: " in readme and "not inside a run directory" in readme
    assert card["record"] == "checkpoint model.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    settings, plan = saved["hyper_parameters"]["config"], saved["finetune"]["plan"]
    for row in card["training"]["settings"]:
        expected = plan["resolved"][row["name"]] if row["name"] in RESOLVED_SETTINGS else settings[row["name"]]
        assert (row["value"], row["source"]) == (expected, plan["sources"][row["name"]]), row["name"]
    assert card["data"]["splits"]["val"] == {"circle": 4, "square": 4, "triangle": 4}


def test_a_network_alone_gets_a_card_of_unknowns(tiny_data, tmp_path):
    backbone, _ = create_backbone("test_resnet", 3, "none")
    dc = backbone.data_config.with_size(32)
    images = [load_image(p) for p in sorted((tiny_data / "val").rglob("*.png"))[:4]]
    config, readme = _bundle(export_bundle(backbone.eval(), ["a", "b", "c"], dc, tmp_path / "b", images))
    assert "card" not in config
    for section in ("Training data", "Training procedure", "Evaluation"):
        assert f"## {section}\nUnknown: the bundle was exported from a network without its checkpoint" in readme
    assert "No evaluation of this model is recorded with it." in readme
    assert "Starting weights: unknown" in readme


def test_a_changed_data_folder_is_said(trained_run, tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    sorted((data / "train" / "circle").glob("*.png"))[0].unlink()
    config, readme = _bundle(export(trained_run, tmp_path / "bundle", data=data))
    assert config["card"]["data"]["splits"]["train"]["circle"] == 7
    assert config["card"]["data"]["matches_record"] is False
    assert "The folder has changed since training: the run recorded 24 training images" in readme


@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_interval_is_scipys(kn):
    k, n = kn
    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
    low, high = wilson_interval(k, n)
    assert 0 <= low <= k / n + 1e-12 and k / n - 1e-12 <= high <= 1  # it holds the observed proportion


def test_a_calibration_the_new_bundle_does_not_carry_is_said_beside_its_row(trained_run, tiny_data, tmp_path):
    """eval --calibrate stores a temperature in the bundle and its figures in the run; a later export from the
    run makes a bundle at temperature 1, whose card must not pass the evaluation's temperature off as its own."""
    from finetune.evaluation.evaluate import evaluate

    _, plain = _bundle(trained_run / "model")
    assert "This bundle predicts with" not in plain  # the run's own evaluation used the bundle's settings
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    evaluate(run / "model", tiny_data, split="val", tta="flip", calibrate_temperature=True)
    fitted = json.loads((run / "model" / "config.json").read_text())["temperature"]
    assert fitted != 1.0
    config, readme = _bundle(export(run, run / "again"))
    assert config["temperature"] == 1.0
    assert (f"This bundle predicts with TTA flip and temperature 1; the val row used TTA flip and temperature "
            f"{fitted:g}") in " ".join(readme.split())
