"""Model quality on real images: `finetune run` against a plain PyTorch loop and fastai's `fine_tune`.

Every method trains the same network from the same weights on the same image folder, selects its
epoch (or checkpoint) on val, and is scored on a test split that nothing selects on. Each cell is
the mean top-1 over seeds with its spread (half the max-min range), and the wall seconds of one run.

Tasks (real images that install offline, see finetune/data/real.py): photographic textures,
animal silhouettes, faces vs non-faces. Regimes: input size (32 px or the backbone's own, each given
to every method explicitly: `finetune run`'s own default follows the images, see input_size.py),
training images per class (few-shot or a few hundred), and where the weights come from (real
ImageNet weights, or a source task trained by this toolkit).

    .venv/bin/python benchmarks/quality.py --quick          # a subset: 30 runs, 2 at a time (2 seeds)
    .venv/bin/python benchmarks/quality.py                  # the full table -> benchmarks/results/quality.md
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import multiprocessing
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn

from finetune.config import RunConfig, load_recipe
from finetune.data.real import TASKS, available, make_real_task
from finetune.data.scan import scan_image_folder
from finetune.data.transforms import build_eval_transform
from finetune.models.backbone import create_backbone
from finetune.run.fit import fit
from finetune.training.callbacks.divergence import DivergenceError
from finetune.training.module import FinetuneModule

IMAGENET_BACKBONE = "tf_efficientnet_lite0"  # real ImageNet weights that install offline
SOURCE_BACKBONE = "resnet18"  # pretrained here, from scratch, by `finetune run` on the source task
PLAIN_EPOCHS = 25  # the PyTorch transfer-learning tutorial's count; StepLR(7, 0.1) has decayed 1000x by 21
PLAIN_BATCH = 4  # the tutorial's batch size


@dataclass(frozen=True)
class Regime:
    """One training condition: input side (None: the backbone's own, passed as a number), images per class,
    weights."""

    name: str
    size: int | None
    shots: int | None  # None: the task's most (a few hundred where the source allows)
    weights: str  # "imagenet" or "source"

    def train_per_class(self, task: str) -> int:
        return min(self.shots or TASKS[task].max_train, TASKS[task].max_train)

    def input_size(self, backbone: str) -> int:
        """The side every method trains at: `size`, or the backbone's own, given to `finetune run` as a
        number (left out, its default would follow the images)."""
        return self.size or create_backbone(backbone, 2, "none")[0].data_config.input_size


REGIMES = {
    "32px-10shot-imagenet": Regime("32px-10shot-imagenet", 32, 10, "imagenet"),
    # The smallest sets people bring (a handful of photos per class), where `--freeze-until auto` decides alone.
    "32px-5shot-imagenet": Regime("32px-5shot-imagenet", 32, 5, "imagenet"),
    # "A few hundred per class": 200 (faces has 50 at most), affordable on 2 cores for every method and 3 seeds.
    "32px-200shot-imagenet": Regime("32px-200shot-imagenet", 32, 200, "imagenet"),
    "own-10shot-imagenet": Regime("own-10shot-imagenet", None, 10, "imagenet"),
    "32px-10shot-source": Regime("32px-10shot-source", 32, 10, "source"),
}
QUICK_REGIMES = ("32px-10shot-imagenet",)
QUICK_SEEDS = 2  # with --jobs 2, the quick table fits in 15 minutes of a 2-core machine


@dataclass
class Cell:
    """Scores of one method on one task and regime, over seeds."""

    test: list[float] = field(default_factory=list)
    val: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def summary(self) -> str:
        if not self.test:
            return "-"
        mean = statistics.fmean(self.test)
        spread = (max(self.test) - min(self.test)) / 2
        return f"{mean:.3f} ±{spread:.3f} ({statistics.fmean(self.seconds):.0f} s)"


# ----- the plain PyTorch loop ----------------------------------------------------------------------
def _load_split(folder: Path, classes: list[str], transform: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a split, through `transform`, stacked in memory: (N, 3, S, S), (N,)."""
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for path in sorted((folder / cls).iterdir()):
            xs.append(transform(np.asarray(Image.open(path).convert("RGB"))))
            ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y).float().mean())


