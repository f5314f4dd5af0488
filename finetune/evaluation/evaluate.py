"""`finetune eval`: honest figures for a model on a split, with and without TTA, plus calibration."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import get_args

import numpy as np

from finetune.config import RunConfig, Split
from finetune.data.images import BadImageError, load_images
from finetune.data.scan import DatasetIndex
from finetune.data.tables import TableSpec, as_spec, scan_data
from finetune.data.tta import check_tta, softmax
from finetune.errors import FinetuneError
from finetune.evaluation import metrics
from finetune.evaluation.calibration import fit_temperature
from finetune.evaluation.mistakes import Mistake, contact_sheet, find_mistakes, write_mistakes_csv
from finetune.evaluation.plots import plot_confusion, plot_reliability
from finetune.evaluation.saliency import SaliencyError, SaliencyMap, load_eager, write_saliency
from finetune.inference import Predictor
from finetune.locks import claimed_folder, contents
from finetune.models.source import BundleConfig, ModelSource, resolve_model_source
from finetune.training.checkpoint import check_classes, load_trained, split_items

SPLITS: tuple[str, ...] = get_args(Split)
EVAL_CHUNK = 256  # images decoded and classified at once (with their TTA views): bounds eval's memory
CROSS_FIT_FOLDS = 2  # halves: each fit still sees half of val, and every val image is scored once
MISTAKES_SHOWN = 10  # the most confident mistakes named in metrics.json and on the console; the CSV has all


@dataclass
class EvalResult:
    """What an evaluation produced.

    Attributes:
        metrics: Every figure, as written to metrics.json.
        output: Folder holding metrics.json, confusion_matrix.png, reliability.png, misclassified.csv and
            (when there are mistakes) misclassified.png.
        files: The files written, metrics.json last.
        mistakes: The misclassified images, the most confident mistakes first.
        saliency: Grad-CAM overlays of the most confident mistakes (OUTPUT/saliency/), when asked for.
        saliency_skipped: Why none could be made (a ViT-like network), or None.
    """

    metrics: dict
    output: Path
    files: list[Path] = field(default_factory=list)
    mistakes: list[Mistake] = field(default_factory=list)
    saliency: list[SaliencyMap] = field(default_factory=list)
    saliency_skipped: str | None = None


def _load_model(source: ModelSource, backend: str) -> tuple[Predictor, dict | None, Path | None]:
    """(predictor, the run's {"val_split", "seed"} or None when not recorded, bundle folder or None).

    A run directory's bundle is preferred to its checkpoint: it is what gets deployed.
    """
    if source.bundle is not None:
        return Predictor.load(source.bundle, backend=backend), BundleConfig.load(source.bundle).split, source.bundle
    trained = load_trained(source.checkpoint)
    split = {"val_split": trained.setting("val_split"), "seed": trained.setting("seed")}
    return Predictor.from_trained(trained), split, None


def _scan(data: Path, model: Path, split_settings: dict | None, needs_val: bool, split: str,
          labels: TableSpec = TableSpec()) -> DatasetIndex:
    """Scans `data` with the run's split settings; without them, only folders that have their own val/.
    Only the splits evaluated (and val for a calibration) are checked image by image, where they
    have their own folders: an unreadable training image is no reason to refuse scoring val.

    Raises:
        FinetuneError: The val images would have to be held out of train (a flat folder, or no val/),
            and the model does not record the val_split and seed its run held them out with.
    """
    settings = split_settings or {"val_split": 0.2, "seed": 0}  # placeholders: checked below before any use
    index = scan_data(data, labels, val_split=float(settings["val_split"]), seed=int(settings["seed"]),
                      only={split, "val"} if needs_val else {split})
    if split_settings is None and needs_val and _val_held_out(index):
        raise FinetuneError(
            f"{model} does not record the train/val split of its run (val_split, seed), and {data} has no "
            f"val/ folder ({index.layout} layout): a guessed split would put training images in val. Pass the "
            f"run directory or its checkpoint as --model (they record it), re-export the bundle with "
            f"`finetune export --model RUN_DIR`, or give a data folder with train/ and val/ sub-folders")
    return index


def _val_held_out(index: DatasetIndex) -> bool:
    """True when the val split was carved out of the training images rather than read from val/."""
    train_dir = index.root / "train"
    return index.layout == "flat" or any(path.is_relative_to(train_dir) for path, _ in index.val)


def decode(items: list[tuple[Path, int]]) -> tuple[list[np.ndarray], np.ndarray, list[tuple[str, str]]]:
    """Decoded images (in parallel), their labels (N,), and (path, reason) of files that no longer decode."""
    images, labels, bad = [], [], []
    for (path, label), image in zip(items, load_images([p for p, _ in items])):
        if isinstance(image, BadImageError):
            bad.append((str(path), str(image)))
        else:
            images.append(image)
            labels.append(label)
    return images, np.asarray(labels, dtype=np.int64), bad


def chunked_logits(predictor: Predictor, items: list[tuple[Path, int]], modes: Sequence[str],
                   chunk: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, list[tuple[str, str]]]:
    """Logits of every view for each TTA mode ({mode: (N * V, C)}), labels (N,) and unreadable files,
    decoding and running `chunk` (default EVAL_CHUNK) images at a time: memory holds one chunk of images and their
    views whatever the split's size, plus the (N, C) outputs."""
    logits: dict[str, list[np.ndarray]] = {m: [] for m in modes}
    labels, bad, chunk = [], [], chunk or EVAL_CHUNK
    for start in range(0, len(items), chunk):
        images, part, unreadable = decode(items[start:start + chunk])
        labels.append(part)
        bad += unreadable
        for mode in modes:
            if images:
                logits[mode].append(predictor.logits(images, mode))
    width = predictor.num_classes
    return ({m: np.concatenate(v) if v else np.zeros((0, width)) for m, v in logits.items()},
            np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64), bad)


