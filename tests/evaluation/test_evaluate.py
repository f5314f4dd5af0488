"""`finetune eval` semantics: where results go, which split settings apply, how calibration is scored."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from finetune.bundling.bundle import export_bundle
from finetune.cli import app
from finetune.data.images import load_image
from finetune.data.synthetic import make_image_folder
from finetune.data.tta import batch_inputs, softmax
from finetune.errors import FinetuneError
from finetune.evaluation import evaluate as evaluate_module
from finetune.evaluation import metrics
from finetune.evaluation.evaluate import EvalResult, evaluate
from finetune.evaluation.mistakes import Mistake
from finetune.evaluation.saliency import EagerModel
from finetune.inference import Predictor
from finetune.models.backbone import create_backbone
from finetune.training.checkpoint import load_trained

runner = CliRunner()
CLASSES = ("circle", "square", "triangle")


@pytest.fixture
def plain_bundle(trained_run, tiny_data, tmp_path):
    """The run's model exported through the API, without the run's split settings in config.json."""
    trained = load_trained(trained_run)
    images = [load_image(p) for p in sorted((tiny_data / "val").rglob("*.png"))]
    return export_bundle(trained.backbone, trained.class_names, trained.data_config, tmp_path / "plain", images)


# ----- item: results never overwrite earlier ones -----------------------------------------------
def test_eval_default_output_is_a_new_folder_each_time(trained_run, tiny_data, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    own = (run / "eval-val" / "metrics.json").read_bytes()
    bundle_files = sorted(p.name for p in (run / "model").iterdir())
    first = evaluate(run, tiny_data)
    second = evaluate(run / "model", tiny_data)
    assert first.output != second.output and {first.output.parent, second.output.parent} == {run}
    assert first.output.name.startswith("eval-val") and (first.output / "metrics.json").is_file()
    assert (run / "eval-val" / "metrics.json").read_bytes() == own  # the run's own evaluation is kept
    assert sorted(p.name for p in (run / "model").iterdir()) == bundle_files  # nothing written into the bundle
    assert json.loads((first.output / "metrics.json").read_text())["images"] == 12


def test_eval_refuses_an_output_folder_with_results(trained_run, tiny_data, tmp_path):
    out = tmp_path / "ev"
    assert runner.invoke(app, ["eval", "--model", str(trained_run), "--data", str(tiny_data),
                               "--output", str(out)]).exit_code == 0
    result = runner.invoke(app, ["eval", "--model", str(trained_run), "--data", str(tiny_data), "--output", str(out)])
    assert result.exit_code == 2 and str(out) in " ".join(result.output.split()), result.output


# ----- item: a flat folder is split as the run split it -----------------------------------------
def test_eval_flat_folder_without_the_runs_split_settings_is_an_error(plain_bundle, tmp_path):
    flat = make_image_folder(tmp_path / "flat", "shapes", train_per_class=4, val_per_class=2, size=32,
                             classes=CLASSES, split=False)
    with pytest.raises(FinetuneError, match=r"val_split.*seed") as e:
        evaluate(plain_bundle, flat, output=tmp_path / "ev")
    assert str(plain_bundle) in str(e.value) and "run directory" in str(e.value)
    assert not (tmp_path / "ev").exists()


def test_eval_flat_folder_uses_the_runs_split(trained_run, tmp_path):
    from finetune.data.scan import scan_image_folder

    flat = make_image_folder(tmp_path / "flat", "shapes", train_per_class=4, val_per_class=2, size=32,
                             classes=CLASSES, split=False)
    config = load_trained(trained_run).config
    expected = scan_image_folder(flat, val_split=config.val_split, seed=config.seed).val
    result = evaluate(trained_run / "model", flat, output=tmp_path / "ev")
    assert result.metrics["images"] == len(expected) == 3  # round(0.2 * 6) per class


# ----- item: calibration is scored on images it was not fitted on --------------------------------
def test_calibration_ece_after_is_measured_on_test_when_there_is_one(plain_bundle, tmp_path):
    data = make_image_folder(tmp_path / "data", "shapes", train_per_class=2, val_per_class=6, test_per_class=5,
                             size=32, classes=CLASSES, seed=1)
    result = evaluate(plain_bundle, data, calibrate_temperature=True, output=tmp_path / "ev")
    cal = result.metrics["calibration"]
    assert cal["ece_measured_on"] == "test" and cal["fit_images"] == 18 and cal["measured_images"] == 15
    test = sorted((data / "test").rglob("*.png"))
    labels = np.array([CLASSES.index(p.parent.name) for p in test])
    logits = Predictor.load(plain_bundle).logits([load_image(p) for p in test], "none")
    assert cal["ece_before"] == pytest.approx(metrics.expected_calibration_error(softmax(logits), labels))
    assert cal["ece_after"] == pytest.approx(
        metrics.expected_calibration_error(softmax(logits, cal["temperature"]), labels))
    assert json.loads((plain_bundle / "config.json").read_text())["calibration"]["ece_measured_on"] == "test"


def test_calibration_without_test_cross_fits_on_val(plain_bundle, tiny_data, tmp_path):
    result = runner.invoke(app, ["eval", "--model", str(plain_bundle), "--data", str(tiny_data), "--calibrate",
                                 "--output", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    cal = json.loads((tmp_path / "ev" / "metrics.json").read_text())["calibration"]
    assert cal["ece_measured_on"] == "val, 2-fold cross-fit" and cal["measured_images"] == cal["fit_images"] == 12
    val = sorted((tiny_data / "val").rglob("*.png"))
    labels = np.array([CLASSES.index(p.parent.name) for p in val])
    logits = Predictor.load(plain_bundle).logits([load_image(p) for p in val], "none")
    in_sample = metrics.expected_calibration_error(softmax(logits, cal["temperature"]), labels)
    assert cal["ece_after"] != pytest.approx(in_sample)  # not scored on the images T was fitted on
    assert "cross-fit" in " ".join(result.output.split())


# ----- item: eval streams a split in bounded chunks -----------------------------------------------
def _eval_peak_bytes(bundle, root, monkeypatch) -> tuple[int, dict]:
    """Peak traced memory (numpy buffers included) of evaluating the val split of `root` with TTA."""
    import tracemalloc

    from finetune.data.scan import scan_image_folder
    from finetune.evaluation import evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "EVAL_CHUNK", 8)
    predictor, index = Predictor.load(bundle), scan_image_folder(root)
    tracemalloc.start()
    try:
        result = evaluate_module.evaluate_predictor(predictor, index, "val", "flip", root.parent / f"out-{root.name}")
        return tracemalloc.get_traced_memory()[1], result.metrics
    finally:
        tracemalloc.stop()


def test_eval_memory_stays_flat_when_the_split_grows_tenfold(plain_bundle, tmp_path, monkeypatch):
    small = make_image_folder(tmp_path / "small", train_per_class=1, val_per_class=8, size=96, classes=CLASSES)
    large = make_image_folder(tmp_path / "large", train_per_class=1, val_per_class=80, size=96, classes=CLASSES)
    small_peak, small_metrics = _eval_peak_bytes(plain_bundle, small, monkeypatch)
    large_peak, large_metrics = _eval_peak_bytes(plain_bundle, large, monkeypatch)
    assert small_metrics["images"] == 24 and large_metrics["images"] == 240
    # 240 decoded 96 px images alone are 6.6 MB; one chunk of 8 with its flip views is well under 1 MB.
    assert large_peak < 1.5 * small_peak + 1_000_000, (small_peak, large_peak)


def test_chunked_eval_scores_as_one_pass(plain_bundle, tiny_data, tmp_path, monkeypatch):
    from finetune.data.scan import scan_image_folder
    from finetune.evaluation import evaluate as evaluate_module

    predictor, index = Predictor.load(plain_bundle), scan_image_folder(tiny_data)
    whole = evaluate_module.evaluate_predictor(predictor, index, "val", "flip", tmp_path / "whole").metrics
    monkeypatch.setattr(evaluate_module, "EVAL_CHUNK", 5)  # 12 val images: chunks of 5, 5, 2
    chunked = evaluate_module.evaluate_predictor(predictor, index, "val", "flip", tmp_path / "chunked").metrics
    assert chunked["confusion_matrix"] == whole["confusion_matrix"]
    assert chunked["ece"] == pytest.approx(whole["ece"], abs=1e-6) and chunked["top1"] == whole["top1"]


def test_a_folder_without_a_model_gets_one_message_everywhere(tiny_data, tmp_path):
    """eval, predict and export share one rule for what a model path is, and one message when nothing fits."""
    from finetune.bundling.bundle import export

    empty = tmp_path / "not-a-run"
    empty.mkdir()
    for attempt in (lambda: evaluate(empty, tiny_data), lambda: Predictor.from_path(empty), lambda: export(empty)):
        with pytest.raises(FinetuneError) as e:
            attempt()
        message = " ".join(str(e.value).split())
        assert str(empty) in message and "checkpoints/best.ckpt" in message and "model/config.json" in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-run"]  # nothing written beside it


def test_each_eval_of_a_split_gets_its_own_folder_and_the_first_keeps_the_plain_name(tmp_path):
    from finetune.evaluation.evaluate import _new_output

    made = [_new_output(tmp_path, "test").name for _ in range(3)] + [_new_output(tmp_path, "val").name]
    assert made == ["eval-test", "eval-test-2", "eval-test-3", "eval-val"]


def _eager_with_images(backbone_name: str, tmp_path, count: int) -> tuple[EagerModel, list[str]]:
    """A random 3-class network of `backbone_name`, ready for gradients, and `count` small random images."""
    backbone, _ = create_backbone(backbone_name, 3, "none")
    small = dataclasses.replace(backbone.data_config, input_size=32)  # a small input keeps Grad-CAM fast
    model = EagerModel(backbone.eval().requires_grad_(False), small, list(CLASSES))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(paths[-1])
    return model, paths


def test_eval_saliency_explains_the_class_each_mistake_was_given(tmp_path, monkeypatch):
    """The predicted class of a mistake comes from the predictor (TTA views averaged, another backend), which
    need not be the eager network's top class: each overlay is for the class the mistake names."""
    torch.manual_seed(0)
    model, paths = _eager_with_images("test_resnet", tmp_path, 2)
    with torch.no_grad():  # the network's own choice, on the input it is fed
        top = model.backbone(torch.from_numpy(batch_inputs([load_image(p) for p in paths], model.data_config)))
    given = [(c + 1) % 3 for c in top.argmax(1).tolist()]  # another class for each image
    mistakes = [Mistake(p, true=0, predicted=c, predicted_probability=0.9, true_probability=0.1)
                for p, c in zip(paths, given)]
    monkeypatch.setattr(evaluate_module, "load_eager", lambda path: model)
    result = evaluate_module._with_saliency(EvalResult({}, tmp_path / "ev", mistakes=mistakes), tmp_path, 2)
    assert [m.class_name for m in result.saliency] == [CLASSES[c] for c in given]
    assert [m.overlay.name for m in result.saliency] == ["01-img0.png", "02-img1.png"]
    assert result.saliency_skipped is None


def test_eval_saliency_of_a_vit_is_skipped_with_the_reason(tmp_path, monkeypatch):
    """A ViT has no spatial map: the evaluation keeps its figures and says in one line why no overlays."""
    model, paths = _eager_with_images("test_vit", tmp_path, 2)
    mistakes = [Mistake(p, true=0, predicted=1, predicted_probability=0.9, true_probability=0.1) for p in paths]
    monkeypatch.setattr(evaluate_module, "load_eager", lambda path: model)
    before = EvalResult({"acc1": 0.5}, tmp_path / "ev", mistakes=mistakes)
    result = evaluate_module._with_saliency(before, tmp_path, 2)
    assert "no spatial feature map" in result.saliency_skipped and "test_vit" in result.saliency_skipped
    assert result.saliency == [] and (result.metrics, result.output, result.mistakes) == ({"acc1": 0.5},
                                                                                         before.output, mistakes)