def plain_loop(data: Path, backbone: str, weights: str, size: int | None, seed: int, lr: float) -> tuple[float, float]:
    """The textbook loop: SGD(momentum 0.9), StepLR(7, 0.1), cross-entropy, batch 4, random flips,
    images preprocessed once with the weights' own eval transform. Returns (val, test) top-1 at the
    best val epoch."""
    torch.manual_seed(seed)
    classes = sorted(p.name for p in (data / "train").iterdir())
    net, _ = create_backbone(backbone, len(classes), weights)
    transform = build_eval_transform(net.data_config.with_size(size))
    (xt, yt), (xv, yv), (xs, ys) = (_load_split(data / s, classes, transform) for s in ("train", "val", "test"))
    model = net.model
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.1)
    loss_fn, gen = nn.CrossEntropyLoss(), torch.Generator().manual_seed(seed)
    best_val, best_state = -1.0, None
    for _ in range(PLAIN_EPOCHS):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(PLAIN_BATCH):
            x = xt[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            if len(idx) < 2:  # BatchNorm cannot train on one image
                continue
            opt.zero_grad()
            loss_fn(model(x), yt[idx]).backward()
            opt.step()
        sched.step()
        val = _accuracy(model, xv, yv)
        if val > best_val:  # the test split is scored once, on the best epoch's weights
            best_val, best_state = val, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return best_val, _accuracy(model, xs, ys)


# ----- fastai --------------------------------------------------------------------------------------
def fastai_fine_tune(data: Path, backbone: str, weights_file: Path, size: int, seed: int) -> tuple[float, float]:
    """fastai's `vision_learner` + `fine_tune` with its defaults (aug_transforms, Adam, one-cycle),
    keeping the best val epoch (SaveModelCallback) and scoring it on test."""
    from fastai.callback.tracker import SaveModelCallback
    from fastai.vision.all import ImageDataLoaders, Resize, accuracy, aug_transforms, set_seed, vision_learner

    set_seed(seed, reproducible=True)
    # fastai drops the last partial training batch: at its default bs of 64 a 20-image set would never
    # train, so the batch is the plain loop's size class (8), the smallest fastai's BatchNorm head takes well.
    dls = ImageDataLoaders.from_folder(data, train="train", valid="val", item_tfms=Resize(size),
                                       batch_tfms=aug_transforms(), bs=8, num_workers=0)
    learn = vision_learner(dls, backbone, metrics=accuracy, pretrained=True,
                           pretrained_cfg_overlay=dict(file=str(weights_file)))
    learn.path = data.parent / f"fastai-{seed}"
    test_dl = dls.test_dl(sorted((data / "test").rglob("*.png")), with_labels=True)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(PLAIN_EPOCHS - 1, cbs=[SaveModelCallback(monitor="accuracy", fname="best")])
        val = float(learn.validate()[1])  # SaveModelCallback reloads the best epoch at the end
        test = float(learn.validate(dl=test_dl)[1])
    return val, test


def _fastai_weights(backbone: str, weights: str, out: Path) -> Path:
    """The backbone's pretrained weights as a file timm loads (fastai builds the body through timm)."""
    from safetensors.torch import save_file

    net, _ = create_backbone(backbone, 1000, weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.model.state_dict().items()}, str(out))
    return out


