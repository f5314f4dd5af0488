"""Input size: test top-1 and training seconds per epoch at sizes that follow the images, against the
backbone's own size (224 px for tf_efficientnet_lite0), measured in the same run.

Every cell is `finetune run` with real ImageNet weights (tf_efficientnet_lite0, installed offline), the
defaults except a fixed epoch count (--epochs, the same at every size, validated every other epoch), and
`--image-size` as the row says; the checkpoint is selected on val and scored once on test.

Tasks: the real tasks of finetune/data/real.py at their own image sizes (silhouettes 28 px, faces 25 px,
texture patches 64 px), and `crops`: colour photo crops 64-96 px a side (each side drawn on its own),
cut from disjoint bands of six scikit-image photos, one class per photo, saved at their own size.

Sizes: `auto` (--image-size left to its default: the rule of finetune/run/auto_defaults.py; where it
lands on the size of another spec in the same command, that run is the auto cell too), `own` (the
backbone's own size, given explicitly), `xK` (K times the median shorter side of the train images,
rounded up to a multiple of 32 and capped at the backbone's size), or a number of pixels.

    OMP_NUM_THREADS=1 benchmarks/input_size.py --tasks silhouettes-10 faces-10 textures-10 crops-25 \
        --sizes x1 x2 own auto --seeds 2 --jobs 2     # -> benchmarks/results/input-size.md
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from finetune.data.real import TASKS, make_real_task

BACKBONE = "tf_efficientnet_lite0"  # real ImageNet weights that install offline
ROUND = 32  # xK sizes are multiples of the backbone's total stride
CROP_PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "stereo_motorcycle", "retina")
CROP_SIDE = (64, 96)  # crop width and height in source pixels, each drawn uniformly
CROP_BANDS = {"train": (0.0, 0.55), "val": (0.55, 0.75), "test": (0.75, 1.0)}  # rows of each photo, disjoint
CROP_EVAL = {"val": 20, "test": 40}  # crops per class


def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    return img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: (left, right, disparity)


def _crops(photo: np.ndarray, band: tuple[float, float], n: int, rng: np.random.Generator) -> list[np.ndarray]:
    h, w = photo.shape[:2]
    top, bottom = int(band[0] * h), int(band[1] * h)
    out = []
    for _ in range(n):
        ch = int(rng.integers(CROP_SIDE[0], min(CROP_SIDE[1], bottom - top) + 1))
        cw = int(rng.integers(CROP_SIDE[0], CROP_SIDE[1] + 1))
        y, x = int(rng.integers(top, bottom - ch + 1)), int(rng.integers(0, w - cw + 1))
        out.append(photo[y:y + ch, x:x + cw])
    return out


def make_crops_task(root: Path, train_per_class: int, seed: int) -> Path:
    """Photo crops in the split layout: val and test fixed, train drawn with `seed`."""
    for k, name in enumerate(CROP_PHOTOS):
        photo = _photo(name)
        for split, band in CROP_BANDS.items():
            n = train_per_class if split == "train" else CROP_EVAL[split]
            rng = np.random.default_rng((seed * 7919 if split == "train" else 0) + 31 * k + len(split))
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, crop in enumerate(_crops(photo, band, n, rng)):
                Image.fromarray(crop).save(folder / f"{name}_{i:04d}.png")
    return root


def make_task(task: str, root: Path, seed: int) -> Path:
    """`task` is NAME-SHOTS: a real task of finetune/data/real.py or `crops`, with SHOTS train images per class."""
    name, shots = task.rsplit("-", 1)
    if not root.is_dir():
        if name == "crops":
            make_crops_task(root, int(shots), seed)
        else:
            make_real_task(name, root, int(shots), seed=seed)
    return root


def median_side(data: Path) -> float:
    """Median shorter side of the train images, read from every file."""
    sides = []
    for path in sorted((data / "train").rglob("*.png")):
        with Image.open(path) as im:
            sides.append(min(im.size))
    return float(statistics.median(sides))


def auto_size(data: Path) -> tuple[int, str]:
    """The size `finetune run` chooses for `data` with --image-size left out, and its reason."""
    import torch

    from finetune.data.scan import scan_image_folder
    from finetune.models.backbone import create_backbone
    from finetune.run.auto_defaults import resolve_image_size

    with torch.device("meta"):  # shapes only: the rule reads the network's metadata and probes sizes
        backbone, _ = create_backbone(BACKBONE, 2, "none")
    return resolve_image_size(None, scan_image_folder(data, progress=False), backbone)


def own_size() -> int:
    """The backbone's pretrained input side (its timm pretrained_cfg)."""
    import torch

    from finetune.models.backbone import create_backbone

    with torch.device("meta"):
        return create_backbone(BACKBONE, 2, "none")[0].data_config.input_size


