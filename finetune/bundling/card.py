"""The model card of a bundle: its README.md, with the same facts in config.json's `card`.

The card is the bundle's README.md, not a second file: the Hugging Face Hub and code hosts show a model's
README.md as its card, and the bundle's README already says how to run the model; one document cannot
drift from another. Its sections are those of Mitchell et al. 2019 ("Model Cards for Model Reporting") that a
training run can fill: model details, training data, training procedure, evaluation, intended use and
limitations, and how to run it. Every statement is read from the run (its config.yaml, else the checkpoint's
own record; the scan of its data folder; its eval-*/metrics.json); what cannot be read is said to be unknown.
"""
from __future__ import annotations

import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

from finetune.config import RunConfig, Split, read_run_yaml
from finetune.data.balance import imbalance_ratio
from finetune.data.profile import image_sides
from finetune.data.scan import DatasetIndex
from finetune.errors import FinetuneError
from finetune.pathtext import escaped
from finetune.stats import wilson_interval
from finetune.training.checkpoint import TrainedModel
from finetune.training.checkpoint_format import read_checkpoint
from finetune.untrusted import read_json

# The settings that shape what the network learned, in the order a reader follows a run.
TRAINING_SETTINGS = ("weights", "epochs", "batch_size", "lr", "optimizer", "weight_decay", "schedule",
                     "warmup_epochs", "freeze_until", "freeze_policy", "train_bn", "lr_decay", "backbone_lr_mult",
                     "image_size", "augment", "label_smoothing", "mixup", "cutmix", "teacher", "ema",
                     "class_weights", "sampler", "monitor", "early_stop", "precision", "seed", "val_split")
RESOLVED_SETTINGS = ("precision", "freeze_until")  # settings whose run-time value config.yaml's `resolved` holds
EVAL_SPLITS: tuple[str, ...] = get_args(Split)  # what `finetune eval` scores, in the order the card lists them
LISTED_CLASSES = 50  # classes listed one by one in the README; all of them are in config.json's `card`
NOT_FROM_A_RUN = "the bundle was exported from a network without its checkpoint, which holds the run's record"


def card_facts(trained: TrainedModel, index: DatasetIndex) -> dict[str, Any]:
    """The card's facts about a trained model, for config.json's `card`.

    Args:
        trained: The loaded checkpoint.
        index: The scan of its data folder made for the export (the run's split settings).

    Returns:
        {"record", "data", "training", "evaluation", "unknown"}: where the settings were read, the data per
        split, the settings that matter with where each came from, the newest evaluation of each split in the
        run directory, and a reason for each section that could not be filled.
    """
    record, unknown = _run_record(trained), {}
    if record is None:
        unknown["training"] = (f"{escaped(trained.checkpoint)} holds no run settings (a module saved without "
                               f"`finetune run`)")
    evaluation = _evaluations(trained.run_dir) if trained.run_dir is not None else []
    if not evaluation:
        unknown["evaluation"] = (
            f"no eval-*/metrics.json in the run directory {escaped(trained.run_dir)}" if trained.run_dir is not None
            else f"{escaped(trained.checkpoint)} is not inside a run directory, so no evaluation of it was found")
        unknown["evaluation"] += "; `finetune eval --model BUNDLE --data DIR` measures it"
    return {"record": record["where"] if record else None, "data": _data(index, record),
            "training": _training(record, trained.checkpoint) if record else None,
            "evaluation": evaluation, "unknown": unknown}