# ----- finetune ------------------------------------------------------------------------------------
def finetune_run(data: Path, backbone: str, weights: str, size: int, seed: int, out: Path,
                 overrides: dict | None = None) -> tuple[float, float]:
    """`finetune run` with only --backbone --data --weights --image-size (the regime's) plus
    `overrides` (a recipe's values); the best checkpoint, selected on val, scored on test."""
    config = RunConfig(backbone=backbone, data=data, weights=weights, image_size=size, seed=seed, output=out,
                       progress=False, export=False, overwrite=True, **(overrides or {}))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            result = fit(config)
        best, val = result.best_checkpoint, result.best_val_acc1
    except DivergenceError:  # the run stopped itself: a user has its best.ckpt, or else the last.ckpt it names
        best = next((c for c in (out / "checkpoints" / "best.ckpt", out / "checkpoints" / "last.ckpt")
                     if c.is_file()), None)
        if best is None:
            return float("nan"), float("nan")
        val = None  # measured below, on the checkpoint the user has
    module = FinetuneModule.from_checkpoint(best)
    transform = build_eval_transform(module.input_config)
    index = scan_image_folder(data)
    if val is None:
        val = _accuracy(module, *_load_split(data / "val", index.classes, transform))
    x, y = _load_split(data / "test", index.classes, transform)
    return val, _accuracy(module, x, y)


def recipes_for(regime: Regime) -> list[str]:
    """Recipes whose "When:" line fits the regime (few-shot: tens of images per class or fewer)."""
    few = (regime.shots or 1000) <= 50
    return ["linear-probe"] if few else ["finetune-large", "regularized"]


# ----- the source task (weights trained by this toolkit) -------------------------------------------
def source_weights(work: Path, seed: int = 0) -> Path:
    """resnet18 trained from scratch with `finetune run` on the textures task (its largest train
    split); the target tasks then start from this checkpoint."""
    ckpt = work / "source-run" / "checkpoints" / "best.ckpt"
    if not ckpt.is_file():
        data = make_real_task("textures", work / "source-data", TASKS["textures"].max_train, seed=seed)
        config = RunConfig(backbone=SOURCE_BACKBONE, data=data, weights="none", image_size=32, epochs=15,
                           seed=seed, output=work / "source-run", progress=False, export=False, overwrite=True)
        with contextlib.redirect_stdout(io.StringIO()):
            fit(config)
    return ckpt


# ----- the table -----------------------------------------------------------------------------------
def run_cell(method: str, task: str, regime: Regime, seed: int, work: Path) -> tuple[float, float, float]:
    """Trains one method once; returns (val, test, seconds)."""
    data = work / "data" / f"{task}-{regime.train_per_class(task)}-{seed}"
    if not data.is_dir():
        make_real_task(task, data, regime.train_per_class(task), seed=seed)
    backbone, weights = (IMAGENET_BACKBONE, "imagenet") if regime.weights == "imagenet" else \
        (SOURCE_BACKBONE, str(source_weights(work)))
    out = work / "runs" / f"{task}-{regime.name}-{method.replace(' ', '_')}-{seed}"
    size = regime.input_size(backbone)
    start = time.perf_counter()
    if method.startswith("plain-lr"):
        val, test = plain_loop(data, backbone, weights, size, seed, float(method[len("plain-lr"):]))
    elif method == "fastai":
        file = _fastai_weights(backbone, weights, work / "fastai" / f"{backbone}-{regime.weights}.safetensors")
        val, test = fastai_fine_tune(data, backbone, file, size, seed)
    elif method.split(" ")[0] == "finetune":
        val, test = finetune_run(data, backbone, weights, size, seed, out, _overrides(method))
    elif method.startswith("recipe "):
        values = {k: v for k, v in load_recipe(method.split(" ", 1)[1]).values.items()}
        val, test = finetune_run(data, backbone, weights, size, seed, out, values)
    else:
        raise ValueError(f"unknown method {method!r}")
    return val, test, time.perf_counter() - start


def _overrides(method: str) -> dict:
    """"finetune augment=none lr=0.01" -> {"augment": "none", "lr": 0.01}: settings beyond the defaults."""
    pairs = (item.split("=", 1) for item in method.split(" ")[1:])
    return {key.replace("-", "_"): yaml.safe_load(value) for key, value in pairs}


