"""Does the LR finder's suggestion train as well as the best LR of a small grid, and how often does it
suggest an LR from noise alone?

Real images: for each task and seed, the range test of `finetune lr-find` (tf_efficientnet_lite0 with
its ImageNet weights, 64 px, the test's defaults: 100 steps from 1e-7 to 10), then short `finetune run`s
at its suggestion (the default LR where it makes none), at the suggestion of plain steepest descent on
the same curve (the smoothed loss's steepest point after the first tenth, up to its lowest point:
Lightning's `suggestion` with fastai's skip), and at each LR of a log grid. Every run selects its epoch
on val and is scored on test; the grid's LR is picked on val. Tasks: textures, faces, silhouettes
(finetune/data/real.py) and photo crops (benchmarks/photo_crops.py), few images per class.

Synthetic curves: how often each rule suggests an LR from flat curves of pure noise (normal, and
heavy-tailed Student t with 3 degrees of freedom), and where it suggests on curves with a real fall
hidden in noise of several sizes.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/lr_find_rule.py --seeds 3   # -> results/lr-find-rule.md
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # quality.py and photo_crops.py, run as a script
import quality  # noqa: E402
from photo_crops import make_photo_crops  # noqa: E402

from finetune.config import RunConfig  # noqa: E402
from finetune.data.real import TASKS, available, make_real_task  # noqa: E402
from finetune.run.lr_find import run_lr_find, suggest  # noqa: E402
from finetune.training.callbacks.lr_range_test import smooth  # noqa: E402

BACKBONE = quality.IMAGENET_BACKBONE
SIZE = 64
EPOCHS = 5  # short runs: 5 epochs of 20-100 images
SHOTS = 10  # train images per class of the real tasks
CROPS = {"train": 20, "val": 10, "test": 20}  # photo crops per class and split
GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
DEFAULT_LR = RunConfig.model_fields["lr"].default


def plain_steepest(lrs: list[float], smoothed: list[float]) -> float:
    """The rule without a noise judgement: the smoothed loss's steepest point per log-LR after the first
    tenth, up to its lowest point."""
    finite = np.isfinite(np.asarray(smoothed))
    lrs_a, losses = np.asarray(lrs)[finite], np.asarray(smoothed)[finite]
    skip = min(len(losses) - 3, max(0, len(losses) // 10))
    end = max(skip + 3, int(np.argmin(losses)) + 1)
    return float(lrs_a[skip + int(np.argmin(np.gradient(losses[skip:end], np.log(lrs_a[skip:end]))))])


def make_task(task: str, root: Path, seed: int) -> Path:
    if not root.is_dir():
        if task == "photo-crops":
            make_photo_crops(root, 0, seed, splits=CROPS)
        else:
            make_real_task(task, root, SHOTS, seed=seed)
    return root


def finder(data: Path, seed: int, out: Path) -> dict:
    """The range test `finetune lr-find` runs for these settings: its suggestion (or refusal) and the
    plain rule's on the same curve."""
    config = RunConfig(backbone=BACKBONE, data=data, weights="imagenet", image_size=SIZE, lr="auto", seed=seed,
                       output=out, progress=False)
    with contextlib.redirect_stdout(io.StringIO()):
        found = run_lr_find(config)
    return {"suggestion": found.suggestion, "reason": found.reason, "used": found.lr,
            "plain": plain_steepest(found.lrs, found.losses)}


def fit_at(data: Path, seed: int, lr: float, out: Path) -> tuple[float, float]:
    return quality.finetune_run(data, BACKBONE, "imagenet", SIZE, seed, out, {"lr": lr, "epochs": EPOCHS})


def real_cells(tasks: list[str], seeds: int, work: Path) -> list[dict]:
    """Every (task, seed): the finder, then a run at each LR; finished cells are kept in work/results.jsonl."""
    path = work / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    done = {(r["task"], r["seed"]) for r in rows}
    for seed in range(seeds):
        for task in tasks:
            if (task, seed) in done:
                continue
            start = time.perf_counter()
            data = make_task(task, work / "data" / f"{task}-{seed}", seed)
            row = {"task": task, "seed": seed, **finder(data, seed, work / "lr-find" / f"{task}-{seed}"), "runs": {}}
            for lr in sorted({row["used"], row["plain"], *GRID}):
                val, test = fit_at(data, seed, lr, work / "runs" / f"{task}-{seed}-{lr:.3g}")
                row["runs"][f"{lr:.6g}"] = {"lr": lr, "val": val, "test": test}
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
            print(json.dumps(row), flush=True)
            work.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


def scores(row: dict) -> dict[str, tuple[float, float]]:
    """(LR, test top-1) of: the finder's LR, the plain rule's, the grid's best on val, the default."""
    runs = row["runs"]
    at = {lr: runs[f"{lr:.6g}"] for lr in {row["used"], row["plain"], *GRID}}
    best = max(GRID, key=lambda lr: (at[lr]["val"], -abs(math.log(lr / DEFAULT_LR))))  # ties: nearer the default
    return {"finder": (row["used"], at[row["used"]]["test"]), "plain": (row["plain"], at[row["plain"]]["test"]),
            "grid": (best, at[best]["test"]), "default": (DEFAULT_LR, at[DEFAULT_LR]["test"])}


