"""`finetune eval` and `finetune predict` through the CLI: outputs, TTA, ensembles, bad files."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
from typer.testing import CliRunner

from finetune.cli import app
from finetune.data.images import load_image
from finetune.inference import Ensemble, Predictor

runner = CliRunner()


def test_eval_reports_tta_side_by_side_and_writes_files(trained_run, tiny_data, tmp_path):
    out = tmp_path / "ev"
    result = runner.invoke(app, ["eval", "--model", str(trained_run), "--data", str(tiny_data),
                                 "--tta", "ten-crop", "--output", str(out)])
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["accuracy"]) == {"none", "ten-crop"}
    assert {"top1", "top5", "ece", "per_class", "confusion_matrix", "worst_confused", "calibration_bins"} <= set(m)
    assert len(m["per_class"]) == 3 and sum(map(sum, m["confusion_matrix"])) == 12
    assert (out / "confusion_matrix.png").stat().st_size > 0 and (out / "reliability.png").stat().st_size > 0
    assert "ten-crop" in result.output and "none" in result.output


def test_eval_unknown_split_and_tta_name_the_choices(trained_run, tiny_data):
    result = runner.invoke(app, ["eval", "--model", str(trained_run), "--data", str(tiny_data), "--split", "train"])
    assert result.exit_code == 2 and "val, test" in result.output
    result = runner.invoke(app, ["eval", "--model", str(trained_run), "--data", str(tiny_data), "--tta", "rotate"])
    assert result.exit_code == 2 and "rotate" in result.output and "ten-crop" in result.output


def test_predict_reports_bad_files_and_goes_on(trained_run, tiny_data, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(tiny_data / "val" / "circle", folder)
    (folder / "empty.jpg").write_bytes(b"")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    out = tmp_path / "pred.json"
    result = runner.invoke(app, ["predict", str(folder), str(notes), "--model", str(trained_run / "model"),
                                 "--top-k", "2", "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert len(rows) == 6
    bad = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in rows if r["error"]}
    assert set(bad) == {"empty.jpg", "notes.txt"} and "empty" in bad["empty.jpg"]
    good = [r for r in rows if not r["error"]]
    assert len(good) == 4 and all(len(r["classes"]) == 2 and r["probabilities"][0] >= r["probabilities"][1]
                                  for r in good)
    assert "empty.jpg" in result.output


def test_predict_csv_by_extension_and_bad_extension(trained_run, tiny_data, tmp_path):
    out = tmp_path / "pred.csv"
    result = runner.invoke(app, ["predict", str(tiny_data / "val"), "--model", str(trained_run), "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 12 and rows[0]["class_3"] and float(rows[0]["probability_1"]) >= float(rows[0]["probability_3"])
    result = runner.invoke(app, ["predict", str(tiny_data / "val"), "--model", str(trained_run),
                                 "--output", str(tmp_path / "p.xml")])
    assert result.exit_code == 2 and ".csv" in result.output and ".json" in result.output


def _const(logits):
    return lambda x: np.tile(np.asarray(logits, np.float32), (len(x), 1))


def test_ensemble_averages_member_probabilities():
    from finetune.data.data_config import DataConfig

    dc = DataConfig(8, (0.5,) * 3, (0.5,) * 3)
    a = Predictor(_const([2.0, 0.0]), ["x", "y"], dc)
    b = Predictor(_const([0.0, 1.0]), ["x", "y"], DataConfig(12, (0.5,) * 3, (0.5,) * 3))
    img = np.zeros((16, 16, 3), np.uint8)
    pa, pb = a.probabilities([img]), b.probabilities([img])
    np.testing.assert_allclose(Ensemble([a, b]).probabilities([img]), (pa + pb) / 2)
    import pytest

    from finetune.errors import FinetuneError
    with pytest.raises(FinetuneError, match="disagree on classes"):
        Ensemble([a, Predictor(_const([0.0, 1.0]), ["y", "x"], dc)])


def test_an_ensemble_of_one_and_the_errors_of_a_bad_ensemble():
    import pytest

    from finetune.data.data_config import DataConfig
    from finetune.errors import FinetuneError

    dc = DataConfig(8, (0.5,) * 3, (0.5,) * 3)
    a = Predictor(_const([2.0, 0.0]), ["x", "y"], dc)
    one = Ensemble([a])
    assert one.class_names == ["x", "y"] and one.num_classes == 2
    img = np.zeros((16, 16, 3), np.uint8)
    np.testing.assert_array_equal(one.probabilities([img]), a.probabilities([img]))
    with pytest.raises(FinetuneError, match=r"^an ensemble needs at least one model$"):
        Ensemble([])
    with pytest.raises(FinetuneError) as err:
        Ensemble([a, Predictor(_const([0.0, 1.0]), ["y", "x"], dc)])
    assert "['x', 'y'] vs ['y', 'x']" in str(err.value)  # the first member's classes, then the odd one's


def _mirror_logits(x):
    """Logits (mean of the left half, mean of the right half): a mirrored view swaps them, so flip TTA
    averages softmax([l, r]) and softmax([r, l]), which is exactly (0.5, 0.5)."""
    half = x.shape[3] // 2
    return np.stack([x[..., :half].mean(axis=(1, 2, 3)), x[..., half:].mean(axis=(1, 2, 3))], axis=1)


def _left_bright_files(folder, n=2):
    from PIL import Image

    folder.mkdir()
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, :8] = 255
    for i in range(n):
        Image.fromarray(image).save(folder / f"{i}.png")
    return sorted(folder.iterdir())


def test_the_tta_asked_for_reaches_every_member_and_every_file(tmp_path):
    from finetune.data.data_config import DataConfig

    dc = DataConfig(8, (0.5,) * 3, (0.5,) * 3)
    a, b = Predictor(_mirror_logits, ["left", "right"], dc), Predictor(_mirror_logits, ["left", "right"], dc)
    files = _left_bright_files(tmp_path / "imgs")
    ensemble = Ensemble([a, b])
    for model in (a, ensemble):  # the members' own default is no TTA: the left class wins
        assert all(p.classes[0] == "left" and p.probabilities[0] > 0.6 for p in model.predict_files(files))
        for p in model.predict_files(files, tta="flip"):
            np.testing.assert_allclose(p.probabilities, [0.5, 0.5], atol=1e-6)
    images = [load_image(f) for f in files]
    np.testing.assert_allclose(ensemble.probabilities(images, tta="flip"), 0.5, atol=1e-6)


def test_predict_files_lists_five_classes_by_default(tmp_path):
    """The documented default top_k is 5: a 7-class model lists its 5 most probable classes, in order."""
    from finetune.data.data_config import DataConfig

    dc = DataConfig(8, (0.5,) * 3, (0.5,) * 3)
    names = ["a", "b", "c", "d", "e", "f", "g"]
    logits = [0.0, 6.0, 1.0, 5.0, 2.0, 4.0, 3.0]
    model = Predictor(_const(logits), names, dc)
    files = _left_bright_files(tmp_path / "imgs", n=1)
    for predictor in (model, Ensemble([model, model])):
        [prediction] = predictor.predict_files(files)
        assert prediction.classes == ["b", "d", "f", "g", "e"]


def test_a_checkpoint_predicts_with_the_tta_of_its_run_unless_told(trained_run):
    assert Predictor.from_checkpoint(trained_run).tta == "flip"  # trained_run is a `--tta flip` run
    assert Predictor.from_checkpoint(trained_run, tta="none").tta == "none"
    assert Predictor.from_path(trained_run / "checkpoints" / "best.ckpt", tta="ten-crop").tta == "ten-crop"


def test_a_trained_model_runs_on_the_gpu_when_there_is_one(monkeypatch):
    """from_trained moves the network to CUDA when torch sees a GPU, and leaves it on the CPU otherwise."""
    import types

    import torch

    from finetune.data.data_config import DataConfig

    class Network:
        def __init__(self):
            self.devices = []

        def to(self, device):
            self.devices.append(str(device))
            return self

    def trained(network):
        return types.SimpleNamespace(backbone=network, class_names=["x", "y"],
                                     data_config=DataConfig(8, (0.5,) * 3, (0.5,) * 3), setting=lambda name: "none")

    for available, moved in ((True, ["cuda"]), (False, [])):
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        network = Network()
        Predictor.from_trained(trained(network))
        assert network.devices == moved


def test_predict_ensemble_cli(trained_run, tiny_data, tmp_path):
    single, double = tmp_path / "one.json", tmp_path / "two.json"
    args = ["predict", str(tiny_data / "val" / "square"), "--model", str(trained_run / "model")]
    assert runner.invoke(app, [*args, "--output", str(single)]).exit_code == 0
    result = runner.invoke(app, [*args, "--model", str(trained_run), "--output", str(double)])
    assert result.exit_code == 0, result.output
    # bundle (onnx) + its own checkpoint (eager): the average equals either member up to float noise
    for r1, r2 in zip(json.loads(single.read_text()), json.loads(double.read_text())):
        assert r1["classes"] == r2["classes"]
        np.testing.assert_allclose(r1["probabilities"], r2["probabilities"], atol=1e-5)


def test_no_export_skips_the_bundle(tiny_data, tmp_path, run_args):
    out = tmp_path / "run"
    result = runner.invoke(app, run_args(tiny_data, out, "--weights", "none", "--no-export"))
    assert result.exit_code == 0, result.output
    assert not (out / "model").exists() and (out / "curves.png").is_file()


# ----- bad input: one-line errors ----------------------------------------------------------------
def _one_line_error(result, *fragments):
    """Exit status 2, a single "Error:" message, no traceback, and each fragment in the message."""
    text = " ".join(result.output.split())  # rich wraps long lines at the console width
    assert result.exit_code == 2, (result.output, result.exception)
    assert text.startswith("Error:") and text.count("Error:") == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in text, text


def test_foreign_or_corrupt_checkpoint_is_a_one_line_error(tiny_data, tmp_path):
    import torch

    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(3, 4)}, "epoch": 3}, foreign)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip archive" * 10)
    image = str(next((tiny_data / "val" / "circle").iterdir()))
    for ckpt, why in ((foreign, "hyper_parameters"), (corrupt, "cannot be read")):
        for args in (["predict", image, "--model", str(ckpt)],
                     ["eval", "--model", str(ckpt), "--data", str(tiny_data), "--output", str(tmp_path / "ev")],
                     ["export", "--model", str(ckpt), "--output", str(tmp_path / "b")]):
            _one_line_error(runner.invoke(app, args), str(ckpt), why, "finetune run")


def test_predict_top_k_outside_one_to_classes_names_the_range(trained_run, tiny_data):
    folder = str(tiny_data / "val" / "circle")
    for k in ("0", "-1"):
        result = runner.invoke(app, ["predict", folder, "--model", str(trained_run / "model"), "--top-k", k])
        _one_line_error(result, f"--top-k {k}", "1 to 3")
    result = runner.invoke(app, ["predict", folder, "--model", str(trained_run / "model"), "--top-k", "1"])
    assert result.exit_code == 0, result.output
