"""The tables the commands print: layers, runs, comparisons, recipes, backbones, eval reports, predictions."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from finetune.pathtext import escaped, printable

if TYPE_CHECKING:
    from finetune.config import Recipe
    from finetune.evaluation.saliency import SaliencyMap
    from finetune.inference import Prediction
    from finetune.models.catalog import BackboneInfo
    from finetune.run.listing import RunSummary


def _table(title: str | None, columns: Sequence[tuple[str, str]]) -> Table:
    """A left-titled table with (name, justify) columns."""
    table = Table(title=title, title_justify="left")
    for name, justify in columns:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    return table


def print_layers(console: Console, backbone: str, rows: Sequence[tuple[str, int]]) -> None:
    """The layer names of a backbone, input to output, with parameter counts."""
    table = _table(f"Layers of {backbone} (input to output)", (("layer", "left"), ("params", "right")))
    for name, count in rows:
        table.add_row(name, f"{count:,}")
    table.caption = ("--freeze-until LAYER freezes every layer above LAYER in this list. "
                     "Aliases: stem (first), head (last).")
    console.print(table)


def _shown_path(path: Path, base: Path) -> str:
    """`path` below `base`, else whole; escaped (finetune/pathtext.py): a name that is not UTF-8 stays exact."""
    try:
        return escaped(path.relative_to(base)) or "."
    except ValueError:
        return escaped(path)


def print_runs(console: Console, folder: Path, found: Sequence[RunSummary]) -> None:
    """One row per run: backbone, data, best val figure, epochs, wall time, settings given."""
    table = _table(f"Runs in {escape(escaped(folder))} ({len(found)})", (
        ("run", "left"), ("backbone", "left"), ("data", "left"), ("best val", "right"),
        ("epochs", "right"), ("wall", "right"), ("settings given", "left")))
    names = [escape(_shown_path(r.path, folder)) for r in found]
    # The run's name is what `compare` takes: shown whole (the other columns wrap first), never cut with "...".
    table.columns[0].no_wrap, table.columns[0].min_width = True, max(map(len, names), default=3)
    for r, name in zip(found, names):
        best = f"{r.best[0].removeprefix('val/')} {r.best[1]:.4f} @{r.best[2]}" if r.best else "-"
        recipe = r.settings.get("recipe")
        given = (f"recipe={Path(recipe).stem} " if recipe else "") + " ".join(f"{k}={v}" for k, v in r.changed.items())
        table.add_row(name, str(r.settings.get("backbone")),
                      escape(printable(Path(str(r.settings.get("data"))).name)), best, f"{r.epochs}/{r.planned_epochs}",
                      f"{r.seconds:.0f}s", given)
    console.print(table)


def print_comparison(console: Console, found: Sequence[RunSummary], labels: Sequence[str],
                     differences: dict[str, list[Any]]) -> None:
    """The settings that differ between runs, side by side, with their results."""
    columns = [(escape(escaped(label)), "left") for label in labels]  # labels: run directory names
    table = _table("Settings that differ", (("setting", "left"), *columns))
    for key, values in differences.items():
        table.add_row(key, *(str(v) for v in values))
    table.add_row("best val top-1", *(f"{r.best_acc1:.4f} (epoch {r.best[2]})" if r.best else "-" for r in found))
    table.add_row("epochs trained", *(str(r.epochs) for r in found))
    table.add_row("wall", *(f"{r.seconds:.0f}s" for r in found))
    console.print(table)


def print_recipes(console: Console, recipes: Sequence[Recipe]) -> None:
    table = _table("Recipes (use with: finetune run --recipe NAME)", (("name", "left"), ("when to use it", "left")))
    for recipe in recipes:
        table.add_row(recipe.name, recipe.description)
    console.print(table)


def print_recipe(console: Console, recipe: Recipe) -> None:
    """One recipe file as it is, its notes and its settings, under a comment naming it: the output is the YAML
    file itself, unwrapped at any width, so `finetune recipes show NAME > mine.yaml` is a recipe to edit."""
    console.print(f"# {recipe.name}: {recipe.path}", markup=False, highlight=False, soft_wrap=True)
    console.print(recipe.path.read_text().rstrip("\n"), markup=False, highlight=False, soft_wrap=True)


def print_backbones(console: Console, filter: str | None, rows: Sequence[BackboneInfo]) -> None:
    table = _table(f"Backbones matching {filter!r}" if filter else "Backbones",
                   (("name", "left"), ("params", "right"), ("local weights", "left")))
    for info in rows:
        params = f"{info.params / 1e6:.1f}M" if info.params is not None else "?"
        table.add_row(info.name, params, info.local_weights or "-")
    table.caption = f"{len(rows)} backbones. Local weights load offline with --weights imagenet."
    console.print(table)


def print_eval_report(console: Console, m: dict[str, Any]) -> None:
    """Accuracy per TTA mode, the calibration, per-class figures and the most confused pairs."""
    table = _table(f"{m['split']} split, {m['images']} images", (
        ("TTA", "left"), *((col, "right") for col in ("top-1", "top-5", "balanced acc", "macro-F1", "ECE"))))
    for mode, a in m["accuracy"].items():
        table.add_row(mode, *(f"{a[k]:.4f}" for k in ("top1", "top5", "balanced_acc", "macro_f1", "ece")))
    console.print(table)
    if "calibration" in m:
        c = m["calibration"]
        console.print(f"Temperature {c['temperature']:.3f} (ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f} "
                      f"on {c['ece_measured_on']}), stored in config.json")
    per_class = _table("Per class", (
        ("class", "left"), *((col, "right") for col in ("precision", "recall", "accuracy", "support"))))
    for r in m["per_class"]:
        per_class.add_row(r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['accuracy']:.3f}",
                          str(r["support"]))
    console.print(per_class)
    for p in m["worst_confused"]:
        console.print(f"  {p['true']} -> {p['predicted']}: {p['count']} ({p['share_of_true']:.0%} of {p['true']})")
    if "misclassified" in m:
        print_mistakes(console, m["misclassified"], m["images"])


def print_mistakes(console: Console, record: dict[str, Any], images: int) -> None:
    """The count of misclassified images and the files of the most confident mistakes."""
    count, shown = record["count"], record["most_confident"]
    if not count:
        console.print(f"Misclassified: none of {images} images")
        return
    more = f"; {count - len(shown)} more in {record['file']}" if count > len(shown) else f"; all in {record['file']}"
    console.print(f"Misclassified: {count} of {images} images, the most confident first{more}:")
    for r in shown:
        true, predicted = escape(escaped(r["true"])), escape(escaped(r["predicted"]))
        console.print(f"  {escape(escaped(r['path']))}: {true} -> {predicted} {r['probability']:.3f} "
                      f"(true class {r['true_probability']:.3f})", soft_wrap=True)


def print_saliency(console: Console, err_console: Console, maps: Sequence[SaliencyMap],
                   skipped: str | None = None) -> None:
    """The Grad-CAM overlays written (image -> PNG, the class mapped), or why there are none."""
    if skipped:
        err_console.print(f"[yellow]Saliency skipped: {escape(printable(skipped))}[/yellow]", soft_wrap=True)
    if not maps:
        return
    console.print(f"Saliency (Grad-CAM, {maps[0].layer}): {len(maps)} overlay(s) in "
                  f"{escape(escaped(maps[0].overlay.parent))}")
    for m in maps:
        console.print(f"  {escape(escaped(m.path))} -> {escape(escaped(m.overlay.name))}  "
                      f"{escape(escaped(m.class_name))} {m.probability:.3f}", soft_wrap=True)


def print_predictions(console: Console, err_console: Console, results: Sequence[Prediction]) -> None:
    """The top classes of each image; unreadable images are listed on `err_console`."""
    table = _table(None, (("image", "left"), ("prediction", "left"), ("probability", "left"), ("next", "left")))
    for r in results:
        if r.error:
            err_console.print(f"[yellow]Skipped {escape(escaped(r.path))}: {escape(printable(r.error))}[/yellow]",
                              soft_wrap=True)
            continue
        rest = ", ".join(f"{c} {p:.3f}" for c, p in zip(r.classes[1:], r.probabilities[1:]))
        table.add_row(escape(escaped(r.path)), r.classes[0], f"{r.probabilities[0]:.3f}", rest)
    if table.row_count:
        console.print(table)


def print_bundle(console: Console, bundle: Path, config: dict[str, Any]) -> None:
    """An exported bundle: its files, the parity of its graphs with the eager model, the int8 agreement."""
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in config["parity"]["max_abs_diff"].items())
    console.print(f"Bundle: {escape(escaped(bundle))}  files: {', '.join(config['files'])}", soft_wrap=True)
    console.print(f"Parity (max |logit diff| vs eager, {config['parity']['images']} val images): {diffs}")
    if "int8" in config:
        console.print(f"int8 top-1 agreement with fp32: {config['int8']['top1_agreement']:.4f} on "
                      f"{config['int8']['agreement_images']} val images")
        if config["int8"].get("warning"):
            console.print(f"[yellow]Warning: {escape(config['int8']['warning'])}[/yellow]", soft_wrap=True)