def _run_record(trained: TrainedModel) -> dict[str, Any] | None:
    """{"where", "settings", "resolved", "sources", "epoch"}: the run's config.yaml when the checkpoint sits
    in its run directory, else the record the checkpoint carries; None when it has neither."""
    try:
        ckpt = read_checkpoint(trained.checkpoint, mmap=True)  # mapped: only the record is read
    except FinetuneError:  # a module handed over in memory, its file gone: its config is all there is
        ckpt = None
    epoch = ckpt.epoch if ckpt is not None else None
    yaml_path = trained.run_dir / "config.yaml" if trained.run_dir is not None else None
    if yaml_path is not None and yaml_path.is_file():
        try:
            raw = read_run_yaml(yaml_path)
            return {"where": escaped(yaml_path), "settings": RunConfig.from_yaml(yaml_path).model_dump(mode="json"),
                    "resolved": raw.get("resolved") or {}, "sources": raw.get("sources") or {}, "epoch": epoch}
        except (FinetuneError, ValueError):  # a config.yaml edited out of shape: the checkpoint's record instead
            pass
    if trained.config is None:
        return None
    plan = ckpt.plan if ckpt is not None else {}
    return {"where": f"checkpoint {escaped(trained.checkpoint.name)}",
            "settings": trained.config.model_dump(mode="json"), "resolved": plan.get("resolved") or {},
            "sources": plan.get("sources") or {}, "epoch": epoch}


def _data(index: DatasetIndex, record: Mapping[str, Any] | None) -> dict[str, Any]:
    """Per-split class counts, bad files, the training images' shorter sides; the counts the run recorded."""
    splits = {split: index.counts(split) for split in index.splits}
    sides = image_sides(index)
    resolved = (record or {}).get("resolved", {})
    recorded = resolved.get("class_counts") if isinstance(resolved.get("class_counts"), dict) else None
    ratio = imbalance_ratio(splits["train"])
    return {"folder": str(index.root), "layout": index.layout, "splits": splits,
            "bad_files": len(index.bad_files), "recorded_bad_files": resolved.get("bad_files"),
            "imbalance_ratio": round(ratio, 3) if ratio != float("inf") else None,
            "image_sides": {"images": len(sides), "min": min(sides), "median": statistics.median(sides),
                            "max": max(sides)} if sides else None,
            "recorded_train": recorded, "matches_record": None if recorded is None else recorded == splits["train"]}


def _training(record: Mapping[str, Any], checkpoint: Path) -> dict[str, Any]:
    settings, resolved, sources = record["settings"], record["resolved"], record["sources"]
    rows = [{"name": name, "value": resolved[name] if name in RESOLVED_SETTINGS and name in resolved
             else settings.get(name), "source": sources.get(name, "unknown")}
            for name in TRAINING_SETTINGS if name in settings]
    epoch = record["epoch"]
    return {"settings": rows, "checkpoint": checkpoint.name, "epoch": None if epoch is None else epoch + 1,
            "epochs": settings.get("epochs"), "monitor": settings.get("monitor")}


def _evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """The newest evaluation of each split (val, then test) in the run directory, as the card states it.

    Read from the eval-SPLIT[-N]/metrics.json files that `finetune eval` and `finetune run` write there
    (newest by modification time); one that does not parse or has another shape is passed over.
    """
    newest: dict[str, tuple[float, dict[str, Any]]] = {}
    for folder in sorted(run_dir.glob("eval-*")):
        try:
            path = folder / "metrics.json"
            row, mtime = _evaluation(folder, read_json(path, "evaluation metrics")), path.stat().st_mtime
        except (FinetuneError, OSError, AttributeError, KeyError, TypeError, ValueError):
            continue
        if row["split"] in EVAL_SPLITS and (row["split"] not in newest or mtime > newest[row["split"]][0]):
            newest[row["split"]] = (mtime, row)
    return [newest[s][1] for s in EVAL_SPLITS if s in newest]


def _evaluation(folder: Path, m: Mapping[str, Any]) -> dict[str, Any]:
    images, top1 = int(m["images"]), float(m["top1"])
    return {"folder": folder.name, "split": str(m["split"]), "images": images, "tta": str(m["tta"]),
            "temperature": float(m["temperature"]), "top1": top1,
            "top1_interval": list(wilson_interval(round(top1 * images), images)),
            "top1_no_tta": float(m["accuracy"]["none"]["top1"]), "balanced_acc": float(m["balanced_acc"]),
            "ece": float(m["ece"]), "recall": {str(r["class"]): float(r["recall"]) for r in m["per_class"]}}