def resolve_size(spec: str, data: Path) -> int:
    """A size spec as pixels (`auto`: what `finetune run` chooses)."""
    if spec == "auto":
        return auto_size(data)[0]
    if spec == "own":
        return own_size()
    if spec.startswith("x"):
        return min(own_size(), ROUND * math.ceil(float(spec[1:]) * median_side(data) / ROUND))
    return int(spec)


def run_cell(task: str, spec: str, seed: int, work: Path, epochs: int) -> dict:
    """One `finetune run`, its best checkpoint scored on test by `finetune eval`; returns the size it
    trained at, val and test top-1, and the seconds."""
    import contextlib
    import io
    import logging
    import warnings

    import torch

    from finetune.config import RunConfig
    from finetune.evaluation.evaluate import evaluate
    from finetune.run.fit import fit

    torch.set_num_threads(1)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    data = make_task(task, work / "data" / f"{task}-{seed}", seed)
    out = work / "runs" / f"{task}-{spec}-{seed}"
    size = None if spec == "auto" else resolve_size(spec, data)  # auto: left to `finetune run`
    config = RunConfig(backbone=BACKBONE, data=data, weights="imagenet", image_size=size,
                       epochs=epochs, val_every=2, seed=seed, output=out, progress=False, export=False, overwrite=True)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        result = fit(config)
    wall = time.perf_counter() - start
    val, test = result.best_val_acc1, evaluate(result.best_checkpoint, data, split="test",
                                               output=out / "eval-test").metrics["top1"]
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    rows = [r for r in _rows(out / "metrics.csv") if r.get("img/s")]
    train_images = recorded["resolved"]["counts"]["train"]
    epoch_s = statistics.fmean(train_images / float(r["img/s"]) for r in rows)
    return {"task": task, "spec": spec, "seed": seed, "size": recorded["resolved"]["data_config"]["input_size"],
            "val": val, "test": test,
            "train_epoch_s": epoch_s, "wall_s": wall, "size_source": recorded["sources"].get("image_size", "")}


def _rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _first_spec_per_size(cells: list[tuple[str, str, int]], work: Path) -> dict[tuple[str, str, int], str]:
    """(task, spec, seed) -> the first spec of that task and seed giving the same pixels. `auto` is the
    same run as an explicit spec of the size it chooses: fit resolves the same config either way."""
    first, seen = {}, {}
    for task, spec, seed in cells:
        size = resolve_size(spec, work / "data" / f"{task}-{seed}")
        first[(task, spec, seed)] = seen.setdefault((task, seed, size), spec)
    return first


def _dedup_copies(results: list[dict], cells: list[tuple[str, str, int]], work: Path) -> list[dict]:
    """Results for the specs that were not run because an earlier spec gives the same pixels; an `auto`
    copy carries the reason `finetune run` gives for its size."""
    first = _first_spec_per_size(cells, work)
    by_key = {(r["task"], r["spec"], r["seed"]): r for r in results}
    copies = []
    for t, s, seed in cells:
        if (t, s, seed) not in by_key and (t, first[(t, s, seed)], seed) in by_key:
            why = auto_size(work / "data" / f"{t}-{seed}")[1] if s == "auto" else ""
            copies.append({**by_key[(t, first[(t, s, seed)], seed)], "spec": s, "size_source": why})
    return results + copies


def _worker(args: tuple) -> dict:
    return run_cell(*args)


def run_all(todo: list[tuple], jobs: int, on_result) -> None:
    if jobs <= 1:
        for item in todo:
            on_result(_worker(item))
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        for future in as_completed([pool.submit(_worker, item) for item in todo]):
            on_result(future.result())


