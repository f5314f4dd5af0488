"""Inference latency of one model three ways, side by side: eager torch, onnxruntime fp32, onnxruntime int8.

    python benchmarks/inference_latency.py [--backbone tv:resnet18] [--size 224] [--threads 2]

Random-init weights (no download); the int8 model is calibrated on random inputs, which is fine for
timing but says nothing about accuracy. Prints median milliseconds per batch and ratios against eager.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from finetune.bundling.formats import export_onnx
from finetune.bundling.quantize import quantize_int8
from finetune.inference import onnx_runner
from finetune.models.backbone import create_backbone


def median_ms(fn, x, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tv:resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone, _ = create_backbone(args.backbone, 10, weights="none")
    backbone.eval()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        export_onnx(backbone, torch.zeros(2, 3, args.size, args.size), fp32)
        quantize_int8(fp32, int8, rng.standard_normal((16, 3, args.size, args.size)).astype(np.float32))
        ort32, ort8 = onnx_runner(fp32, args.threads), onnx_runner(int8, args.threads)

        def eager(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return backbone(torch.from_numpy(x)).numpy()

        print(f"{args.backbone} at {args.size}px, {args.threads} threads, median of {args.repeats} runs")
        print(f"{'batch':>5} {'eager ms':>10} {'ort fp32 ms':>12} {'ort int8 ms':>12} "
              f"{'eager/fp32':>11} {'eager/int8':>11}")
        for batch in (1, 32):
            x = rng.standard_normal((batch, 3, args.size, args.size)).astype(np.float32)
            repeats = args.repeats if batch == 1 else max(3, args.repeats // 4)
            e, f, q = (median_ms(fn, x, repeats) for fn in (eager, ort32, ort8))
            print(f"{batch:>5} {e:>10.2f} {f:>12.2f} {q:>12.2f} {e / f:>10.2f}x {e / q:>10.2f}x")


if __name__ == "__main__":
    main()
