"""Training reuses the memory a step frees instead of faulting it in again every step (glibc)."""
from __future__ import annotations

import io
import platform
import resource
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from rich.console import Console

from finetune.run.fit import fit
from finetune.training.heap import keeping

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the heap settings are glibc's")

BLOCKS = 96  # 1 MiB tensors freed together, as a step frees its activations: 96 MiB, above any trim threshold
PAGES = BLOCKS * 256  # 4 KiB pages they touch
# One block above glibc's largest mmap threshold (32 MiB), so its own mapping by default, unless a free
# block of the heap is large enough: outside, it comes first; inside, it is larger than all freed before.
LARGE_MIB, LARGER_MIB = 40, 256


def faults_of_a_second_step(blocks: int = BLOCKS, mib: int = 1) -> int:
    """Minor page faults of allocating, filling and freeing `blocks` tensors of `mib` MiB, the second time."""

    def step():
        tensors = [torch.ones(mib * 256 * 1024) for _ in range(blocks)]
        del tensors

    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_blocks_are_reused_inside_and_handed_back_after():
    # A fresh process: how glibc treats the blocks outside depends on what the heap went through before.
    out = subprocess.run([sys.executable, __file__], capture_output=True, text=True, check=True).stdout
    large_outside, outside, large_inside, inside, kept, after = map(int, out.split())
    if outside < PAGES // 2 or large_outside < LARGE_MIB * 128:
        pytest.skip(f"this glibc reused the blocks by itself ({outside} and {large_outside} faults)")
    assert inside < PAGES // 20, (outside, inside)  # about 1 MiB measured; without the settings ~1 a page
    assert large_inside < LARGER_MIB * 256 // 20, (large_outside, large_inside)
    assert kept - after > LARGER_MIB * 0.8, (kept, after)  # what was kept for a next step is returned on leaving


class _HeapInsideFit(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        self.keeping, self.faults = keeping(), faults_of_a_second_step()


def test_fit_trains_with_the_heap_kept_and_hands_it_back(make_config):
    # Whether the blocks fault without the settings depends on this process's history (the other
    # tests'), so the effect is checked in a fresh process above; here, that fit trains inside them.
    seen = _HeapInsideFit()
    fit(make_config(epochs=1, export=False), Console(file=io.StringIO()), callbacks=[seen])
    assert seen.keeping and seen.faults < PAGES // 20, (seen.keeping, seen.faults)
    assert not keeping()


def _rss_mib() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20


if __name__ == "__main__":  # the fresh process of test_freed_blocks_are_reused_inside_and_handed_back_after
    from finetune.training.heap import keep_freed_memory

    large_outside, outside = faults_of_a_second_step(1, LARGE_MIB), faults_of_a_second_step()
    with keep_freed_memory():
        large_inside, inside = faults_of_a_second_step(1, LARGER_MIB), faults_of_a_second_step()
        kept = _rss_mib()
    print(large_outside, outside, large_inside, inside, round(kept), round(_rss_mib()))
