"""Class imbalance on real images: `finetune run` plain, with --class-weights auto, and with --sampler balanced.

The task is the silhouettes of `finetune/data/real.py` (10 animal classes) with a long-tailed train
split: class i keeps round(HEAD x (TAIL/HEAD)^(i/9)) of its images, 60 down to 3 (20:1). Val keeps
the task's balanced split (every method selects on it with its --monitor); test is balanced too,
so its top-1 is the balanced accuracy, the figure a long-tailed task is judged by.

    .venv/bin/python benchmarks/imbalance.py                     # -> benchmarks/results/imbalance.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from quality import IMAGENET_BACKBONE, Cell, finetune_run, setup_process  # noqa: E402 - the quality benchmark's runner

from finetune.data.real import make_real_task  # noqa: E402

HEAD, TAIL = 60, 3  # most and fewest train images per class
METHODS = {
    "finetune": {},
    "class-weights auto": {"class_weights": "auto"},
    "sampler balanced": {"sampler": "balanced"},
    "class-weights auto, monitor balanced-acc": {"class_weights": "auto", "monitor": "balanced-acc"},
}


def long_tailed(root: Path, seed: int) -> Path:
    """The silhouettes task with HEAD..TAIL train images per class (geometric), balanced val/test."""
    data = root / f"silhouettes-lt-{seed}"
    if (data / "train").is_dir():
        return data
    make_real_task("silhouettes", data, HEAD, seed=seed)
    classes = sorted(p.name for p in (data / "train").iterdir())
    for i, cls in enumerate(classes):
        keep = round(HEAD * (TAIL / HEAD) ** (i / (len(classes) - 1)))
        for path in sorted((data / "train" / cls).iterdir())[keep:]:
            path.unlink()
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-imbalance"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "imbalance.md")
    args = parser.parse_args()
    setup_process(args.threads)
    cells = {m: Cell() for m in args.methods}
    for seed in range(args.seeds):
        data = long_tailed(args.work / "data", seed)
        for method in args.methods:
            start = time.perf_counter()
            val, test = finetune_run(data, IMAGENET_BACKBONE, "imagenet", 32, seed,
                                     args.work / "runs" / f"{method.replace(' ', '_').replace(',', '')}-{seed}",
                                     METHODS[method])
            secs = time.perf_counter() - start
            cells[method].val.append(val), cells[method].test.append(test), cells[method].seconds.append(secs)
            print(f"{method:42s} seed {seed}: val {val:.3f} test {test:.3f} ({secs:.0f} s)", flush=True)
    lines = [f"# Class imbalance\n\nBalanced test top-1 (= balanced accuracy), mean over {args.seeds} seeds ± half "
             "the range (wall seconds of one run). Silhouettes, 10 classes, train 60 down to 3 images per class "
             f"(20:1), {IMAGENET_BACKBONE} with ImageNet weights at 32 px.\n\nCommand: `benchmarks/imbalance.py`\n",
             "| method | test top-1 (balanced) |", "|---|---|"]
    lines += [f"| {m} | {c.summary()} |" for m, c in cells.items()]
    base = statistics.fmean(cells["finetune"].test) if "finetune" in cells else None
    if base is not None:
        lines += [""] + [f"- {m}: {statistics.fmean(c.test) - base:+.3f} against the default"
                         for m, c in cells.items() if m != "finetune"]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