def calibrate(predictor: Predictor, index: DatasetIndex, bundle: Path | None) -> dict:
    """Fits the temperature on the val split, applies it to `predictor`, stores it in the bundle.

    The ECE before and after is measured on images the temperature was not fitted on: the test
    split when there is one, else val cross-fitted (each half scored with a T fitted on the other).
    """
    if bundle is None:
        raise FinetuneError("--calibrate stores the temperature in a bundle's config.json: pass an exported "
                            "bundle or a run directory with model/ (see `finetune export`)")
    logits, labels, _ = chunked_logits(predictor, split_items(index, "val"), ["none"])
    logits = logits["none"]
    temperature = fit_temperature(logits, labels)
    scored = _ece_on_test(predictor, index.test, temperature) if index.test else _ece_cross_fit(logits, labels)
    result = {"temperature": temperature, "fit_split": "val", "fit_images": int(len(labels)), **scored}
    config = BundleConfig.load(bundle)
    calibration = {"method": "temperature scaling", **result}
    replace(config, temperature=temperature, extra={**config.extra, "calibration": calibration}).save(bundle)
    predictor.temperature = temperature
    return result


def _ece_on_test(predictor: Predictor, test: list[tuple[Path, int]], temperature: float) -> dict:
    logits, labels, _ = chunked_logits(predictor, test, ["none"])
    logits = logits["none"]
    return _ece_scores("test", labels, softmax(logits), softmax(logits, temperature))


def _ece_cross_fit(logits: np.ndarray, labels: np.ndarray, folds: int = CROSS_FIT_FOLDS) -> dict:
    """ECE after temperature scaling, each val fold scored with a T fitted on the other folds."""
    if len(labels) < folds:
        raise FinetuneError(f"--calibrate needs at least {folds} val images to score the temperature "
                            f"on images it was not fitted on; the val split has {len(labels)}")
    fold = _stratified_folds(labels, folds)
    after = np.empty((len(labels), logits.shape[1]))
    for k in range(folds):
        held = fold == k
        after[held] = softmax(logits[held], fit_temperature(logits[~held], labels[~held]))
    return _ece_scores(f"val, {folds}-fold cross-fit", labels, softmax(logits), after)


def _stratified_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index per image (N,): each class's images, shuffled, dealt round the folds in turn."""
    order = np.concatenate([np.random.default_rng([seed, c]).permutation(np.flatnonzero(labels == c))
                            for c in np.unique(labels)])
    fold = np.empty(len(labels), dtype=np.int64)
    fold[order] = np.arange(len(labels)) % folds  # one running count: no fold is left empty
    return fold


def _ece_scores(measured_on: str, labels: np.ndarray, before: np.ndarray, after: np.ndarray) -> dict:
    return {"ece_measured_on": measured_on, "measured_images": int(len(labels)),
            "ece_before": metrics.expected_calibration_error(before, labels),
            "ece_after": metrics.expected_calibration_error(after, labels)}