def methods_for(regime: Regime, quick: bool) -> list[str]:
    base = ["plain-lr0.001", "plain-lr0.01"]
    try:
        import fastai  # noqa: F401 - an optional extra: `pip install -e .[bench]`
        base.append("fastai")
    except ImportError:
        pass
    base += ["finetune", "finetune augment=none"]
    return base if quick else base + [f"recipe {r}" for r in recipes_for(regime)]


def render(table: dict[tuple[str, str], dict[str, Cell]], seeds: int, command: str) -> str:
    """The markdown table: a row per (task, regime), a column per method."""
    methods = list(dict.fromkeys(m for cells in table.values() for m in cells))
    lines = [f"Test top-1, mean over {seeds} seeds ± half the range (wall seconds of one run). "
             f"Each method selects on val; test is never selected on.", "", f"Command: `{command}`", "",
             "| task | regime | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for (task, regime), cells in table.items():
        lines.append(f"| {task} | {regime} | "
                     + " | ".join(cells[m].summary() if m in cells else "-" for m in methods) + " |")
    lines += ["", _verdict(table)]
    return "\n".join(lines) + "\n"


def _verdict(table: dict[tuple[str, str], dict[str, Cell]]) -> str:
    """Where `finetune` (defaults) stands against the better plain loop and fastai, cell by cell."""
    rows = []
    for (task, regime), cells in table.items():
        mean = {m: statistics.fmean(c.test) for m, c in cells.items() if c.test}
        plains = [v for m, v in mean.items() if m.startswith("plain")]
        if "finetune" not in mean or not plains:  # e.g. a run of finetune variants only (--methods)
            continue
        plain = max(plains)
        rows.append(f"- {task} / {regime}: finetune {mean['finetune']:.3f} vs best plain loop {plain:.3f} "
                    f"({mean['finetune'] - plain:+.3f})"
                    + (f", fastai {mean['fastai']:.3f}" if "fastai" in mean else ""))
    return "\n".join(rows)


def _load_results(path: Path) -> dict[tuple, tuple[float, float, float]]:
    """Cells measured by an earlier, interrupted run of the benchmark (--resume)."""
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {tuple(r["key"]): (r["val"], r["test"], r["seconds"]) for r in rows}


def _save_result(path: Path, key: tuple, result: tuple[float, float, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"key": list(key), "val": result[0], "test": result[1], "seconds": result[2]}) + "\n")