# ----- the README -----------------------------------------------------------------------------------

def bundle_readme(config: dict[str, Any]) -> str:
    """The bundle's README.md: its model card, from config.json's content (with `card` when the export
    had a checkpoint; without it, the sections that need one say so)."""
    card = config.get("card") or {}
    unknown = card.get("unknown", {}) if card else {k: NOT_FROM_A_RUN for k in ("data", "training", "evaluation")}
    return "\n".join([
        _front_matter(config), _details(config, card), _data_section(card.get("data"), unknown.get("data")),
        _training_section(card.get("training"), card.get("record"), unknown.get("training")),
        _evaluation_section(card.get("evaluation") or [], unknown.get("evaluation"), config),
        _use_section(config, card), _files_section(config), _run_section(config)])


def _front_matter(config: dict[str, Any]) -> str:
    zoo = "torchvision" if str(config["backbone"]).startswith("tv:") else "timm"
    return (f"---\npipeline_tag: image-classification\ntags:\n- image-classification\n- {zoo}\n- finetune\n---\n\n"
            f"# {config['backbone']} image classifier ({config['num_classes']} classes)\n")


def _names(config: dict[str, Any], limit: int = 20) -> str:
    names = [escaped(n) for n in config["class_names"]]
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def _details(config: dict[str, Any], card: dict[str, Any]) -> str:
    dc = config["data_config"]
    weights = next((r for r in (card.get("training") or {}).get("settings", []) if r["name"] == "weights"), None)
    return f"""## Model details
- Backbone: `{config['backbone']}`, fine-tuned with finetune {config.get('toolkit_version', 'unknown')} \
(exported {config.get('created', 'at an unknown time')} from `{escaped(config.get('source_checkpoint') or 'unknown')}`)
- Starting weights: {_weights(weights)}
- Classes, in output order: {_names(config)}
- Input: RGB, shorter side resized to {round(dc['input_size'] / dc['crop_pct'])} px ({dc['interpolation']}), \
center crop {dc['input_size']} x {dc['input_size']}, mean {dc['mean']}, std {dc['std']}
- Formats: {', '.join(f'`{f}`' for f in config.get('files', []))}
"""


def _weights(row: dict[str, Any] | None) -> str:
    if row is None:
        return "unknown"
    meaning = {"none": "random initialisation", "imagenet": "the zoo's pretrained (ImageNet) weights"}
    value = escaped(str(row["value"]))
    return f"{meaning.get(value, 'the file ' + value)} (`--weights {value}`, {row['source']})"


def _data_section(data: dict[str, Any] | None, why: str | None) -> str:
    if data is None:
        return f"## Training data\nUnknown: {why or NOT_FROM_A_RUN}.\n"
    splits = data["splits"]
    lines = [f"## Training data\nFolder `{escaped(data['folder'])}` ({data['layout']} layout), scanned at export "
             f"with the run's split settings. Images per class:\n",
             "| class | " + " | ".join(splits) + " |", "| --- |" + " --- |" * len(splits)]
    classes = list(splits["train"])
    lines += [f"| {_cell(escaped(c))} | " + " | ".join(str(splits[s][c]) for s in splits) + " |"
              for c in classes[:LISTED_CLASSES]]
    if len(classes) > LISTED_CLASSES:
        lines.append(f"| ({len(classes) - LISTED_CLASSES} more: config.json's `card`) |" + " |" * len(splits))
    lines.append("| **all** | " + " | ".join(str(sum(counts.values())) for counts in splits.values()) + " |")
    lines.append(f"\nUnreadable files skipped by the scan: {data['bad_files']}.")
    if data["matches_record"] is False:
        lines.append(f"The folder has changed since training: the run recorded {sum(data['recorded_train'].values())} "
                     f"training images ({_counts(data['recorded_train'])}).")
    return "\n".join(lines) + "\n"


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{escaped(k)} {v}" for k, v in counts.items())


