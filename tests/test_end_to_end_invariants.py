"""End-to-end invariants of one real run: what metrics.csv, best.ckpt, `eval`, the bundle and the
calibration record say about the same images must agree, image for image.

One small run (test_resnet, 32 px, 3 epochs, from weights fitted to shapes) on a folder with train/val/test,
an unreadable file in val and in test, and val classes of 2, 4 and 6 images: with unequal classes the mean of
the class recalls differs from top-1, so a per-class average in place of top-1 shows as a fraction of an image.
The module's own figures come from `FinetuneModule.from_checkpoint` run over the run's own datamodule
(albumentations eval transform); `eval` and the bundle use the numpy preprocessing of finetune.inference.
"""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from scipy.optimize import minimize_scalar
from scipy.special import softmax
from sklearn.metrics import log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from finetune.config import RunConfig
from finetune.data.images import load_image
from finetune.data.synthetic import make_image_folder
from finetune.evaluation.calibration import MAX_T, MIN_T
from finetune.evaluation.evaluate import evaluate
from finetune.inference import Predictor
from finetune.run.fit import RunResult, fit
from finetune.run.plan import plan_run
from finetune.training.checkpoint_format import saved_epoch
from finetune.training.module import FinetuneModule

# class -> (val images, test images): unequal, so that class-averaged figures are not top-1 by accident,
# and val and test of different sizes, so that a count taken from the wrong split shows.
SPLIT_SIZES = {"circle": (2, 3), "square": (4, 4), "triangle": (6, 6)}
CLASSES = tuple(SPLIT_SIZES)
UNREADABLE = ("val/circle/broken.png", "test/square/broken.png")
# fp32 logits of torch eager and onnxruntime differ by rounding (about 1e-6 here); a preprocessing or
# weights difference moves probabilities by 1e-2 or more.
PROB_TOLERANCE = 1e-4
# ECE from torchmetrics (float32) against the toolkit's (float64) on the same probabilities.
ECE_TOLERANCE = 1e-5
ECE_BINS = 15  # Guo et al. 2017's binning, which `finetune eval` reports
# The unreadable files are planted: each scan of the folder says so, and nothing else is asserted of that.
pytestmark = pytest.mark.filterwarnings(r"ignore:skipped \d+ bad file:finetune.data.scan.DataWarning")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train 8 per class; val 2/4/6; test 3/4/6; plus one file in val and in test that is not an image."""
    root = tmp_path_factory.mktemp("e2e-data")
    for seed, (cls, (val, test)) in enumerate(SPLIT_SIZES.items()):
        make_image_folder(root, "shapes", train_per_class=8, val_per_class=val, test_per_class=test, size=32,
                          classes=(cls,), seed=seed)
    for name in UNREADABLE:
        (root / name).write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def run(data: Path, fitted_resnet_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """`finetune.fit`: 3 epochs, fp32 on CPU, writes metrics.csv, checkpoints, eval-val/ and model/.

    From weights that already fit shapes: a model whose val NLL is least at a temperature inside the
    toolkit's range (a model at chance has it at the upper clip, where any split would give the same T)."""
    config = RunConfig(backbone="test_resnet", data=data, weights=str(fitted_resnet_weights), image_size=32,
                       batch_size=8, workers=0, progress=False, output=tmp_path_factory.mktemp("e2e-run") / "run",
                       precision="32", accelerator="cpu", epochs=3, lr=0.01)  # the same numbers with or without a GPU
    return fit(config, console=Console(file=io.StringIO()))


@pytest.fixture(scope="module")
def module_outputs(run: RunResult) -> dict[str, tuple[list[Path], np.ndarray, np.ndarray]]:
    """split -> (paths, logits (N, C), labels (N,)) of best.ckpt's module over the run's own val/test loaders."""
    return checkpoint_outputs(run.best_checkpoint)


