"""The `finetune` command line: each command takes its options and calls one library function.

The options are declared in finetune/options.py (those of `run` and `lr-find` made from RunConfig's
fields); the tables the commands print are in finetune/views.py.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from typer.core import TyperCommand

from finetune import options as o
from finetune import views
from finetune.config import RunConfig, resolve_config
from finetune.console import console, err_console, user_errors
from finetune.errors import FinetuneError
from finetune.heap import keep_freed_memory
from finetune.pathtext import escaped, printable
from finetune.reporter import ConsoleReporter
from finetune.search.command import register_tune

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune pretrained image classifiers (timm and torchvision) on an image folder.")


@app.command()
@user_errors
@o.with_parameters([o.CONTEXT, *o.config_options(o.run_fields(), required=False), o.RESUME])
def run(ctx: typer.Context, resume: Optional[Path] = None, **settings: Any) -> None:
    """Fine-tune BACKBONE on the image folder DATA and write a run directory."""
    given = o.given_on_command_line(ctx, settings)
    if resume is not None:  # the saved config plus the options given on the command line
        config, sources = _resumed_config(resume, {k: settings[k] for k in given})
    else:
        config, sources = resolve_config(settings, given, settings["recipe"])  # warns of recipe values switched off
        _check_data(config.data, config.labels)
    from finetune.run.fit import fit  # torch and Lightning: imported once the inputs are known to be usable

    with keep_freed_memory():  # the process-wide C heap settings training is measured with (finetune/heap.py)
        fit(config, ConsoleReporter(console), ckpt_path=resume / "checkpoints" / "last.ckpt" if resume else None,
            sources=sources)


def _resumed_config(run_dir: Path, given: dict[str, Any]) -> tuple[RunConfig, dict[str, str]]:
    """The config of the run in `run_dir` with the options `given`, and their sources (merged into the record of
    the run's first start)."""
    from finetune.run.run_dir import check_resumable

    check_resumable(run_dir)  # before the import below, which loads Lightning
    from finetune.run.resume import resume_config

    return resume_config(run_dir, given), {k: "command line (--resume)" for k in given}


def _check_data(data: Path, labels: Optional[Path] = None) -> None:
    """The data folder and the label table exist: checked before the heavy imports, so that a mistyped --data
    or --labels fails at once."""
    from finetune.data.scan import check_data_folder
    from finetune.data.tables import check_table_file

    check_data_folder(Path(data).expanduser())  # as the scan reads it
    if labels is not None:
        check_table_file(Path(labels).expanduser())


def _check_model(model: Path, data: Optional[Path] = None, tta: Optional[str] = None,
                 labels: Optional[Path] = None) -> None:
    """The model path, data folder, label table and TTA mode are usable: checked before the heavy imports."""
    from finetune.data.tta import check_tta
    from finetune.models.source import resolve_model_source

    if tta is not None:
        check_tta(tta)
    resolve_model_source(model)
    if data is not None:
        _check_data(data, labels)


@app.command("lr-find")
@user_errors
@o.with_parameters([*o.config_options(o.LR_FIND_OPTIONS, o.LR_FIND_ALIASES), o.PLOT_FOLDER])
def lr_find(output: Path = Path("."), **options: Any) -> None:
    """LR range test: plot the loss against an exponentially rising LR (OUTPUT/lr_find.png), suggest an --lr.

    Where the loss shows no clear descent, it says why there is none and which LR to keep.
    """
    settings = {o.LR_FIND_ALIASES.get(k, k): v for k, v in options.items()}
    config = RunConfig(**settings, lr="auto", output=output)
    _check_data(config.data, config.labels)
    from finetune.run.lr_find import run_lr_find

    with keep_freed_memory():
        result = run_lr_find(config, console)
    if result.suggestion is None:
        console.print(f"No suggested --lr: {result.reason}. Keep --lr {result.lr:.2e} (the default)  "
                      f"(plot: {escaped(result.plot)})", soft_wrap=True)
    else:
        console.print(f"Suggested --lr {result.suggestion:.2e}  (plot: {escaped(result.plot)})")


@app.command()
@user_errors
def layers(backbone: o.Backbone) -> None:
    """List the layer names of BACKBONE, in order, with parameter counts (valid --freeze-until values)."""
    from finetune.models.backbone import list_layers

    views.print_layers(console, backbone, list_layers(backbone))


@app.command()
@user_errors
def demo(output: o.DemoOutput = Path("runs/demo"), backbone: o.DemoBackbone = "tf_efficientnet_lite0",
         task: o.DemoTaskOption = "textures", shots: o.Shots = 10, epochs: o.DemoEpochs = None) -> None:
    """Real ImageNet transfer on real photos (installed offline), against the same backbone from scratch."""
    from finetune.run.demo import run_demo

    with keep_freed_memory():
        run_demo(output, backbone=backbone, task=task, shots=shots, epochs=epochs, console=console)


@app.command("runs")
@user_errors
def runs_cmd(folder: o.RunsFolder = Path("runs")) -> None:
    """List runs: backbone, data, best val figure, epochs, wall time, and the settings given beyond the defaults."""
    from finetune.run.listing import find_runs

    views.print_runs(console, folder, find_runs(folder))


@app.command("compare")
@user_errors
def compare_cmd(run_dirs: o.RunDirs, output: o.CurvesPlot = Path("compare.png")) -> None:
    """Print the settings that differ between runs, side by side, and plot their val curves together."""
    from finetune.run.listing import comparability, plot_comparison, read_run, setting_differences

    if len(run_dirs) < 2:
        raise FinetuneError(f"compare needs two or more run directories, got {len(run_dirs)}")
    found, labels = [read_run(d) for d in run_dirs], [d.name or str(d) for d in run_dirs]
    views.print_comparison(console, found, labels, setting_differences(found))
    caution = comparability(found)
    if caution:
        err_console.print(f"[yellow]Warning:[/yellow] {escape(printable(caution))}", soft_wrap=True)
    console.print(f"Curves: {escaped(plot_comparison(found, labels, output))}")


recipes_app = typer.Typer(help="List the shipped recipes, or show one.", invoke_without_command=True)
app.add_typer(recipes_app, name="recipes")


@recipes_app.callback()
@user_errors
def recipes_list(ctx: typer.Context) -> None:
    """List the recipes with their one-line descriptions."""
    from finetune.config import list_recipes

    if ctx.invoked_subcommand is None:
        views.print_recipes(console, list_recipes())


@recipes_app.command("show")
@user_errors
def recipes_show(name: o.RecipeName) -> None:
    """Print one recipe: its notes and its settings."""
    from finetune.config import load_recipe

    views.print_recipe(console, load_recipe(name))


@app.command()
@user_errors
def backbones(filter: o.BackboneFilter = None, weights_dir: o.LocalWeightsDir = None) -> None:
    """List backbone names with parameter counts and whether pretrained weights are on this machine."""
    from finetune.models.catalog import list_backbones

    views.print_backbones(console, filter, list_backbones(filter, weights_dir=weights_dir, progress=True))


class _HiddenArgumentsCommand(TyperCommand):
    """A command whose hidden arguments (an earlier spelling kept working) stay out of its usage line too."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        shown = [p for p in self.get_params(ctx) if not getattr(p, "hidden", False)]
        return [*([self.options_metavar] if self.options_metavar else []),
                *(piece for p in shown for piece in p.get_usage_pieces(ctx))]


@app.command("export", cls=_HiddenArgumentsCommand)
@user_errors(value_errors=True)
def export_cmd(model: o.TrainedModel = None, output: o.BundleDir = None, format: o.Formats = "onnx",
               quantize: o.Quantize = None, data: o.ExportData = None, tta: o.BundleTta = None,
               run_dir: o.OldTrainedModel = None) -> None:
    """Export a trained model to a bundle: safetensors, ONNX (+ TorchScript, + int8), config.json; parity checked."""
    model = _export_model(model, run_dir)
    formats = [f.strip() for f in format.split(",") if f.strip()]
    for name in formats:
        o.check_choice("--format", name, o.EXPORT_FORMATS)
    if quantize is not None:
        o.check_choice("--quantize", quantize, o.QUANTIZE_MODES)
    _check_model(model, data, tta)
    from finetune.bundling.bundle import export
    from finetune.models.source import BundleConfig

    bundle = export(model, output, formats, quantize, data, tta)
    views.print_bundle(console, bundle, BundleConfig.load(bundle).to_dict())


def _export_model(model: Optional[Path], run_dir: Optional[Path]) -> Path:
    """The model to export: --model, or the run directory given the earlier way, as an argument (with a warning)."""
    if model is not None and run_dir is not None:
        raise FinetuneError(f"export takes one model: --model {escaped(model)} or {escaped(run_dir)}, not both")
    if run_dir is not None:
        err_console.print(f"[yellow]Warning:[/yellow] `finetune export RUN_DIR` is deprecated; use `finetune export "
                          f"--model {escape(escaped(run_dir))}`", soft_wrap=True)
        return run_dir
    if model is None:
        raise FinetuneError("export needs --model: a run directory (its checkpoints/best.ckpt is exported) or a "
                            ".ckpt file")
    return model


@app.command("eval")
@user_errors(value_errors=True)
def eval_cmd(model: o.EvalModel, data: o.EvalData, split: o.SplitOption = "val", tta: o.EvalTta = "none",
             calibrate: o.Calibrate = False, output: o.EvalOutput = None, saliency: o.EvalSaliency = 0,
             labels: o.LabelTable = None, path_column: o.PathColumn = None, label_column: o.LabelColumn = None,
             split_column: o.SplitColumn = None) -> None:
    """Evaluate a model with and without TTA: top-1/5, per-class figures, confusion matrix, reliability diagram, ECE,
    and the misclassified images (misclassified.csv, a contact sheet)."""
    o.check_choice("--split", split, o.SPLITS)
    _check_model(model, data, tta, labels)
    from finetune.data.tables import TableSpec
    from finetune.evaluation.evaluate import evaluate

    table = TableSpec(labels, path_column, label_column, split_column)
    result = evaluate(model, data, split, tta, calibrate, output, saliency=saliency, labels=table)
    views.print_eval_report(console, result.metrics)
    views.print_saliency(console, err_console, result.saliency, result.saliency_skipped)
    names = sorted((f.name for f in result.files), key=lambda name: name != "metrics.json")  # metrics.json first
    console.print(f"Written: {escaped(result.output)}/{', '.join(map(escaped, names))}", soft_wrap=True)


@app.command()
@user_errors(value_errors=True)
def predict(model: o.Models, images: o.PredictImages = None, top_k: o.TopK = 5, tta: o.PredictTta = None,
            output: o.PredictionsFile = None, saliency: o.PredictSaliency = None, labels: o.PredictTable = None,
            data: o.PredictData = None, path_column: o.PathColumn = None, label_column: o.LabelColumn = None) -> None:
    """Classify images with one model or an ensemble; unreadable files are reported and skipped.

    Exits 2 when there is no image file to predict, 1 when none could be read or when a file named on the
    command line does not exist (the others are still predicted and written).
    """
    from finetune.evaluation.saliency import predicted_saliency
    from finetune.inference import Ensemble, Predictor, predict_files
    from finetune.prediction_output import write_predictions

    if saliency is not None and len(model) > 1:
        raise FinetuneError(f"--saliency maps one model's attention; got {len(model)} --model (an ensemble)")
    listed = _listed_files(images, labels, data, path_column, label_column)
    images = [path for path, _ in listed] if listed is not None else images
    members = [Predictor.from_path(m) for m in model]
    if listed is not None:
        _check_table_labels(listed, members[0].class_names, labels)
    results = predict_files(members[0] if len(members) == 1 else Ensemble(members), images, top_k, tta)
    if not results:
        raise FinetuneError(f"no image files in {', '.join(escaped(p) for p in images)}: nothing to predict")
    missing = [p for p in images if not os.path.lexists(p)]  # a broken link exists: its own reason is said
    gone = {str(p) for p in missing}
    views.print_predictions(console, err_console, [r for r in results if r.path not in gone])  # said once, below
    if output is not None:
        write_predictions(results, output)
        console.print(f"Written: {escaped(output)}")
    if saliency is not None:
        views.print_saliency(console, err_console, *predicted_saliency(model[0], results, saliency))
    if listed is not None:
        _print_table_accuracy(results, [label for _, label in listed])
    if missing:
        err_console.print(f"[red]Error:[/red] {escape(', '.join(escaped(p) for p in missing))}: no such file",
                          soft_wrap=True)
    if missing or all(r.error for r in results):
        raise typer.Exit(1)


Listed = Optional[list[tuple[Path, Optional[str]]]]  # the files of a table to predict, with their labels


def _listed_files(images: Optional[list[Path]], labels: Optional[Path], data: Optional[Path],
                  path_column: Optional[str], label_column: Optional[str]) -> Listed:
    """The files (and labels) of predict's --labels table, or None where the images are given as arguments."""
    if labels is None:
        if data is not None or path_column is not None or label_column is not None:
            raise FinetuneError("--data, --path-column and --label-column name a table of files to predict: give "
                                "--labels FILE with them")
        if not images:
            raise FinetuneError("nothing to predict: give image files or folders, or --labels FILE --data DIR")
        return None
    if images:
        raise FinetuneError(f"predict takes image arguments or --labels {escaped(labels)}, not both")
    if data is None:
        raise FinetuneError(f"--labels {escaped(labels)} needs --data DIR: the folder its paths are relative to")
    from finetune.data.tables import TableSpec, table_files

    return table_files(data, TableSpec(labels, path_column, label_column))


def _check_table_labels(listed: list[tuple[Path, Optional[str]]], classes: list[str], labels: Path) -> None:
    """Every label of the table is a class of the model."""
    unknown = sorted({label for _, label in listed if label is not None} - set(classes))
    if unknown:
        raise FinetuneError(f"--labels {escaped(labels)} has label(s) {', '.join(unknown[:5])} that are not classes "
                            f"of the model; its classes: {', '.join(classes)}")


def _print_table_accuracy(results: list, labels: list[Optional[str]]) -> None:
    """Top-1 accuracy on the table's labelled rows whose image could be read."""
    scored = [(r.classes[0], label) for r, label in zip(results, labels, strict=True)
              if label is not None and not r.error]
    if scored:
        right = sum(predicted == label for predicted, label in scored)
        skipped = sum(1 for r, label in zip(results, labels) if label is not None and r.error)
        console.print(f"Top-1 accuracy: {right / len(scored):.4f} ({right} of {len(scored)} labelled images"
                      + (f"; {skipped} unreadable not counted)" if skipped else ")"))


@app.command("augment-preview")
@user_errors
def augment_preview(data: o.PreviewData, augment: o.PreviewAugment = "auto",
                    output: o.PreviewFile = Path("augment-preview.png"), backbone: o.PreviewBackbone = "resnet18",
                    image_size: o.ImageSize = None, count: o.Count = 16, seed: o.PreviewSeed = 0,
                    labels: o.LabelTable = None, path_column: o.PathColumn = None, label_column: o.LabelColumn = None,
                    split_column: o.SplitColumn = None) -> None:
    """Write a PNG grid of augmented training images: what the model sees with --augment."""
    RunConfig(backbone=backbone, data=data, augment=augment)  # checks the preset as `finetune run --augment` does
    _check_data(data, labels)
    from finetune.data.tables import TableSpec
    from finetune.run.preview import write_preview

    table = TableSpec(labels, path_column, label_column, split_column)
    path = write_preview(data, augment, output, backbone, image_size, count, seed, labels=table)
    console.print(f"Wrote {escaped(path)} ({count} images, --augment {augment})")


register_tune(app, run)  # `tune` takes every option of `run` but those a study sets itself
