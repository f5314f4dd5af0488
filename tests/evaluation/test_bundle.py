"""Export bundle: round trip to Predictor, parity bound, BatchNorm folding, formats, int8, failures."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from finetune.cli import app
from finetune.data.images import load_image
from finetune.export.bundle import ExportOptions, export_bundle
from finetune.export.parity import ExportError
from finetune.export.source import load_trained
from finetune.inference import Predictor, module_runner

runner = CliRunner()


def _val(data):
    return sorted((data / "val").rglob("*.png"))


def test_run_writes_bundle_curves_and_final_evaluation(trained_run):
    bundle = trained_run / "model"
    config = json.loads((bundle / "config.json").read_text())
    assert {"model.onnx", "model.safetensors", "config.json", "README.md"} <= {p.name for p in bundle.iterdir()}
    assert config["format"] == "finetune-bundle" and config["format_version"] == 1
    assert config["backbone"] == "test_resnet" and config["class_names"] == ["circle", "square", "triangle"]
    assert config["data_config"]["input_size"] == 32 and config["tta"] == "flip"  # the run's --tta
    assert config["source_checkpoint"].endswith("best.ckpt") and config["toolkit_version"]
    assert config["parity"]["max_abs_diff"]["onnx"] <= 1e-3 and config["parity"]["images"] == 12
    assert config["batchnorm"]["eager_modules"] > 0 and config["batchnorm"]["onnx_nodes"] == 0
    assert (trained_run / "curves.png").stat().st_size > 0
    metrics = json.loads((trained_run / "eval-val" / "metrics.json").read_text())
    assert set(metrics["accuracy"]) == {"none", "flip"} and metrics["images"] == 12
    assert (trained_run / "eval-val" / "confusion_matrix.png").is_file()


def test_bundle_round_trip_same_top1_as_checkpoint(trained_run, tiny_data):
    images = [load_image(p) for p in _val(tiny_data)]
    trained = load_trained(trained_run)
    eager = Predictor(module_runner(trained.backbone), trained.class_names, trained.data_config)
    bundle = Predictor.load(trained_run / "model", tta="none")
    np.testing.assert_array_equal(bundle.probabilities(images).argmax(1), eager.probabilities(images).argmax(1))
    np.testing.assert_allclose(bundle.probabilities(images), eager.probabilities(images), atol=1e-5)
    rebuilt = Predictor.load(trained_run / "model", backend="eager", tta="none")  # from model.safetensors
    np.testing.assert_allclose(rebuilt.probabilities(images), eager.probabilities(images), atol=1e-6)


def test_export_command_torchscript_and_int8(trained_run, tiny_data, tmp_path):
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["export", str(trained_run), "--output", str(out),
                                 "--format", "onnx,torchscript", "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert {"model.ts", "model.int8.onnx"} <= set(config["files"])
    assert config["parity"]["max_abs_diff"]["torchscript"] <= 1e-3
    assert config["batchnorm"]["torchscript_nodes"] == 0
    assert 0.0 <= config["int8"]["top1_agreement"] <= 1.0 and config["int8"]["agreement_images"] == 12
    images = [load_image(p) for p in _val(tiny_data)]
    ts = Predictor.load(out, backend="torchscript", tta="none").probabilities(images)
    np.testing.assert_allclose(ts, Predictor.load(out, tta="none").probabilities(images), atol=1e-5)
    assert Predictor.load(out, int8=True).probabilities(images).shape == (12, 3)


def test_parity_above_bound_fails_the_export(trained_run, tiny_data, tmp_path, monkeypatch):
    import finetune.export.bundle as bundle_module

    real = bundle_module.onnx_runner
    monkeypatch.setattr(bundle_module, "onnx_runner", lambda path: (lambda x: real(path)(x) + 2e-3))
    trained = load_trained(trained_run)
    images = [load_image(p) for p in _val(tiny_data)]
    with pytest.raises(ExportError, match=r"ONNX logits differ .*\(> 0.001\)"):
        export_bundle(trained.backbone, trained.class_names, trained.data_config, tmp_path / "b", images)
    assert not (tmp_path / "b" / "config.json").exists()  # no loadable half-bundle


def test_unknown_format_names_the_choices(trained_run, tmp_path):
    result = runner.invoke(app, ["export", str(trained_run), "--output", str(tmp_path / "b"), "--format", "tflite"])
    assert result.exit_code == 2
    assert "tflite" in result.output and "torchscript" in result.output


def test_inference_import_stays_light(trained_run, tiny_data):
    code = (
        "import sys, finetune.inference as inf\n"
        f"p = inf.Predictor.load({str(trained_run / 'model')!r}, tta='flip')\n"
        f"r = p.predict_files([{str(tiny_data / 'val')!r}], top_k=2)\n"
        "assert len(r) == 12 and all(len(x.classes) == 2 for x in r)\n"
        "heavy = [m for m in ('torch', 'pytorch_lightning', 'lightning', 'albumentations', 'cv2', 'timm', 'torchvision') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_overconfident_bundle_is_calibrated_by_eval(trained_run, tiny_data, tmp_path):
    trained = load_trained(trained_run)
    head = trained.backbone.model.get_classifier()
    with __import__("torch").no_grad():
        head.weight.mul_(200.0)  # same top-1, near one-hot probabilities: over-confident
        head.bias.mul_(200.0)
    images = [load_image(p) for p in _val(tiny_data)]
    bundle = export_bundle(trained.backbone, trained.class_names, trained.data_config, tmp_path / "hot", images,
                           ExportOptions())
    result = runner.invoke(app, ["eval", "--model", str(bundle), "--data", str(tiny_data), "--calibrate",
                                 "--output", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    cal = metrics["calibration"]
    assert cal["val_ece_after"] < cal["val_ece_before"]
    config = json.loads((bundle / "config.json").read_text())
    assert config["temperature"] == pytest.approx(cal["temperature"]) and config["temperature"] > 1
    calibrated = Predictor.load(bundle).probabilities(images)
    raw = Predictor.load(bundle)
    raw.temperature = 1.0
    assert calibrated.max(1).mean() < raw.probabilities(images).max(1).mean()  # the stored T is applied
    assert "->" in result.output and "Temperature" in result.output
