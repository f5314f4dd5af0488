"""`finetune eval`: honest figures for a model on a split, with and without TTA, plus calibration."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finetune.data.images import BadImageError, load_image
from finetune.data.scan import DatasetIndex, scan_image_folder
from finetune.evaluation import metrics
from finetune.evaluation.calibration import fit_temperature
from finetune.evaluation.plots import plot_confusion, plot_reliability
from finetune.evaluation.tta import check_tta, softmax
from finetune.export.source import check_classes, split_items
from finetune.inference import Predictor, read_bundle_config

SPLITS = ("val", "test")


@dataclass
class EvalResult:
    """What an evaluation produced.

    Attributes:
        metrics: Every figure, as written to metrics.json.
        output: Folder holding metrics.json, confusion_matrix.png and reliability.png.
    """

    metrics: dict
    output: Path
    files: list[Path] = field(default_factory=list)


def _split_settings(model_path: Path) -> tuple[float, int]:
    """(val_split, seed) of the run behind a model, so a flat folder splits as it did in training."""
    for bundle in (model_path, model_path / "model"):
        if (bundle / "config.json").is_file():
            split = read_bundle_config(bundle).get("split", {})
            return float(split.get("val_split", 0.2)), int(split.get("seed", 42))
    try:
        from finetune.export.source import load_trained
        config = load_trained(model_path).config
        return config.val_split, config.seed
    except Exception:  # noqa: BLE001 - not a checkpoint either: Predictor.from_path reports it
        return 0.2, 42


def decode(items: list[tuple[Path, int]]) -> tuple[list[np.ndarray], np.ndarray, list[tuple[str, str]]]:
    """Decoded images, their labels (N,), and (path, reason) of files that no longer decode."""
    images, labels, bad = [], [], []
    for path, label in items:
        try:
            images.append(load_image(path))
            labels.append(label)
        except BadImageError as e:
            bad.append((str(path), str(e)))
    return images, np.asarray(labels, dtype=np.int64), bad


def calibrate(predictor: Predictor, index: DatasetIndex, bundle: Path | None) -> dict:
    """Fits the temperature on the val split, applies it to `predictor`, stores it in the bundle."""
    if bundle is None:
        from finetune.errors import FinetuneError
        raise FinetuneError("--calibrate stores the temperature in a bundle's config.json: pass an exported "
                            "bundle or a run directory with model/ (see `finetune export`)")
    images, labels, _ = decode(split_items(index, "val"))
    logits = predictor.logits(images, "none")
    before = metrics.expected_calibration_error(softmax(logits), labels)
    temperature = fit_temperature(logits, labels)
    after = metrics.expected_calibration_error(softmax(logits, temperature), labels)
    config = read_bundle_config(bundle)
    config["temperature"] = temperature
    config["calibration"] = {"method": "temperature scaling", "split": "val", "images": int(len(labels)),
                             "ece_before": before, "ece_after": after}
    from finetune.export.bundle import write_config
    write_config(bundle, config)
    predictor.temperature = temperature
    return {"temperature": temperature, "val_ece_before": before, "val_ece_after": after, "val_images": int(len(labels))}


def _bundle_of(path: Path) -> Path | None:
    return next((b for b in (path, path / "model") if (b / "config.json").is_file()), None)


def evaluate(model: str | Path, data: str | Path, split: str = "val", tta: str = "none",
             calibrate_temperature: bool = False, output: str | Path | None = None,
             backend: str = "onnx") -> EvalResult:
    """Evaluates a bundle, run directory or checkpoint on a split of an image folder.

    Args:
        model: Bundle folder, run directory or .ckpt file.
        data: Image folder with the model's classes.
        split: "val" or "test".
        tta: TTA mode; its figures are reported next to the plain ones.
        calibrate_temperature: Fit a temperature on the val split first and store it in the bundle.
        output: Where metrics.json and the PNGs go (default: MODEL/eval-SPLIT, or beside a .ckpt).
        backend: Bundle backend ("onnx", "torchscript", "eager").

    Returns:
        The figures (also in metrics.json) and the output folder.
    """
    if split not in SPLITS:
        from finetune.errors import FinetuneError
        raise FinetuneError(f"unknown --split {split!r}; valid: {', '.join(SPLITS)}")
    check_tta(tta)
    model = Path(model)
    predictor = Predictor.from_path(model, backend=backend)
    val_split, seed = _split_settings(model)
    index = scan_image_folder(data, val_split=val_split, seed=seed)
    check_classes(index.classes, predictor.class_names, Path(data))
    report: dict = {"model": str(model), "data": str(data), "split": split, "tta": tta}
    if calibrate_temperature:
        report["calibration"] = calibrate(predictor, index, _bundle_of(model))
    out = Path(output) if output is not None else _default_output(model, split)
    return evaluate_predictor(predictor, index, split, tta, out, report)


def evaluate_predictor(predictor: Predictor, index: DatasetIndex, split: str, tta: str, output: Path,
                       report: dict | None = None) -> EvalResult:
    """Figures, plots and metrics.json of a loaded predictor on one split of a scanned folder."""
    report = {**(report or {}), "split": split, "tta": check_tta(tta), "temperature": predictor.temperature}
    images, labels, bad = decode(split_items(index, split))
    return _report(predictor, images, labels, bad, report, Path(output))


def _default_output(model: Path, split: str) -> Path:
    return (model if model.is_dir() else model.parent) / f"eval-{split}"


def _report(predictor: Predictor, images, labels, bad, report: dict, out: Path) -> EvalResult:
    names = predictor.class_names
    modes = ["none"] + ([report["tta"]] if report["tta"] != "none" else [])
    probs = {m: predictor.probabilities(images, m) for m in modes}
    final = probs[modes[-1]]
    cm = metrics.confusion_matrix(labels, final.argmax(axis=1), len(names))
    bins = metrics.calibration_bins(final, labels)
    report.update({
        "images": int(len(labels)), "unreadable": [{"path": p, "reason": r} for p, r in bad],
        "accuracy": {m: metrics.accuracy_summary(p, labels) for m, p in probs.items()},
        "per_class": metrics.per_class(cm, names), "confusion_matrix": cm.tolist(), "class_names": names,
        "worst_confused": metrics.worst_confused(cm, names), "calibration_bins": bins,
    })
    report.update({k: report["accuracy"][modes[-1]][k] for k in ("top1", "top5", "ece")})
    out.mkdir(parents=True, exist_ok=True)
    title = f"{report['split']} split, TTA {modes[-1]}"
    files = [plot_confusion(cm, names, out / "confusion_matrix.png", f"Confusion matrix, {title}"),
             plot_reliability(bins, report["ece"], out / "reliability.png", f"Reliability, {title}")]
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return EvalResult(report, out, [*files, out / "metrics.json"])
