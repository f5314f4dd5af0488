"""Evaluation figures against independent implementations on random inputs.

scikit-learn is the oracle for accuracy, balanced accuracy, top-k, macro-F1 and the confusion matrix
(in `eval`'s summary and in the validation metrics training selects on); the expected calibration
error and the fitted temperature are checked against references written here from their definitions
(Guo et al. 2017), with scipy doing the minimisation.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn import metrics as skm

from finetune.config import RunConfig
from finetune.data.data_config import DataConfig
from finetune.data.scan import DatasetIndex
from finetune.evaluation import calibration, metrics
from finetune.evaluation import evaluate as evaluate_module
from finetune.evaluation.calibration import fit_temperature
from finetune.models.source import BundleConfig
from finetune.training.monitor import monitor_metric, update_monitor_metric

# (class count, images, classes left out of the labels): two classes up to a wide head, some with
# classes that have no image (a small val split of a long-tailed set).
CASES = [(2, 40, ()), (3, 25, ()), (5, 60, (1,)), (10, 200, (0, 7)), (17, 90, (3, 4, 16))]


def _random_case(num_classes: int, n: int, absent: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, C) that favour the true class somewhat (accuracy well inside (0, 1)) and labels (N,)."""
    rng = np.random.default_rng(seed)
    present = np.setdiff1d(np.arange(num_classes), absent)
    labels = rng.choice(present, size=n, p=rng.dirichlet(np.ones(len(present))))  # imbalanced
    logits = rng.normal(size=(n, num_classes)) * 2.0
    logits[np.arange(n), labels] += rng.uniform(0.0, 3.0, size=n)
    return logits, labels


def _sklearn_topk(labels: np.ndarray, logits: np.ndarray, k: int) -> float:
    """scikit-learn's top-k accuracy; every label is in the top k of k >= C classes (scikit-learn warns then)."""
    num_classes = logits.shape[1]
    if k >= num_classes:
        return 1.0
    probs = softmax(logits, axis=1)
    scores = probs[:, 1] if num_classes == 2 else probs  # scikit-learn scores a binary task by its positive class
    return float(skm.top_k_accuracy_score(labels, scores, k=k, labels=np.arange(num_classes)))


