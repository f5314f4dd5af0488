"""The export bundle: weights, ONNX (+ TorchScript, + int8), config.json and a README, checked.

Layout of a bundle directory:
    model.safetensors   state dict of the network (keys as in Backbone.model)
    model.onnx          fp32, dynamic batch axis, BatchNorm folded
    model.ts            frozen TorchScript (when asked)
    model.int8.onnx     statically quantized (when asked)
    config.json         classes, preprocessing, TTA, temperature, parity figures
    README.md           the model card: details, data, training, evaluation, limitations, how to run it
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from safetensors.torch import save

from finetune import atomic
from finetune.bundling import formats, parity
from finetune.bundling.card import bundle_readme, card_facts
from finetune.bundling.parity import ExportError
from finetune.bundling.quantize import QUANTIZE_MODES, quantize_int8
from finetune.bundling.sampling import stratified_sample
from finetune.config import ExportFormat
from finetune.data.data_config import DataConfig
from finetune.data.images import load_image
from finetune.data.scan import DatasetIndex
from finetune.data.tta import batch_inputs, check_tta
from finetune.inference import module_runner, onnx_runner, torchscript_runner
from finetune.locks import claim
from finetune.models.backbone import Backbone
from finetune.models.source import BUNDLE_FORMAT, CONFIG_NAME, FORMAT_VERSION, BundleConfig, BundleError
from finetune.pathtext import check_model_path, escaped
from finetune.training.checkpoint import TrainedModel, load_trained, scan_for

FORMATS: tuple[str, ...] = get_args(ExportFormat)
PARITY_IMAGES = 16  # a real batch: enough to hit every class's logit range, cheap to run three ways
CALIBRATION_IMAGES = 64  # stratified: MinMax ranges must see every class's activations
BUNDLE_FILES = (CONFIG_NAME, "README.md")  # with every "model.*": what a bundle folder is made of


@dataclass
class ExportOptions:
    """What to write besides weights and config.json.

    Attributes:
        formats: Graph formats; "onnx" is always written (the Predictor's default backend).
        quantize: None or "int8" (adds model.int8.onnx with its top-1 agreement on val).
        tta: Default TTA mode stored in config.json.
        temperature: Softmax temperature stored in config.json (1.0: uncalibrated).
    """

    formats: Sequence[str] = ("onnx",)
    quantize: str | None = None
    tta: str = "none"
    temperature: float = 1.0
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise ExportError(f"unknown export format(s) {', '.join(bad)}; valid: {', '.join(FORMATS)}")
        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            raise ExportError(f"unknown --quantize {self.quantize!r}; valid: {', '.join(QUANTIZE_MODES)}")
        check_tta(self.tta)


def export_bundle(backbone: Backbone, class_names: Sequence[str], data_config: DataConfig, output: str | Path,
                  parity_images: Sequence[np.ndarray], options: ExportOptions | None = None,
                  calibration_images: Sequence[np.ndarray] = (), agreement_images: Sequence[np.ndarray] = (),
                  source_checkpoint: str = "") -> Path:
    """Writes and verifies a bundle.

    Args:
        backbone: The trained network (any device/dtype; exported as an fp32 CPU copy).
        class_names: Names in output index order.
        data_config: The eval preprocessing the network was trained with.
        output: Bundle directory: new, empty, or an earlier bundle, which is replaced all at once
            (its other entries, such as evaluation folders, are kept).
        parity_images: Decoded validation images (H, W, 3) uint8 for the parity check.
        options: Formats, quantization, default TTA, temperature.
        calibration_images: Decoded images to calibrate int8 activation ranges (training images, a
            stratified sample: the first CALIBRATION_IMAGES are used).
        agreement_images: Decoded images on which int8 top-1 agreement with fp32 is measured (val).
        source_checkpoint: Recorded in config.json.

    Returns:
        The bundle directory.

    Raises:
        ExportError: No parity images, `output` holds files that are not a bundle's, or an exported
            graph differs from eager by more than 1e-3.
    """
    options = options or ExportOptions()
    options.validate()
    if not parity_images:
        raise ExportError("the parity check needs validation images; none were given")
    final = Path(output)
    # The lock sits beside the bundle, which is swapped in whole: a second export to the same folder
    # is refused while this one writes.
    with claim(final.parent / f".{final.name}.lock", f"--output {final}"):
        _check_output(final)
        # Written in full beside `final`, then swapped in: a crash or kill at any point leaves the
        # previous bundle as it was, never a mix of old and new files.
        with atomic.replacing_dir(final, needed=_bundle_bytes(backbone, options)) as out:
            model = _cpu_fp32_copy(backbone)
            x = batch_inputs(list(parity_images), data_config)
            config = _base_config(backbone, class_names, data_config, options, source_checkpoint)
            _write_weights(model, out / "model.safetensors")
            config["parity"] = _export_graphs(model, x, out, options.formats, config)
            if options.quantize:
                config["int8"] = _quantize(out, data_config, calibration_images or parity_images,
                                           agreement_images or parity_images)
            config["files"] = sorted(p.name for p in out.iterdir() if p.name.startswith("model."))
            (out / "README.md").write_text(bundle_readme(config), encoding="utf-8")  # the model card
            BundleConfig.from_dict(config).save(out)  # validated: what is written loads
            _carry_other_entries(final, out)
    return final


def _bundle_bytes(backbone: Backbone, options: ExportOptions) -> int:
    """About the bytes a bundle takes: the fp32 weights in model.safetensors and in each graph format,
    a quarter of them again for an int8 model."""
    weights = sum(t.numel() * 4 for t in [*backbone.parameters(), *backbone.buffers()])
    return int(weights * (1 + len(options.formats) + (0.25 if options.quantize else 0)))


def _is_bundle_file(name: str) -> bool:
    return name in BUNDLE_FILES or name.startswith("model.")


def _check_output(final: Path) -> None:
    """Raises ExportError unless `final` is absent, empty, a bundle, or only bundle files (a broken one)."""
    if not final.exists():
        return
    if not final.is_dir():
        raise ExportError(f"--output {final} is a file; a bundle is a folder")
    try:
        BundleConfig.load(final)
        return
    except BundleError:  # not a bundle, or a config.json that does not parse
        pass
    foreign = sorted(p.name for p in final.iterdir() if not _is_bundle_file(p.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise ExportError(f"--output {final} is not an export bundle and holds {shown}: exporting replaces "
                          f"the whole folder, so pass a new or empty folder")


def _carry_other_entries(final: Path, staged: Path) -> None:
    """Keeps what else sits in the earlier bundle folder (e.g. an eval folder): hard links, no copies."""
    if not final.is_dir():
        return
    for entry in final.iterdir():
        if _is_bundle_file(entry.name) or atomic.is_leftover(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, staged / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, staged / entry.name)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:  # file systems without hard links
        shutil.copy2(src, dst, follow_symlinks=False)


def _cpu_fp32_copy(backbone: Backbone) -> Backbone:
    import copy

    model = copy.deepcopy(backbone).float().cpu().eval()
    return model.to(memory_format=torch.contiguous_format)


def toolkit_version() -> str:
    """The installed finetune's version, as recorded in every bundle."""
    try:
        return metadata.version("finetune")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _base_config(backbone, class_names, data_config, options, source_checkpoint) -> dict:
    return {
        "format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, "backbone": backbone.name,
        "build_options": backbone.build_options,  # e.g. transform_input: rebuilt as it was trained
        "num_classes": len(class_names), "class_names": list(class_names),
        "data_config": data_config.to_dict(), "tta": options.tta, "temperature": float(options.temperature),
        "toolkit_version": toolkit_version(), "source_checkpoint": str(source_checkpoint),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {"name": formats.INPUT_NAME, "shape": ["batch", 3, data_config.input_size, data_config.input_size],
                  "dtype": "float32", "layout": "NCHW RGB, normalised"},
        "output": {"name": formats.OUTPUT_NAME, "shape": ["batch", len(class_names)], "meaning": "logits"},
        **options.extra,
    }


def _write_weights(model: Backbone, path: Path) -> None:
    # clone(): safetensors refuses tensors that share storage; the keys stay those of Backbone.model.
    # Written through a plain open(), not save_file, which creates its file 0600 whatever the umask: the
    # weights are as readable as the bundle's other files.
    path.write_bytes(save({k: v.detach().contiguous().clone() for k, v in model.model.state_dict().items()}))


def _export_graphs(model: Backbone, x: np.ndarray, out: Path, wanted: Sequence[str], config: dict) -> dict:
    """Writes each format, checks parity on `x` (N, 3, S, S) and BatchNorm folding; returns the figures."""
    example = torch.from_numpy(x[:2])
    reference = module_runner(model)(x)
    result: dict = {"images": int(len(x)), "tolerance": parity.PARITY_TOLERANCE, "max_abs_diff": {}}
    batchnorm = {"eager_modules": formats.count_batchnorms(model)}
    formats.export_onnx(model, example, out / "model.onnx")
    batchnorm["onnx_nodes"] = formats.count_onnx_ops(out / "model.onnx").get("BatchNormalization", 0)
    result["max_abs_diff"]["onnx"] = parity.check_parity("ONNX", reference, onnx_runner(out / "model.onnx")(x))
    if "torchscript" in wanted:
        formats.export_torchscript(model, example, out / "model.ts")
        batchnorm["torchscript_nodes"] = formats.count_torchscript_batchnorms(out / "model.ts")
        result["max_abs_diff"]["torchscript"] = parity.check_parity("TorchScript", reference,
                                                                    torchscript_runner(out / "model.ts")(x))
    config["files"] = sorted(p.name for p in out.iterdir() if p.name.startswith("model."))  # for the README
    config["batchnorm"] = batchnorm
    return result


def _quantize(out: Path, dc: DataConfig, calibration: Sequence[np.ndarray], agreement: Sequence[np.ndarray]) -> dict:
    quantize_int8(out / "model.onnx", out / "model.int8.onnx", batch_inputs(list(calibration[:CALIBRATION_IMAGES]), dc))
    fp32, int8 = onnx_runner(out / "model.onnx"), onnx_runner(out / "model.int8.onnx")
    x = batch_inputs(list(agreement), dc)
    a = np.concatenate([fp32(x[i:i + 32]) for i in range(0, len(x), 32)])
    b = np.concatenate([int8(x[i:i + 32]) for i in range(0, len(x), 32)])
    agreement_, images = parity.top1_agreement(a, b), int(len(x))
    warning = parity.int8_warning(agreement_, images)
    return {"file": "model.int8.onnx", "method": "static QDQ, per-channel int8 weights, uint8 activations",
            "calibration_images": min(len(calibration), CALIBRATION_IMAGES),
            "top1_agreement": agreement_, "agreement_images": images, **({"warning": warning} if warning else {})}


def _decode_items(items) -> list[np.ndarray]:
    return [load_image(p) for p, _ in items]


def export_trained(trained: TrainedModel, output: str | Path, options: ExportOptions | None = None,
                   data: str | Path | None = None, index: DatasetIndex | None = None) -> Path:
    """Exports a loaded checkpoint, taking parity and int8 images from its data folder (or `data`).

    `index`: a scan of that folder already made (skips scanning it again).
    """
    check_model_path(output, "bundle folder")  # before the data folder is scanned
    options = options or ExportOptions(tta=trained.setting("tta"))
    # Lets `finetune eval` rebuild the same train/val split of a flat image folder.
    options.extra.setdefault("split", {"val_split": trained.setting("val_split"), "seed": trained.setting("seed")})
    index = index if index is not None else scan_for(trained, data)
    options.extra.setdefault("card", card_facts(trained, index))  # the README's facts, machine-readable
    val = index.val or index.test or []
    if not val:
        raise ExportError(f"{escaped(index.root)} has no validation images for the parity check")
    quantizing, seed = options.quantize is not None, trained.setting("seed")
    return export_bundle(
        trained.backbone, trained.class_names, trained.data_config, output,
        parity_images=_decode_items(stratified_sample(val, PARITY_IMAGES, seed)), options=options,
        calibration_images=(_decode_items(stratified_sample(index.train, CALIBRATION_IMAGES, seed))
                            if quantizing else ()),
        agreement_images=_decode_items(val) if quantizing else (),
        source_checkpoint=str(trained.checkpoint),
    )


def default_bundle_dir(trained: TrainedModel) -> Path:
    """RUN_DIR/model for a run's checkpoint, else a `<checkpoint stem>-bundle` folder beside it."""
    run_dir = trained.run_dir
    return (run_dir / "model" if run_dir is not None
            else trained.checkpoint.with_name(trained.checkpoint.stem + "-bundle"))


def export(path: str | Path, output: str | Path | None = None, formats_: Sequence[str] = ("onnx",),
           quantize: str | None = None, data: str | Path | None = None, tta: str | None = None) -> Path:
    """`finetune export`: a run directory or checkpoint -> a verified bundle directory.

    Example:
        >>> export("runs/2026-01-01-resnet18", formats_=["onnx", "torchscript"], quantize="int8")  # doctest: +SKIP
        PosixPath('runs/2026-01-01-resnet18/model')
    """
    trained = load_trained(path)
    options = ExportOptions(formats=list(formats_), quantize=quantize,
                            tta=tta or trained.setting("tta"))
    out = Path(output) if output is not None else default_bundle_dir(trained)
    return export_trained(trained, out, options, data)


__all__ = ["ExportError", "ExportOptions", "export", "export_bundle", "export_trained"]
