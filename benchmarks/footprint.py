"""The memory check's estimate of a training step against the memory the step actually takes.

For each (backbone, input side, batch, precision): the estimate (finetune.training.footprint), and the
growth of the process's peak resident memory over two real training steps (forward, backward, AdamW
step), each in a fresh process. The ratio estimate / measured says how far the refusal threshold of
`finetune run` sits from the truth: below 1 it refuses later than it could, above 1 earlier.

    .venv/bin/python benchmarks/footprint.py            # -> benchmarks/results/footprint.md
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

CASES = [("resnet18", 64, 32, "32"), ("resnet18", 224, 16, "32"), ("resnet18", 224, 16, "bf16-mixed"),
         ("resnet50", 224, 8, "bf16-mixed"), ("resnet50", 448, 4, "32"),
         ("tf_efficientnet_lite0", 224, 16, "bf16-mixed")]

STEP = r"""
import resource, sys, torch, timm
from finetune.run.memory_check import AUTOCAST
from finetune.training.footprint import training_footprint
name, side, batch, precision = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(1)
model = timm.create_model(name, num_classes=10).train()
dtype = AUTOCAST.get(precision)
if dtype is not None:
    model = model.to(memory_format=torch.channels_last)
estimate = training_footprint(model, side, batch, dtype).total
optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
x, y = torch.randn(batch, 3, side, side), torch.randint(0, 10, (batch,))
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
start = resident()
for _ in range(2):
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) * 1024
print(estimate, peak - start)
"""


def measure(name: str, side: int, batch: int, precision: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", STEP, name, str(side), str(batch), precision], check=True,
                         capture_output=True, text=True, env={"MALLOC_ARENA_MAX": "1", "PATH": ""}).stdout
    estimate, measured = map(int, out.split())
    return estimate, measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "footprint.md")
    args = parser.parse_args()
    rows = ["| backbone | side | batch | precision | estimate (MB) | measured peak growth (MB) | ratio |",
            "|---|---|---|---|---|---|---|"]
    for case in CASES:
        estimate, measured = measure(*case)
        rows.append(f"| {' | '.join(map(str, case))} | {estimate / 2**20:.0f} | {measured / 2**20:.0f} | "
                    f"{estimate / measured:.2f} |")
        print(rows[-1], flush=True)
    command = "`.venv/bin/python benchmarks/footprint.py` (random init, 1 thread, two steps each, a fresh process)"
    args.output.write_text("# The memory check's estimate against a training step's measured memory\n\n"
                           f"{command}\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
