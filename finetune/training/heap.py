"""The C heap during training: memory a step frees stays in the process for the next step.

A training step allocates its activations and gradients, frees them all at the end of backward,
and allocates the same sizes again at the next step. glibc's malloc hands freed memory at the top
of its heap back to the kernel once it exceeds a trim threshold, and serves blocks above an mmap
threshold with mmap/munmap; both thresholds adapt at run time to the sizes freed so far. Which
side of them a step's tensors fall on depends on the heap's history, so the same step either
reuses its memory or pays a page fault for every 4 KiB it touches, every step. Measured on
`finetune.fit` (benchmarks/train_throughput.py --only overhead, 2 CPU cores): resnet18 at 128 px
with `--freeze-until layer3` took 12 thousand page faults and 20-50 ms of system time a step
(+5% to +8% on a 0.25 s step), resnet50 at 224 px up to 75 thousand; with the settings here, 1.
PyTorch's CPU allocator is malloc (it has no caching allocator as CUDA does), and an LD_PRELOADed
jemalloc or tcmalloc cannot be chosen from inside a running process, so the settings are made with
mallopt(3), written here because no library we use exposes them.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
import threading
from collections.abc import Iterator

# mallopt(3) parameter numbers, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
GLIBC_MMAP_MAX = 65536  # malloc.h DEFAULT_MMAP_MAX: how many blocks may have their own mapping
# After training. Setting any threshold turns glibc's adaptation off for the rest of the process, so what
# follows training (a prediction in the same notebook) gets the values the adaptation reaches after
# freeing large blocks: its largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX, 4 MiB *
# sizeof(long)) and the trim threshold it pairs with it (twice that).
ADAPTED_MMAP_THRESHOLD = 32 * 1024 * 1024
ADAPTED_TRIM_THRESHOLD = 2 * ADAPTED_MMAP_THRESHOLD

_lock = threading.Lock()
_depth = 0  # nested users (a range test inside fit, fits inside a search) restore once, at the outermost


def _glibc() -> ctypes.CDLL | None:
    """The process's glibc, or None on another C library (musl, macOS, Windows), where this does nothing."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    with contextlib.suppress(OSError):
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return None


def keeping() -> bool:
    """True inside keep_freed_memory on glibc: the process is keeping what it frees."""
    return _depth > 0 and _glibc() is not None


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """Inside: every block comes from the heap (none gets a mapping of its own, which free would unmap)
    and the heap is never trimmed, so a training step touches memory the process already has. On
    leaving: the memory kept is handed back to the kernel (malloc_trim); blocks of 32 MiB and more are
    mapped again, and the heap trims again above 64 MiB free.

    Yields:
        True when the heap settings apply (glibc), False where they do not.
    """
    global _depth
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            # Blocks above 32 MiB too: resnet50's first activations at 224 px, batch 32, are 51 MiB in bf16.
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, -1)  # -1: never trim (mallopt(3))
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
                libc.mallopt(M_MMAP_THRESHOLD, ADAPTED_MMAP_THRESHOLD)
                libc.mallopt(M_TRIM_THRESHOLD, ADAPTED_TRIM_THRESHOLD)
                libc.malloc_trim(0)