def checkpoint_outputs(checkpoint: Path) -> dict[str, tuple[list[Path], np.ndarray, np.ndarray]]:
    """What `module_outputs` holds, for any checkpoint of a run."""
    module = FinetuneModule.from_checkpoint(checkpoint).eval()
    plan, _ = plan_run(module.config)
    datamodule = plan.datamodule(keep_images=False)
    outputs = {}
    for split, loader in (("val", datamodule.val_dataloader()), ("test", datamodule.test_dataloader())):
        with torch.inference_mode():
            batches = [(module(x), y) for x, y in loader]
        logits = torch.cat([b[0] for b in batches]).double().numpy()
        labels = torch.cat([b[1] for b in batches]).numpy()
        outputs[split] = ([p for p, _ in getattr(datamodule.index, split)], logits, labels)
    return outputs


def readable_files(data: Path, run_dir: Path, split: str) -> list[Path]:
    """Every file under DATA/SPLIT, less those the run listed in bad_files.txt (path TAB reason)."""
    bad = {Path(line.split("\t")[0]) for line in (run_dir / "bad_files.txt").read_text().splitlines() if line}
    return sorted(p for p in (data / split).rglob("*") if p.is_file() and p not in bad)


def metrics_rows(run: RunResult) -> list[dict[str, str]]:
    with open(run.metrics_csv, newline="") as f:
        return list(csv.DictReader(f))


def image_count(fraction: float, images: int) -> int:
    """fraction * images as a whole number of images; fails when it is not one (metrics.csv keeps 6 digits)."""
    count = fraction * images
    assert abs(count - round(count)) < 1e-4, f"{fraction} of {images} images is {count}, not a whole number"
    return round(count)


def correct_in(report: dict) -> int:
    """Correctly classified images of an eval report: its images less its misclassified ones."""
    return report["images"] - report["misclassified"]["count"]


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean -log softmax(logits / T)[label], through scikit-learn's log_loss."""
    return log_loss(labels, softmax(logits / temperature, axis=1), labels=list(range(logits.shape[1])))


def nll_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in the toolkit's range minimising `nll`, by scipy's bounded scalar search on log T."""
    found = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)), method="bounded",
                            bounds=(math.log(MIN_T), math.log(MAX_T)), options={"xatol": 1e-9})
    return math.exp(found.x)


def ece(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """torchmetrics' 15-bin L1 calibration error of softmax(logits / T)."""
    probs = torch.from_numpy(softmax(logits / temperature, axis=1)).float()
    return float(multiclass_calibration_error(probs, torch.from_numpy(labels), logits.shape[1], n_bins=ECE_BINS))


# ----- 1. metrics.csv's best val top-1 is what best.ckpt scores on val -----------------------------
def test_best_epoch_val_top1_is_what_eval_recomputes_from_best_ckpt(run, data, module_outputs, tmp_path):
    rows = metrics_rows(run)
    best = max(rows, key=lambda r: float(r["val/acc1"]))  # max() keeps the first of equal epochs, as Lightning
    _, logits, labels = module_outputs["val"]  # the module rebuilt from best.ckpt, on the run's val loader
    correct = logits.argmax(axis=1) == labels
    assert float(rows[-1]["val/acc1"]) != float(best["val/acc1"]), \
        "the run's best epoch must not tie its last, or a best.ckpt saved from the last epoch would pass"
    assert np.mean([correct[labels == c].mean() for c in range(len(CLASSES))]) != correct.mean(), \
        "best.ckpt's mean class recall must differ from its top-1, or a class-averaged top-1 would pass"
    images = len(readable_files(data, run.run_dir, "val"))

    recorded = image_count(float(best["val/acc1"]), images)
    assert int(correct.sum()) == recorded
    recomputed = evaluate(run.best_checkpoint, data, split="val", output=tmp_path / "eval").metrics
    assert (recomputed["images"], correct_in(recomputed)) == (images, recorded)
    own = json.loads((run.run_dir / "eval-val" / "metrics.json").read_text())  # the run's final evaluation
    assert (own["images"], correct_in(own)) == (images, recorded)
    assert run.best_epoch == int(best["epoch"]) == saved_epoch(run.best_checkpoint) + 1