def render_real(rows: list[dict]) -> list[str]:
    lines = ["| task | seed | finder: LR (suggested?) | test | plain steepest: LR | test | grid best on val: LR | "
             "test | default 1e-3: test |", "|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["task"], r["seed"])):
        s = scores(row)
        mark = "yes" if row["suggestion"] is not None else "no: default kept"
        lines.append(f"| {row['task']} | {row['seed']} | {s['finder'][0]:.2e} ({mark}) | {s['finder'][1]:.3f} | "
                     f"{s['plain'][0]:.2e} | {s['plain'][1]:.3f} | {s['grid'][0]:.0e} | {s['grid'][1]:.3f} | "
                     f"{s['default'][1]:.3f} |")
    lines += ["", "Mean test top-1 over the seeds (finder minus grid-best-on-val in brackets):", "",
              "| task | finder | plain steepest | grid best on val | default 1e-3 |", "|---|---|---|---|---|"]
    for task in sorted({r["task"] for r in rows}):
        per = [scores(r) for r in rows if r["task"] == task]
        mean = {k: statistics.fmean(p[k][1] for p in per) for k in ("finder", "plain", "grid", "default")}
        lines.append(f"| {task} ({len(per)} seeds) | {mean['finder']:.3f} ({mean['finder'] - mean['grid']:+.3f}) | "
                     f"{mean['plain']:.3f} ({mean['plain'] - mean['grid']:+.3f}) | {mean['grid']:.3f} | "
                     f"{mean['default']:.3f} ({mean['default'] - mean['grid']:+.3f}) |")
    return lines


# ----- synthetic curves --------------------------------------------------------------------------
def lrs_for(n: int) -> list[float]:
    return [1e-7 * 1e8 ** (i / (n - 1)) for i in range(n)]


def flat_rates(rng: np.random.Generator, trials: int) -> list[str]:
    """How often each rule suggests an LR from a curve that is noise around a level, and nothing else."""
    lines = ["| noise | steps | curves | finder suggests | plain steepest suggests |", "|---|---|---|---|---|"]
    for name, draw in (("normal", rng.standard_normal), ("Student t, 3 d.o.f.", lambda n: rng.standard_t(3, n))):
        for n in (30, 100, 300):
            hits = sum(suggest(lrs_for(n), list(3.0 + 0.5 * draw(n))).lr is not None for _ in range(trials))
            lines.append(f"| {name} | {n} | {trials} | {hits / trials:.2%} | 100% |")
    return lines


def fall_rates(rng: np.random.Generator, trials: int) -> list[str]:
    """Curves with a real fall: level 10 for 45 steps, down by `depth` over the next 15 (steps 45-59),
    flat to step 79, then the blow-up over the last 20 of 100 steps, with normal noise of sd 1 (so the
    depth is in noise units). Where does each rule suggest: in the fall, or anywhere before the blow-up?"""
    lines = ["| fall / noise sd | finder: suggests | in the fall (45-59) | before the blow-up (45-79) | "
             "plain steepest: in the fall | before the blow-up |", "|---|---|---|---|---|---|"]
    lrs = lrs_for(100)
    for depth in (0.5, 1.0, 2.0, 4.0, 8.0):
        base = np.r_[np.full(45, 10.0), 10.0 - depth * np.arange(1, 16) / 15, np.full(20, 10.0 - depth),
                     (10.0 - depth) * 1.25 ** np.arange(1, 21)]
        found, plain = [], []
        for _ in range(trials):
            raw = list(base + rng.standard_normal(100))
            found.append(suggest(lrs, raw).index)
            plain.append(lrs.index(plain_steepest(lrs, smooth(raw))))
        made = [i for i in found if i is not None]

        def share(indices: list[int], end: int) -> str:
            return f"{sum(45 <= i <= end for i in indices) / trials:.0%}"

        lines.append(f"| {depth:g} | {len(made) / trials:.0%} | {share(made, 59)} | {share(made, 79)} | "
                     f"{share(plain, 59)} | {share(plain, 79)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", nargs="*", default=[*TASKS, "photo-crops"])
    parser.add_argument("--trials", type=int, default=1000, help="synthetic curves per row")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-lr-find-rule"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lr-find-rule.md")
    args = parser.parse_args()
    quality.setup_process(args.threads)
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    synthetic = ["### Flat curves: suggestions from noise alone", "", *flat_rates(rng, args.trials), "",
                 "### A real fall in noise", "", *fall_rates(rng, args.trials // 2)]
    print("\n".join(synthetic), flush=True)
    tasks = [t for t in args.tasks if t == "photo-crops" or available(t)]
    rows = real_cells(tasks, args.seeds, args.work)
    command = f"OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/lr_find_rule.py --seeds {args.seeds}"
    text = "\n".join([
        "# LR finder: suggestion or refusal, against a small LR grid", "", f"Command: `{command}`", "",
        f"{BACKBONE} with ImageNet weights, {SIZE} px, {EPOCHS} epochs a run, {SHOTS} train images per class "
        f"(photo crops: {CROPS['train']}); every run selects on val and is scored on test; the grid "
        f"{', '.join(f'{lr:g}' for lr in GRID)} is picked on val. One torch thread; "
        f"{(time.perf_counter() - start) / 60:.0f} minutes for this invocation.", "",
        "## Real images", "", *render_real(rows), "", "## Synthetic curves", "", *synthetic, ""])
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
