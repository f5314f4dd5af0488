"""What `finetune run` does after training: curves, evaluation of the best checkpoint, the bundle."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.bundling.bundle import ExportOptions, export_trained
from finetune.config import RunConfig
from finetune.data.scan import DatasetIndex
from finetune.evaluation.evaluate import evaluate_predictor
from finetune.evaluation.plots import plot_curves
from finetune.inference import Predictor, module_runner
from finetune.reporter import Reporter
from finetune.training.checkpoint import load_trained


def finish_run(config: RunConfig, run_dir: Path, index: DatasetIndex,
               reporter: Reporter) -> tuple[dict[str, Path], dict[str, Any]]:
    """Writes curves.png, evaluates checkpoints/best.ckpt on val (eval-val/), exports model/.

    Args:
        config: The run settings (`tta` for the final evaluation, `export` to write the bundle).
        run_dir: The finished run's directory.
        index: The scan the run trained on (its val split is evaluated).
        reporter: Where the summary goes.

    Returns:
        Name -> path of what was written, and the best checkpoint's val metrics (eval-val/metrics.json).
    """
    written = {"curves": plot_curves(run_dir / "metrics.csv", run_dir / "curves.png")}
    trained = load_trained(run_dir)
    predictor = Predictor(module_runner(trained.backbone, auto_device=True), trained.class_names,
                          trained.data_config, tta=config.tta)
    result = evaluate_predictor(predictor, index, "val", config.tta, run_dir / "eval-val",
                                {"model": str(trained.checkpoint), "data": str(index.root)})
    written["eval"] = result.output
    _say_eval(reporter, result.metrics)
    if config.export:
        written["bundle"] = export_trained(trained, run_dir / "model", ExportOptions(tta=config.tta), index=index)
        reporter.info(f"Bundle: {written['bundle']} (model.onnx, model.safetensors, config.json)", whole=True)
    reporter.info(f"Plots: {written['curves']}, {result.output / 'confusion_matrix.png'}", whole=True)
    return written, result.metrics


def _say_eval(reporter: Reporter, m: dict) -> None:
    side = "  ".join(f"TTA {mode}: top-1 {a['top1']:.4f}" for mode, a in m["accuracy"].items())
    reporter.info(f"Best checkpoint on val ({m['images']} images, fp32 as exported): {side}, ECE {m['ece']:.3f}")
