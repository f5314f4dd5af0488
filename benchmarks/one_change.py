"""How far is the default `finetune run` from its neighbours? One setting changed at a time.

The quality benchmark's quick regime (tf_efficientnet_lite0 with its real ImageNet weights, 32 px,
10 train images per class). For each task and seed: the default run, then the same run with one
setting changed (a learning rate 3x higher or lower, every layer or only the head training, another
augmentation, label smoothing, mixup, weight decay, a lower backbone LR). Each run selects on val
and is scored on test. `finetune tune` draws most stage-1 trials this way (finetune/search/sampling.py).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/one_change.py --seeds 2   # -> results/one-change.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # quality.py, run as a script from anywhere
import quality  # noqa: E402

from finetune.data.real import TASKS, available, make_real_task  # noqa: E402

REGIME = quality.REGIMES["32px-10shot-imagenet"]
MOVES = {"default": {}, "lr x3": {"lr": 3e-3}, "lr /3": {"lr": 3.3e-4}, "freeze none": {"freeze_until": None},
         "freeze classifier": {"freeze_until": "classifier"}, "augment light": {"augment": "light"},
         "augment none": {"augment": "none"}, "smooth 0.1": {"label_smoothing": 0.1}, "mixup 0.2": {"mixup": 0.2},
         "wd 0.1": {"weight_decay": 0.1}, "wd 1e-4": {"weight_decay": 1e-4}, "bb x0.3": {"backbone_lr_mult": 0.3}}


def render(rows: list[dict], command: str) -> str:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cell = {(t, m): [r for r in rows if r["task"] == t and r["move"] == m] for t in tasks for m in MOVES}
    lines = ["# One setting changed from the default `finetune run`", "",
             "Test top-1 minus the default's, mean over the seeds measured (the seeds in brackets); "
             "lite0 with ImageNet weights, 32 px, 10 per class.", "", f"Command: `{command}`", "",
             "| change | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for move in MOVES:
        out = []
        for task in tasks:
            base = {r["seed"]: r["test"] for r in cell[(task, "default")]}
            deltas = [r["test"] - base[r["seed"]] for r in cell[(task, move)] if r["seed"] in base]
            if move == "default":
                out.append(f"{statistics.fmean(base.values()):.3f} ({len(base)})" if base else "")
            else:
                out.append(f"{statistics.fmean(deltas):+.3f} ({len(deltas)})" if deltas else "")
        lines.append(f"| {move} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-one-change"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "one-change.md")
    args = parser.parse_args()
    quality.setup_process(args.threads)
    results = args.work / "results.jsonl"  # every finished cell, so that a rerun skips it
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    done = {(r["task"], r["move"], r["seed"]) for r in rows}
    for seed in range(args.seeds):
        for task in [t for t in args.tasks if available(t)]:
            data = args.work / "data" / f"{task}-{seed}"
            if not data.is_dir():
                make_real_task(task, data, REGIME.train_per_class(task), seed=seed)
            for move, overrides in MOVES.items():
                if (task, move, seed) in done:
                    continue
                start = time.perf_counter()
                val, test = quality.finetune_run(data, quality.IMAGENET_BACKBONE, "imagenet", REGIME.size, seed,
                                                 args.work / "runs" / f"{task}-{seed}-{move.replace(' ', '_')}",
                                                 overrides)
                rows.append({"task": task, "move": move, "seed": seed, "val": val, "test": test,
                             "seconds": time.perf_counter() - start})
                print(json.dumps(rows[-1]), flush=True)
                args.work.mkdir(parents=True, exist_ok=True)
                with open(results, "a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
    text = render(rows, f"OMP_NUM_THREADS=1 benchmarks/one_change.py --seeds {args.seeds}")
    print(text)
    args.out.write_text(text)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
