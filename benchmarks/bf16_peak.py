"""How much faster this CPU computes in bf16 than in fp32: the bound on any bf16 training speed-up.

    python benchmarks/bf16_peak.py [--threads 2] [--repeats 10]

Times a 2048x2048 matrix product and a ResNet-style 3x3 convolution (128 -> 128 channels, batch 32,
32x32; forward and forward+backward) in fp32 and bf16, NCHW and channels_last, and prints GFLOP/s
and each rate's ratio to fp32 NCHW. Compute-bound work (most of a ResNet step) cannot train faster in
bf16 than these ratios allow; a whole step can gain a little more only where fp32 loses time to
memory traffic (normalisation, activations, the optimizer), which bf16 halves.

The CPU flags that decide the ratio are printed first: AVX512-BF16 does a bf16 dot product at twice
the FLOPs of an fp32 FMA (so about 2x at best); AMX tiles do many times more.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags() -> dict[str, bool]:
    """Which of FLAGS /proc/cpuinfo lists (all False where it cannot be read, e.g. off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return dict.fromkeys(FLAGS, False)
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return {flag: flag in present for flag in FLAGS}


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_rate(dtype: torch.dtype, n: int, repeats: int) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n ** 3 / median_seconds(lambda: a @ b, repeats) / 1e9


def conv_rate(dtype: torch.dtype, channels_last: bool, backward: bool, repeats: int,
              batch: int = 32, channels: int = 128, side: int = 32) -> float:
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(dtype)
    x = torch.randn(batch, channels, side, side, dtype=dtype, requires_grad=backward)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_(backward)
    flops = 2 * batch * channels * channels * 9 * side * side  # one forward
    if backward:  # the input and the weight gradients each cost a forward's FLOPs
        def step() -> None:
            conv(x).sum().backward()
        flops *= 3
    else:
        def step() -> None:
            with torch.no_grad():
                conv(x)
    return flops / median_seconds(step, repeats) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flags = cpu_flags()
    print(f"{args.threads} threads; CPU flags: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items()))
    print(f"{'operation':<40} {'fp32 NCHW':>10} {'fp32 CL':>9} {'bf16 NCHW':>10} {'bf16 CL':>9} {'best bf16/fp32':>15}")
    fp32, bf16 = gemm_rate(torch.float32, 2048, args.repeats), gemm_rate(torch.bfloat16, 2048, args.repeats)
    print(f"{'matmul 2048x2048 (GFLOP/s)':<40} {fp32:>10.0f} {'':>9} {bf16:>10.0f} {'':>9} {bf16 / fp32:>14.2f}x")
    for backward in (False, True):
        rates = {(dt, cl): conv_rate(dt, cl, backward, args.repeats)
                 for dt in (torch.float32, torch.bfloat16) for cl in (False, True)}
        base = rates[(torch.float32, False)]
        best = max(rates[(torch.bfloat16, False)], rates[(torch.bfloat16, True)])
        name = "conv3x3 128ch b32 32px " + ("fwd+bwd" if backward else "fwd")
        print(f"{name + ' (GFLOP/s)':<40} {base:>10.0f} {rates[(torch.float32, True)]:>9.0f} "
              f"{rates[(torch.bfloat16, False)]:>10.0f} {rates[(torch.bfloat16, True)]:>9.0f} {best / base:>14.2f}x")


if __name__ == "__main__":
    main()