def setup_process(threads: int) -> None:
    """A benchmark process: its torch thread count, and no library warnings between the result lines."""
    torch.set_num_threads(threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def prepare_cell(method: str, task: str, regime: Regime, seed: int, work: Path) -> None:
    """Writes what cells share (the task's images, the source weights, fastai's weights file) before
    cells run in parallel, so no two processes write the same file."""
    data = work / "data" / f"{task}-{regime.train_per_class(task)}-{seed}"
    if not data.is_dir():
        make_real_task(task, data, regime.train_per_class(task), seed=seed)
    weights = "imagenet" if regime.weights == "imagenet" else str(source_weights(work))
    backbone = IMAGENET_BACKBONE if regime.weights == "imagenet" else SOURCE_BACKBONE
    file = work / "fastai" / f"{backbone}-{regime.weights}.safetensors"
    if method == "fastai" and not file.is_file():
        _fastai_weights(backbone, weights, file)


def _run_in_worker(args: tuple) -> tuple[tuple, tuple[float, float, float]]:
    key, method, task, regime, seed, work = args
    return key, run_cell(method, task, regime, seed, work)


# Cells whose wall time was measured longest first (plain loops and fastai train 25 epochs at batch
# 4-8): with --jobs the long ones start early, so the workers finish together.
COST_ORDER = ("plain-lr0.001", "plain-lr0.01", "fastai", "recipe", "finetune")


def _cost_rank(method: str) -> int:
    return next((i for i, m in enumerate(COST_ORDER) if method.startswith(m)), len(COST_ORDER))


def run_cells(todo: list[tuple], jobs: int, threads: int, on_result) -> None:
    """Runs (key, method, task, regime, seed, work) cells, `jobs` processes at a time, calling
    on_result(key, result) as each one ends."""
    if jobs <= 1:
        for item in todo:
            on_result(*_run_in_worker(item))
        return
    for item in todo:
        prepare_cell(*item[1:])
    order = sorted(todo, key=lambda item: (_cost_rank(item[1]), item[2] != "silhouettes"))
    context = multiprocessing.get_context("spawn")  # a fresh torch in each worker, no forked threads
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=setup_process, initargs=(threads,)) as pool:
        for future in as_completed([pool.submit(_run_in_worker, item) for item in order]):
            on_result(*future.result())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one regime (32 px, 10 shots, ImageNet weights), core methods")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per cell (default: 3; 2 with --quick)")
    parser.add_argument("--seed-ids", type=int, nargs="+", default=None,
                        help="run and tabulate these seeds only, instead of 0..SEEDS-1")
    parser.add_argument("--jobs", type=int, default=None,
                        help="cells run at once, one process each (default: 1; with --quick, the CPU cores)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of each process (default: the cores shared among --jobs)")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--regimes", nargs="*", default=None, help=f"default: all of {', '.join(REGIMES)}")
    parser.add_argument("--methods", nargs="*", default=None, help="default: every method that fits the regime")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-quality"))
    parser.add_argument("--resume", action="store_true", help="reuse the cells in WORK/results.jsonl")
    parser.add_argument("--out", type=Path, default=None, help="markdown table (default: results/quality[-quick].md)")
    args = parser.parse_args()
    seeds = args.seeds or (QUICK_SEEDS if args.quick else 3)
    seed_ids = sorted(set(args.seed_ids)) if args.seed_ids else list(range(seeds))
    jobs = args.jobs or ((os.cpu_count() or 1) if args.quick else 1)
    threads = args.threads or max(1, (os.cpu_count() or 1) // jobs)
    setup_process(threads)
    regimes = [REGIMES[r] for r in (args.regimes or (QUICK_REGIMES if args.quick else REGIMES))]
    tasks = [t for t in args.tasks if available(t) or print(f"skipping {t}: {TASKS[t].package} is not installed")]
    done = _load_results(args.work / "results.jsonl") if args.resume else {}
    cells = [(task, regime, method, seed) for regime in regimes for task in tasks
             for method in args.methods or methods_for(regime, args.quick) for seed in seed_ids]

    def record(key: tuple, result: tuple[float, float, float]) -> None:
        _save_result(args.work / "results.jsonl", key, result)
        done[key] = result
        val, test, secs = result
        print(f"{key[0]:12s} {key[1]:22s} {key[2]:28s} seed {key[3]}: val {val:.3f} test {test:.3f} ({secs:.0f} s)",
              flush=True)

    todo = [((t, r.name, m, s), m, t, r, s, args.work) for t, r, m, s in cells if (t, r.name, m, s) not in done]
    run_cells(todo, jobs, threads, record)
    table: dict[tuple[str, str], dict[str, Cell]] = {}
    for task, regime, method, seed in cells:
        cell = table.setdefault((task, regime.name), {}).setdefault(method, Cell())
        val, test, secs = done[(task, regime.name, method, seed)]
        cell.val.append(val), cell.test.append(test), cell.seconds.append(secs)
    shown = [a for a in sys.argv[1:] if a != "--resume"]  # the command that measures it, as given
    command = " ".join(["benchmarks/quality.py", *(shlex.quote(a) for a in shown)])
    text = render(table, len(seed_ids), command)
    print(text)
    out = args.out or Path(__file__).parent / "results" / ("quality-quick.md" if args.quick else "quality.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Quality benchmark\n\n" + text)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