def render(results: list[dict], command: str, epochs: int) -> str:
    """A row per task and size spec: size, test top-1, train seconds per epoch, each against `own`."""
    lines = [f"Command: `{command}`", "",
             f"{BACKBONE}, ImageNet weights, {epochs} epochs (validated every 2nd), defaults otherwise. Test top-1: "
             "mean over seeds ± half the range, checkpoint selected on val. Seconds: training only, per epoch, "
             f"mean over epochs and seeds. Ratios against `own` (the backbone's {own_size()} px) on the same seeds.",
             "",
             "| task | size spec | px | test top-1 | vs own | train s/epoch | vs own |",
             "|---|---|---|---|---|---|---|"]
    by = {}
    for r in results:
        by.setdefault((r["task"], r["spec"]), []).append(r)
    for (task, spec), cell in by.items():
        own = {r["seed"]: r for r in by.get((task, "own"), [])}
        tests = [r["test"] for r in cell]
        sizes = sorted({r["size"] for r in cell})
        line = (f"| {task} | {spec} | {'/'.join(map(str, sizes))} | {statistics.fmean(tests):.3f} "
                f"±{(max(tests) - min(tests)) / 2:.3f} | ")
        paired = [r for r in cell if r["seed"] in own]
        if paired and spec != "own":
            d = statistics.fmean(r["test"] - own[r["seed"]]["test"] for r in paired)
            t = statistics.fmean(r["train_epoch_s"] / own[r["seed"]]["train_epoch_s"] for r in paired)
            line += f"{d:+.3f} | {statistics.fmean(r['train_epoch_s'] for r in cell):.1f} | x{t:.2f} |"
        else:
            line += f"- | {statistics.fmean(r['train_epoch_s'] for r in cell):.1f} | - |"
        lines.append(line)
    sources = sorted({r["size_source"] for r in results if r["spec"] == "auto"})
    if sources:
        lines += ["", "`auto` decided:"] + [f"- {s}" for s in sources]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["silhouettes-10", "textures-10", "crops-25"],
                        help=f"NAME-SHOTS, NAME one of {', '.join([*TASKS, 'crops'])}")
    parser.add_argument("--sizes", nargs="+", default=["auto", "own"], help="auto, own, xK or pixels")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1, help="cells at once, one process (one thread) each")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-input-size"))
    parser.add_argument("--resume", action="store_true", help="reuse the cells in WORK/results.jsonl")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "input-size.md")
    args = parser.parse_args()
    log = args.work / "results.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if args.resume and log.is_file() else []
    have = {(r["task"], r["spec"], r["seed"]) for r in done}
    cells = [(t, s, seed) for t in args.tasks for s in args.sizes for seed in range(args.seeds)]
    for task, _, seed in cells:  # written once, before the workers share them
        make_task(task, args.work / "data" / f"{task}-{seed}", seed)
    first = _first_spec_per_size(cells, args.work)
    # A spec giving the same pixels as an earlier one (x4 of 64 px images is `own`) is run once.
    # The 224 px cells take longest: started first, so that the workers end together.
    todo = sorted([(t, s, seed, args.work, args.epochs) for t, s, seed in cells
                   if (t, s, seed) not in have and first[(t, s, seed)] == s],
                  key=lambda item: item[1] != "own")
    results = [r for r in done if (r["task"], r["spec"], r["seed"]) in set(cells)]

    def record(r: dict) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(json.dumps(r) + "\n")
        results.append(r)
        print(f"{r['task']:16s} {r['spec']:5s} {r['size']:4d} px seed {r['seed']}: val {r['val']:.3f} "
              f"test {r['test']:.3f} ({r['train_epoch_s']:.1f} s/epoch, {r['wall_s']:.0f} s)", flush=True)

    run_all(todo, args.jobs, record)
    results = _dedup_copies(results, cells, args.work)
    results.sort(key=lambda r: (args.tasks.index(r["task"]), args.sizes.index(r["spec"]), r["seed"]))
    shown = [a for a in sys.argv[1:] if a != "--resume"]
    text = render(results, " ".join(["OMP_NUM_THREADS=1 benchmarks/input_size.py", *map(shlex.quote, shown)]),
                  args.epochs)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("# Input size\n\n" + text)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
