"""What a study leaves in its folder: trials.csv, the plots, best.yaml, and the summary table."""
from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from finetune import atomic
from finetune.config import RunConfig
from finetune.figures import save_figure, subplots
from finetune.reporter import Reporter
from finetune.search.space import Param
from finetune.search.storage import counts

# Study settings, not training settings: `finetune run --recipe best.yaml --data D` supplies its own.
NOT_IN_RECIPE = ("data", "output", "overwrite", "progress", "recipe", "export")
COLOURS = {"complete": "tab:blue", "pruned": "tab:orange", "diverged": "tab:red"}


def trial_rows(stages: Sequence[tuple[int, optuna.Study]]) -> list[dict[str, Any]]:
    """One row per trial that took a slot, stage by stage: parameters, outcome, val top-1, epochs, time."""
    rows = []
    for stage, study in stages:
        for t in study.get_trials(deepcopy=False):
            if not counts(t):
                continue
            value = t.value if t.state == TrialState.COMPLETE else t.user_attrs.get("best_reported")
            # A worker records the outcome a moment before it tells the storage the trial ended: until
            # then another worker reading the study must see it running, not complete with no value.
            outcome = "running" if t.state == TrialState.RUNNING else t.user_attrs.get("outcome", "running")
            rows.append({"stage": stage, "trial": t.number, "state": t.state.name,
                         "outcome": outcome, "val_acc1": value,
                         "epochs": t.user_attrs.get("epochs"), "epochs_run": t.user_attrs.get("epochs_run"),
                         "wall_s": t.user_attrs.get("wall_s"), **t.params, "reason": t.user_attrs.get("reason", "")})
    return rows


def write_trials_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row if k != "reason")) + ["reason"]
    with atomic.open_replacing(path, newline="") as f:  # workers of one study may write it at once
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