def evaluate(model: str | Path, data: str | Path, split: str = "val", tta: str = "none",
             calibrate_temperature: bool = False, output: str | Path | None = None,
             backend: str = "onnx", saliency: int = 0, labels: str | Path | TableSpec | None = None) -> EvalResult:
    """Evaluates a bundle, run directory or checkpoint on a split of an image folder.

    Args:
        model: Bundle folder, run directory or .ckpt file.
        data: Image folder with the model's classes. A folder without val/ is split as the model's
            run split it (recorded in the checkpoint and in bundles made by `finetune export`).
        split: "val" or "test".
        tta: TTA mode; its figures are reported next to the plain ones.
        calibrate_temperature: Fit a temperature on the val split first and store it in the bundle.
        output: A new or empty folder for metrics.json and the PNGs. Default: a new eval-SPLIT
            folder (eval-SPLIT-2, -3, ... when taken) in the run directory, or beside a bundle or .ckpt.
        backend: The Predictor's backend.
        saliency: Grad-CAM overlays of this many of the most confident mistakes, in OUTPUT/saliency/
            (RANK-STEM.png), from the network rebuilt eagerly; 0: none.
        labels: The label table of `data` (its path, or a TableSpec naming its columns); None: class
            folders, or a metadata file in `data`. A table without splits is split as the model's run split it.

    Returns:
        The figures (also in metrics.json) and the output folder.

    Raises:
        FinetuneError: Unknown split or TTA, an output folder that already holds files, a model that
            cannot be loaded, classes that differ, or val images that cannot be told from train.
    """
    if split not in SPLITS:
        raise FinetuneError(f"unknown --split {split!r}; valid: {', '.join(SPLITS)}")
    if saliency < 0:
        raise FinetuneError(f"--saliency {saliency}: expected how many of the most confident mistakes to map, "
                            f"0 (none) or more")
    check_tta(tta)
    if output is None:
        return _evaluate(Path(model), Path(data), split, tta, calibrate_temperature, None, backend, saliency,
                         as_spec(labels))
    with claimed_folder(Path(output), f"--output {output}"):  # no second eval writes into it meanwhile
        _check_empty(Path(output))
        return _evaluate(Path(model), Path(data), split, tta, calibrate_temperature, Path(output), backend, saliency,
                         as_spec(labels))


def _evaluate(model: Path, data: Path, split: str, tta: str, calibrate_temperature: bool, output: Path | None,
              backend: str, saliency: int = 0, labels: TableSpec = TableSpec()) -> EvalResult:
    source = resolve_model_source(model)
    predictor, split_settings, bundle = _load_model(source, backend)
    if labels == TableSpec():
        labels = _run_table(source, data)
    index = _scan(data, model, split_settings, needs_val=split == "val" or calibrate_temperature, split=split,
                  labels=labels)
    check_classes(index.classes, predictor.class_names, data)
    split_items(index, split)  # a missing split fails before anything is written
    report: dict = {"model": str(model), "data": str(data), "split": split, "tta": tta,
                    **({"labels": str(labels.file)} if labels.file is not None else {})}
    if calibrate_temperature:
        report["calibration"] = calibrate(predictor, index, bundle)
    out = Path(output) if output is not None else _new_output(_results_home(source), split)
    result = evaluate_predictor(predictor, index, split, tta, out, report)
    return _with_saliency(result, model, saliency) if saliency and result.mistakes else result


def _run_table(source: ModelSource, data: Path) -> TableSpec:
    """The label table (and its column names) the model's run read, when `data` is the folder that run
    trained from: the table is part of what the data is, so `eval --data DIR` on it needs no --labels again.
    An empty spec (class folders, or a metadata file in DIR) for any other folder or a bundle alone."""
    recorded = source.run_dir / "config.yaml" if source.run_dir is not None else None
    if recorded is None or not recorded.is_file():
        return TableSpec()
    return TableSpec.of_run(RunConfig.from_yaml(recorded), data)


def _with_saliency(result: EvalResult, model: Path, count: int) -> EvalResult:
    """`result` with Grad-CAM overlays of its `count` most confident mistakes, for the class each was given."""
    chosen = result.mistakes[:count]
    stems = [f"{rank:02d}-{Path(m.path).stem}" for rank, m in enumerate(chosen, 1)]  # in order of confidence
    try:
        maps = write_saliency(load_eager(model), [m.path for m in chosen], result.output / "saliency",
                              classes=[m.predicted for m in chosen], names=stems)
    except SaliencyError as e:
        return replace(result, saliency_skipped=str(e))
    return replace(result, saliency=maps)