def _training_section(training: dict[str, Any] | None, where: str | None, why: str | None) -> str:
    if training is None:
        return f"## Training procedure\nUnknown: {why or NOT_FROM_A_RUN}.\n"
    lines = [f"## Training procedure\nSettings as the run resolved them (read from {where}):\n",
             "| setting | value | where it came from |", "| --- | --- | --- |"]
    lines += [f"| {r['name']} | {_value(r['value'])} | {_cell(str(r['source']))} |" for r in training["settings"]]
    if training["epoch"] is not None:
        chosen = f", chosen on val {training['monitor']}" if training["checkpoint"] == "best.ckpt" else ""
        lines.append(f"\nExported checkpoint: {training['checkpoint']}, from epoch {training['epoch']} of "
                     f"{training['epochs']}{chosen}.")
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    return "none" if value is None else _cell(escaped(str(value)) if isinstance(value, str) else str(value))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _evaluation_section(rows: list[dict[str, Any]], why: str | None, config: dict[str, Any]) -> str:
    if not rows:
        return f"## Evaluation\nUnknown: {why or NOT_FROM_A_RUN}.\n"
    lines = ["## Evaluation\n", "| split | images | TTA | temperature | top-1 (95% interval) | top-1 without TTA | "
             "balanced accuracy | ECE |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lo, hi = r["top1_interval"]
        lines.append(f"| {r['split']} | {r['images']} | {r['tta']} | {r['temperature']:g} | {r['top1']:.3f} "
                     f"({lo:.3f}-{hi:.3f}) | {r['top1_no_tta']:.3f} | {r['balanced_acc']:.3f} | {r['ece']:.3f} |")
    for r in rows:
        shown = list(r["recall"].items())[:LISTED_CLASSES]
        more = f" ... ({len(r['recall'])} in all)" if len(r["recall"]) > LISTED_CLASSES else ""
        lines.append(f"\nRecall per class on {r['split']} ({r['folder']}/metrics.json): "
                     + ", ".join(f"{escaped(c)} {v:.3f}" for c, v in shown) + more + ".")
    lines.append("\nThe interval is the Wilson score interval of top-1 over that many images.")
    applied = (str(config.get("tta", "none")), float(config.get("temperature", 1.0)))
    other = [r for r in rows if (r["tta"], r["temperature"]) != applied]
    if other:  # an evaluation of the run, with settings this bundle does not carry (a later export drops them)
        lines.append(f"\nThis bundle predicts with TTA {applied[0]} and temperature {applied[1]:g}; the "
                     + ", ".join(f"{r['split']} row used TTA {r['tta']} and temperature {r['temperature']:g}"
                                 for r in other)
                     + ". Its probabilities and accuracy follow its own settings: `finetune eval --model BUNDLE "
                       "--calibrate` stores a temperature in it.")
    return "\n".join(lines) + "\n"


def _use_section(config: dict[str, Any], card: dict[str, Any]) -> str:
    data = card.get("data")
    like = f"images like those of `{escaped(data['folder'])}`" if data else "images like its training images"
    use = (f"Made for sorting {like} into its classes. The Evaluation section is all this card records of how "
           f"well it does so; it says nothing of images from elsewhere.\n")
    return "## Intended use and limitations\n" + use + "\n".join(f"- {s}" for s in limitations(config, card)) + "\n"


def limitations(config: dict[str, Any], card: dict[str, Any]) -> list[str]:
    """Statements that follow from the record: the classes, the sizes seen, the imbalance, the evaluation."""
    dc, data = config["data_config"], card.get("data")
    out = [f"Sorts an image into one of {config['num_classes']} classes ({_names(config)}). Every image gets one "
           f"of them, an image of none of these classes too: there is no 'other' class."]
    seen = f"It sees a {dc['input_size']} x {dc['input_size']} center crop of each image"
    sides = (data or {}).get("image_sides")
    out.append(seen + (f"; the shorter sides of the training images were {sides['min']}-{sides['max']} px "
                       f"(median {sides['median']:g}, {sides['images']} sampled)." if sides else "."))
    if data:
        train = data["splits"]["train"]
        low, high = min(train, key=train.get), max(train, key=train.get)
        ratio = f"{data['imbalance_ratio']:.1f}:1" if data["imbalance_ratio"] is not None else "a class has none"
        out.append(f"Training images per class: {train[low]} each (balanced)." if train[low] == train[high] else
                   f"Training images per class: {train[low]} ({escaped(low)}) to {train[high]} ({escaped(high)}), "
                   f"imbalance {ratio}.")
    out += _evaluation_limits(card)
    return out


def _evaluation_limits(card: dict[str, Any]) -> list[str]:
    rows, training = card.get("evaluation") or [], card.get("training") or {}
    out = []
    for r in rows:
        worst, best = min(r["recall"], key=r["recall"].get), max(r["recall"], key=r["recall"].get)
        out.append(f"The {r['split']} figures come from {r['images']} images; lowest recall {escaped(worst)} "
                   f"{r['recall'][worst]:.3f}, highest {escaped(best)} {r['recall'][best]:.3f}.")
    if rows and "test" not in {r["split"] for r in rows} and training.get("checkpoint") == "best.ckpt":
        out.append("There are no test-split figures, and the val split also chose the exported checkpoint, so the "
                   "val figures are optimistic: `finetune eval --split test` on held-out images measures it.")
    if not rows:
        out.append("No evaluation of this model is recorded with it.")
    return out


def _files_section(config: dict[str, Any]) -> str:
    dc, parity, int8 = config["data_config"], config["parity"], config.get("int8")
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in parity["max_abs_diff"].items())
    int8_line = (f"- `model.int8.onnx`: int8, top-1 agreement with fp32 {int8['top1_agreement']:.3f} "
                 f"on {int8['agreement_images']} val images"
                 + (f". **Warning: {int8['warning']}**" if int8.get("warning") else "") + "\n" if int8 else "")
    ts_line = "- `model.ts`: frozen TorchScript\n" if "model.ts" in config.get("files", []) else ""
    return f"""## Files
- `model.onnx`: fp32 ONNX, input `input` (batch, 3, {dc['input_size']}, {dc['input_size']}), output `logits` \
(batch, {config['num_classes']})
- `model.safetensors`: weights; `config.json`: everything here, machine-readable (this card under `card`)
{ts_line}{int8_line}
Max |logit difference| vs the training framework on {parity['images']} validation images: {diffs}.

## Preprocessing (RGB)
1. Resize the shorter side to round({dc['input_size']} / {dc['crop_pct']}) = \
{round(dc['input_size'] / dc['crop_pct'])} px ({dc['interpolation']}, PIL).
2. Center-crop {dc['input_size']} x {dc['input_size']}.
3. x / 255, subtract mean {dc['mean']}, divide by std {dc['std']}; layout NCHW float32.
4. Probabilities = softmax(logits / {config['temperature']:g}) (temperature {config['temperature']:g} at export; \
`finetune eval --calibrate` updates config.json's, which every runner applies). Default test-time augmentation: \
{config['tta']}.
"""


def _run_section(config: dict[str, Any]) -> str:
    return """## How to run it
```python
from finetune.inference import Predictor
predictor = Predictor.load("path/to/this/folder")        # onnxruntime; no torch needed
print(predictor.predict_files(["image.jpg"], top_k=5))
```
or `finetune predict --model path/to/this/folder image.jpg` (`--saliency DIR` adds Grad-CAM overlays), and
`finetune eval --model path/to/this/folder --data DIR` for its figures on labelled images.
"""