# ----- plots -----------------------------------------------------------------------------------
def plot_history(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Val top-1 of each trial in the order run, coloured by outcome, with the best so far per stage."""
    fig, ax = subplots(figsize=(7, 4))
    for i, row in enumerate(rows):
        if row["val_acc1"] is not None:
            ax.scatter(i, row["val_acc1"], color=COLOURS.get(row["outcome"], "grey"), s=18)
    for stage in sorted({r["stage"] for r in rows}):
        xs = [i for i, r in enumerate(rows) if r["stage"] == stage and r["outcome"] == "complete"]
        best = [max(rows[j]["val_acc1"] for j in xs[:k + 1]) for k in range(len(xs))]
        ax.step(xs, best, where="post", label=f"stage {stage}: best so far")
    for outcome, colour in COLOURS.items():
        ax.scatter([], [], color=colour, s=18, label=outcome)
    ax.set(xlabel="trial (in order run)", ylabel="val top-1", title="Optimization history")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_params(rows: Sequence[Mapping[str, Any]], space: Mapping[str, Param], path: Path) -> Path:
    """Val top-1 against each searched setting; log x for log-uniform settings; circles for stage 1,
    triangles for stage 2."""
    names = list(space)
    cols = min(3, len(names))
    rows_of_axes = math.ceil(len(names) / cols)
    fig, axes = subplots(rows_of_axes, cols, figsize=(4 * cols, 3 * rows_of_axes), squeeze=False)
    for ax, name in zip(axes.flat, names):
        points = [(r[name], r["val_acc1"], r["outcome"], r["stage"]) for r in rows
                  if name in r and r["val_acc1"] is not None]
        if space[name].kind == "choice":
            labels = [str(c) for c in space[name].choices]
            xs = [labels.index(str(p[0])) if str(p[0]) in labels else -1 for p in points]
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
            ax.set_xlim(-0.5, len(labels) - 0.5)  # every choice shown, tried or not
        else:
            xs = [p[0] for p in points]
            ax.set_xscale("log" if space[name].kind == "log-uniform" else "linear")
        for stage, marker in ((1, "o"), (2, "^")):  # stage 2 trains longer: its points are not stage 1's
            mine = [i for i, p in enumerate(points) if p[3] == stage]
            ax.scatter([xs[i] for i in mine], [points[i][1] for i in mine], marker=marker, s=16,
                       c=[COLOURS.get(points[i][2], "grey") for i in mine])
        ax.set(xlabel=name, ylabel="val top-1")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    return save_figure(fig, path)


def plot_importances(studies: Mapping[int, optuna.Study], path: Path) -> Path | None:
    """Parameter importances (Optuna's evaluator) in the stage with the most completed trials (the
    later on a tie): a stage's trials share one range and one length. None when too few completed."""
    counts_ = {n: len(s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) for n, s in studies.items()}
    stage = max(counts_, key=lambda n: (counts_[n], n))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "too few trials": the plot says it by showing equal bars
            importances = optuna.importance.get_param_importances(studies[stage])
    except (ValueError, RuntimeError):  # fewer than two completed trials, or a one-point space
        return None
    if not importances:
        return None
    fig, ax = subplots(figsize=(6, 0.4 * len(importances) + 1.5))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set(xlabel="importance (share of the val top-1 variation)",
           title=f"Parameter importances (stage {stage}, {counts_[stage]} completed trials)")
    return save_figure(fig, path)


# ----- best.yaml -------------------------------------------------------------------------------
def best_recipe(config: RunConfig) -> dict[str, Any]:
    """The settings of `config` that differ from RunConfig's defaults, as recipe values."""
    values = config.model_dump(mode="json")
    fields = RunConfig.model_fields
    return {k: v for k, v in values.items()
            if k not in NOT_IN_RECIPE and (fields[k].is_required() or v != fields[k].default)}


def write_best_yaml(config: RunConfig, header: str, path: Path) -> Path:
    """best.yaml: a recipe for `finetune run --recipe best.yaml --data D` that reproduces `config`."""
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return atomic.write_text(path, comment + yaml.safe_dump(best_recipe(config), sort_keys=False))


# ----- summary ---------------------------------------------------------------------------------
def summary_table(rows: Sequence[Mapping[str, Any]], names: Sequence[str], top: int = 5) -> Table:
    """The best `top` completed trials of the last stage that completed any, then of the earlier ones."""
    done = [r for r in rows if r["outcome"] == "complete"]
    done.sort(key=lambda r: (-r["stage"], -r["val_acc1"]))
    table = Table(title="Best trials (val top-1; later stages train longer)", title_justify="left")
    for col in ("stage", "trial", "val top-1", "epochs"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("settings")
    for r in done[:top]:
        settings = "  ".join(f"{n.replace('_', '-')} {_cell(r.get(n))}" for n in names if n in r)
        table.add_row(str(r["stage"]), str(r["trial"]), f"{r['val_acc1']:.4f}", str(r["epochs"]), settings)
    by = {o: sum(r["outcome"] == o for r in rows) for o in ("complete", "pruned", "diverged", "failed")}
    table.caption = ", ".join(f"{n} {o}" for o, n in by.items())
    return table


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "none" if value is None else str(value)


def _at_field_limit(name: str, side: str, param: Param) -> bool:
    """Whether the range's `side` end is the setting's own limit (RunConfig's ge/le), so it cannot be widened."""
    import annotated_types

    field = RunConfig.model_fields.get(name)
    bound = param.low if side == "low" else param.high
    for limit in (field.metadata if field is not None else []):
        if side == "low" and isinstance(limit, annotated_types.Ge) and limit.ge == bound:
            return True
        if side == "high" and isinstance(limit, annotated_types.Le) and limit.le == bound:
            return True
    return False


def edge_warnings(best: FrozenTrial, space: Mapping[str, Param], original: Mapping[str, Param]) -> list[str]:
    """Settings of the best trial at the edge of a range: the best may lie beyond it."""
    found = []
    for name, value in best.params.items():
        for where, params in (("its range", original), ("stage 2's narrowed range", space)):
            param = params.get(name)
            side = param.edge(value) if param is not None else None
            if side and _at_field_limit(name, side, param):
                break  # 0 label smoothing cannot go lower: the range is not what holds the best back
            if side:
                fix = ("widen it in --space" if where == "its range"
                       else "rerun with a wider --space or more stage-1 trials")
                found.append(f"{name} {_cell(value)} sits at the {side} edge of {where} "
                                f"[{_cell(param.low)}, {_cell(param.high)}]: {fix}")
                break
    return found


def print_summary(reporter: Reporter, rows: Sequence[Mapping[str, Any]], names: Sequence[str],
                  edges: Sequence[str]) -> None:
    reporter.table(summary_table(rows, names))
    for warning in edges:
        reporter.warning(warning)