def evaluate_predictor(predictor: Predictor, index: DatasetIndex, split: str, tta: str, output: Path,
                       report: dict | None = None) -> EvalResult:
    """Figures, plots and metrics.json of a loaded predictor on one split of a scanned folder."""
    report = {**(report or {}), "split": split, "tta": check_tta(tta), "temperature": predictor.temperature}
    modes = ["none"] + ([report["tta"]] if report["tta"] != "none" else [])
    items = split_items(index, split)
    logits, labels, bad = chunked_logits(predictor, items, modes)
    probs = {m: predictor.probabilities_of(v, m) for m, v in logits.items()}
    unreadable = {path for path, _ in bad}
    paths = [path for path, _ in items if str(path) not in unreadable]  # one per row of `probs`, in order
    return _report(predictor, probs, labels, bad, report, Path(output), paths)


def _check_empty(output: Path) -> None:
    if contents(output):
        raise FinetuneError(f"--output {output} already exists and is not an empty folder; evaluation "
                            f"results are never overwritten: pass a new folder, "
                            f"or leave --output out for a new eval-SPLIT-N")


def _results_home(source: ModelSource) -> Path:
    """The run directory of a run or its checkpoint; else the folder holding the model, never a bundle."""
    return source.run_dir if source.run_dir is not None else source.path.parent


def _new_output(home: Path, split: str) -> Path:
    """Creates and returns home/eval-SPLIT, or the first free eval-SPLIT-N (N = 2, 3, ...)."""
    n = 1
    while True:
        out = home / (f"eval-{split}" if n == 1 else f"eval-{split}-{n}")
        try:
            out.mkdir(parents=True)  # creating it claims the name, even against a concurrent eval
            return out
        except FileExistsError:
            n += 1


def _report(predictor: Predictor, probs: dict[str, np.ndarray], labels, bad, report: dict, out: Path,
            paths: list[Path]) -> EvalResult:
    names = predictor.class_names
    modes = list(probs)
    final = probs[modes[-1]]
    mistakes = find_mistakes(paths, final, labels)
    cm = metrics.confusion_matrix(labels, final.argmax(axis=1), len(names))
    bins = metrics.calibration_bins(final, labels)
    report.update({
        "images": int(len(labels)), "unreadable": [{"path": p, "reason": r} for p, r in bad],
        "accuracy": {m: metrics.accuracy_summary(p, labels) for m, p in probs.items()},
        "per_class": metrics.per_class(cm, names), "confusion_matrix": cm.tolist(), "class_names": names,
        "worst_confused": metrics.worst_confused(cm, names), "calibration_bins": bins,
        "misclassified": _mistakes_record(mistakes, names),
    })
    report.update({k: report["accuracy"][modes[-1]][k] for k in ("top1", "top5", "balanced_acc", "macro_f1", "ece")})
    out.mkdir(parents=True, exist_ok=True)
    title = f"{report['split']} split, TTA {modes[-1]}"
    files = [plot_confusion(cm, names, out / "confusion_matrix.png", f"Confusion matrix, {title}"),
             plot_reliability(bins, report["ece"], out / "reliability.png", f"Reliability, {title}"),
             write_mistakes_csv(mistakes, names, out / "misclassified.csv")]
    if mistakes:
        files.append(contact_sheet(mistakes, names, out / "misclassified.png"))
    # ensure_ascii: valid JSON whatever the file names; json.loads gives back the surrogates of their bytes.
    (out / "metrics.json").write_text(json.dumps(report, indent=2, ensure_ascii=True) + "\n")
    return EvalResult(report, out, [*files, out / "metrics.json"], mistakes)


def _mistakes_record(mistakes: list[Mistake], names: list[str]) -> dict:
    """metrics.json's summary of the mistakes: their count and the MISTAKES_SHOWN most confident ones."""
    shown = [{"path": m.path, "true": names[m.true], "predicted": names[m.predicted],
              "probability": m.predicted_probability, "true_probability": m.true_probability}
             for m in mistakes[:MISTAKES_SHOWN]]
    return {"count": len(mistakes), "file": "misclassified.csv", "most_confident": shown}