# ----- 2. the bundle predicts what best.ckpt's module predicts -----------------------------------
@pytest.mark.parametrize("backend", ["onnx", "eager"])
def test_bundle_predictions_equal_the_modules_from_best_ckpt(run, module_outputs, backend):
    predictor = Predictor.load(run.run_dir / "model", backend=backend)
    assert predictor.temperature == 1.0  # an uncalibrated bundle: its probabilities are plain softmax
    for split, (paths, logits, _) in module_outputs.items():
        probs = predictor.probabilities([load_image(p) for p in paths], tta="none")
        expected = softmax(logits, axis=1)
        differ = [p.name for p, a, b in zip(paths, probs.argmax(1), expected.argmax(1), strict=True) if a != b]
        assert not differ, f"{backend} bundle and best.ckpt disagree on {split} images {differ}"
        np.testing.assert_allclose(probs, expected, atol=PROB_TOLERANCE, err_msg=f"{backend}, {split}")


# ----- 3. a temperature fitted on val is scored on test ------------------------------------------
def test_calibration_fits_on_val_and_scores_test_images(run, data, module_outputs, tmp_path):
    bundle = shutil.copytree(run.run_dir / "model", tmp_path / "model")  # --calibrate writes into the bundle
    report = evaluate(bundle, data, split="test", calibrate_temperature=True, output=tmp_path / "eval").metrics
    record, temperature = report["calibration"], report["calibration"]["temperature"]
    _, val_logits, val_labels = module_outputs["val"]
    _, test_logits, test_labels = module_outputs["test"]

    assert MIN_T * 1.01 < temperature < MAX_T / 1.01, f"T {temperature} at a clip would fit any split the same"
    assert temperature == pytest.approx(nll_temperature(val_logits, val_labels), rel=1e-3)  # fitted on val
    test_fit = nll_temperature(test_logits, test_labels)
    assert abs(test_fit / temperature - 1) > 0.05, \
        f"T fitted on test ({test_fit:.4f}) must differ from val's ({temperature:.4f}) for this test to tell them apart"
    assert nll(test_logits, test_labels, temperature) > nll(test_logits, test_labels, test_fit)

    test_images = len(readable_files(data, run.run_dir, "test"))
    assert (record["fit_split"], record["fit_images"]) == ("val", len(readable_files(data, run.run_dir, "val")))
    assert (record["ece_measured_on"], record["measured_images"], report["images"]) == ("test", test_images,
                                                                                        test_images)
    scored_on_test = ece(test_logits, test_labels, temperature)
    assert abs(scored_on_test - ece(val_logits, val_labels, temperature)) > 1e-3, "val and test ECE must differ"
    assert record["ece_after"] == pytest.approx(scored_on_test, abs=ECE_TOLERANCE)
    assert report["ece"] == pytest.approx(scored_on_test, abs=ECE_TOLERANCE)  # the test figures, calibrated
    assert record["ece_before"] == pytest.approx(ece(test_logits, test_labels, 1.0), abs=ECE_TOLERANCE)
    assert json.loads((bundle / "config.json").read_text())["temperature"] == temperature


# ----- 4. every readable file of a split is evaluated, once --------------------------------------
@pytest.mark.parametrize("split", ["val", "test"])
def test_images_evaluated_per_split_equal_its_readable_files(run, data, module_outputs, split, tmp_path):
    files = readable_files(data, run.run_dir, split)
    assert len(files) == len(list((data / split).rglob("*.png"))) - 1  # the one unreadable file left out
    assert sorted(module_outputs[split][0]) == files
    report = evaluate(run.run_dir / "model", data, split=split, output=tmp_path / "eval").metrics
    assert (report["images"], report["unreadable"]) == (len(files), [])
    assert sum(row["support"] for row in report["per_class"]) == len(files)
    expected = {cls: sizes[split == "test"] for cls, sizes in SPLIT_SIZES.items()}
    assert {row["class"]: row["support"] for row in report["per_class"]} == expected
