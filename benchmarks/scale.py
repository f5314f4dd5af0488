"""Scale: a folder of 100k small images through scan, the first training step and `finetune eval`.

    .venv/bin/python benchmarks/scale.py                  # 100,000 images
    .venv/bin/python benchmarks/scale.py --images 20000   # a quicker look

Reports the scan time (first, which decodes every file, and cached, keyed on path, size and mtime),
the time from `fit` to its first training step, and the peak RSS of `finetune eval` (a separate
process) on the val split at a tenth of the images and at all of them: eval streams the split in
chunks, so the two peaks should be about equal.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import StepTimer  # noqa: E402 - the benchmarks share their step timer

CLASSES = 10


def _write_class(args: tuple[Path, int, int, int]) -> None:
    folder, count, side, seed = args
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    for i in range(count):
        noise = rng.integers(-40, 40, size=(side, side, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.png")


def make_folder(root: Path, images: int, side: int = 32) -> Path:
    """root/<class>/N.png: `images` noisy tiles of a colour per class, written by one process per core."""
    per_class = images // CLASSES
    jobs = [(root / f"class{c}", per_class, side, c) for c in range(CLASSES)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_class, jobs))
    return root


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


_MEASURE = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def peak_rss_of(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of a command, measured by a fresh parent that runs only it (this
    process's own children, DataLoader workers forked from a large process, would mix in)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return int(proc.stdout.strip().splitlines()[-1]) / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=None, help="keep the folder here (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        os.environ["FINETUNE_CACHE_DIR"] = str(work / "cache")  # a cold scan cache
        from finetune.config import RunConfig
        from finetune.data.scan import scan_image_folder
        from finetune.heap import keep_freed_memory
        from finetune.run.fit import fit

        root, gen = timed(lambda: make_folder(work / "data", args.images))
        print(f"generated {args.images} images of 32 px in {gen:.0f} s", flush=True)
        index, first = timed(lambda: scan_image_folder(root))
        _, cached = timed(lambda: scan_image_folder(root))
        print(f"scan: first {first:.1f} s ({args.images / first:.0f} files/s), cached {cached:.1f} s", flush=True)

        timer = StepTimer()
        config = RunConfig(backbone="resnet18", data=root, weights="none", image_size=32, epochs=1, batch_size=64,
                           limit_train_batches=5, limit_val_batches=1, output=work / "run", progress=False,
                           export=True)
        timer.t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), keep_freed_memory():  # as `finetune run` trains
            fit(config, callbacks=[timer])
        print(f"time to the first training step: {timer.first_step:.1f} s (scan cached)", flush=True)

        small = work / "small"
        for c in range(CLASSES):  # a tenth of the images, same classes
            (small / f"class{c}").mkdir(parents=True, exist_ok=True)
            for p in sorted((root / f"class{c}").iterdir())[: args.images // CLASSES // 10]:
                os.link(p, small / f"class{c}" / p.name)
        finetune = [str(Path(sys.executable).parent / "finetune")]
        rows = []
        for name, folder, count in (("a tenth", small, len(index.val) // 10), ("all", root, len(index.val))):
            # the run's split settings are recorded: eval splits each folder the same way
            rss, secs = peak_rss_of([*finetune, "eval", "--model", str(work / "run"), "--data", str(folder),
                                     "--output", str(work / f"eval-{name.replace(' ', '-')}")])
            rows.append((name, count, rss, secs))
            print(f"eval on {name} of the val split (~{count} images): peak RSS {rss:.0f} MB, {secs:.0f} s", flush=True)
    print()
    print(f"| images | scan, first | scan, cached | first training step | eval peak RSS, {rows[0][1]} val images "
          f"| eval peak RSS, {rows[1][1]} val images |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.images} | {first:.1f} s | {cached:.1f} s | {timer.first_step:.1f} s | {rows[0][2]:.0f} MB "
          f"| {rows[1][2]:.0f} MB |")


if __name__ == "__main__":
    main()