def _sklearn(call, *args, **kwargs):
    """A scikit-learn metric with its warnings about absent classes silenced (they are the point here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **kwargs)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("num_classes", "n", "absent"), CASES)
def test_eval_summary_matches_scikit_learn(num_classes, n, absent, seed):
    logits, labels = _random_case(num_classes, n, absent, seed)
    probs = softmax(logits, axis=1)
    preds = probs.argmax(axis=1)
    got = metrics.accuracy_summary(probs, labels)
    assert got["top1"] == pytest.approx(skm.accuracy_score(labels, preds), abs=1e-12)
    assert got["top5"] == pytest.approx(_sklearn_topk(labels, logits, 5), abs=1e-12)
    assert got["balanced_acc"] == pytest.approx(_sklearn(skm.balanced_accuracy_score, labels, preds), abs=1e-6)
    assert got["macro_f1"] == pytest.approx(
        _sklearn(skm.f1_score, labels, preds, average="macro", zero_division=0), abs=1e-6)


@pytest.mark.parametrize(("num_classes", "n", "absent"), CASES)
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_topk_accuracy_matches_scikit_learn(num_classes, n, absent, k):
    logits, labels = _random_case(num_classes, n, absent, seed=k)
    assert metrics.topk_accuracy(logits, labels, k) == pytest.approx(_sklearn_topk(labels, logits, k), abs=1e-12)


@pytest.mark.parametrize(("num_classes", "n", "absent"), CASES)
def test_confusion_and_per_class_match_scikit_learn(num_classes, n, absent):
    logits, labels = _random_case(num_classes, n, absent, seed=11)
    preds = logits.argmax(axis=1)
    everything = np.arange(num_classes)
    cm = metrics.confusion_matrix(labels, preds, num_classes)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, preds, labels=everything))
    rows = metrics.per_class(cm, [f"c{i}" for i in everything])
    precision, recall, _, support = _sklearn(skm.precision_recall_fscore_support, labels, preds,
                                             labels=everything, zero_division=0)
    np.testing.assert_allclose([r["precision"] for r in rows], precision, atol=1e-12)
    np.testing.assert_allclose([r["recall"] for r in rows], recall, atol=1e-12)
    assert [r["support"] for r in rows] == support.tolist()
    one_vs_rest = [skm.accuracy_score(labels == c, preds == c) for c in everything]
    np.testing.assert_allclose([r["accuracy"] for r in rows], one_vs_rest, atol=1e-12)


# ----- the validation metrics training selects on (metrics.csv, best.ckpt, early stopping) -----------
def _validate(module, logits: np.ndarray, labels: np.ndarray, batch: int) -> None:
    """Feeds fixed logits through the module's validation_step, `batch` images at a time."""
    module.forward = lambda x: x  # the network's output replaced by the given logits
    for start in range(0, len(labels), batch):
        x = torch.as_tensor(logits[start:start + batch], dtype=torch.float32)
        module.validation_step((x, torch.as_tensor(labels[start:start + batch])), start // batch)


@pytest.fixture(scope="module")
def module_of():
    from finetune.training.module import FinetuneModule

    built: dict[int, FinetuneModule] = {}

    def make(num_classes: int) -> FinetuneModule:
        if num_classes not in built:
            config = RunConfig(backbone="test_resnet", data=".", weights="none")
            built[num_classes] = FinetuneModule.from_config(config, [f"c{i}" for i in range(num_classes)])
        module = built[num_classes]
        for metric in (module.val_acc1, module.val_acc5, module.val_balanced_acc, module.val_macro_f1,
                       module.val_confusion, module.val_loss):
            metric.reset()
        return module

    return make


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
@pytest.mark.parametrize(("num_classes", "n", "absent"), CASES)
def test_validation_metrics_match_scikit_learn(module_of, num_classes, n, absent):
    """val/acc1 is over images (not a mean of class accuracies), val/balanced_acc over classes with images."""
    logits, labels = _random_case(num_classes, n, absent, seed=5)
    module = module_of(num_classes)
    _validate(module, logits, labels, batch=16)
    preds, everything = logits.argmax(axis=1), np.arange(num_classes)
    assert float(module.val_acc1.compute()) == pytest.approx(skm.accuracy_score(labels, preds), abs=1e-6)
    assert float(module.val_acc5.compute()) == pytest.approx(_sklearn_topk(labels, logits, 5), abs=1e-6)
    assert float(module.val_balanced_acc.compute()) == pytest.approx(
        _sklearn(skm.balanced_accuracy_score, labels, preds), abs=1e-6)
    assert float(module.val_macro_f1.compute()) == pytest.approx(
        _sklearn(skm.f1_score, labels, preds, average="macro", zero_division=0), abs=1e-6)
    np.testing.assert_array_equal(module.val_confusion.compute().numpy(),
                                  skm.confusion_matrix(labels, preds, labels=everything))
    assert float(module.val_loss.compute()) == pytest.approx(
        skm.log_loss(labels, softmax(logits, axis=1), labels=everything), rel=1e-5)


@pytest.mark.parametrize(("num_classes", "n", "absent"), CASES[1:4])
def test_monitor_metrics_match_scikit_learn(num_classes, n, absent):
    """The figures --monitor selects on (also the EMA's), fed batch by batch."""
    logits, labels = _random_case(num_classes, n, absent, seed=9)
    preds = logits.argmax(axis=1)
    expected = {"acc1": skm.accuracy_score(labels, preds),
                "balanced-acc": _sklearn(skm.balanced_accuracy_score, labels, preds),
                "macro-f1": _sklearn(skm.f1_score, labels, preds, average="macro", zero_division=0),
                "loss": skm.log_loss(labels, softmax(logits, axis=1), labels=np.arange(num_classes))}
    for monitor, value in expected.items():
        metric = monitor_metric(monitor, num_classes)
        for start in range(0, n, 7):
            update_monitor_metric(metric, torch.as_tensor(logits[start:start + 7], dtype=torch.float32),
                                  torch.as_tensor(labels[start:start + 7]))
        assert float(metric.compute()) == pytest.approx(value, rel=1e-5, abs=1e-6), monitor


# ----- calibration -----------------------------------------------------------------------------------
def reference_ece(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """Guo et al. 2017, eq. 3: sum over M equal-width bins of |B_m|/n * |acc(B_m) - conf(B_m)|,
    bin m holding the confidences in ((m-1)/M, m/M]. Written sample by sample, bins as lists."""
    members: list[list[int]] = [[] for _ in range(bins)]
    for i, row in enumerate(probs):
        confidence = max(row)
        members[max(int(np.ceil(confidence * bins)) - 1, 0)].append(i)
    total = 0.0
    for rows in members:
        if rows:
            accuracy = sum(int(np.argmax(probs[i]) == labels[i]) for i in rows) / len(rows)
            confidence = sum(max(probs[i]) for i in rows) / len(rows)
            total += len(rows) / len(labels) * abs(accuracy - confidence)
    return total


@pytest.mark.parametrize("bins", [5, 10, metrics.ECE_BINS])
@pytest.mark.parametrize(("num_classes", "n", "absent"), CASES)
def test_ece_matches_the_definition(num_classes, n, absent, bins):
    logits, labels = _random_case(num_classes, n, absent, seed=bins)
    probs = softmax(logits * np.random.default_rng(bins).uniform(0.3, 3.0), axis=1)  # over- or under-confident
    assert metrics.expected_calibration_error(probs, labels, bins) == pytest.approx(
        reference_ece(probs, labels, bins), abs=1e-12)


def test_ece_worked_example_weights_bins_by_their_images():
    """Bin (0.6, 0.8]: 9 images at 0.7, 6 right -> |0.667 - 0.7|; bin (0.8, 1]: 1 image at 0.9, wrong -> 0.9.
    Weighted by counts: 0.9 * 0.0333 + 0.1 * 0.9 = 0.12; a plain mean over bins would say 0.4667."""
    probs = np.array([[0.7, 0.3]] * 9 + [[0.9, 0.1]])
    labels = np.array([0] * 6 + [1] * 3 + [1])
    assert metrics.expected_calibration_error(probs, labels, bins=5) == pytest.approx(0.9 * (0.7 - 6 / 9) + 0.1 * 0.9)


def reference_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """argmin over T of the mean NLL of softmax(logits / T), by bounded scalar search over log T."""
    def nll(log_t: float) -> float:
        return -float(np.mean(log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(labels)), labels]))

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                                        options={"xatol": 1e-8}).x))


