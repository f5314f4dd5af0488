"""Does a 12-trial `finetune tune` beat the default `finetune run` on real images?

The quality benchmark's quick regime (benchmarks/quality.py: tf_efficientnet_lite0 with its real
ImageNet weights, 32 px inputs, 10 train images per class) on its three real tasks. For each task and
seed: the default `finetune run` (quality.py's `finetune_run`), and a two-stage study of 12 trials
(8 short random trials: the defaults, 5 that change one or two of them, 2 over the whole space; then
4 full-length trials: stage 1's best, the defaults, and TPE's proposals) whose best trial, selected on
val, is scored on the test split that nothing selects on. The best trial is a full-length run with the
run's seed, so it is what `finetune run --recipe best.yaml` (or `tune --final-run`) trains again.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tune_quality.py --threads 1   # -> results/tune-quick.md
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # quality.py, run as a script from anywhere
import quality  # noqa: E402

from finetune.config import RunConfig  # noqa: E402
from finetune.data.real import TASKS, available, make_real_task  # noqa: E402
from finetune.data.scan import scan_image_folder  # noqa: E402
from finetune.data.transforms import build_eval_transform  # noqa: E402
from finetune.search.study import tune  # noqa: E402
from finetune.training.module import FinetuneModule  # noqa: E402

REGIME = quality.REGIMES["32px-10shot-imagenet"]  # --regime picks another of quality.py's


def test_top1(checkpoint: Path, data: Path) -> float:
    """Top-1 of a checkpoint on the test split, scored as quality.py scores `finetune run`."""
    module = FinetuneModule.from_checkpoint(checkpoint)
    index = scan_image_folder(data)
    x, y = quality._load_split(data / "test", index.classes, build_eval_transform(module.input_config))
    return quality._accuracy(module, x, y)


def network(work: Path) -> tuple[str, str]:
    """(backbone, weights) of the regime: lite0 with its ImageNet weights, or resnet18 from the source task."""
    if REGIME.weights == "imagenet":
        return quality.IMAGENET_BACKBONE, "imagenet"
    return quality.SOURCE_BACKBONE, str(quality.source_weights(work))


def tuned(data: Path, seed: int, out: Path, trials: int) -> tuple[float, float, str]:
    """A `trials`-trial study with the default space; (val, test, settings) of its best trial."""
    backbone, weights = network(out.parent.parent)
    config = RunConfig(backbone=backbone, data=data, weights=weights, image_size=REGIME.input_size(backbone),
                       seed=seed, progress=False)
    with contextlib.redirect_stdout(io.StringIO()):
        result = tune(config, trials=trials, output=out)
    best = result.best_config
    settings = " ".join(f"{k}={getattr(best, k):.3g}" if isinstance(getattr(best, k), float)
                        else f"{k}={getattr(best, k)}"
                        for k in ("lr", "backbone_lr_mult", "weight_decay", "freeze_until", "augment",
                                  "label_smoothing", "mixup"))
    return result.best_value, test_top1(best.output / "checkpoints" / "best.ckpt", data), settings


def run_cell(method: str, task: str, seed: int, work: Path, trials: int) -> dict:
    data = work / "data" / f"{task}-{REGIME.train_per_class(task)}-{seed}"
    if not data.is_dir():
        make_real_task(task, data, REGIME.train_per_class(task), seed=seed)
    start = time.perf_counter()
    if method == "run":
        backbone, weights = network(work)
        val, test = quality.finetune_run(data, backbone, weights, REGIME.input_size(backbone), seed,
                                         work / "runs" / f"{task}-run-{seed}")
        settings = "defaults"
    else:
        val, test, settings = tuned(data, seed, work / "studies" / f"{task}-{seed}", trials)
    return {"val": val, "test": test, "seconds": time.perf_counter() - start, "settings": settings}


def render(cells: dict[tuple[str, str], list[dict]], trials: int, seeds: int, command: str) -> str:
    lines = [f"Test top-1 (val top-1 in brackets), mean over {seeds} seed(s); wall minutes of one run or study. "
             f"Both select on val; test is never selected on.", "", f"Command: `{command}`", "",
             f"| task | default `finetune run` | `finetune tune --trials {trials}` (best trial) "
             "| test gain | best settings |",
             "|---|---|---|---|---|"]
    gains = []
    for task in dict.fromkeys(t for t, _ in cells):
        run, tuned_ = cells.get((task, "run"), []), cells.get((task, "tune"), [])
        if not run or not tuned_:
            continue
        mean = {m: {k: statistics.fmean(c[k] for c in cs) for k in ("val", "test", "seconds")}
                for m, cs in (("run", run), ("tune", tuned_))}
        gain = mean["tune"]["test"] - mean["run"]["test"]
        gains.append(gain)
        lines.append(f"| {task} | {mean['run']['test']:.3f} ({mean['run']['val']:.3f}), "
                     f"{mean['run']['seconds'] / 60:.1f} min "
                     f"| {mean['tune']['test']:.3f} ({mean['tune']['val']:.3f}), "
                     f"{mean['tune']['seconds'] / 60:.1f} min "
                     f"| {gain:+.3f} | {tuned_[0]['settings']} |")
    if gains:
        lines += ["", f"Mean test gain of the study over the default run: {statistics.fmean(gains):+.3f} "
                      f"over {len(gains)} task(s)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    global REGIME  # --regime: the cells read the module's REGIME
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (default: all cores)")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--methods", nargs="*", default=["run", "tune"])
    parser.add_argument("--regime", default=REGIME.name, choices=list(quality.REGIMES),
                        help="a regime of quality.py (use its own --work: results are keyed by task, method, seed)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-tune"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tune-quick.md")
    args = parser.parse_args()
    REGIME = quality.REGIMES[args.regime]
    quality.setup_process(args.threads)
    results = args.work / "results.jsonl"  # every finished cell, so that a rerun skips it
    done = {tuple(r["key"]): r for r in map(json.loads, results.read_text().splitlines())} if results.is_file() else {}
    cells: dict[tuple[str, str], list[dict]] = {}
    for task in [t for t in args.tasks if available(t)]:
        for method in args.methods:
            for seed in range(args.seeds):
                key = (task, method, seed, args.trials if method == "tune" else 0)
                if key not in done:
                    done[key] = {"key": list(key), **run_cell(method, task, seed, args.work, args.trials)}
                    args.work.mkdir(parents=True, exist_ok=True)
                    with open(results, "a") as f:
                        f.write(json.dumps(done[key]) + "\n")
                r = done[key]
                cells.setdefault((task, method), []).append(r)
                print(f"{task:12s} {method:5s} seed {seed}: val {r['val']:.3f} test {r['test']:.3f} "
                      f"({r['seconds']:.0f} s) {r['settings']}", flush=True)
    text = render(cells, args.trials, args.seeds, "OMP_NUM_THREADS=1 benchmarks/tune_quality.py --threads 1"
                  + (f" --seeds {args.seeds}" if args.seeds != 1 else "")
                  + (f" --regime {args.regime}" if args.regime != "32px-10shot-imagenet" else ""))
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("# Tuning benchmark: `finetune tune` against the default `finetune run`\n\n" + text)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