@pytest.mark.parametrize("scale", [0.4, 1.0, 3.0])  # under-confident, about right, over-confident logits
@pytest.mark.parametrize(("num_classes", "n", "absent"), CASES[1:])
def test_fitted_temperature_minimises_the_nll(num_classes, n, absent, scale):
    logits, labels = _random_case(num_classes, n, absent, seed=int(scale * 10))
    logits = logits * scale
    expected = reference_temperature(logits, labels)
    assert fit_temperature(logits, labels) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.uint8])
def test_fitted_temperature_takes_labels_of_any_integer_type(dtype):
    """Labels read from a CSV or an image library are often int32 or uint8; torch's NLL takes only int64."""
    logits, labels = _random_case(4, 60, (), seed=5)
    expected = reference_temperature(logits * 3.0, labels)
    assert fit_temperature(logits * 3.0, labels.astype(dtype)) == pytest.approx(expected, rel=1e-3)


def test_temperature_stops_at_its_range_when_the_nll_has_no_finite_minimiser():
    """Logits that say nothing (one row for three labels): the NLL is at least log 3 (Gibbs), reached only by
    the uniform softmax, T -> infinity. Logits right and never wrong: the NLL falls to 0 as T -> 0."""
    uninformative = np.tile([1.0, 0.0, 0.0], (3, 1))
    assert fit_temperature(uninformative, np.array([0, 1, 2])) == calibration.MAX_T
    always_right = np.tile([1e-3, 0.0, 0.0], (3, 1))
    assert fit_temperature(always_right, np.array([0, 0, 0])) == calibration.MIN_T


def _calibration_inputs(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """val and test logits of 4 classes whose best temperatures differ (test twice as over-confident)."""
    val, val_labels = _random_case(4, 80, (), seed)
    test, test_labels = _random_case(4, 60, (), seed + 100)
    return {"val": (val * 2.0, val_labels), "test": (test * 4.0, test_labels)}


def test_calibration_fits_on_val_and_scores_on_test(tmp_path, monkeypatch):
    """`eval --calibrate` with a test split: T is val's NLL minimiser; the ECE after is test's at that T."""
    splits = _calibration_inputs(seed=3)
    index = DatasetIndex(tmp_path, "split", ["a", "b", "c", "d"], train=[],
                         val=[(tmp_path / f"v{i}.png", int(y)) for i, y in enumerate(splits["val"][1])],
                         test=[(tmp_path / f"t{i}.png", int(y)) for i, y in enumerate(splits["test"][1])])

    def logits_of(predictor, items, modes, chunk=None):  # the network's logits, per split
        split = "val" if items is index.val else "test"
        return {"none": splits[split][0]}, splits[split][1], []

    monkeypatch.setattr(evaluate_module, "chunked_logits", logits_of)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    BundleConfig("test_resnet", ("a", "b", "c", "d"), DataConfig(32, (0.5,) * 3, (0.5,) * 3)).save(bundle)
    predictor = type("Predictor", (), {"temperature": 1.0})()
    result = evaluate_module.calibrate(predictor, index, bundle)

    temperature = reference_temperature(*splits["val"])
    assert result["temperature"] == pytest.approx(temperature, rel=1e-3)
    assert predictor.temperature == result["temperature"]
    test_logits, test_labels = splits["test"]
    assert result["ece_measured_on"] == "test" and result["measured_images"] == len(test_labels)
    assert result["ece_before"] == pytest.approx(reference_ece(softmax(test_logits, axis=1), test_labels, 15))
    assert result["ece_after"] == pytest.approx(
        reference_ece(softmax(test_logits / temperature, axis=1), test_labels, 15), abs=1e-4)
    assert BundleConfig.load(bundle).temperature == result["temperature"]
